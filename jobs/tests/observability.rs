//! What the pipeline did, seen by the real tools: `kiln train`'s TensorBoard event files
//! loaded by TensorBoard's own `EventAccumulator` (`scripts/peers/tensorboard_check.py`), and
//! the `--metrics-textfile` files of `kiln train`, `kiln features` and `kiln run` checked by
//! Prometheus' `promtool check metrics`.
//!
//! Policy for the peers (as for moto): `KILN_TEST_FAST=1` skips them; a missing tool skips
//! (printing why) unless `CI=true`, where it fails. `bash scripts/test.sh` installs both
//! (tensorboard into its venv from `scripts/requirements-test.txt`, promtool from Debian's
//! `prometheus` package).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::prom::{Prometheus, http_get, promtool_check, sample};

use common::training::{json_of, write_config, write_dataset};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `None` (after printing why) when the test should skip; panics under `CI=true`.
fn skip_or_fail(what: &str, detail: &str) -> Option<PathBuf> {
    assert!(
        !ci(),
        "{what} is not available ({detail}) and CI=true, so this test must run: \
         `bash scripts/test.sh` installs it"
    );
    eprintln!("skipping: {what} is not available ({detail}); `bash scripts/test.sh` installs it");
    None
}

fn fast() -> bool {
    if std::env::var("KILN_TEST_FAST").as_deref() == Ok("1") {
        eprintln!("KILN_TEST_FAST=1: skipping (it needs a Python or Prometheus peer)");
        return true;
    }
    false
}

/// A Python that imports tensorboard: the test venv's (`$KILN_CACHE/venv`, default
/// `~/.cache/kiln/venv`), else `python3` on `PATH`.
fn tensorboard_python() -> Option<PathBuf> {
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
            .args([
                "-c",
                "import tensorboard.backend.event_processing.event_accumulator",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    skip_or_fail("tensorboard", "no Python with `import tensorboard`")
}

/// `(step, loss)` of every `step N/T  loss X ...` line `kiln train` printed.
fn logged_losses(stderr: &str) -> Vec<(u64, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            let (step, rest) = rest.split_once('/')?;
            let loss = rest.split_once("loss ")?.1.split_whitespace().next()?;
            Some((step.parse().ok()?, loss.parse().ok()?))
        })
        .collect()
}

#[test]
fn tensorboard_reads_the_event_files_and_promtool_the_train_metrics() {
    if fast() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 6_000);
    let cfg = write_config(dir.path(), 60, 0);
    let model = dir.path().join("model");
    let prom = dir.path().join("train.prom");
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--json", "--model-dir"])
        .arg(&model)
        .arg("--metrics-textfile")
        .arg(&prom)
        .output()
        .unwrap();
    let v = json_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let losses = logged_losses(&stderr);
    assert_eq!(
        losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        [10, 20, 30, 40, 50, 60],
        "{stderr}"
    );

    // The metrics textfile: promtool-clean, and the values of the run.
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(!dir.path().join("train.prom.tmp").exists());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("metrics.json")).unwrap()).unwrap();
    let l = "{kiln_job=\"train\"}";
    assert_eq!(sample(&text, &format!("kiln_train_success{l}")), 1.0);
    assert_eq!(
        sample(&text, &format!("kiln_train_eval_auc{l}")),
        metrics["auc"].as_f64().unwrap()
    );
    assert_eq!(
        sample(&text, &format!("kiln_train_eval_log_loss{l}")),
        metrics["logloss"].as_f64().unwrap()
    );
    assert_eq!(
        sample(&text, &format!("kiln_train_loss{l}")),
        v["train_loss"].as_f64().unwrap()
    );
    assert_eq!(sample(&text, &format!("kiln_train_steps{l}")), 60.0);
    assert!(sample(&text, &format!("kiln_train_duration_seconds{l}")) > 0.0);
    assert!(sample(&text, &format!("kiln_train_examples_per_second{l}")) > 0.0);
    promtool_check(&prom.display().to_string(), &text);

    // The event file, loaded by TensorBoard.
    let Some(python) = tensorboard_python() else {
        return;
    };
    let expected = dir.path().join("expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({
            "steps": losses.iter().map(|l| l.0).collect::<Vec<_>>(),
            "loss": losses.iter().map(|l| l.1).collect::<Vec<_>>(),
            "final_loss": v["train_loss"],
            "final_step": v["steps"],
        })
        .to_string(),
    )
    .unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/peers/tensorboard_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&model)
        .arg(&expected)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failed_train_writes_its_outcome() {
    if fast() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 10, 0);
    let prom = dir.path().join("train.prom");
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--data",
            dir.path().join("no-such-dataset").to_str().unwrap(),
        ])
        .args(["--model-dir", dir.path().join("m").to_str().unwrap()])
        .arg("--metrics-textfile")
        .arg(&prom)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(sample(&text, "kiln_train_success{kiln_job=\"train\"}"), 0.0);
    assert!(!text.contains("kiln_train_eval_auc"), "{text}");
    promtool_check(&prom.display().to_string(), &text);
}

