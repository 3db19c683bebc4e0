//! The daily pipeline publishing into a model repository on a real S3-compatible server
//! (moto on 127.0.0.1): `[pipeline] models_dir = "s3://..."`; two dates publish versions 1
//! and 2, the second date's gate scores stable version 1 downloaded from the bucket, a rerun
//! finds both versions done, and `kiln models` reads the repository through the spec.
//!
//! Policy (as for every S3 test, `kiln_connectors::testing`): without `moto_server` the test
//! skips with a note, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_connectors::testing::Moto;
use kiln_registry::Repo;
use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KILN_METASTORE")
        .output()
        .expect("kiln runs")
}

fn ok(args: &[&str]) -> String {
    let o = kiln(args);
    assert!(
        o.status.success(),
        "kiln {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The example job with 4 shards, a small model, 30 training steps at learning rate 0.01 and `pipeline` as its
/// `[pipeline]` section (as `pipeline.rs` writes it).
fn write_spec(dir: &Path, pipeline: &str) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
    let full = std::fs::read_to_string(example).unwrap();
    let base = match full.find("\n[pipeline]") {
        Some(i) => full[..i].rsplit_once("\n#").map_or(&full[..i], |(a, _)| a),
        None => &full[..],
    };
    let spec = base
        .replace("shards = 16", "shards = 4")
        .replace("hidden = [256, 128]", "hidden = [16]")
        .replace("hash_buckets = 100000", "hash_buckets = 1000")
        .replace("embedding_dim = 16", "embedding_dim = 4")
        .replace(
            "batch_size = 1024\nepochs = 1",
            "batch_size = 256\nsteps = 30\ncheckpoint_every = 10\nlog_every = 10",
        )
        .replace(
            "optimizer = { kind = \"adam\", lr = 0.001,",
            "optimizer = { kind = \"adam\", lr = 0.01,",
        );
    assert!(
        spec.contains("steps = 30") && spec.contains("lr = 0.01,"),
        "example [train] changed"
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, format!("{spec}\n[pipeline]\n{pipeline}\n")).unwrap();
    p
}

#[test]
fn daily_runs_publish_into_an_s3_repository() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln");
    // A single test in this binary: the process environment is set race-free, for the
    // in-process store and the `kiln` children alike.
    for (k, v) in moto.env() {
        unsafe { std::env::set_var(k, v) };
    }
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("data/events");
    ok(&[
        "gen",
        "events",
        "--rows",
        "40000",
        "--days",
        "11",
        "--end-date",
        "2026-11-22",
        "--seed",
        "7",
        "--out",
        events.to_str().unwrap(),
        "--format",
        "parquet",
    ]);
    let spec = write_spec(
        dir.path(),
        "models_dir = \"s3://kiln/repo\"\nkeep_versions = 3\n[pipeline.gate]\nrules = [\"auc >= 0.5\", \"logloss <= stable * 1.5\"]",
    );
    let s = spec.to_str().unwrap();
    let out = ok(&[
        "backfill",
        s,
        "--from",
        "2026-11-19",
        "--to",
        "2026-11-20",
        "--json",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (l, v) in lines.iter().zip([1, 2]) {
        assert_eq!(l["status"], "success", "{l}");
        assert_eq!(l["model_version"], v, "{l}");
    }
    // The second date's gate scored stable version 1, fetched from the bucket.
    assert_eq!(lines[1]["gate"]["stable_version"], 1, "{}", lines[1]);

    let url = "s3://kiln/repo/daily_ctr";
    let repo = Repo::open(url).unwrap();
    assert_eq!(repo.versions().unwrap(), [1, 2]);
    assert_eq!(repo.labels().unwrap().stable, Some(2));
    assert!(repo.verify_version(2).unwrap() >= 5);
    let lineage = repo.lineage(1).unwrap();
    assert_eq!(lineage["date"], "2026-11-19");
    // `kiln models` through the spec.
    let listed: Value = serde_json::from_str(&ok(&["models", "list", s, "--json"])).unwrap();
    assert_eq!(listed["repository"], url);
    assert_eq!(listed["versions"][1]["path"], format!("{url}/2"));

    // A rerun finds both dates done (their versions are in the bucket).
    let o = kiln(&["backfill", s, "--from", "2026-11-19", "--to", "2026-11-20"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr)
            .matches("already done")
            .count(),
        2,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(repo.versions().unwrap(), [1, 2]);
    ok(&["models", "verify", s]);
}
