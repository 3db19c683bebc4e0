//! SIGKILL one of two executors while `kiln features --cluster` runs: the scheduler declares it
//! lost and cancels the job, the client runs the job again on the survivor, and the committed
//! output is identical to a local run — no partial or duplicate shard.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;

#[test]
fn killing_an_executor_mid_job_still_commits_the_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 2_000_000, 5);
    let spec = common::example_spec().display().to_string();
    let source = format!("events={}", events.display());

    let local_out = dir.path().join("local");
    common::kiln_ok(&[
        "features",
        &spec,
        "--date",
        "2026-11-20",
        "--source",
        &source,
        "--out",
        local_out.to_str().unwrap(),
    ]);

    let mut cluster = Cluster::start(2, &[], &dir.path().join("logs"));
    let cluster_out = dir.path().join("cluster");
    let client = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "features",
            &spec,
            "--date",
            "2026-11-20",
            "--source",
            &source,
        ])
        .arg("--out")
        .arg(&cluster_out)
        .args(["--json", "--cluster", &cluster.url])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill executor-1 once the job has started running tasks.
    let running = |s: &serde_json::Value| {
        s["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["status"] == "running"))
    };
    cluster.wait_for(running, "the job to run");
    std::thread::sleep(Duration::from_millis(700));
    let before_kill = cluster.status();
    assert!(
        running(&before_kill),
        "the job must still be running when the executor is killed: {before_kill}"
    );
    cluster.kill_executor(1);
    let killed_at = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut client = client;
    while client.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = client.kill();
            panic!(
                "the job did not finish within 180 s of the kill\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the job survives the lost executor:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    eprintln!(
        "job finished {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    let local_url = format!("{}/examples/", local_out.display());
    let cluster_url = format!("{}/examples/", cluster_out.display());
    let sums = common::shard_sums(&cluster_url);
    assert_eq!(sums.len(), 32);
    assert_eq!(
        sums,
        common::shard_sums(&local_url),
        "identical committed shards"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["attempts"], 2,
        "the job ran again after the loss: {report}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("attempt 2 of 3"),
        "the client says it resubmits the job:\n{stderr}"
    );
    let run = format!("run-{}", report["run_id"].as_str().unwrap());
    let files = std::fs::read_dir(cluster_out.join("examples").join(&run))
        .unwrap()
        .count();
    // 16 shards x 2 formats and `_stats.json`.
    assert_eq!(files, 33, "no partial or duplicate shard files");

    // The scheduler noticed the loss: only executor-0 remains registered.
    let after = cluster.wait_for(
        |s| s["executors"].as_array().map(Vec::len) == Some(1),
        "the lost executor to expire",
    );
    assert_eq!(after["executors"][0]["id"], "executor-0");
    let log = cluster.scheduler_log();
    for line in log
        .lines()
        .filter(|l| l.contains("executor-1") || l.contains("cancelling"))
    {
        eprintln!("scheduler: {line}");
    }
    assert!(
        log.contains("executor executor-1 heartbeat timed out"),
        "the scheduler declared executor-1 lost:\n{log}"
    );
    assert!(
        log.contains("executor executor-1 left the cluster: cancelling running job"),
        "the scheduler cancelled the job for a clean resubmission:\n{log}"
    );
}
