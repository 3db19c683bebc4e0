//! Offsets that retention deleted are errors naming topic, partition and offsets, never a
//! silent gap: against the real Kafka broker of `scripts/lib/kafka.sh`
//! (`KILN_TEST_KAFKA=HOST:PORT`; skipped without it, failing under `CI=true`).

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_connectors::kafka::{KafkaAddress, KafkaClient, KafkaError, OffsetRange};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

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

#[test]
fn deleted_offsets_are_errors_not_gaps() {
    let Some(broker) = broker() else { return };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("kiln-retention-{}-{nanos}", std::process::id());
    let client = KafkaClient::new(
        KafkaAddress::parse(&format!("kafka://{broker}/{topic}")).unwrap(),
        &BTreeMap::new(),
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    assert_eq!(client.ensure_topic(1, 1).unwrap(), 1);
    let t0 = 1_795_132_800_000; // 2026-11-20T00:00:00Z
    let mut p = client.producer().unwrap();
    for i in 0..100 {
        p.send(b"k", format!("{{\"i\": {i}}}").as_bytes(), t0 + i * 1000)
            .unwrap();
    }
    assert_eq!(p.finish().unwrap(), 100);
    let whole = client.resolve_window(t0, t0 + 86_400_000).unwrap();
    assert_eq!(
        whole.ranges,
        vec![OffsetRange {
            partition: 0,
            start: 0,
            end: 100
        }]
    );

    // Retention (here: DeleteRecords) removes offsets 0..50.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(50))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .unwrap();

    // A window starting in the deleted part: an error, not a window that starts later.
    let e = client.resolve_window(t0, t0 + 86_400_000).unwrap_err();
    assert!(
        matches!(
            e,
            KafkaError::Unavailable {
                partition: 0,
                start: 50,
                low: 50,
                ..
            }
        ),
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains(&topic) && shown.contains("partition 0"),
        "{shown}"
    );

    // A replay of the recorded range: the deleted offsets are named.
    let e = client
        .check_available(&whole.ranges)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("offsets 0..100") && e.contains("holds 50..100") && e.contains("retention"),
        "{e}"
    );
    // What is still there reads as before.
    let kept = [OffsetRange {
        partition: 0,
        start: 50,
        end: 100,
    }];
    client.check_available(&kept).unwrap();
    let mut offsets = Vec::new();
    let read = client
        .read_range(kept[0], 16, |records| {
            offsets.extend(records.iter().map(|r| r.offset));
            true
        })
        .unwrap();
    assert_eq!(read, 50);
    assert_eq!(offsets, (50..100).collect::<Vec<i64>>());
    // A window that starts after the deleted records is complete.
    let later = client.resolve_window(t0 + 60_000, t0 + 86_400_000).unwrap();
    assert_eq!(later.ranges[0].start, 60);
}
