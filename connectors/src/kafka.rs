//! Apache Kafka through librdkafka ([`rdkafka`]): topic addresses, offset ranges bounded by
//! record timestamps, range readers and a keyed producer. No DataFusion here; the engine turns
//! offset ranges into table partitions.
//!
//! * [`KafkaAddress`] is a topic URL, `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
//! * [`KafkaClient`]: one topic's client settings. Properties come from the spec (non-secret
//!   ones: `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...) and from the
//!   environment: every `KILN_KAFKA_<NAME>` variable sets the librdkafka property `<name>`
//!   with `_` read as `.` (`KILN_KAFKA_SASL_PASSWORD` -> `sasl.password`). Secrets belong in
//!   the environment; [`KafkaClient`]'s `Debug` shows property names only, and nothing here
//!   writes a value anywhere.
//! * [`KafkaClient::resolve_window`]: per partition, the offsets from the first record with a
//!   timestamp at or after the start to the first at or after the end (Kafka's ListOffsets by
//!   timestamp), checked against the partition's retained offsets.
//! * [`KafkaClient::read_range`]: the records of one partition's offset range, in offset
//!   order, in batches.
//! * [`KafkaClient::producer`]: a producer that keys records (`murmur2_random`, the Java
//!   client's partitioner) and sets their timestamps.
//!
//! Every blocking call is bounded by the client's timeout (default 30 s); a broker that does
//! not answer is an error naming the bootstrap servers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that set librdkafka properties.
pub const ENV_PREFIX: &str = "KILN_KAFKA_";
/// Default bound on every blocking call to the brokers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the Kafka connector; each names the bootstrap servers and topic (and partition
/// and offsets where there are some).
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A `kafka://` URL that does not parse.
    #[error("{url}: {message} (expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC)")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A property that must not be set in a spec (a secret) or that Kiln controls.
    #[error("kafka property `{name}`: {message}")]
    BadProperty {
        /// Property name.
        name: String,
        /// Why it is refused.
        message: String,
    },
    /// The brokers did not answer or refused a request.
    #[error("kafka {bootstrap} topic `{topic}`: {what}: {detail}")]
    Broker {
        /// Bootstrap servers.
        bootstrap: String,
        /// Topic.
        topic: String,
        /// What was being done (with the timeout where one applied).
        what: String,
        /// librdkafka's message.
        detail: String,
    },
    /// The topic does not exist.
    #[error("kafka {bootstrap}: topic `{topic}` does not exist")]
    NoTopic {
        /// Bootstrap servers.
        bootstrap: String,
        /// Topic.
        topic: String,
    },
    /// Records of a range are no longer retained (or not yet written).
    #[error(
        "kafka {bootstrap} topic `{topic}` partition {partition}: offsets {start}..{end} are not \
         all available (the partition holds {low}..{high}): {message}"
    )]
    Unavailable {
        /// Bootstrap servers.
        bootstrap: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Range start (inclusive).
        start: i64,
        /// Range end (exclusive).
        end: i64,
        /// First retained offset.
        low: i64,
        /// Offset after the last record.
        high: i64,
        /// What this means.
        message: String,
    },
    /// A record could not be delivered by the producer.
    #[error("kafka {bootstrap} topic `{topic}`: {failed} of {sent} records not delivered: {first}")]
    Delivery {
        /// Bootstrap servers.
        bootstrap: String,
        /// Topic.
        topic: String,
        /// Records handed to the producer.
        sent: u64,
        /// Records that failed.
        failed: u64,
        /// The first failure.
        first: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// A topic on a set of brokers: `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaAddress {
    /// Comma-separated `HOST:PORT` list (librdkafka's `bootstrap.servers`).
    pub bootstrap: String,
    /// Topic name.
    pub topic: String,
}

