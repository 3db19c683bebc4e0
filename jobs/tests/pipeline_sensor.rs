//! `kiln run` with the example's sensor on a source (`source = "events", partition = 1`): the
//! sensor waits where the run reads the source, so `--source events=URL` moves it, on local
//! files and on a real S3-compatible server (moto). A mistake in it is a spec error before
//! anything runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_connectors::testing::Moto;
use serde_json::Value as Json;

/// The run date; its next day is the partition the sensor waits for.
const DATE: &str = "2026-11-20";
const NEXT_DAY: &str = "dt=2026-11-21";

/// The example job as it is (its sensor included), copied into `dir`, with a short sensor
/// timeout and no retries.
fn write_spec(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(common::example_spec()).unwrap();
    assert!(
        example.contains("name = \"events_next_day\"\nsource = \"events\"\npartition = 1"),
        "the example's sensor changed"
    );
    let edits = [
        (
            "poke_seconds = 60\ntimeout_seconds = 21600",
            "poke_seconds = 0.2\ntimeout_seconds = 2",
        ),
        ("retries = 1 ", "retries = 0 "),
    ];
    let mut text = example;
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "the example's [pipeline] changed: {from}"
        );
        text = text.replacen(from, to, 1);
    }
    let p = dir.join("job.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A file standing for a day's data (the sensor looks for any object under the prefix).
fn put_partition(root: &Path, partition: &str) {
    let d = root.join(partition);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("part-0.parquet"), b"not read by the sensor").unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `kiln run SPEC --date DATE --source events=URL --json`: the run summary (printed also when
/// the run fails).
fn run(spec: &Path, events: &str, env: &[(&str, &str)]) -> (Output, Json) {
    let source = format!("events={events}");
    let o = common::kiln_env(
        &[
            "run",
            spec.to_str().unwrap(),
            "--date",
            DATE,
            "--source",
            &source,
            "--json",
        ],
        env,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no run summary on stdout\n{}", text(&o)));
    let summary = serde_json::from_str(line).unwrap();
    (o, summary)
}

fn task<'a>(summary: &'a Json, name: &str) -> &'a Json {
    summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {summary}"))
}

/// Runs twice with `--source events=<events>`: first the next day is missing there (it exists
/// only at the spec's own location) and the sensor fails naming `want`; then, once `publish`
/// put it there, the sensor passes on `want` and `features` reads the overridden location.
fn check_sensor_follows_override(
    dir: &Path,
    events: &str,
    want: &str,
    env: &[(&str, &str)],
    publish: impl FnOnce(),
) {
    let spec = write_spec(dir);
    // The spec's own location has the next day: a sensor watching it would pass.
    put_partition(&dir.join("data/events"), NEXT_DAY);

    let (o, summary) = run(&spec, events, env);
    assert!(!o.status.success(), "{}", text(&o));
    let sensor = task(&summary, "sensor:events_next_day");
    assert_eq!(sensor["status"], "failed", "{summary}");
    let error = sensor["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "sensor `events_next_day`: input {want} (source `events`, partition D+1) did not \
             appear within 2 s"
        )),
        "{error}"
    );
    assert_eq!(task(&summary, "features")["status"], "upstream_failed");

    publish();
    let (o, summary) = run(&spec, events, env);
    assert!(!o.status.success(), "{}", text(&o));
    let sensor = task(&summary, "sensor:events_next_day");
    assert_eq!(sensor["status"], "success", "{summary}");
    assert_eq!(sensor["output"]["path"], want, "{summary}");
    assert_eq!(sensor["output"]["source"], "events");
    assert_eq!(sensor["output"]["partition"], 1);
    // The features job read the same overridden location (it has one day only, so it fails).
    let features = task(&summary, "features");
    assert_eq!(features["status"], "failed", "{summary}");
    let error = features["error"].as_str().unwrap();
    assert!(
        error.contains("no input") && error.contains(events.trim_end_matches('/')),
        "{error}"
    );
}

#[test]
fn the_sensor_waits_on_the_overridden_local_source() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("elsewhere/events");
    let want = format!("file://{}/{NEXT_DAY}/", other.display());
    check_sensor_follows_override(dir.path(), other.to_str().unwrap(), &want, &[], || {
        put_partition(&other, NEXT_DAY)
    });
}

#[test]
fn the_sensor_waits_on_the_overridden_s3_source() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln");
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    put_partition(&staged, NEXT_DAY);
    let want = format!("s3://kiln/raw/events/{NEXT_DAY}/");
    check_sensor_follows_override(dir.path(), "s3://kiln/raw/events", &want, &env, || {
        let dest = moto.location("kiln", "raw/events");
        kiln_connectors::store::upload_dir(&staged, &dest, &[]).unwrap();
    });
}

#[test]
fn an_unknown_sensor_source_is_a_spec_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let text_spec = std::fs::read_to_string(&spec).unwrap().replacen(
        "source = \"events\"\npartition = 1",
        "source = \"evnts\"\npartition = 1",
        1,
    );
    std::fs::write(&spec, text_spec).unwrap();
    let o = common::kiln(&["run", spec.to_str().unwrap(), "--date", DATE]);
    assert!(!o.status.success(), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&spec.display().to_string())
            && e.contains(
                "[[pipeline.sensors]] `events_next_day` source: unknown source `evnts` \
                 (sources: events)"
            ),
        "{e}"
    );
    // Nothing ran: no run record, lock or log directory.
    assert!(!dir.path().join(".kiln").exists(), "{}", text(&o));
}
