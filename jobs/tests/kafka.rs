//! The example job with its events in a real Apache Kafka topic (KRaft broker started by
//! `scripts/lib/kafka.sh`, `KILN_TEST_KAFKA=HOST:PORT`): the committed shards are
//! byte-identical to the same events read as Parquet, locally and on a Ballista cluster; the
//! manifest records the offsets; `--replay` reads them again exactly after the topic grew; a
//! bad message fails naming topic, partition and offset; the kafka sensor's check.
//!
//! Policy: without `KILN_TEST_KAFKA` the tests skip, except under `CI=true`, where they fail.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::cluster::Cluster;
use kiln_connectors::kafka::{KafkaAddress, KafkaClient};

const DATE: &str = "2026-11-20";

/// The broker of `scripts/lib/kafka.sh`, or `None` (the test skips) outside CI.
fn broker() -> Option<String> {
    if std::env::var("KILN_TEST_FAST").as_deref() == Ok("1") {
        eprintln!("KILN_TEST_FAST=1: skipping (needs a Kafka broker)");
        return None;
    }
    match std::env::var("KILN_TEST_KAFKA") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but KILN_TEST_KAFKA is not set: scripts/test.sh starts the broker")
        }
        _ => {
            eprintln!("skipping: KILN_TEST_KAFKA is not set (bash scripts/test.sh starts Kafka)");
            None
        }
    }
}

/// A topic name no other test (or earlier run against the same broker) uses.
fn unique_topic(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kiln-{what}-{}-{nanos}", std::process::id())
}

fn client(broker: &str, topic: &str) -> KafkaClient {
    KafkaClient::new(
        KafkaAddress::parse(&format!("kafka://{broker}/{topic}")).unwrap(),
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
    )
    .unwrap()
}

fn gen_to(out: &str, rows: u64, seed: u64, days: u32, end_date: &str) {
    common::kiln_ok(&[
        "gen",
        "events",
        "--rows",
        &rows.to_string(),
        "--days",
        &days.to_string(),
        "--end-date",
        end_date,
        "--seed",
        &seed.to_string(),
        "--out",
        out,
        "--partitions",
        "3",
    ]);
}

fn features(source: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let spec = common::example_spec().display().to_string();
    let events = format!("events={source}");
    let out = out.display().to_string();
    let mut args = vec![
        "features", &spec, "--date", DATE, "--source", &events, "--out", &out, "--json",
    ];
    args.extend_from_slice(extra);
    common::kiln(&args)
}