impl KafkaAddress {
    /// Parses `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`. User info is refused: credentials go
    /// in the environment, never in a URL that lands in manifests and logs.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |message: &str| KafkaError::BadUrl {
            url: url.to_string(),
            message: message.to_string(),
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("not a kafka:// URL"))?;
        let (hosts, topic) = rest
            .split_once('/')
            .ok_or_else(|| bad("no topic after the servers"))?;
        let topic = topic.trim_end_matches('/');
        if hosts.contains('@') {
            return Err(bad(
                "credentials in the URL are refused: set KILN_KAFKA_SASL_USERNAME and \
                 KILN_KAFKA_SASL_PASSWORD in the environment",
            ));
        }
        if hosts.is_empty() {
            return Err(bad("no bootstrap server"));
        }
        for h in hosts.split(',') {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("server `{h}` has no port")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!("server `{h}` is not HOST:PORT")));
            }
        }
        // Kafka's own rule for topic names.
        if topic.is_empty()
            || topic.len() > 249
            || topic == "."
            || topic == ".."
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad(&format!(
                "`{topic}` is not a topic name (ASCII letters, digits, `.`, `_`, `-`; at most \
                 249)"
            )));
        }
        Ok(KafkaAddress {
            bootstrap: hosts.to_string(),
            topic: topic.to_string(),
        })
    }

    /// The URL form, `kafka://HOSTS/TOPIC`.
    pub fn url(&self) -> String {
        format!("kafka://{}/{}", self.bootstrap, self.topic)
    }
}

/// Properties Kiln sets itself; a spec or the environment may not change them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
    "partitioner",
];

/// Whether a property name holds a secret (refused in specs, never shown).
fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "key.pem",
        "keystore",
        "token",
        "ssl.key",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The client settings of one topic. `Debug` lists property names only.
#[derive(Clone)]
pub struct KafkaClient {
    address: KafkaAddress,
    /// From the spec (non-secret), then the environment (which wins).
    properties: BTreeMap<String, String>,
    timeout: Duration,
}

impl fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaClient")
            .field("address", &self.address)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Checks spec-level properties: no secrets, nothing Kiln controls.
pub fn check_spec_properties(properties: &BTreeMap<String, String>) -> Result<()> {
    for name in properties.keys() {
        if is_secret(name) {
            return Err(KafkaError::BadProperty {
                name: name.clone(),
                message: format!(
                    "secrets are not accepted in a spec (it is copied into plans and logs); set \
                     {ENV_PREFIX}{} in the environment instead",
                    name.replace('.', "_").to_ascii_uppercase()
                ),
            });
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(KafkaError::BadProperty {
                name: name.clone(),
                message: "set by Kiln".into(),
            });
        }
    }
    Ok(())
}

/// `KILN_KAFKA_*` variables of this process as librdkafka properties.
fn env_properties() -> BTreeMap<String, String> {
    std::env::vars()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(ENV_PREFIX)?;
            if name == "TIMEOUT_SECS" {
                return None;
            }
            Some((name.to_ascii_lowercase().replace('_', "."), v))
        })
        .collect()
}

/// One record read from a partition (owned copies of key and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// Offset in its partition.
    pub offset: i64,
    /// Record timestamp in milliseconds since the epoch (create or log-append time); `None`
    /// when the record has none.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
}

/// An offset range of one partition, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct OffsetRange {
    /// Partition id.
    pub partition: i32,
    /// First offset (inclusive).
    pub start: i64,
    /// End offset (exclusive).
    pub end: i64,
}

impl OffsetRange {
    /// Number of offsets in the range.
    pub fn len(&self) -> i64 {
        (self.end - self.start).max(0)
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range cut into pieces of at most `max` offsets, in order.
    pub fn split(&self, max: i64) -> Vec<OffsetRange> {
        let max = max.max(1);
        let mut out = Vec::new();
        let mut s = self.start;
        while s < self.end {
            let e = (s + max).min(self.end);
            out.push(OffsetRange {
                partition: self.partition,
                start: s,
                end: e,
            });
            s = e;
        }
        out
    }
}

/// Per-partition offsets of a time window, and how they were found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowOffsets {
    /// Window start, ms since the epoch (inclusive).
    pub start_ms: i64,
    /// Window end, ms since the epoch (exclusive).
    pub end_ms: i64,
    /// One range per partition, by partition id.
    pub ranges: Vec<OffsetRange>,
}

/// Whether each partition holds a record at or after a timestamp (see
/// [`KafkaClient::window_closed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    /// Partition id.
    pub partition: i32,
    /// Whether a record with timestamp >= the asked time exists.
    pub closed: bool,
    /// Offset after the partition's last record.
    pub high_watermark: i64,
}

