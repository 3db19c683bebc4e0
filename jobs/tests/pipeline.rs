//! End-to-end tests of the daily pipeline (`kiln run`, `backfill`, `schedule`, `runs`,
//! `models`) driving the real binary on small generated click logs: a copy of the example
//! job with a small model and few training steps.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::pipeline::{gen_events_seeded, hook, write_spec};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(KILN);
    c.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KILN_METASTORE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("kiln runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json_line(o: &Output) -> Json {
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .unwrap_or_else(|| panic!("no JSON on stdout\n{}", text(o)));
    serde_json::from_str(line).unwrap()
}

fn ok_json(args: &[&str]) -> Json {
    let o = kiln(args, &[]);
    assert!(o.status.success(), "kiln {args:?} failed\n{}", text(&o));
    json_line(&o)
}

/// 11 days of events ending 2026-11-22: run dates 2026-11-19 ..= 2026-11-21 are complete.
fn gen_events(dir: &Path) {
    gen_events_seeded(dir, 7);
}

fn versions(repo: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(repo)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn labels(repo: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(repo.join("labels.json")).unwrap()).unwrap()
}

fn task<'a>(summary: &'a Json, name: &str) -> &'a Json {
    summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {summary}"))
}

const GATE: &str = r#"
keep_versions = 3
[pipeline.gate]
rules = ["auc >= 0.5", "logloss <= 1.0", "logloss <= stable * 1.5"]
"#;

