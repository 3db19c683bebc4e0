//! The metadata store's behaviour, run on every backend: SQLite always, PostgreSQL when
//! `KILN_TEST_POSTGRES_URL` is set (required when `CI=true`; `.ci/run` starts a server).

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::status::{AttemptStatus, EventKind, RunStatus, TaskStatus, Trigger};
use crate::task::{TaskId, TaskKind};

fn task(k: TaskKind) -> TaskId {
    TaskId::from(k)
}

/// The PostgreSQL URL for tests; panics on CI when it is missing.
fn postgres_url() -> Option<String> {
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but KILN_TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL")
        }
        _ => {
            eprintln!("note: KILN_TEST_POSTGRES_URL not set; skipping the PostgreSQL backend");
            None
        }
    }
}

/// A job name no other test (or earlier run against the same database) uses.
fn unique_job(tag: &str) -> String {
    let mut b = [0u8; 6];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    format!("test_{tag}_{}", hex::encode(b))
}

fn new_run(job: &str, date: &str) -> NewRun {
    NewRun {
        job: job.into(),
        run_date: date.into(),
        trigger: Trigger::Run,
        spec_path: "/x/job.toml".into(),
        spec_sha256: "ab".repeat(32),
        overrides: json!({"sources": [["events", "/data"]]}),
        log_dir: "/x/.kiln/logs".into(),
        hyperparams: json!({"batch_size": 1024}),
    }
}

/// Runs, tasks, attempts, skip lookups, events, listings.
fn records_runs(url: &str) {
    let mut s = Store::open(url).unwrap();
    let job = unique_job("records");
    let run = s.start_run(&new_run(&job, "2026-11-20")).unwrap();
    let t = s
        .start_task(
            run,
            &task(TaskKind::Features),
            "fp1",
            TaskStatus::Running,
            None,
        )
        .unwrap();
    let a1 = s.start_attempt(t, 1, "/logs/features.1.log").unwrap();
    s.finish_attempt(a1, AttemptStatus::Failed, Some("exit 1"))
        .unwrap();
    let a2 = s.start_attempt(t, 2, "/logs/features.2.log").unwrap();
    s.finish_attempt(a2, AttemptStatus::Success, None).unwrap();
    s.finish_task(
        t,
        TaskStatus::Success,
        2,
        Some(&json!({"manifest_sha256": "cd"})),
        None,
    )
    .unwrap();
    let skipped = s
        .start_task(
            run,
            &task(TaskKind::Train),
            "fp2",
            TaskStatus::Skipped,
            Some(&json!({"steps": 5})),
        )
        .unwrap();
    assert!(skipped > t);
    s.add_event(run, EventKind::Alert, "delivered").unwrap();
    s.finish_run(
        run,
        &RunOutcome {
            status: RunStatus::Success,
            lineage: json!({"examples_manifest_sha256": "cd"}),
            metrics: Some(json!({"auc": 0.7, "logloss": f64::NAN})),
            gate: Some(json!({"passed": true})),
            model_version: Some(3),
            error: None,
        },
    )
    .unwrap();

    let last = s
        .last_success(&job, "2026-11-20", &task(TaskKind::Features))
        .unwrap()
        .unwrap();
    assert_eq!(last.fingerprint, "fp1");
    assert_eq!(last.output.unwrap()["manifest_sha256"], "cd");
    assert_eq!(
        s.last_success(&job, "2026-11-20", &task(TaskKind::Train))
            .unwrap()
            .unwrap()
            .fingerprint,
        "fp2"
    );
    assert!(
        s.last_success(&job, "2026-11-21", &task(TaskKind::Features))
            .unwrap()
            .is_none()
    );

    let d = s.run(run).unwrap().unwrap();
    assert_eq!(d.run.status, RunStatus::Success);
    assert_eq!(d.run.model_version, Some(3));
    assert_eq!(d.run.kiln_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(d.run.hyperparams.as_ref().unwrap()["batch_size"], 1024);
    assert_eq!(d.run.metrics.as_ref().unwrap()["auc"], 0.7);
    assert!(d.run.seconds.unwrap() >= 0.0);
    assert_eq!(d.tasks.len(), 2);
    assert_eq!(d.tasks[0].task.attempts, 2);
    assert_eq!(d.tasks[0].attempt_log.len(), 2);
    assert_eq!(d.tasks[0].attempt_log[0].status, AttemptStatus::Failed);
    assert_eq!(
        d.tasks[0].attempt_log[1].log_path.as_deref(),
        Some("/logs/features.2.log")
    );
    assert_eq!(d.tasks[1].task.status, TaskStatus::Skipped);
    assert_eq!(d.events[0].message, "delivered");

    let run2 = s.start_run(&new_run(&job, "2026-11-21")).unwrap();
    let list = s.list_runs(Some(&job), None, 10).unwrap();
    assert_eq!(
        list.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run2, run]
    );
    assert_eq!(list[0].status, RunStatus::Running);
    assert_eq!(
        s.list_runs(Some(&job), Some("2026-11-20"), 10)
            .unwrap()
            .len(),
        1
    );
    assert!(s.run(i64::MAX / 2).unwrap().is_none());
    // `kiln runs --json` prints the same strings as the rows hold.
    let j = serde_json::to_value(&d).unwrap();
    assert_eq!(j["status"], "success");
    assert_eq!(j["trigger"], "run");
    assert_eq!(j["tasks"][0]["name"], "features");
    assert_eq!(j["tasks"][0]["status"], "success");
    assert_eq!(j["tasks"][0]["attempt_log"][0]["status"], "failed");
    assert_eq!(j["tasks"][1]["status"], "skipped");
    assert_eq!(j["events"][0]["kind"], "alert");

    // Versioned migrations, applied once even when opened again.
    drop(s);
    let mut s = Store::open(url).unwrap();
    let m = s.migrations().unwrap();
    assert_eq!(
        m.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=latest_schema_version()).collect::<Vec<_>>()
    );
}