impl KafkaClient {
    /// A client for `address` with spec properties (checked by [`check_spec_properties`]),
    /// the environment's `KILN_KAFKA_*` properties on top, and `timeout` (default 30 s, or
    /// `KILN_KAFKA_TIMEOUT_SECS`).
    pub fn new(
        address: KafkaAddress,
        spec_properties: &BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        check_spec_properties(spec_properties)?;
        let env = env_properties();
        for name in env.keys() {
            if RESERVED.contains(&name.as_str()) {
                return Err(KafkaError::BadProperty {
                    name: name.clone(),
                    message: format!("set by Kiln; unset {ENV_PREFIX}{}", name.to_uppercase()),
                });
            }
        }
        let mut properties = spec_properties.clone();
        properties.extend(env);
        let timeout = timeout
            .or_else(|| {
                std::env::var(format!("{ENV_PREFIX}TIMEOUT_SECS"))
                    .ok()?
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .map(Duration::from_secs_f64)
            })
            .unwrap_or(DEFAULT_TIMEOUT);
        Ok(KafkaClient {
            address,
            properties,
            timeout,
        })
    }

    /// The topic address.
    pub fn address(&self) -> &KafkaAddress {
        &self.address
    }

    /// The bound on each blocking call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.address.bootstrap);
        // A broker that never answers must fail within the timeout, not retry forever.
        c.set(
            "socket.connection.setup.timeout.ms",
            self.timeout.as_millis().to_string(),
        );
        c.set("log_level", "3");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn broker_error(&self, what: impl Into<String>, e: impl fmt::Display) -> KafkaError {
        KafkaError::Broker {
            bootstrap: self.address.bootstrap.clone(),
            topic: self.address.topic.clone(),
            what: what.into(),
            detail: e.to_string(),
        }
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        let mut c = self.config();
        c.set("group.id", format!("kiln-reader-{}", self.address.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error");
        c.create()
            .map_err(|e| self.broker_error("creating a consumer", e))
    }

    /// The topic's partition ids, sorted; fails within the timeout when no broker answers.
    pub fn partitions(&self) -> Result<Vec<i32>> {
        let consumer = self.consumer()?;
        self.partitions_with(&consumer)
    }

    fn partitions_with(&self, consumer: &BaseConsumer) -> Result<Vec<i32>> {
        let md = consumer
            .fetch_metadata(Some(&self.address.topic), self.timeout)
            .map_err(|e| {
                self.broker_error(
                    format!("no answer to a metadata request within {:?}", self.timeout),
                    e,
                )
            })?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == self.address.topic)
            .ok_or_else(|| self.no_topic())?;
        if let Some(err) = topic.error() {
            let err = RdError::MetadataFetch(err.into());
            if err.to_string().contains("Unknown topic") {
                return Err(self.no_topic());
            }
            return Err(self.broker_error("reading the topic's metadata", err));
        }
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        if ids.is_empty() {
            return Err(self.no_topic());
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn no_topic(&self) -> KafkaError {
        KafkaError::NoTopic {
            bootstrap: self.address.bootstrap.clone(),
            topic: self.address.topic.clone(),
        }
    }

    /// `(low, high)` watermarks of one partition: the first retained offset and the offset
    /// after the last record.
    fn watermarks(&self, consumer: &BaseConsumer, partition: i32) -> Result<(i64, i64)> {
        consumer
            .fetch_watermarks(&self.address.topic, partition, self.timeout)
            .map_err(|e| self.broker_error(format!("watermarks of partition {partition}"), e))
    }

    /// For each partition, the first offset whose record timestamp is `>= ms` (the high
    /// watermark when there is none).
    fn offsets_at(
        &self,
        consumer: &BaseConsumer,
        partitions: &[i32],
        ms: i64,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.address.topic, *p, Offset::Offset(ms))
                .map_err(|e| self.broker_error("building an offsets request", e))?;
        }
        let found = consumer
            .offsets_for_times(tpl, self.timeout)
            .map_err(|e| self.broker_error(format!("offsets for timestamp {ms}"), e))?;
        let mut out = BTreeMap::new();
        for el in found.elements() {
            if let Err(e) = el.error() {
                return Err(self.broker_error(
                    format!("offset for timestamp {ms} in partition {}", el.partition()),
                    e,
                ));
            }
            let offset = match el.offset() {
                Offset::Offset(o) => o,
                // No record at or after `ms`: the range ends at the end of the log.
                Offset::End | Offset::Invalid => self.watermarks(consumer, el.partition())?.1,
                other => {
                    return Err(self.broker_error(
                        format!("offset for timestamp {ms} in partition {}", el.partition()),
                        format!("unexpected answer {other:?}"),
                    ));
                }
            };
            out.insert(el.partition(), offset);
        }
        Ok(out)
    }

    /// The offset ranges of the records with timestamps in `[start_ms, end_ms)`, one per
    /// partition: `[first offset with timestamp >= start, first offset with timestamp >=
    /// end)`. Fails naming the partition and offsets when the start may have fallen out of
    /// retention (the first retained record is already inside the window and earlier records
    /// were deleted).
    pub fn resolve_window(&self, start_ms: i64, end_ms: i64) -> Result<WindowOffsets> {
        let consumer = self.consumer()?;
        let partitions = self.partitions_with(&consumer)?;
        let starts = self.offsets_at(&consumer, &partitions, start_ms)?;
        let ends = self.offsets_at(&consumer, &partitions, end_ms)?;
        let mut ranges = Vec::with_capacity(partitions.len());
        for p in partitions {
            let start = starts[&p];
            let end = ends[&p].max(start);
            let (low, high) = self.watermarks(&consumer, p)?;
            // `start == low > 0` with records in the window: the records before `low` were
            // deleted and Kafka cannot tell whether some of them were in the window.
            if start == low && low > 0 && end > start {
                return Err(KafkaError::Unavailable {
                    bootstrap: self.address.bootstrap.clone(),
                    topic: self.address.topic.clone(),
                    partition: p,
                    start,
                    end,
                    low,
                    high,
                    message: format!(
                        "the window starting at {start_ms} ms begins at the first retained \
                         record; earlier records were deleted by retention and may have been \
                         in the window"
                    ),
                });
            }
            ranges.push(OffsetRange {
                partition: p,
                start,
                end,
            });
        }
        Ok(WindowOffsets {
            start_ms,
            end_ms,
            ranges,
        })
    }

    /// Checks that every range is still retained and fully written (a replay of a recorded
    /// manifest); fails naming the partition and offsets.
    pub fn check_available(&self, ranges: &[OffsetRange]) -> Result<()> {
        let consumer = self.consumer()?;
        let partitions = self.partitions_with(&consumer)?;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            if !partitions.contains(&r.partition) {
                return Err(KafkaError::Unavailable {
                    bootstrap: self.address.bootstrap.clone(),
                    topic: self.address.topic.clone(),
                    partition: r.partition,
                    start: r.start,
                    end: r.end,
                    low: 0,
                    high: 0,
                    message: "the topic has no such partition".into(),
                });
            }
            let (low, high) = self.watermarks(&consumer, r.partition)?;
            if r.start < low || r.end > high {
                return Err(KafkaError::Unavailable {
                    bootstrap: self.address.bootstrap.clone(),
                    topic: self.address.topic.clone(),
                    partition: r.partition,
                    start: r.start,
                    end: r.end,
                    low,
                    high,
                    message: if r.start < low {
                        "records were deleted by retention since the range was recorded".into()
                    } else {
                        "the partition ends before the range (truncated or a different topic)"
                            .into()
                    },
                });
            }
        }
        Ok(())
    }

