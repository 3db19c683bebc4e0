//! The example job with input and output on a real S3-compatible server (moto on 127.0.0.1):
//! the committed shards are byte-identical to a local run, and lineage carries ETags.

mod common;

use kiln_connectors::dataset::{Dataset, OpenOptions, ShardFormat};
use kiln_connectors::testing::Moto;

#[test]
fn example_job_on_s3_matches_local_run() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln");
    let env = moto.env();
    // This test binary has a single test: setting the process environment is race-free here,
    // and lets the in-process reader use the same standard AWS_* variables as `kiln`.
    for (k, v) in &env {
        unsafe { std::env::set_var(k, v) };
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 60_000, 11);
    let raw = kiln_connectors::store::resolve("s3://kiln/raw/events").unwrap();
    kiln_connectors::store::upload_dir(&events, &raw, &[]).unwrap();

    let spec = common::example_spec();
    let spec = spec.to_str().unwrap();
    let local_out = dir.path().join("out");
    common::kiln_ok(&[
        "features",
        spec,
        "--date",
        "2026-11-20",
        "--source",
        &format!("events={}", events.display()),
        "--out",
        local_out.to_str().unwrap(),
    ]);
    let stdout = common::kiln_ok_env(
        &[
            "features",
            spec,
            "--date",
            "2026-11-20",
            "--source",
            "events=s3://kiln/raw/events",
            "--out",
            "s3://kiln/features",
            "--json",
        ],
        &env_ref,
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report["outputs"][0]["location"],
        "s3://kiln/features/examples/"
    );

    let s3 = Dataset::open_blocking(
        "s3://kiln/features/examples/",
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    let local = common::shard_sums(&format!("{}/examples/", local_out.display()));
    assert_eq!(
        common::shard_sums("s3://kiln/features/examples/"),
        local,
        "S3 shards are byte-identical to the local run"
    );
    let files = s3.manifest().lineage["inputs"][0]["files"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files.len(), 9);
    assert!(files.iter().all(|f| {
        f["url"]
            .as_str()
            .unwrap()
            .starts_with("s3://kiln/raw/events/dt=")
    }));
    assert!(
        files
            .iter()
            .all(|f| f["e_tag"].as_str().is_some_and(|t| !t.is_empty())),
        "ETags recorded"
    );
    let rows: usize = common::read_dataset("s3://kiln/features/examples/", ShardFormat::Parquet)
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let local_rows: u64 = local.iter().filter(|s| s.1 == "Parquet").map(|s| s.3).sum();
    assert_eq!(rows as u64, local_rows);
}