#[test]
fn daily_runs_publish_reject_rollback_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    gen_events(dir.path());
    let h = hook(0);
    let pipeline = format!(
        "{GATE}[pipeline.alerts]\nwebhook = \"{}\"\n[[pipeline.sensors]]\nname = \"next_day\"\npath = \"data/events/dt={{{{ ds | add_days(1) }}}}/\"\npoke_seconds = 1\ntimeout_seconds = 5\n",
        h.url
    );
    let spec = write_spec(dir.path(), 30, "0.01", &pipeline);
    let s = spec.to_str().unwrap();
    let repo = dir.path().join("models/daily_ctr");

    // Two consecutive dates publish versions 1 and 2 (backfill runs them in order).
    let o = kiln(
        &[
            "backfill",
            s,
            "--from",
            "2026-11-19",
            "--to",
            "2026-11-20",
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<Json> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (l, v) in lines.iter().zip([1, 2]) {
        assert_eq!(l["status"], "success", "{l}");
        assert_eq!(l["model_version"], v);
        assert_eq!(task(l, "sensor:next_day")["status"], "success");
        assert_eq!(task(l, "publish")["output"]["label"], "stable");
    }
    assert_eq!(lines[1]["gate"]["stable_version"], 1);
    assert_eq!(versions(&repo), [1, 2]);
    assert_eq!(labels(&repo)["stable"], 2);
    for v in ["1", "2"] {
        let d = repo.join(v);
        for f in [
            "SHA256SUMS",
            "model.json",
            "metrics.json",
            "lineage.json",
            "deep.bpk",
        ] {
            assert!(d.join(f).is_file(), "{}/{f}", d.display());
        }
        assert!(!d.join("checkpoints").exists());
    }
    // Backfill again: both dates are done.
    let o = kiln(
        &["backfill", s, "--from", "2026-11-19", "--to", "2026-11-20"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr)
            .matches("already done")
            .count(),
        2,
        "{}",
        text(&o)
    );

    // The same date again through `kiln run`: every task is skipped, no new version.
    let again = ok_json(&["run", s, "--date", "2026-11-20", "--json"]);
    assert_eq!(again["status"], "success");
    for t in again["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "skipped", "{t}");
    }
    assert_eq!(versions(&repo), [1, 2]);

    // A deliberately bad model (absurd learning rate) is rejected; stable stays at 2.
    let spec_bad = write_spec(dir.path(), 30, "1000000.0", &pipeline);
    let bad = ok_json(&[
        "run",
        spec_bad.to_str().unwrap(),
        "--date",
        "2026-11-21",
        "--json",
    ]);
    assert_eq!(bad["status"], "rejected", "{bad}");
    assert_eq!(bad["model_version"], 3);
    assert_eq!(task(&bad, "publish")["output"]["status"], "rejected");
    let failed: Vec<&Json> = bad["gate"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "fail")
        .collect();
    assert!(!failed.is_empty(), "{bad}");
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("rule `") && detail.contains("failed: "),
        "{detail}"
    );
    let l = labels(&repo);
    assert_eq!(l["stable"], 2);
    assert_eq!(l["rejected"], serde_json::json!([3]));
    // The rejection alert reached the webhook.
    let bodies = h.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["kind"], "rejected");
    assert_eq!(bodies[0]["date"], "2026-11-21");
    assert_eq!(bodies[0]["model_version"], 3);
    assert_eq!(bodies[0]["stable_version"], 2);
    assert!(
        bodies[0]["gate_failures"][0]
            .as_str()
            .unwrap()
            .starts_with("rule `")
    );
    let o = kiln(&["models", "promote", s, "3"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("rejected by the gate"), "{}", text(&o));

    // Rollback moves stable back to 1.
    let o = kiln(&["models", "rollback", s], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("stable 2 -> 1"), "{}", text(&o));
    assert_eq!(labels(&repo)["stable"], 1);
    let o = kiln(&["models", "verify", s], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("ok (").count(), 3, "{}", text(&o));

    // A good model for 2026-11-21 (spec changed back: training reruns, features are reused)
    // becomes version 4 and stable; retention (3 newest + labelled) prunes version 1.
    write_spec(dir.path(), 30, "0.01", &pipeline);
    let good = ok_json(&["run", s, "--date", "2026-11-21", "--json"]);
    assert_eq!(good["status"], "success", "{good}");
    assert_eq!(task(&good, "features")["status"], "skipped");
    assert_eq!(task(&good, "train")["status"], "success");
    assert_eq!(good["model_version"], 4);
    assert_eq!(good["gate"]["stable_version"], 1);
    assert_eq!(
        task(&good, "publish")["output"]["pruned"],
        serde_json::json!([1])
    );
    assert_eq!(versions(&repo), [2, 3, 4]);
    assert_eq!(labels(&repo)["stable"], 4);

    // Tampering is caught by verify.
    std::fs::write(repo.join("2/metrics.json"), "{}").unwrap();
    let o = kiln(&["models", "verify", repo.to_str().unwrap(), "2"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("SHA-256 mismatch"), "{}", text(&o));

    // The metadata store has every run, its tasks, attempts, logs and lineage.
    let runs = ok_json(&["runs", "list", "--spec", s, "--json"]);
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["success", "rejected", "success", "success", "success"]
    );
    let id = runs[1]["id"].as_i64().unwrap().to_string();
    let show = ok_json(&["runs", "show", &id, "--spec", s, "--json"]);
    assert_eq!(show["status"], "rejected");
    assert_eq!(show["model_version"], 3);
    assert_eq!(show["kiln_version"], env!("CARGO_PKG_VERSION"));
    assert!(show["lineage"]["examples_manifest_sha256"].is_string());
    assert!(show["hyperparams"]["steps"] == 30);
    assert!(show["metrics"]["auc"].is_number() || show["metrics"]["auc"].is_null());
    assert!(
        show["events"][0]["message"]
            .as_str()
            .unwrap()
            .contains("alert delivered")
    );
    let train = show["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "train")
        .unwrap();
    let log = train["attempt_log"][0]["log_path"].as_str().unwrap();
    assert!(Path::new(log).is_file(), "{log}");
    let o = kiln(&["runs", "show", &id, "--spec", s], &[]);
    assert!(text(&o).contains("gate          rule `"), "{}", text(&o));
}

/// Whether two JSON numbers agree within 1e-9 (or are both null).
fn close(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9,
        _ => a.is_null() && b.is_null(),
    }
}