    /// For each partition, whether it holds a record with timestamp `>= ms` (the window
    /// ending at `ms` is complete there).
    pub fn window_closed(&self, ms: i64) -> Result<Vec<PartitionProgress>> {
        let consumer = self.consumer()?;
        let partitions = self.partitions_with(&consumer)?;
        let at = self.offsets_at(&consumer, &partitions, ms)?;
        let mut out = Vec::new();
        for p in partitions {
            let (_, high) = self.watermarks(&consumer, p)?;
            out.push(PartitionProgress {
                partition: p,
                closed: at[&p] < high,
                high_watermark: high,
            });
        }
        Ok(out)
    }

    /// Reads the records of `range` in offset order and hands them to `sink` in batches of at
    /// most `batch` records; `sink` returning `false` stops the read early. Offsets missing
    /// inside the range (compacted records, transaction markers) are skipped; the read ends
    /// at the first offset `>= range.end` or at the end of the partition, whichever is
    /// first, and fails when the partition ends before `range.end`.
    pub fn read_range(
        &self,
        range: OffsetRange,
        batch: usize,
        mut sink: impl FnMut(Vec<KafkaRecord>) -> bool,
    ) -> Result<u64> {
        if range.is_empty() {
            return Ok(0);
        }
        let consumer = self.consumer()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.address.topic,
            range.partition,
            Offset::Offset(range.start),
        )
        .map_err(|e| self.broker_error("building an assignment", e))?;
        consumer.assign(&tpl).map_err(|e| {
            self.broker_error(format!("assigning partition {}", range.partition), e)
        })?;
        let mut buf = Vec::with_capacity(batch.min(range.len() as usize));
        let mut read = 0u64;
        let mut last_progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    if m.offset() >= range.end {
                        break;
                    }
                    buf.push(KafkaRecord {
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                    });
                    read += 1;
                    let done = m.offset() + 1 >= range.end;
                    if (buf.len() >= batch || done) && !sink(std::mem::take(&mut buf)) {
                        return Ok(read);
                    }
                    if done {
                        break;
                    }
                }
                Some(Err(RdError::PartitionEOF(_))) => {
                    let position = consumer
                        .position()
                        .ok()
                        .and_then(|tpl| {
                            tpl.find_partition(&self.address.topic, range.partition)
                                .map(|e| e.offset())
                        })
                        .and_then(|o| o.to_raw());
                    let (low, high) = self.watermarks(&consumer, range.partition)?;
                    if high >= range.end {
                        // Records up to the end were compacted or were control records.
                        break;
                    }
                    return Err(KafkaError::Unavailable {
                        bootstrap: self.address.bootstrap.clone(),
                        topic: self.address.topic.clone(),
                        partition: range.partition,
                        start: range.start,
                        end: range.end,
                        low,
                        high,
                        message: format!(
                            "the partition ended at offset {} while reading",
                            position.unwrap_or(high)
                        ),
                    });
                }
                Some(Err(e)) => {
                    return Err(self.broker_error(
                        format!(
                            "reading partition {} offsets {}..{}",
                            range.partition, range.start, range.end
                        ),
                        e,
                    ));
                }
                None => {
                    if last_progress.elapsed() > self.timeout {
                        return Err(self.broker_error(
                            format!(
                                "reading partition {} offsets {}..{}",
                                range.partition, range.start, range.end
                            ),
                            format!("no record within {:?}", self.timeout),
                        ));
                    }
                }
            }
        }
        if !buf.is_empty() {
            sink(buf);
        }
        Ok(read)
    }

    /// Creates the topic with `partitions` partitions and replication factor `replication`
    /// unless it exists; returns the topic's partition count.
    pub fn ensure_topic(&self, partitions: i32, replication: i32) -> Result<usize> {
        if let Ok(ids) = self.partitions() {
            return Ok(ids.len());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .config()
            .create()
            .map_err(|e| self.broker_error("creating an admin client", e))?;
        let topic = NewTopic::new(
            &self.address.topic,
            partitions,
            TopicReplication::Fixed(replication),
        );
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.broker_error("starting a runtime", e))?;
        let results = rt
            .block_on(admin.create_topics([&topic], &opts))
            .map_err(|e| self.broker_error("creating the topic", e))?;
        for r in results {
            if let Err((name, code)) = r
                && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(self.broker_error(format!("creating topic `{name}`"), code));
            }
        }
        // Metadata catches up with the creation shortly after.
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.partitions() {
                Ok(ids) => return Ok(ids.len()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A producer for this topic (see [`KafkaProducer`]).
    pub fn producer(&self) -> Result<KafkaProducer> {
        let stats = Arc::new(DeliveryStats::default());
        let mut c = self.config();
        c.set("partitioner", "murmur2_random")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4")
            .set("enable.idempotence", "true");
        let producer: ThreadedProducer<DeliveryCounter> = c
            .create_with_context(DeliveryCounter(Arc::clone(&stats)))
            .map_err(|e| self.broker_error("creating a producer", e))?;
        Ok(KafkaProducer {
            client: self.clone(),
            producer,
            stats,
            sent: 0,
        })
    }
}

#[derive(Debug, Default)]
struct DeliveryStats {
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

struct DeliveryCounter(Arc<DeliveryStats>);

impl rdkafka::ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(format!("partition {}: {e}", m.partition()));
            }
        }
    }
}