fn ok(out: &std::process::Output, logs: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kiln features failed:\n{}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn manifest_lineage(url: &str) -> serde_json::Value {
    let ds = kiln_connectors::Dataset::open_blocking(url, Default::default()).unwrap();
    ds.manifest().lineage.clone()
}

#[test]
fn example_job_from_kafka_matches_parquet_and_replays_exactly() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("events");
    let kafka_url = format!("kafka://{broker}/{topic}");
    let rows = 120_000;
    gen_to(&kafka_url, rows, 7, 9, "2026-11-21");
    let events = dir.path().join("events");
    common::gen_events(&events, rows, 7);

    let parquet_out = dir.path().join("parquet");
    ok(
        &features(&events.display().to_string(), &parquet_out, &[]),
        "",
    );
    let kafka_out = dir.path().join("kafka");
    let report = ok(&features(&kafka_url, &kafka_out, &[]), "");
    let parquet_url = format!("{}/examples/", parquet_out.display());
    let kafka_ds = format!("{}/examples/", kafka_out.display());
    let want = common::shard_sums(&parquet_url);
    assert!(want.iter().map(|s| s.3).sum::<u64>() > 1000, "{want:?}");
    assert_eq!(
        common::shard_sums(&kafka_ds),
        want,
        "Kafka vs Parquet shards"
    );

    // The lineage: the window asked for and one offset range per partition, covering every
    // generated event (all 9 days are inside days = [-7, 1]).
    let lineage = manifest_lineage(&kafka_ds);
    let k = &lineage["inputs"][0]["kafka"];
    assert_eq!(k["topic"], topic.as_str(), "{lineage}");
    assert_eq!(k["window_start"], "2026-11-13T00:00:00Z", "{k}");
    assert_eq!(k["window_end"], "2026-11-22T00:00:00Z", "{k}");
    assert_eq!(k["replayed"], false);
    let ranges = k["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 3, "{k}");
    assert_eq!(k["offsets"].as_u64(), Some(rows), "{k}");
    assert!(ranges.iter().all(|r| r["start"] == 0), "{k}");
    assert!(
        report["inputs"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("kafka://"),
        "{report}"
    );
    let shown = serde_json::to_string(&lineage).unwrap();
    assert!(!shown.to_lowercase().contains("password"), "{shown}");

    // More records arrive: late events of a day inside the window (before any record of a
    // later day: so they are inside a fresh lookup's range), then later days.
    gen_to(&kafka_url, 5_000, 98, 1, "2026-11-20");
    gen_to(&kafka_url, 20_000, 99, 2, "2026-11-23");
    let high: i64 = client(&broker, &topic)
        .window_closed(i64::MAX)
        .unwrap()
        .iter()
        .map(|p| p.high_watermark)
        .sum();
    assert_eq!(high as u64, rows + 25_000);

    // A replay of the first manifest reads exactly its offsets: the same bytes.
    let replay_out = dir.path().join("replay");
    ok(
        &features(&kafka_url, &replay_out, &["--replay", &kafka_ds]),
        "",
    );
    let replay_ds = format!("{}/examples/", replay_out.display());
    assert_eq!(common::shard_sums(&replay_ds), want, "replay vs first run");
    let k2 = manifest_lineage(&replay_ds)["inputs"][0]["kafka"].clone();
    assert_eq!(k2["replayed"], true);
    assert_eq!(k2["ranges"], k["ranges"]);

    // Without --replay the window is looked up again and now holds the late events.
    let fresh_out = dir.path().join("fresh");
    ok(&features(&kafka_url, &fresh_out, &[]), "");
    let fresh = manifest_lineage(&format!("{}/examples/", fresh_out.display()));
    assert_eq!(
        fresh["inputs"][0]["kafka"]["offsets"].as_u64(),
        Some(rows + 5_000)
    );
}

#[test]
fn example_job_from_kafka_on_a_cluster_matches_local() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("cluster");
    let kafka_url = format!("kafka://{broker}/{topic}");
    gen_to(&kafka_url, 60_000, 11, 9, "2026-11-21");

    let local_out = dir.path().join("local");
    ok(&features(&kafka_url, &local_out, &[]), "");
    let cluster = Cluster::start(2, &[], &dir.path().join("logs"));
    let cluster_out = dir.path().join("cluster");
    let remote = features(&kafka_url, &cluster_out, &["--cluster", &cluster.url]);
    ok(&remote, &cluster.logs());
    assert_eq!(
        common::shard_sums(&format!("{}/examples/", cluster_out.display())),
        common::shard_sums(&format!("{}/examples/", local_out.display())),
        "cluster vs local shards"
    );
}

#[test]
fn a_bad_message_fails_naming_topic_partition_and_offset() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("bad");
    let c = client(&broker, &topic);
    c.ensure_topic(1, 1).unwrap();
    let ts = chrono::DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    let good = r#"{"event_id": 1, "user_id": 2, "item_id": 3, "ts": "2026-11-20T10:00:00Z", "event_type": "view", "price": 1.5, "city": null, "device": "mobile", "dwell_ms": 10}"#;
    let bad = r#"{"event_id": 2, "user_id": 2.5, "item_id": 3, "ts": "2026-11-20T10:00:01Z", "event_type": "view", "price": 1.5, "city": null, "device": "mobile", "dwell_ms": 10}"#;
    let mut p = c.producer().unwrap();
    p.send(b"2", good.as_bytes(), ts).unwrap();
    p.send(b"2", bad.as_bytes(), ts + 1000).unwrap();
    assert_eq!(p.finish().unwrap(), 2);

    let out = features(
        &format!("kafka://{broker}/{topic}"),
        &dir.path().join("out"),
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("topic `{topic}` partition 0 offset 1"))
            && err.contains("column user_id: expected int64, got 2.5"),
        "{err}"
    );
    assert!(!dir.path().join("out/examples/_manifest.json").exists());
}

