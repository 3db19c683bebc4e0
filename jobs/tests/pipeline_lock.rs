//! The run lock across processes (`kiln run`): staleness follows the database's clock, not
//! the hosts' (a run whose host clock is skewed keeps its lock), and a run whose lock was
//! taken over stops — its children killed, nothing more recorded, nothing published — with
//! a "lost the run lock" error. Run on SQLite, and on PostgreSQL when
//! `KILN_TEST_POSTGRES_URL` is set (always under `CI=true`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_pipeline::metastore::{LockHolder, LockOutcome, LockOwner, Store};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const DATE: &str = "2026-11-20";

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KILN_METASTORE")
        .output()
        .expect("kiln runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// 11 days of events ending 2026-11-22.
fn gen_events(dir: &Path) {
    let o = kiln(&[
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
        dir.join("data/events").to_str().unwrap(),
        "--format",
        "parquet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The example job named `name` with 4 shards, a small model, `steps` training steps, and
/// `pipeline` as its `[pipeline]` section.
fn write_spec(dir: &Path, name: &str, steps: u64, pipeline: &str) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
    let full = std::fs::read_to_string(example).unwrap();
    let base = match full.find("\n[pipeline]") {
        Some(i) => full[..i].rsplit_once("\n#").map_or(&full[..i], |(a, _)| a),
        None => &full[..],
    };
    let spec = base
        .replacen("name = \"daily_ctr\"", &format!("name = \"{name}\""), 1)
        .replace("shards = 16", "shards = 4")
        .replace("hidden = [256, 128]", "hidden = [16]")
        .replace("hash_buckets = 100000", "hash_buckets = 1000")
        .replace("embedding_dim = 16", "embedding_dim = 4")
        .replace(
            "batch_size = 1024\nepochs = 1",
            &format!("batch_size = 256\nsteps = {steps}\ncheckpoint_every = 10\nlog_every = 10"),
        );
    assert!(
        spec.contains(&format!("name = \"{name}\"")) && spec.contains(&format!("steps = {steps}")),
        "example job changed"
    );
    let p = dir.join("job.toml");
    std::fs::write(&p, format!("{spec}\n[pipeline]\n{pipeline}\n")).unwrap();
    p
}

/// Published versions (integer directories) anywhere under `models/`.
fn published(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for model in std::fs::read_dir(dir.join("models"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for v in std::fs::read_dir(model.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if v.file_name().to_string_lossy().parse::<u64>().is_ok() {
                out.push(v.path());
            }
        }
    }
    out
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
            && let Ok(c) = std::fs::read(e.path().join("cmdline"))
        {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Both backends: the default SQLite file (None), and PostgreSQL when configured.
fn metastores() -> Vec<Option<String>> {
    let mut v = vec![None];
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => v.push(Some(u)),
        _ if std::env::var("CI").is_ok_and(|c| c == "true") => {
            panic!("CI=true but KILN_TEST_POSTGRES_URL is not set")
        }
        _ => eprintln!("note: KILN_TEST_POSTGRES_URL not set; PostgreSQL lock tests skipped"),
    }
    v
}

/// A job name no other run against the same database uses.
fn unique_job(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("lock_{tag}_{}_{nanos}", std::process::id())
}

/// `kiln run SPEC --date DATE` in the background, stderr to `<dir>/run.err`.
fn spawn_run(dir: &Path, spec: &Path, store: &Option<String>, env: &[(&str, &str)]) -> Child {
    let err = std::fs::File::create(dir.join("run.err")).unwrap();
    let mut c = Command::new(KILN);
    c.args(["run", spec.to_str().unwrap(), "--date", DATE])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(err));
    match store {
        Some(u) => c.env("KILN_METASTORE", u),
        None => c.env_remove("KILN_METASTORE"),
    };
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn open_store(dir: &Path, store: &Option<String>) -> Store {
    let url = store
        .clone()
        .unwrap_or_else(|| dir.join(".kiln/runs.sqlite").to_str().unwrap().to_string());
    Store::open(&url).unwrap()
}

/// Waits until the run holds the lock with its run id attached.
fn wait_for_holder(db: &mut Store, job: &str, run: &mut Child, dir: &Path) -> LockHolder {
    let t = Instant::now();
    loop {
        if let Some(h) = db.lock_holder(job, DATE).unwrap()
            && h.run_id.is_some()
        {
            return h;
        }
        assert!(
            run.try_wait().unwrap().is_none(),
            "kiln run ended early: {}",
            std::fs::read_to_string(dir.join("run.err")).unwrap_or_default()
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the run took no lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes the lock over as another host's run `thief_run` (the holder made stale in database
/// time first); returns the thief.
fn take_over(db: &mut Store, job: &str, victim_pid: u32, thief_run: i64) -> LockOwner {
    db.backdate_heartbeat(job, DATE, Duration::from_secs(3600))
        .unwrap();
    let thief = LockOwner {
        host: "other-host".into(),
        pid: 4711,
        ..LockOwner::this_process()
    };
    match db
        .try_lock(job, DATE, &thief, Duration::from_secs(4))
        .unwrap()
    {
        LockOutcome::Acquired {
            took_over: Some(h),
            fence,
        } => {
            assert_eq!(h.pid, victim_pid as i64);
            assert!(fence >= 2, "fence {fence}");
        }
        other => panic!("expected a takeover, got {other:?}"),
    }
    db.set_lock_run(job, DATE, &thief, thief_run).unwrap();
    thief
}

/// Waits for the run to end (at most `limit`) and returns its stderr.
fn wait_end(run: &mut Child, dir: &Path, limit: Duration) -> String {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = run.kill();
            panic!(
                "the run whose lock was taken over kept running for {limit:?}: {}",
                std::fs::read_to_string(dir.join("run.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(dir.join("run.err")).unwrap();
    assert!(!status.success(), "{err}");
    err
}

/// A run on a host whose clock is two hours behind keeps its lock (its heartbeats are in
/// database time, so another host sees them fresh); made stale in database time, the lock is
/// taken over, and the run stops at its next record with a clear error, recording nothing
/// more.
#[test]
fn skewed_host_keeps_its_lock_and_a_taken_over_run_stops() {
    for store in metastores() {
        let dir = tempfile::tempdir().unwrap();
        let job = unique_job("skew");
        let spec = write_spec(
            dir.path(),
            &job,
            10,
            "lock_stale_seconds = 4\nterm_grace_seconds = 2\n[[pipeline.sensors]]\nname = \"go\"\npath = \"data/go/dt={{ ds }}/\"\npoke_seconds = 0.2\ntimeout_seconds = 120\n",
        );
        let mut run = spawn_run(
            dir.path(),
            &spec,
            &store,
            &[("KILN_TEST_CLOCK_SKEW_SECONDS", "-7200")],
        );
        let mut db = open_store(dir.path(), &store);
        let h = wait_for_holder(&mut db, &job, &mut run, dir.path());
        let run_id = h.run_id.unwrap();
        // The run's host clock really is skewed (its records carry it).
        let acquired = chrono::DateTime::parse_from_rfc3339(&h.acquired_at).unwrap();
        let behind = chrono::Utc::now().signed_duration_since(acquired);
        assert!(behind.num_minutes() >= 110, "{store:?}: {h:?}");

        // Heartbeats (every 1 s) keep it fresh by the database's clock: not stale after
        // several heartbeat periods, although the holder's clock is two hours behind.
        std::thread::sleep(Duration::from_millis(2500));
        let other = LockOwner {
            host: "other-host".into(),
            pid: 4711,
            ..LockOwner::this_process()
        };
        match db
            .try_lock(&job, DATE, &other, Duration::from_secs(4))
            .unwrap()
        {
            LockOutcome::Held(h) => {
                assert!(h.heartbeat_age_ms < 4000, "{store:?}: {h:?}");
                assert_eq!(h.run_id, Some(run_id));
            }
            other => panic!("{store:?}: a live, skewed holder lost its lock: {other:?}"),
        }

        // Stale in database time: taken over; the sensor's input then appears, and the run
        // must not record its sensor's success (or anything else).
        take_over(&mut db, &job, run.id(), 424242);
        std::fs::create_dir_all(dir.path().join(format!("data/go/dt={DATE}"))).unwrap();
        let err = wait_end(&mut run, dir.path(), Duration::from_secs(60));
        let want = format!(
            "lost the run lock for job {job} date {DATE} to run 424242 on host other-host (pid 4711) at "
        );
        assert!(
            err.contains(&want) && err.contains("; stopping"),
            "{store:?}: {err}"
        );
        let d = db.run(run_id).unwrap().unwrap();
        assert_eq!(d.run.status.as_str(), "running", "{store:?}: {d:?}");
        assert!(
            d.tasks.iter().all(|t| t.task.status.as_str() == "running"),
            "{store:?}: recorded after losing the lock: {:?}",
            d.tasks
        );
        assert!(d.events.is_empty(), "{store:?}: {:?}", d.events);
        assert!(published(dir.path()).is_empty());
        // The lock still belongs to the thief.
        assert_eq!(
            db.lock_holder(&job, DATE).unwrap().unwrap().run_id,
            Some(424242)
        );
    }
}

/// A run taken over while training stops its trainer (its whole process group), records
/// nothing more and publishes nothing.
#[test]
fn a_run_taken_over_while_training_kills_its_children_and_publishes_nothing() {
    for store in metastores() {
        let dir = tempfile::tempdir().unwrap();
        gen_events(dir.path());
        let job = unique_job("train");
        let spec = write_spec(
            dir.path(),
            &job,
            3000,
            "lock_stale_seconds = 4\nterm_grace_seconds = 2\n",
        );
        let mut run = spawn_run(dir.path(), &spec, &store, &[]);
        let mut db = open_store(dir.path(), &store);
        let h = wait_for_holder(&mut db, &job, &mut run, dir.path());
        let run_id = h.run_id.unwrap();
        // Wait until training has checkpointed (the trainer is running).
        let ckpt = dir.path().join(format!(
            ".kiln/staging/{job}/{DATE}/model/checkpoints/latest"
        ));
        let t = Instant::now();
        while !ckpt.exists() {
            assert!(
                run.try_wait().unwrap().is_none(),
                "{store:?}: kiln run ended early: {}",
                std::fs::read_to_string(dir.path().join("run.err")).unwrap_or_default()
            );
            assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint");
            std::thread::sleep(Duration::from_millis(50));
        }
        let needle = format!("{} --date", spec.display());
        assert!(
            !processes_mentioning(&format!("train {needle}")).is_empty(),
            "{store:?}: no trainer running"
        );
        take_over(&mut db, &job, run.id(), 434343);
        let err = wait_end(&mut run, dir.path(), Duration::from_secs(60));
        assert!(
            err.contains(&format!(
                "lost the run lock for job {job} date {DATE} to run 434343 on host other-host (pid 4711) at "
            )),
            "{store:?}: {err}"
        );
        // No child survives (trainer and its workers).
        let t = Instant::now();
        while !processes_mentioning(&needle).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{store:?}: survivors: {:?}",
                processes_mentioning(&needle)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(published(dir.path()).is_empty(), "{store:?}");
        let d = db.run(run_id).unwrap().unwrap();
        assert_eq!(d.run.status.as_str(), "running", "{store:?}");
        let train = d
            .tasks
            .iter()
            .find(|t| t.task.name.to_string() == "train")
            .expect("train task recorded");
        assert_eq!(
            train.task.status.as_str(),
            "running",
            "{store:?}: {train:?}"
        );
        assert!(
            !d.tasks.iter().any(
                |t| ["evaluate", "gate", "publish"].contains(&t.task.name.to_string().as_str())
            ),
            "{store:?}: {:?}",
            d.tasks
        );
    }
}