/// A keyed, idempotent producer for one topic; [`KafkaProducer::finish`] waits for every
/// record and fails if any was not delivered.
pub struct KafkaProducer {
    client: KafkaClient,
    producer: ThreadedProducer<DeliveryCounter>,
    stats: Arc<DeliveryStats>,
    sent: u64,
}

impl KafkaProducer {
    /// Queues one record (waiting while the local queue is full).
    pub fn send(&mut self, key: &[u8], value: &[u8], timestamp_ms: i64) -> Result<()> {
        let mut record = BaseRecord::to(&self.client.address.topic)
            .key(key)
            .payload(value)
            .timestamp(timestamp_ms);
        let deadline = Instant::now() + self.client.timeout;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((
                    RdError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    if Instant::now() > deadline {
                        return Err(self.client.broker_error(
                            "producing",
                            format!("the send queue stayed full for {:?}", self.client.timeout),
                        ));
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(self.client.broker_error("producing", e)),
            }
        }
        self.sent += 1;
        Ok(())
    }

    /// Flushes, waits for every delivery report and returns the number of records delivered.
    pub fn finish(self) -> Result<u64> {
        let flush_timeout = self.client.timeout.max(Duration::from_secs(60));
        self.producer.flush(flush_timeout).map_err(|e| {
            self.client
                .broker_error(format!("flushing within {flush_timeout:?}"), e)
        })?;
        let failed = self.stats.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self
                .stats
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(KafkaError::Delivery {
                bootstrap: self.client.address.bootstrap.clone(),
                topic: self.client.address.topic.clone(),
                sent: self.sent,
                failed,
                first,
            });
        }
        Ok(self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_refuses_credentials() {
        let a = KafkaAddress::parse("kafka://127.0.0.1:9092,b:9093/events.v1").unwrap();
        assert_eq!(a.bootstrap, "127.0.0.1:9092,b:9093");
        assert_eq!(a.topic, "events.v1");
        assert_eq!(a.url(), "kafka://127.0.0.1:9092,b:9093/events.v1");
        for (url, needle) in [
            ("kafka://u:p@h:1/t", "credentials"),
            ("kafka://h/t", "no port"),
            ("kafka://h:1/", "not a topic name"),
            ("kafka://h:1/a b", "not a topic name"),
            ("s3://h:1/t", "not a kafka"),
        ] {
            let e = KafkaAddress::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains(":p@") || needle != "credentials" || e.contains(url));
        }
    }

    #[test]
    fn refuses_secrets_in_specs_and_hides_values() {
        let mut p = BTreeMap::new();
        p.insert("sasl.password".to_string(), "hunter2".to_string());
        let e = check_spec_properties(&p).unwrap_err().to_string();
        assert!(e.contains("KILN_KAFKA_SASL_PASSWORD"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let mut ok = BTreeMap::new();
        ok.insert("security.protocol".to_string(), "SASL_SSL".to_string());
        let c = KafkaClient::new(KafkaAddress::parse("kafka://h:1/t").unwrap(), &ok, None).unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("security.protocol") && !shown.contains("SASL_SSL"),
            "{shown}"
        );
    }

    #[test]
    fn splits_ranges_in_order() {
        let r = OffsetRange {
            partition: 2,
            start: 10,
            end: 35,
        };
        let parts = r.split(10);
        assert_eq!(
            parts.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(),
            vec![(10, 20), (20, 30), (30, 35)]
        );
        assert!(parts.iter().all(|p| p.partition == 2));
        assert_eq!(parts.iter().map(OffsetRange::len).sum::<i64>(), r.len());
    }

    #[test]
    fn an_unreachable_broker_fails_within_the_timeout_naming_it() {
        // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
        let c = KafkaClient::new(
            KafkaAddress::parse("kafka://127.0.0.1:9/events").unwrap(),
            &BTreeMap::new(),
            Some(Duration::from_secs(2)),
        )
        .unwrap();
        let t = Instant::now();
        let e = c.partitions().unwrap_err().to_string();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(e.contains("127.0.0.1:9") && e.contains("events"), "{e}");
    }
}