#[test]
fn an_unreachable_broker_fails_within_the_timeout() {
    // No server needed: nothing listens on port 1 of loopback.
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let spec = common::example_spec().display().to_string();
    let out_dir = dir.path().join("out").display().to_string();
    let out = common::kiln_env(
        &[
            "features",
            &spec,
            "--date",
            DATE,
            "--source",
            "events=kafka://127.0.0.1:1/events",
            "--out",
            &out_dir,
        ],
        &[("KILN_KAFKA_TIMEOUT_SECS", "3")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("events"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_window_closes_when_every_partition_passes_its_end() {
    let Some(broker) = broker() else { return };
    let topic = unique_topic("sensor");
    let c = client(&broker, &topic);
    c.ensure_topic(2, 1).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339("2026-11-21T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let mut p = c.producer().unwrap();
    // Keys chosen to land in both partitions (murmur2 of "1".."40").
    for k in 1..=40 {
        p.send(k.to_string().as_bytes(), b"{}", end - 60_000)
            .unwrap();
    }
    p.finish().unwrap();
    let progress = c.window_closed(end).unwrap();
    assert_eq!(progress.len(), 2);
    assert!(
        progress.iter().all(|p| !p.closed && p.high_watermark > 0),
        "{progress:?}"
    );

    let mut p = c.producer().unwrap();
    p.send(b"1", b"{}", end).unwrap();
    p.finish().unwrap();
    let progress = c.window_closed(end).unwrap();
    assert_eq!(
        progress.iter().filter(|p| p.closed).count(),
        1,
        "{progress:?}"
    );
    let mut p = c.producer().unwrap();
    for k in 1..=40 {
        p.send(k.to_string().as_bytes(), b"{}", end + 1).unwrap();
    }
    p.finish().unwrap();
    assert!(c.window_closed(end).unwrap().iter().all(|p| p.closed));
}

#[test]
fn rejected_messages_are_counted_and_written_with_their_offsets() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("reject");
    let c = client(&broker, &topic);
    c.ensure_topic(1, 1).unwrap();
    let ts = chrono::DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    let mut p = c.producer().unwrap();
    for (i, value) in [
        r#"{"event_id": 1, "user_id": 7}"#,
        r#"{"event_id": "two", "user_id": 7}"#,
        r#"{"event_id": 3, "user_id": 7, "extra": true}"#,
        r#"not json"#,
        r#"{"event_id": 5, "user_id": null}"#,
    ]
    .iter()
    .enumerate()
    {
        p.send(b"7", value.as_bytes(), ts + i as i64).unwrap();
    }
    assert_eq!(p.finish().unwrap(), 5);
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
name = "rejects"
on_bad_rows = "reject"
rejects_location = "rejects/"
[[sources]]
name = "events"
url = "kafka://{broker}/{topic}"
format = "kafka"
days = [0, 0]
schema = ["event_id int64 not null", "user_id int64"]
[[features]]
name = "ids"
sql = "SELECT event_id, user_id, _partition, _offset, _timestamp, _key FROM events"
[[outputs]]
statement = "ids"
location = "out/ids/"
key = "event_id"
shards = 1
formats = ["parquet"]
"#
        ),
    )
    .unwrap();
    let out = common::kiln(&["features", spec.to_str().unwrap(), "--date", DATE, "--json"]);
    let report = ok(&out, "");
    let counts = &report["bad_rows"]["events"];
    assert_eq!(counts["rows_in"], 5, "{report}");
    assert_eq!(counts["rows_out"], 2, "{report}");
    assert_eq!(counts["rows_rejected"], 3, "{report}");
    let rejects =
        std::fs::read_to_string(dir.path().join("rejects/rejects-2026-11-20.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{rejects}"
    );
    let file = format!("kafka://{broker}/{topic}/0");
    assert!(rows.iter().all(|r| r["file"] == file.as_str()), "{rejects}");
    assert!(
        rows[0]["error"].as_str().unwrap().contains("event_id"),
        "{rejects}"
    );
    assert!(
        rows[2]["error"].as_str().unwrap().contains("not JSON"),
        "{rejects}"
    );
    // The kept rows carry their Kafka metadata.
    let batches = common::read_dataset(
        &dir.path().join("out/ids/").display().to_string(),
        kiln_connectors::dataset::ShardFormat::Parquet,
    );
    let b = &batches[0];
    let offsets = b
        .column_by_name("_offset")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    assert_eq!(offsets.values().to_vec(), vec![0, 4]);
    let keys = b
        .column_by_name("_key")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap();
    assert_eq!(keys.value(0), b"7");
}
