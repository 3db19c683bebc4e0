//! `kiln features --cluster` on a real cluster: `kiln scheduler` and two `kiln executor`
//! processes on 127.0.0.1. The committed shards are byte-identical to a local run.

mod common;

use std::path::Path;

use common::cluster::Cluster;
use common::prom::{promtool_check, sample};

const DATE: &str = "2026-11-20";

fn features(events: &Path, out: &Path, cluster: Option<&str>) -> std::process::Output {
    let mut args = vec![
        "features".to_string(),
        common::example_spec().display().to_string(),
        "--date".into(),
        DATE.into(),
        "--source".into(),
        format!("events={}", events.display()),
        "--out".into(),
        out.display().to_string(),
        "--json".into(),
    ];
    if let Some(url) = cluster {
        args.extend(["--cluster".to_string(), url.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::kiln(&args)
}

fn report(out: &std::process::Output, logs: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kiln features failed:\n{}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn example_job_on_cluster_matches_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 150_000, 7);

    let local_out = dir.path().join("local");
    let local = report(&features(&events, &local_out, None), "");
    let local_url = format!("{}/examples/", local_out.display());

    let cluster = Cluster::start(2, &[], &dir.path().join("logs"));
    let status = cluster.status();
    let executors = status["executors"].as_array().unwrap();
    assert_eq!(executors.len(), 2);
    for e in executors {
        assert_eq!(e["slots"], 2, "{e}");
        assert_eq!(e["host"], "127.0.0.1", "{e}");
        assert!(e["seconds_since_heartbeat"].as_u64().unwrap() <= 4, "{e}");
    }
    let human = common::kiln_ok(&[
        "cluster",
        "status",
        "--cluster",
        &cluster.url,
        "--status-port",
        &cluster.status_port.to_string(),
    ]);
    assert!(
        human.contains("2 executor(s)")
            && human.contains("executor-0")
            && human.contains("executor-1"),
        "{human}"
    );

    let cluster_out = dir.path().join("cluster");
    let remote = report(
        &features(&events, &cluster_out, Some(&cluster.url)),
        &cluster.logs(),
    );
    let cluster_url = format!("{}/examples/", cluster_out.display());

    // Same rows, same bytes: every shard's SHA-256, row count and size match the local run.
    let sums = common::shard_sums(&cluster_url);
    assert_eq!(sums.len(), 32, "16 TFRecord + 16 Parquet shards");
    assert_eq!(sums, common::shard_sums(&local_url));
    // Statistics merged from the executors' shard writers: the same bytes as the local run's.
    let stats_sha = |url: &str| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{url}_manifest.json")).unwrap())
                .unwrap();
        m["stats"]["sha256"]
            .as_str()
            .expect("statistics committed")
            .to_string()
    };
    assert_eq!(stats_sha(&cluster_url), stats_sha(&local_url));
    assert_eq!(remote["outputs"][0]["rows"], local["outputs"][0]["rows"]);
    assert!(remote["outputs"][0]["rows"].as_u64().unwrap() > 1000);

    // Exactly one committed run: the manifest, _SUCCESS, the commit lock and the 32 shards,
    // nothing else.
    let run = format!("run-{}", remote["run_id"].as_str().unwrap());
    let mut top: Vec<String> = std::fs::read_dir(cluster_out.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        vec![
            "_SUCCESS".to_string(),
            "_kiln_commit.lock".into(),
            "_manifest.json".into(),
            run.clone()
        ]
    );
    let files = std::fs::read_dir(cluster_out.join("examples").join(&run))
        .unwrap()
        .count();
    // 16 shards x 2 formats and `_stats.json`.
    assert_eq!(files, 33, "no temporary or duplicate shard files");

    // The shards were written by the executors' shard-writer tasks.
    let logs = cluster.logs();
    assert!(
        logs.contains("ShardSinkExec"),
        "scheduler planned the sink:\n{logs}"
    );

    // After the job: no job left running, both executors still alive.
    let after = cluster.wait_for(
        |s| {
            s["jobs"]
                .as_array()
                .is_some_and(|j| j.iter().all(|j| j["status"] != "running"))
        },
        "the job to leave the running list",
    );
    assert_eq!(after["executors"].as_array().unwrap().len(), 2);

    // Prometheus metrics: the scheduler counted one completed job, the executors its tasks.
    let (sched, execs) = metrics_when(&cluster, |s, _| {
        sample(s, "kiln_scheduler_jobs_completed_total") == 1.0
    });
    assert_eq!(sample(&sched, "kiln_scheduler_jobs_submitted_total"), 1.0);
    assert_eq!(sample(&sched, "kiln_scheduler_jobs_failed_total"), 0.0);
    assert_eq!(sample(&sched, "kiln_scheduler_jobs_running"), 0.0);
    assert_eq!(sample(&sched, "kiln_scheduler_executors"), 2.0);
    assert_eq!(
        sample(&sched, "kiln_scheduler_job_duration_seconds_count"),
        1.0
    );
    assert!(sched.contains("kiln_build_info{component=\"scheduler\",version=\""));
    let succeeded = total(&execs, "kiln_executor_tasks_succeeded_total");
    assert!(
        succeeded >= 2.0,
        "tasks on both executors' shard writers: {execs:?}"
    );
    assert_eq!(
        total(&execs, "kiln_executor_task_duration_seconds_count"),
        succeeded
    );
    assert_eq!(total(&execs, "kiln_executor_tasks_failed_total"), 0.0);
    assert_eq!(total(&execs, "kiln_executor_tasks_running"), 0.0);
    assert_eq!(total(&execs, "kiln_executor_slots"), 4.0);

    // A job that cannot succeed fails with its root cause, and commits nothing.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").unwrap();
    let failed = features(&events, &blocker.join("out"), Some(&cluster.url));
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("output `examples`"), "{err}");
    assert!(
        err.contains(&format!("{}/out/examples", blocker.display())) && err.contains("part-"),
        "names the shard file: {err}"
    );
    assert!(err.contains("Not a directory"), "the OS error: {err}");
    assert!(!err.contains("Plan(\""), "not a planner error: {err}");
    let (sched, execs) = metrics_when(&cluster, |s, _| {
        sample(s, "kiln_scheduler_jobs_failed_total") >= 1.0
    });
    assert_eq!(sample(&sched, "kiln_scheduler_jobs_completed_total"), 1.0);
    assert!(
        total(&execs, "kiln_executor_tasks_failed_total") >= 1.0,
        "{execs:?}"
    );
}

