//! The peer benchmarks' checks, on small inputs:
//! * `kiln bench features --peers`: the example job by Kiln, DuckDB and Polars on 100k
//!   generated events; the peers' examples must equal Kiln's row for row
//!   (bench/peers/check_equal.py), and the report names the three engines with Kiln's ratios.
//! * `kiln bench tfrecord --tf`: Kiln's and TensorFlow's TFRecord files of the same rows must
//!   decode to the same values both ways, and a TensorFlow file of other rows fails the run.
//!
//! Policy for the peers (as in observability.rs): `KILN_TEST_FAST=1` skips; a Python without
//! the peer's modules skips (printing why) unless `CI=true`, where it fails. `bash
//! scripts/test.sh` installs them into its venv from `scripts/requirements-test.txt`.

mod common;

use std::path::PathBuf;
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A Python that imports `modules` (comma-separated): the test venv's (`$KILN_CACHE/venv`,
/// default `~/.cache/kiln/venv`), else `python3` on `PATH`; `None` when the test should skip.
fn python_with(modules: &str) -> Option<PathBuf> {
    if std::env::var("KILN_TEST_FAST").as_deref() == Ok("1") {
        eprintln!("KILN_TEST_FAST=1: skipping (it needs {modules})");
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
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    assert!(
        !ci(),
        "no Python with {modules} and CI=true, so this test must run: \
         `bash scripts/test.sh` installs them"
    );
    eprintln!("skipping: no Python with {modules}; `bash scripts/test.sh` installs them");
    None
}

#[test]
fn peers_compute_kilns_examples_and_are_timed_side_by_side() {
    let Some(python) = python_with("duckdb, polars, pyarrow") else {
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

/// A committed dataset of the example job on 30k generated events, in `dir/out/examples`.
fn example_dataset(dir: &std::path::Path) -> PathBuf {
    let events = dir.join("events");
    common::gen_events(&events, 30_000, 3);
    let out = dir.join("out");
    common::kiln_ok(&[
        "features",
        common::example_spec().to_str().unwrap(),
        "--date",
        "2026-11-20",
        "--source",
        &format!("events={}", events.display()),
        "--out",
        out.to_str().unwrap(),
    ]);
    out.join("examples")
}

#[test]
fn tfrecord_bench_checks_kilns_and_tensorflows_files_against_each_other() {
    let Some(python) = python_with("tensorflow, pyarrow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = example_dataset(dir.path());
    let bench = |work: &str, script: Option<&std::path::Path>| {
        let mut cmd = Command::new(KILN);
        cmd.args([
            "bench", "tfrecord", "--rows", "2000", "--repeat", "1", "--json",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--tf")
        .arg(&python)
        .arg("--work")
        .arg(dir.path().join(work));
        if let Some(s) = script {
            cmd.arg("--tf-script").arg(s);
        }
        cmd.output().unwrap()
    };

    let out = bench("work", None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["rows"], 2000);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["tensorflow"]["rows"], 2000);
    assert_eq!(v["tensorflow"]["kiln_file"]["rows"], 2000);
    // The same Examples: the two files differ at most in the order of each Example's features,
    // not in their sizes.
    assert_eq!(
        v["kiln"]["write"]["bytes"], v["tensorflow"]["write"]["bytes"],
        "{v}"
    );
    for what in ["write", "read"] {
        let r = v["ratios"][what].as_f64().unwrap();
        assert!(r.is_finite() && r > 0.0, "{what} ratio {r}");
    }

    // TensorFlow writing other rows (the last one dropped) is caught by the cross-check.
    let wrapper = dir.path().join("drop_last_row.py");
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/tf_tfrecord.py");
    std::fs::write(
        &wrapper,
        format!(
            "import runpy, sys\nimport pyarrow.parquet as pq\n\
             t = pq.read_table(sys.argv[1])\npq.write_table(t.slice(0, t.num_rows - 1), sys.argv[1])\n\
             sys.argv[0] = {real:?}\nrunpy.run_path({real:?}, run_name='__main__')\n",
            real = real.display().to_string()
        ),
    )
    .unwrap();
    let out = bench("work-bad", Some(&wrapper));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a file of other rows must fail the run"
    );
    assert!(
        stderr.contains("tensorflow.tfrecord decoded differs from")
            && stderr.contains("1999 rows against 2000"),
        "{stderr}"
    );
}