#[test]
fn the_gate_scores_the_stable_model_on_todays_held_out_rows() {
    let dir = tempfile::tempdir().unwrap();
    gen_events(dir.path());
    let pipeline = "keep_versions = 3\n[pipeline.gate]\nrules = [\"auc >= 0.5\", \"logloss <= stable * 1.5\", \"auc >= stable - 0.5\"]\n";
    let spec = write_spec(dir.path(), 30, "0.01", pipeline);
    let s = spec.to_str().unwrap();
    let repo = dir.path().join("models/daily_ctr");

    // Day 1 publishes version 1, the stable one; there was nothing to compare with.
    let day1 = ok_json(&["run", s, "--date", "2026-11-19", "--json"]);
    assert_eq!(day1["status"], "success", "{day1}");
    assert_eq!(day1["model_version"], 1);
    assert!(day1["gate"]["stable"].is_null(), "{day1}");
    assert_eq!(day1["gate"]["rules"][1]["outcome"], "skipped");
    assert_eq!(labels(&repo)["stable"], 1);

    // Day 2's events come from another seed: other users, items and clicks.
    std::fs::remove_dir_all(dir.path().join("data/events")).unwrap();
    gen_events_seeded(dir.path(), 11);
    let day2 = ok_json(&["run", s, "--date", "2026-11-20", "--json"]);
    assert_eq!(day2["model_version"], 2, "{day2}");
    let gate = &day2["gate"];
    assert_eq!(gate["stable_version"], 1, "{gate}");
    assert_eq!(gate["stable"]["version"], 1, "{gate}");
    assert!(gate["stable"]["error"].is_null(), "{gate}");
    let candidate = &task(&day2, "evaluate")["output"]["metrics"];
    assert_eq!(&gate["candidate"], candidate);
    let recorded: Json =
        serde_json::from_slice(&std::fs::read(repo.join("1/metrics.json")).unwrap()).unwrap();
    assert_eq!(gate["stable"]["recorded"], recorded);

    // The gate's figures for version 1 are what `kiln predict --eval-split` gives for it on
    // day 2's examples: the candidate's held-out rows.
    let rescored = &gate["stable"]["rescored"];
    let examples = task(&day2, "features")["output"]["examples"]
        .as_str()
        .unwrap();
    let mine = ok_json(&[
        "predict",
        repo.join("1").to_str().unwrap(),
        "--input",
        examples,
        "--eval-split",
        "--json",
    ]);
    for k in [
        "rows",
        "auc",
        "logloss",
        "accuracy",
        "mean_prediction",
        "mean_label",
    ] {
        assert!(
            close(&rescored[k], &mine["metrics"][k]),
            "{k}: gate {} vs kiln predict {}",
            rescored[k],
            mine["metrics"][k]
        );
    }
    assert_eq!(rescored["rows"], candidate["rows"]);
    // Day 1's rows and day 2's give version 1 other figures: what it recorded on its own
    // day is not what it scores on the candidate's rows.
    assert_ne!(rescored["rows"], recorded["rows"]);
    assert!(
        !close(&rescored["logloss"], &recorded["logloss"]),
        "{rescored} vs {recorded}"
    );
    // The relative rules compared with the re-scored figures.
    let rule = &gate["rules"][1];
    assert_eq!(rule["rule"], "logloss <= stable * 1.5");
    assert!(close(&rule["stable_value"], &rescored["logloss"]), "{rule}");
    assert!(
        (rule["threshold"].as_f64().unwrap() - 1.5 * rescored["logloss"].as_f64().unwrap()).abs()
            <= 1e-12,
        "{rule}"
    );
    assert!(
        close(&rule["stable_recorded_value"], &recorded["logloss"]),
        "{rule}"
    );
    let detail = rule["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "(stable v1 logloss {:.6} on the same rows; {:.6} on its own day's)",
            rescored["logloss"].as_f64().unwrap(),
            recorded["logloss"].as_f64().unwrap()
        )),
        "{detail}"
    );

    // The run record holds the same, and `kiln runs show` prints both sides.
    let runs = ok_json(&["runs", "list", "--spec", s, "--json"]);
    assert_eq!(runs[0]["run_date"], "2026-11-20", "{runs}");
    let id = runs[0]["id"].as_i64().unwrap().to_string();
    let show = ok_json(&["runs", "show", &id, "--spec", s, "--json"]);
    assert_eq!(show["gate"]["stable"], gate["stable"]);
    let o = kiln(&["runs", "show", &id, "--spec", s], &[]);
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "gate          candidate on today's held-out rows: rows {}, auc",
            candidate["rows"]
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "gate          stable v1 on the same rows: rows {}, auc {:.6}, logloss {:.6}",
            rescored["rows"],
            rescored["auc"].as_f64().unwrap(),
            rescored["logloss"].as_f64().unwrap()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "gate          stable v1 as recorded on its own day's rows: rows {}",
            recorded["rows"]
        )),
        "{t}"
    );

    // Day 3's examples lose a column the stable version reads: the gate reports it, naming
    // the version and the column, and the rules on `stable` fail (not skipped, no crash).
    let stable = labels(&repo)["stable"].as_u64().unwrap();
    let text3 = std::fs::read_to_string(&spec).unwrap();
    let without = text3
        .replace("v.price, v.dwell_ms,", "v.price,")
        .replace("\"price\", \"dwell_ms\",", "\"price\",");
    assert!(
        !without.contains("v.dwell_ms") && !without.contains("\"dwell_ms\""),
        "example spec changed"
    );
    std::fs::write(&spec, without).unwrap();
    let day3 = ok_json(&["run", s, "--date", "2026-11-21", "--json"]);
    assert_eq!(day3["status"], "rejected", "{day3}");
    let gate = &day3["gate"];
    assert_eq!(gate["stable"]["version"], stable, "{gate}");
    assert!(gate["stable"]["rescored"].is_null(), "{gate}");
    let why = gate["stable"]["error"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "stable version {stable}'s transform cannot read today's examples: column `dwell_ms`: not in the dataset"
        )),
        "{why}"
    );
    let outcomes: Vec<&str> = gate["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["pass", "fail", "fail"], "{gate}");
    assert!(
        gate["rules"][1]["detail"].as_str().unwrap().contains(why),
        "{gate}"
    );
    assert_eq!(labels(&repo)["stable"], stable);
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

#[test]
fn kill_9_during_training_then_rerun_resumes_and_publishes_once() {
    let dir = tempfile::tempdir().unwrap();
    gen_events(dir.path());
    let spec = write_spec(dir.path(), 400, "0.01", "workers = 2\nkeep_versions = 3\n");
    let s = spec.to_str().unwrap();
    let repo = dir.path().join("models/daily_ctr");
    let ckpt = dir
        .path()
        .join(".kiln/staging/daily_ctr/2026-11-20/model/checkpoints/latest");

    // Watch the repository the whole time: an integer directory must always be complete.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (repo, stop) = (repo.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                for v in versions(&repo) {
                    let d = repo.join(v.to_string());
                    let sums = std::fs::read_to_string(d.join("SHA256SUMS"))
                        .unwrap_or_else(|_| panic!("version {v} visible without SHA256SUMS"));
                    for line in sums.lines() {
                        let f = line.split_once("  ").unwrap().1;
                        assert!(d.join(f).is_file(), "version {v} visible without {f}");
                    }
                    seen += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };

    // The same overrides as `kiln features`, on both runs.
    let events = dir.path().join("data/events");
    let source = format!("events={}", events.display());
    let out_dir = dir.path().join("elsewhere");
    let out = out_dir.to_str().unwrap();
    let run_args = [
        "run",
        s,
        "--date",
        "2026-11-20",
        "--source",
        source.as_str(),
        "--out",
        out,
        "--json",
    ];
    let mut child = Command::new(KILN)
        .args(run_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !ckpt.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no training checkpoint"
        );
        assert!(child.try_wait().unwrap().is_none(), "kiln run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: no chance to clean up. Its children die with it (PR_SET_PDEATHSIG).
    let pid = child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let needle = dir.path().to_str().unwrap().to_string();
    let t = Instant::now();
    while !processes_mentioning(&needle).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "orphans: {:?}",
            processes_mentioning(&needle)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(versions(&repo).is_empty());

    // The same command again: features skipped, training resumes, one version appears.
    let again = ok_json(&run_args);
    assert_eq!(again["status"], "success", "{again}");
    assert_eq!(task(&again, "features")["status"], "skipped");
    assert_eq!(
        task(&again, "features")["output"]["examples"],
        format!("file://{out}/examples/")
    );
    let train = task(&again, "train");
    assert_eq!(train["status"], "success");
    let start = train["output"]["start_step"].as_u64().unwrap();
    assert!(start >= 10, "resumed at step {start}");
    assert_eq!(train["output"]["steps"], 400);
    assert_eq!(train["output"]["workers"], 2);
    assert_eq!(again["model_version"], 1);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 0);
    assert_eq!(versions(&repo), [1]);
    let leftovers: Vec<String> = std::fs::read_dir(&repo)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            (n.starts_with(".tmp") || n.starts_with(".trash")).then_some(n)
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let show = ok_json(&[
        "runs",
        "show",
        &again["run_id"].to_string(),
        "--spec",
        s,
        "--json",
    ]);
    let train_record = show["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "train")
        .unwrap();
    let log = std::fs::read_to_string(train_record["attempt_log"][0]["log_path"].as_str().unwrap())
        .unwrap();
    assert!(log.contains(&format!("resuming at step {start}")), "{log}");
    // The killed run is recorded as abandoned, not left running.
    let runs = ok_json(&["runs", "list", "--spec", s, "--json"]);
    assert_eq!(runs[1]["status"], "failed", "{runs}");
    assert!(
        runs[1]["error"].as_str().unwrap().contains("abandoned"),
        "{runs}"
    );
}

/// A spec whose sensor waits for a partition that never comes.
fn waiting_spec(dir: &Path, extra: &str) -> PathBuf {
    write_spec(
        dir,
        10,
        "0.01",
        &format!(
            "{extra}\n[[pipeline.sensors]]\nname = \"never\"\npath = \"data/nothing/dt={{{{ ds }}}}/\"\npoke_seconds = 0.2\ntimeout_seconds = 3\n"
        ),
    )
}

/// Both backends: the default SQLite file, and PostgreSQL when configured.
fn metastores() -> Vec<Option<String>> {
    let mut v = vec![None];
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => v.push(Some(u)),
        _ if std::env::var("CI").is_ok_and(|c| c == "true") => {
            panic!("CI=true but KILN_TEST_POSTGRES_URL is not set")
        }
        _ => eprintln!("note: KILN_TEST_POSTGRES_URL not set; PostgreSQL lock test skipped"),
    }
    v
}