/// The run lock: exclusive, reported with its holder, released, stale takeover.
fn locks(url: &str) {
    let mut s1 = Store::open(url).unwrap();
    let mut s2 = Store::open(url).unwrap();
    let job = unique_job("lock");
    let a = LockOwner::this_process();
    let b = LockOwner::this_process();
    let long = Duration::from_secs(60);
    assert!(matches!(
        s1.try_lock(&job, "2026-11-20", &a, long).unwrap(),
        LockOutcome::Acquired {
            took_over: None,
            ..
        }
    ));
    s1.set_lock_run(&job, "2026-11-20", &a, 42).unwrap();
    match s2.try_lock(&job, "2026-11-20", &b, long).unwrap() {
        LockOutcome::Held(h) => {
            assert_eq!(h.pid, std::process::id() as i64);
            assert_eq!(h.run_id, Some(42));
            assert!(h.to_string().contains(", run 42 since"), "{h}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    // Another date is independent.
    assert!(matches!(
        s2.try_lock(&job, "2026-11-21", &b, long).unwrap(),
        LockOutcome::Acquired { .. }
    ));
    assert!(s1.heartbeat(&job, "2026-11-20", &a).unwrap());
    assert!(!s1.heartbeat(&job, "2026-11-20", &b).unwrap());
    s1.unlock(&job, "2026-11-20", &a).unwrap();
    assert!(matches!(
        s2.try_lock(&job, "2026-11-20", &b, long).unwrap(),
        LockOutcome::Acquired {
            took_over: None,
            ..
        }
    ));
    // A silent holder (heartbeat older than the limit) is taken over; the old owner has
    // lost it.
    std::thread::sleep(Duration::from_millis(30));
    match s1
        .try_lock(&job, "2026-11-20", &a, Duration::from_millis(10))
        .unwrap()
    {
        LockOutcome::Acquired {
            took_over: Some(h), ..
        } => assert!(h.heartbeat_age_ms >= 10),
        other => panic!("expected a takeover, got {other:?}"),
    }
    assert!(!s2.heartbeat(&job, "2026-11-20", &b).unwrap());
    // A dead process on this host is stale at once.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id() as i64;
    child.wait().unwrap();
    let dead = LockOwner {
        pid: dead_pid,
        ..LockOwner::this_process()
    };
    assert!(matches!(
        s1.try_lock(&job, "2026-11-22", &dead, long).unwrap(),
        LockOutcome::Acquired { .. }
    ));
    assert!(matches!(
        s2.try_lock(&job, "2026-11-22", &b, long).unwrap(),
        LockOutcome::Acquired {
            took_over: Some(_),
            ..
        }
    ));
}

/// Many connections race for one lock: exactly one wins.
fn lock_race(url: &str) {
    let job = unique_job("race");
    // Create the schema first so the racers only race for the lock.
    Store::open(url).unwrap();
    let winners: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let job = job.clone();
                sc.spawn(move || {
                    let mut s = Store::open(url).unwrap();
                    let o = LockOwner::this_process();
                    matches!(
                        s.try_lock(&job, "2026-11-20", &o, Duration::from_secs(60))
                            .unwrap(),
                        LockOutcome::Acquired { .. }
                    ) as usize
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);
}

#[test]
fn sqlite_records_runs() {
    let dir = tempfile::tempdir().unwrap();
    records_runs(dir.path().join("nested/runs.sqlite").to_str().unwrap());
}

#[test]
fn sqlite_locks() {
    let dir = tempfile::tempdir().unwrap();
    locks(dir.path().join("runs.sqlite").to_str().unwrap());
}

#[test]
fn sqlite_lock_race() {
    let dir = tempfile::tempdir().unwrap();
    lock_race(dir.path().join("runs.sqlite").to_str().unwrap());
}

#[test]
fn postgres_records_runs() {
    if let Some(url) = postgres_url() {
        records_runs(&url);
    }
}

#[test]
fn postgres_locks() {
    if let Some(url) = postgres_url() {
        locks(&url);
    }
}

#[test]
fn postgres_lock_race() {
    if let Some(url) = postgres_url() {
        lock_race(&url);
    }
}

/// Staleness is judged by the database's clock: a fresh heartbeat is young whatever this
/// host's clock says, and one moved back in database time is stale.
fn lock_uses_the_database_clock(url: &str) {
    let mut s1 = Store::open(url).unwrap();
    let mut s2 = Store::open(url).unwrap();
    let job = unique_job("dbclock");
    let (a, b) = (LockOwner::this_process(), LockOwner::this_process());
    let stale = Duration::from_secs(60);
    assert!(matches!(
        s1.try_lock(&job, "2026-11-20", &a, stale).unwrap(),
        LockOutcome::Acquired { fence: 1, .. }
    ));
    let h = s2.lock_holder(&job, "2026-11-20").unwrap().unwrap();
    assert!(h.heartbeat_age_ms.abs() < 5_000, "{h:?}");
    assert!(matches!(
        s2.try_lock(&job, "2026-11-20", &b, stale).unwrap(),
        LockOutcome::Held(_)
    ));
    s2.backdate_heartbeat(&job, "2026-11-20", Duration::from_secs(3600))
        .unwrap();
    let h = s2.lock_holder(&job, "2026-11-20").unwrap().unwrap();
    assert!(h.heartbeat_age_ms >= 3_600_000, "{h:?}");
    // The heartbeat is written with the database's time: fresh again.
    assert!(s1.heartbeat(&job, "2026-11-20", &a).unwrap());
    let h = s2.lock_holder(&job, "2026-11-20").unwrap().unwrap();
    assert!(h.heartbeat_age_ms.abs() < 5_000, "{h:?}");
}

/// Fencing: once taken over, the old holder's writes fail with `LostLock` and write
/// nothing; the new holder's fencing number is higher.
fn lost_lock_fences_writes(url: &str) {
    let mut s1 = Store::open(url).unwrap();
    let mut s2 = Store::open(url).unwrap();
    let job = unique_job("fence");
    let date = "2026-11-20";
    let a = LockOwner::this_process();
    let b = LockOwner {
        host: "other-host".into(),
        pid: 4711,
        ..LockOwner::this_process()
    };
    let stale = Duration::from_secs(60);
    let LockOutcome::Acquired { fence, .. } = s1.try_lock(&job, date, &a, stale).unwrap() else {
        panic!("not acquired")
    };
    s1.fence_writes(&job, date, &a, fence);
    let run = s1.start_run(&new_run(&job, date)).unwrap();
    s1.set_lock_run(&job, date, &a, run).unwrap();
    let t = s1
        .start_task(
            run,
            &task(TaskKind::Features),
            "fp",
            TaskStatus::Running,
            None,
        )
        .unwrap();
    s1.check_lock(&job, date, &a, fence).unwrap();

    // The holder looks silent (database time): b takes over with a higher fence.
    s2.backdate_heartbeat(&job, date, Duration::from_secs(3600))
        .unwrap();
    let LockOutcome::Acquired {
        took_over: Some(old),
        fence: f2,
    } = s2.try_lock(&job, date, &b, stale).unwrap()
    else {
        panic!("no takeover")
    };
    assert_eq!(old.run_id, Some(run));
    assert_eq!(f2, fence + 1);
    s2.set_lock_run(&job, date, &b, run + 1000).unwrap();

    let expect = format!(
        "lost the run lock for job {job} date {date} to run {} on host other-host (pid 4711) at ",
        run + 1000
    );
    let errs = [
        s1.finish_task(t, TaskStatus::Success, 1, None, None)
            .unwrap_err(),
        s1.start_task(run, &task(TaskKind::Train), "fp", TaskStatus::Running, None)
            .unwrap_err(),
        s1.start_attempt(t, 2, "/x.log").unwrap_err(),
        s1.add_event(run, EventKind::Alert, "x").unwrap_err(),
        s1.finish_run(
            run,
            &RunOutcome {
                status: RunStatus::Success,
                lineage: json!({}),
                metrics: None,
                gate: None,
                model_version: Some(1),
                error: None,
            },
        )
        .unwrap_err(),
        s1.check_lock(&job, date, &a, fence).unwrap_err(),
    ];
    for e in &errs {
        assert!(e.downcast_ref::<LostLock>().is_some(), "{e:#}");
        let m = e.to_string();
        assert!(m.starts_with(&expect) && m.ends_with("; stopping"), "{m}");
    }
    assert!(!s1.heartbeat(&job, date, &a).unwrap());
    // Nothing of it was written.
    let d = s2.run(run).unwrap().unwrap();
    assert_eq!(d.run.status, RunStatus::Running);
    assert_eq!(d.run.model_version, None);
    assert_eq!(d.tasks.len(), 1);
    assert_eq!(d.tasks[0].task.status, TaskStatus::Running);
    assert!(d.tasks[0].attempt_log.is_empty() && d.events.is_empty());
    // The new holder writes.
    s2.fence_writes(&job, date, &b, f2);
    s2.abandon_run(run, "abandoned").unwrap();
    assert_eq!(s2.run(run).unwrap().unwrap().run.status, RunStatus::Failed);
    // A lock that was removed is lost too.
    s2.unlock(&job, date, &b).unwrap();
    let e = s2.add_event(run, EventKind::Lock, "x").unwrap_err();
    assert!(
        e.to_string()
            .contains("to nobody (the lock row was removed)"),
        "{e}"
    );
}

#[test]
fn sqlite_lock_uses_the_database_clock() {
    let dir = tempfile::tempdir().unwrap();
    lock_uses_the_database_clock(dir.path().join("runs.sqlite").to_str().unwrap());
}

#[test]
fn sqlite_lost_lock_fences_writes() {
    let dir = tempfile::tempdir().unwrap();
    lost_lock_fences_writes(dir.path().join("runs.sqlite").to_str().unwrap());
}

#[test]
fn postgres_lock_uses_the_database_clock() {
    if let Some(url) = postgres_url() {
        lock_uses_the_database_clock(&url);
    }
}

#[test]
fn postgres_lost_lock_fences_writes() {
    if let Some(url) = postgres_url() {
        lost_lock_fences_writes(&url);
    }
}

#[test]
fn names_a_row_with_an_unknown_status() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("runs.sqlite");
    let mut s = Store::open(p.to_str().unwrap()).unwrap();
    let run = s.start_run(&new_run("bad_status", "2026-11-20")).unwrap();
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute(
        "UPDATE kiln_runs SET status = 'finished' WHERE id = ?1",
        [run],
    )
    .unwrap();
    drop(c);
    let e = format!("{:#}", s.run(run).err().unwrap());
    assert!(
        e.contains(&format!("kiln_runs row {run}: column status")),
        "{e}"
    );
    assert!(e.contains("unknown run status `finished`"), "{e}");
    assert!(
        e.contains("running, success, rejected, anomalies, failed"),
        "{e}"
    );
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("runs.sqlite");
    Store::open(p.to_str().unwrap()).unwrap();
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute(
        "INSERT INTO kiln_schema_migrations VALUES (999, 'future', 'x')",
        [],
    )
    .unwrap();
    drop(c);
    let e = format!("{:#}", Store::open(p.to_str().unwrap()).err().unwrap());
    assert!(e.contains("schema version 999 is newer"), "{e}");
}
