//! Data validation end to end: expectations inferred by `kiln schema infer` from a clean day,
//! a planted drift (device mix) and a planted defect (30% more NULL prices) from
//! `kiln gen events --plant`, each stopping `kiln run` before training with a report naming
//! the column; a clean day passing; `--accept` overriding; the alert and the records.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value as Json;

mod common;
use common::pipeline::{hook, write_spec};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("kiln runs")
}

fn summary(o: &Output) -> Json {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no JSON on stdout\nstderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn task<'a>(s: &'a Json, name: &str) -> &'a Json {
    s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {s}"))
}

fn run(spec: &Path, date: &str, extra: &[&str]) -> (Output, Json) {
    let mut args = vec!["run", spec.to_str().unwrap(), "--date", date, "--json"];
    args.extend(extra);
    let o = kiln(&args);
    let s = summary(&o);
    (o, s)
}

fn manifest(dir: &Path, date: &str) -> Json {
    let p = dir.join(format!("out/daily_ctr/examples/dt={date}/_manifest.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// `(column, check)` of each anomaly of a summary.
fn flagged(s: &Json) -> Vec<(String, String)> {
    s["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["column"].as_str().unwrap_or("@rows").to_string(),
                a["check"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn planted_drift_and_nulls_stop_the_run_a_clean_day_passes_and_accept_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = kiln(&[
        "gen",
        "events",
        "--rows",
        "48000",
        "--days",
        "12",
        "--end-date",
        "2026-11-22",
        "--seed",
        "7",
        "--plant",
        "device-mix@2026-11-20",
        "--plant",
        "null-price@2026-11-21",
        "--out",
        d.join("data/events").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h = hook(0);
    let pipeline = format!(
        "keep_versions = 5\n[pipeline.gate]\nrules = [\"auc >= 0.0\"]\n[pipeline.alerts]\nwebhook = \"{}\"\nretries = 0\ntimeout_seconds = 5\n",
        h.url
    );
    let spec = write_spec(d, 20, "0.01", &pipeline);
    let text = std::fs::read_to_string(&spec).unwrap();

    // Day 1: the example's own expectations, no baseline (nothing committed the day before).
    let (o, s) = run(&spec, "2026-11-18", &[]);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["status"], "success");
    let v = &manifest(d, "2026-11-18")["validation"];
    assert_eq!(v["checks"], 4, "{v}");
    assert_eq!(
        v["skipped"],
        serde_json::json!(["@rows: rows_ratio", "device: drift"])
    );
    assert!(
        v["baseline_missing"]
            .as_str()
            .unwrap()
            .contains("no committed dataset at file://"),
        "{v}"
    );

    // Expectations from that day.
    let day1 = d.join("out/daily_ctr/examples/dt=2026-11-18");
    let expect = d.join("expect.toml");
    let o = kiln(&[
        "schema",
        "infer",
        day1.to_str().unwrap(),
        "--label",
        "label",
        "--out",
        expect.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inferred = std::fs::read_to_string(&expect).unwrap();
    assert!(
        inferred.contains("column = \"device\"")
            && inferred.contains("values = [\"desktop\", \"mobile\", \"tablet\"]")
            && inferred.contains("max_drift = 0.1")
            && inferred.contains("min_rows_ratio = 0.5"),
        "{inferred}"
    );
    let marker = "parquet_compression = \"zstd\"\n";
    assert!(text.contains(marker));
    std::fs::write(
        &spec,
        text.replace(marker, &format!("{marker}expect_file = \"expect.toml\"\n")),
    )
    .unwrap();

    // A clean day passes every check against the previous day.
    let (o, s) = run(&spec, "2026-11-19", &[]);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["status"], "success");
    assert_eq!(task(&s, "validate")["status"], "success");
    assert_eq!(flagged(&s), Vec::<(String, String)>::new());
    let v = &manifest(d, "2026-11-19")["validation"];
    assert!(v["checks"].as_u64().unwrap() > 30, "{v}");
    assert!(
        v["baseline"]
            .as_str()
            .unwrap()
            .ends_with("/out/daily_ctr/examples/dt=2026-11-18/"),
        "{v}"
    );
    assert_eq!(v["skipped"], serde_json::json!([]));

    // The planted device mix: the dataset commits, the run stops before training.
    let (o, s) = run(&spec, "2026-11-20", &[]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("stopped before training")
            && stderr.contains("column `device`: drift expected LInfinity <= 0.1000, found"),
        "{stderr}"
    );
    assert_eq!(s["status"], "anomalies");
    assert_eq!(task(&s, "features")["status"], "success");
    assert_eq!(task(&s, "validate")["status"], "failed");
    assert_eq!(task(&s, "validate")["attempts"], 1, "no retries");
    assert_eq!(task(&s, "train")["status"], "upstream_failed");
    assert!(s["model_version"].is_null());
    // Flagged by the example's bound (0.2) and by the inferred one (0.1).
    let drift_of_device = ("device".to_string(), "drift".to_string());
    assert_eq!(flagged(&s), [drift_of_device.clone(), drift_of_device]);
    let drift: f64 = s["anomalies"][0]["actual"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(drift > 0.3, "tablet share jumped: {drift}");
    let m = manifest(d, "2026-11-20");
    assert_eq!(m["validation"]["anomalies"][0]["column"], "device");
    assert!(m["total_rows"].as_u64().unwrap() > 0);
    let bodies = h.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "one alert: {bodies:?}");
    assert_eq!(bodies[0]["kind"], "anomalies");
    assert_eq!(bodies[0]["date"], "2026-11-20");
    assert_eq!(bodies[0]["anomalies"][0]["column"], "device");
    let shown = kiln(&[
        "runs",
        "show",
        &s["run_id"].to_string(),
        "--spec",
        spec.to_str().unwrap(),
        "--json",
    ]);
    let shown: Json = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "anomalies", "{shown}");
    assert_eq!(shown["lineage"]["anomalies"][0]["column"], "device");
    let html = d.join("stats.html");
    let o = kiln(&[
        "stats",
        d.join("out/daily_ctr/examples/dt=2026-11-20")
            .to_str()
            .unwrap(),
        "--baseline",
        d.join("out/daily_ctr/examples/dt=2026-11-19")
            .to_str()
            .unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!doctype html>") && page.contains("<svg") && page.contains("device"),
        "{}",
        &page[..page.len().min(400)]
    );
    assert!(
        page.contains("l_infinity"),
        "the drift of each column is shown"
    );
    let stats = kiln(&[
        "stats",
        d.join("out/daily_ctr/examples/dt=2026-11-20")
            .to_str()
            .unwrap(),
    ]);
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("ANOMALY column `device`: drift"), "{stats}");

    // A person looked at the data: --accept device trains and publishes, recorded.
    let (o, s) = run(&spec, "2026-11-20", &["--accept", "device"]);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["status"], "success");
    assert_eq!(task(&s, "features")["status"], "skipped");
    assert_eq!(task(&s, "validate")["status"], "success");
    assert!(s["model_version"].as_u64().is_some(), "{s}");
    assert_eq!(s["anomalies"][0]["accepted"], true);
    let shown = kiln(&[
        "runs",
        "show",
        &s["run_id"].to_string(),
        "--spec",
        spec.to_str().unwrap(),
        "--json",
    ]);
    let shown: Json = serde_json::from_slice(&shown.stdout).unwrap();
    let events = shown["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "accept"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("--accept device: 2 anomalies accepted"))),
        "{shown}"
    );

    // The planted NULL prices (against a baseline with the planted device mix): price named.
    let (o, s) = run(&spec, "2026-11-21", &[]);
    assert!(!o.status.success());
    assert_eq!(s["status"], "anomalies");
    let f = flagged(&s);
    assert!(
        f.contains(&("price".to_string(), "null_fraction".to_string())),
        "{f:?}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("column `price`: null_fraction expected <="),
        "{stderr}"
    );
    assert_eq!(h.bodies.lock().unwrap().len(), 2);
}
