//! `kiln features --cluster` with input and output on a real S3-compatible server (moto on
//! 127.0.0.1): the scheduler and executors reach S3 with credentials from their own
//! environment, the shards are byte-identical to a local run, and the secret appears in no
//! scheduler or executor log.

mod common;

use common::cluster::Cluster;
use kiln_connectors::testing::Moto;

const SECRET: &str = "kiln-cluster-secret-7f3c9a";

#[test]
fn example_job_on_cluster_with_s3_matches_local_run() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln");
    let mut env = moto.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = SECRET.to_string();
        }
    }
    // Single test in this binary: the in-process S3 client uses the same environment.
    for (k, v) in &env {
        unsafe { std::env::set_var(k, v) };
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 60_000, 11);
    let raw = kiln_connectors::store::resolve("s3://kiln/raw/events").unwrap();
    kiln_connectors::store::upload_dir(&events, &raw, &[]).unwrap();

    let spec = common::example_spec().display().to_string();
    let local_out = dir.path().join("local");
    common::kiln_ok(&[
        "features",
        &spec,
        "--date",
        "2026-11-20",
        "--source",
        &format!("events={}", events.display()),
        "--out",
        local_out.to_str().unwrap(),
    ]);

    // Scheduler and executors get the credentials from their environment only.
    let logs = dir.path().join("logs");
    let cluster = Cluster::start(2, &env_ref, &logs);
    let stdout = common::kiln_ok_env(
        &[
            "features",
            &spec,
            "--date",
            "2026-11-20",
            "--source",
            "events=s3://kiln/raw/events",
            "--out",
            "s3://kiln/cluster-out",
            "--json",
            "--cluster",
            &cluster.url,
        ],
        &env_ref,
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report["outputs"][0]["location"],
        "s3://kiln/cluster-out/examples/"
    );

    let s3 = common::shard_sums("s3://kiln/cluster-out/examples/");
    assert_eq!(s3.len(), 32);
    assert_eq!(
        s3,
        common::shard_sums(&format!("{}/examples/", local_out.display())),
        "S3 shards written by the cluster are byte-identical to the local run"
    );
    let rows: usize = common::read_dataset(
        "s3://kiln/cluster-out/examples/",
        kiln_connectors::ShardFormat::Parquet,
    )
    .iter()
    .map(|b| b.num_rows())
    .sum();
    assert_eq!(rows as u64, report["outputs"][0]["rows"].as_u64().unwrap());

    let all_logs = cluster.logs();
    assert!(all_logs.contains("ShardSinkExec"), "{all_logs}");
    assert!(
        !all_logs.contains(SECRET),
        "the S3 secret must not appear in scheduler or executor logs"
    );
}