/// The example job, small: 4 shards, a small model, 20 steps; a gate every model passes.
fn small_spec(dir: &Path) -> PathBuf {
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
        .replace(
            "batch_size = 1024\nepochs = 1",
            "batch_size = 256\nsteps = 20\nlog_every = 10",
        );
    assert!(spec.contains("steps = 20"), "example [train] changed");
    let p = dir.join("job.toml");
    std::fs::write(
        &p,
        format!("{spec}\n[pipeline]\n[pipeline.gate]\nrules = [\"auc >= 0.0\"]\n"),
    )
    .unwrap();
    p
}

#[test]
fn features_and_run_write_promtool_clean_metrics() {
    if fast() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::gen_events(&dir.path().join("data/events"), 20_000, 7);
    let spec = small_spec(dir.path());
    let s = spec.to_str().unwrap();

    // --quiet: no progress lines, only the result.
    let quiet = common::kiln(&[
        "--quiet",
        "features",
        s,
        "--date",
        "2026-11-20",
        "--out",
        dir.path().join("quiet").to_str().unwrap(),
    ]);
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");

    let prom = dir.path().join("features.prom");
    let out = common::kiln(&[
        "features",
        s,
        "--date",
        "2026-11-20",
        "--metrics-textfile",
        prom.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool_check(&prom.display().to_string(), &text);
    assert_eq!(
        sample(&text, "kiln_features_success{kiln_job=\"daily_ctr\"}"),
        1.0
    );
    let rows = sample(
        &text,
        "kiln_features_output_rows_total{kiln_job=\"daily_ctr\",output=\"examples\"}",
    );
    assert!(rows > 0.0, "{text}");
    // Not a terminal: a plain progress line per output when it is written, counts that match
    // the metrics.
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kiln features: `examples` written: "))
        .unwrap_or_else(|| panic!("no progress line in {stderr}"));
    assert!(
        line.contains(&format!(": {rows} rows, 4/4 shards written, ")),
        "{line}"
    );
    assert!(
        sample(
            &text,
            "kiln_features_output_bytes_total{kiln_job=\"daily_ctr\",output=\"examples\"}"
        ) > 0.0
    );

    let prom = dir.path().join("run.prom");
    let out = common::kiln_ok(&[
        "run",
        s,
        "--date",
        "2026-11-20",
        "--json",
        "--metrics-textfile",
        prom.to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool_check(&prom.display().to_string(), &text);
    let l = "{kiln_job=\"daily_ctr\"}";
    assert_eq!(sample(&text, &format!("kiln_run_success{l}")), 1.0);
    assert_eq!(
        sample(&text, &format!("kiln_run_published_model_version{l}")),
        summary["model_version"].as_f64().unwrap()
    );
    assert_eq!(
        sample(
            &text,
            "kiln_run_task_status{kiln_job=\"daily_ctr\",task=\"publish\",status=\"success\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &text,
            "kiln_run_task_duration_seconds{kiln_job=\"daily_ctr\",task=\"train\"}"
        ) > 0.0
    );
    // The published version carries the run's TensorBoard logs, listed in SHA256SUMS.
    let version = summary["model_path"].as_str().unwrap();
    let sums = std::fs::read_to_string(Path::new(version).join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  logs/events.out.tfevents."), "{sums}");
    common::kiln_ok(&["models", "verify", s]);
}

#[test]
fn schedule_serves_metrics() {
    if fast() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A daily cron at midnight: today's run is due at once, the next one tomorrow. Its sensor
    // never sees its path, so the run fails within a second.
    let spec = small_spec(dir.path());
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str(
        "[pipeline.schedule]\ncron = \"0 0 0 * * *\"\ntimezone = \"UTC\"\n\
         [[pipeline.sensors]]\nname = \"never\"\npath = \"data/nothing/dt={{ ds }}/\"\n\
         poke_seconds = 0.2\ntimeout_seconds = 1\n",
    );
    std::fs::write(&spec, text).unwrap();
    let mut child = Command::new(KILN)
        .arg("schedule")
        .arg(&spec)
        .args(["--metrics-bind", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let child = Kill(child);
    // The address, from "kiln schedule: metrics at http://ADDR/metrics"; the rest of stderr
    // is drained on a thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(a) = line.strip_prefix("kiln schedule: metrics at http://") {
                let _ = tx.send(a.trim_end_matches("/metrics").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("kiln schedule printed its metrics address");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = loop {
        let body = http_get(&addr, "/metrics").unwrap_or_default();
        if body.contains("kiln_schedule_next_run_timestamp_seconds") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no run finished within 60 s; /metrics:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let l = "{kiln_job=\"daily_ctr\"}";
    assert_eq!(
        sample(&body, &format!("kiln_schedule_runs_started_total{l}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("kiln_schedule_runs_failed_total{l}")),
        1.0
    );
    assert_eq!(sample(&body, &format!("kiln_run_success{l}")), 0.0);
    assert_eq!(
        sample(
            &body,
            "kiln_run_task_status{kiln_job=\"daily_ctr\",task=\"sensor:never\",status=\"failed\"}"
        ),
        1.0
    );
    let next = sample(
        &body,
        &format!("kiln_schedule_next_run_timestamp_seconds{l}"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(next > now && next <= now + 86_400.0, "{next} vs {now}");
    // Nothing succeeded: the daily data has been overdue since today's midnight fire.
    let since_midnight = now - (now / 86_400.0).floor() * 86_400.0;
    let lag = sample(&body, &format!("kiln_schedule_lag_seconds{l}"));
    assert!(
        (lag - since_midnight).abs() < 120.0,
        "lag {lag} s, midnight {since_midnight} s ago"
    );
    promtool_check("kiln schedule's /metrics", &body);

    // A real Prometheus scrapes it: the target is up and the samples arrive as served.
    let Some(prometheus) = Prometheus::start(&[&addr], dir.path()) else {
        return;
    };
    let up = prometheus.wait_for("up{job=\"kiln\"}", |r| r.len() == 1 && r[0].1 == 1.0);
    assert_eq!(up[0].0["instance"], addr.as_str(), "{up:?}");
    let failed = prometheus.wait_for("kiln_schedule_runs_failed_total", |r| !r.is_empty());
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0["kiln_job"], "daily_ctr");
    assert_eq!(failed[0].1, 1.0);
    let sensor = prometheus.query("kiln_run_task_status{status=\"failed\"}");
    assert_eq!(sensor.len(), 1, "{sensor:?}");
    assert_eq!(sensor[0].0["task"], "sensor:never");
    let scraped_next = prometheus.query("kiln_schedule_next_run_timestamp_seconds");
    assert_eq!(scraped_next.len(), 1, "{scraped_next:?}");
    assert_eq!(scraped_next[0].1, next);
    // The lag is computed on each scrape: it grows between two of them.
    let first = prometheus.wait_for("kiln_schedule_lag_seconds", |r| r.len() == 1)[0].1;
    prometheus.wait_for("kiln_schedule_lag_seconds", |r| {
        r.len() == 1 && r[0].1 > first
    });
    drop(child);
}