#[test]
fn two_runs_of_the_same_job_and_date_one_refuses() {
    for store in metastores() {
        let dir = tempfile::tempdir().unwrap();
        // A unique job name per backend run: the PostgreSQL database is shared.
        let spec = waiting_spec(dir.path(), "");
        let name = format!("lock_{}", std::process::id());
        let text_spec = std::fs::read_to_string(&spec).unwrap().replacen(
            "name = \"daily_ctr\"",
            &format!("name = \"{name}\""),
            1,
        );
        std::fs::write(&spec, text_spec).unwrap();
        let s = spec.to_str().unwrap();
        let spawn = || {
            let mut c = Command::new(KILN);
            c.args(["run", s, "--date", "2026-11-20"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            match &store {
                Some(u) => c.env("KILN_METASTORE", u),
                None => c.env_remove("KILN_METASTORE"),
            };
            c.spawn().unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let (refused, ran): (Vec<&Output>, Vec<&Output>) = [&a, &b]
            .into_iter()
            .partition(|o| String::from_utf8_lossy(&o.stderr).contains("is already running"));
        assert_eq!(
            (refused.len(), ran.len()),
            (1, 1),
            "{store:?}\nA: {}\nB: {}",
            text(&a),
            text(&b)
        );
        let msg = String::from_utf8_lossy(&refused[0].stderr).to_string();
        assert!(!refused[0].status.success());
        assert!(
            msg.contains(&format!(
                "{name} 2026-11-20 is already running: lock held by pid"
            )) && msg.contains("refusing to start a second run"),
            "{msg}"
        );
        // The other one ran (and failed at its sensor after 3 s), then released the lock.
        let e = String::from_utf8_lossy(&ran[0].stderr);
        assert!(
            e.contains("sensor `never`") && e.contains("did not appear within 3 s"),
            "{e}"
        );
        let mut c = Command::new(KILN);
        c.args(["run", s, "--date", "2026-11-20"])
            .env("RUST_LOG", "warn");
        if let Some(u) = &store {
            c.env("KILN_METASTORE", u);
        }
        let third = c.output().unwrap();
        assert!(
            !String::from_utf8_lossy(&third.stderr).contains("is already running"),
            "{}",
            text(&third)
        );
    }
}

#[test]
fn failure_alert_is_posted_with_retries_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let h = hook(1);
    let spec = waiting_spec(
        dir.path(),
        &format!(
            "[pipeline.alerts]\nwebhook = \"{}\"\nretries = 2\nbackoff_seconds = 0.1\ntimeout_seconds = 5\n",
            h.url
        ),
    );
    let s = spec.to_str().unwrap();
    let o = kiln(&["run", s, "--date", "2026-11-20", "--json"], &[]);
    assert!(!o.status.success());
    let summary = json_line(&o);
    assert_eq!(summary["status"], "failed");
    assert_eq!(task(&summary, "features")["status"], "upstream_failed");
    assert!(
        summary["alert"]
            .as_str()
            .unwrap()
            .contains("(HTTP 200) after 2 attempt(s)"),
        "{summary}"
    );
    assert_eq!(*h.hits.lock().unwrap(), 2);
    let body = h.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["kind"], "failure");
    assert_eq!(body["job"], "daily_ctr");
    assert_eq!(body["date"], "2026-11-20");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["failed_task"], "sensor:never");
    assert_eq!(body["run_id"], summary["run_id"]);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("data/nothing/dt=2026-11-20")
    );
    assert_eq!(body["kiln_version"], env!("CARGO_PKG_VERSION"));
    // Recorded in the run's log and in the metadata store.
    let log =
        std::fs::read_to_string(Path::new(summary["log_dir"].as_str().unwrap()).join("run.log"))
            .unwrap();
    assert!(log.contains("alert payload: {"), "{log}");
    assert!(log.contains("alert delivered to"), "{log}");
    let show = ok_json(&[
        "runs",
        "show",
        &summary["run_id"].to_string(),
        "--spec",
        s,
        "--json",
    ]);
    assert_eq!(show["events"][0]["kind"], "alert");
    assert_eq!(show["tasks"][0]["name"], "sensor:never");
    assert_eq!(show["tasks"][0]["status"], "failed");
}

