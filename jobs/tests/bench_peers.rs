//! `kiln bench features --peers`: the example job by Kiln, DuckDB and Polars on 100k generated
//! events; the peers' examples must equal Kiln's row for row (bench/peers/check_equal.py), and
//! the report names the three engines with Kiln's ratios to each peer.
//!
//! Policy for the peers (as in observability.rs): `KILN_TEST_FAST=1` skips; a Python without
//! duckdb and polars skips (printing why) unless `CI=true`, where it fails. `bash
//! scripts/test.sh` installs both into its venv from `scripts/requirements-test.txt`.

use std::path::PathBuf;
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A Python that imports duckdb, polars and pyarrow: the test venv's (`$KILN_CACHE/venv`,
/// default `~/.cache/kiln/venv`), else `python3` on `PATH`; `None` when the test should skip.
fn peers_python() -> Option<PathBuf> {
    if std::env::var("KILN_TEST_FAST").as_deref() == Ok("1") {
        eprintln!("KILN_TEST_FAST=1: skipping (it needs DuckDB and Polars)");
        return None;
    }
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln")));
    let mut candidates: Vec<PathBuf> = cache
        .map(|c| c.join("venv/bin/python"))
        .into_iter()
        .collect();
    candidates.push("python3".into());
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import duckdb, polars, pyarrow"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    assert!(
        !ci(),
        "no Python with duckdb, polars and pyarrow and CI=true, so this test must run: \
         `bash scripts/test.sh` installs them"
    );
    eprintln!(
        "skipping: no Python with duckdb, polars and pyarrow; `bash scripts/test.sh` installs them"
    );
    None
}

#[test]
fn peers_compute_kilns_examples_and_are_timed_side_by_side() {
    let Some(python) = peers_python() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(KILN)
        .args([
            "bench", "features", "--rows", "100000", "--repeat", "1", "--peers",
        ])
        .arg(&python)
        .arg("--work")
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for peer in ["duckdb", "polars"] {
        assert!(
            stdout.contains(&format!("equal: {peer} examples = kiln's")),
            "{peer}'s equality check is reported: {stdout}"
        );
        assert!(
            stdout.contains(&format!("kiln/{peer}")) && stdout.contains("x best"),
            "the ratio to {peer} is printed: {stdout}"
        );
    }
    for engine in ["kiln", "duckdb", "polars"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{engine} ")) && l.contains("peak RSS"))
            .unwrap_or_else(|| panic!("no line for {engine}: {stdout}"));
        assert!(line.contains(" s best"), "{line}");
    }
    // The peers wrote all three tables of the spec.
    for peer in ["duckdb", "polars"] {
        for table in ["examples", "user_features", "item_features"] {
            let f = work.path().join(format!("peers/{peer}/{table}.parquet"));
            assert!(f.exists(), "{} is missing", f.display());
        }
    }
}