/// The cluster's `/metrics` (scheduler, executors) once `ok` holds for them, polled every
/// 200 ms for up to 30 s (job events reach the scheduler's counters asynchronously), each
/// checked by `promtool check metrics`.
fn metrics_when(cluster: &Cluster, ok: impl Fn(&str, &[String]) -> bool) -> (String, Vec<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut all: Vec<String> = cluster.metrics().into_iter().map(|(_, m)| m).collect();
        let execs = all.split_off(1);
        let sched = all.pop().unwrap();
        if ok(&sched, &execs) {
            promtool_check("kiln scheduler's /metrics", &sched);
            for e in &execs {
                promtool_check("kiln executor's /metrics", e);
            }
            return (sched, execs);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics did not reach the expected values in 30 s:\n{sched}\n{execs:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The sum over executors of the (single-series) sample `name{executor="..."}`.
fn total(execs: &[String], name: &str) -> f64 {
    execs
        .iter()
        .map(|m| {
            m.lines()
                .find_map(|l| {
                    let rest = l.strip_prefix(name)?.strip_prefix("{executor=\"")?;
                    rest.split_once("} ")?.1.parse::<f64>().ok()
                })
                .unwrap_or_else(|| panic!("no {name} in\n{m}"))
        })
        .sum()
}

const CSV_SPEC: &str = r#"
name = "csv_job"
[[sources]]
name = "clicks"
url = "input"
format = "csv"
schema = ["id int64", "user string"]
[[features]]
name = "totals"
sql = "SELECT id, user FROM clicks"
[[outputs]]
statement = "totals"
location = "out/totals/"
key = "id"
shards = 2
formats = ["parquet"]
"#;

#[test]
fn text_sources_are_rejected_on_the_cluster_naming_the_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("input")).unwrap();
    std::fs::write(dir.path().join("input/a.csv"), "id,user\n1,ann\n").unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, CSV_SPEC).unwrap();
    // Rejected while planning, before the scheduler is contacted.
    let out = common::kiln(&[
        "features",
        spec.to_str().unwrap(),
        "--date",
        DATE,
        "--cluster",
        "df://127.0.0.1:9",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("source `clicks`"), "{err}");
    assert!(
        err.contains("csv sources cannot run on the cluster df://127.0.0.1:9"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}