/// Every file under `dir` (recursively) as lossy text, with its path.
fn files_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_text(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&b).into_owned()));
        }
    }
    out
}

#[test]
fn the_webhook_token_is_never_printed_or_stored() {
    const TOKEN: &str = "T0KEN-s3cr3t-9f8e7d";
    let dir = tempfile::tempdir().unwrap();
    let h = hook(1);
    // Delivered after a retry (HTTP 500 first), then unreachable (connection refused).
    let cases = [
        (
            "2026-11-20",
            format!("{}/{TOKEN}?sig={TOKEN}", h.url),
            "alert delivered to http://127.0.0.1:",
        ),
        (
            "2026-11-21",
            format!("http://u:{TOKEN}@127.0.0.1:1/hooks/{TOKEN}?sig={TOKEN}"),
            "alert to http://127.0.0.1:1/… failed after 2 attempt(s)",
        ),
    ];
    for (date, url, want) in cases {
        let spec = waiting_spec(
            dir.path(),
            &format!(
                "[pipeline.alerts]\nwebhook = \"{url}\"\nretries = 1\nbackoff_seconds = 0.1\ntimeout_seconds = 5\n"
            ),
        );
        let s = spec.to_str().unwrap();
        let o = kiln(&["run", s, "--date", date, "--json"], &[]);
        assert!(!o.status.success());
        let all = text(&o);
        assert!(all.contains(want), "{all}");
        assert!(
            !all.contains(TOKEN),
            "the token is on stdout/stderr:\n{all}"
        );
        let summary = json_line(&o);
        assert!(
            summary["alert"].as_str().unwrap().contains("/…"),
            "{summary}"
        );
        // The run log (and every other file of the run) and the metadata store.
        let logs = files_text(Path::new(summary["log_dir"].as_str().unwrap()));
        assert!(logs.iter().any(|(p, _)| p.ends_with("run.log")));
        for (p, t) in logs.iter().chain(&files_text(&dir.path().join(".kiln"))) {
            if p.starts_with(dir.path().join(".kiln/staging")) {
                continue;
            }
            assert!(!t.contains(TOKEN), "the token is in {}:\n{t}", p.display());
        }
        let show = ok_json(&[
            "runs",
            "show",
            &summary["run_id"].to_string(),
            "--spec",
            s,
            "--json",
        ]);
        assert_eq!(show["events"][0]["kind"], "alert");
        assert!(!show.to_string().contains(TOKEN), "{show}");
    }
    assert_eq!(h.bodies.lock().unwrap().len(), 1);
}

#[test]
fn schedule_starts_the_daily_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = waiting_spec(
        dir.path(),
        "[pipeline.schedule]\ncron = \"* * * * * *\"\ntimezone = \"Asia/Tokyo\"\ndate_offset_days = -2\n",
    );
    let s = spec.to_str().unwrap();
    // Override mistakes are reported before anything runs.
    let o = kiln(
        &["run", s, "--date", "2026-11-20", "--source", "evnts=/x"],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown source `evnts`"), "{}", text(&o));
    let plan = ok_json(&["schedule", s, "--dry-run"]);
    assert_eq!(plan["timezone"], "Asia/Tokyo");
    assert_eq!(plan["due_now"].as_array().unwrap().len(), 1);
    assert_eq!(plan["next"].as_array().unwrap().len(), 3);
    let o = kiln(&["schedule", s, "--max-runs", "1"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let runs = ok_json(&["runs", "list", "--spec", s, "--json"]);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["trigger"], "schedule");
    assert_eq!(runs[0]["run_date"], plan["due_now"][0]);
}
