//! `sensor:<name>`: waits until its input (a prefix or a committed manifest) exists: a
//! literal path, or a day partition of one of the spec's sources as rendered for the run
//! (`--source` overrides applied), on the store the connectors resolve for its URL.

use std::time::Instant;

use anyhow::bail;
use kiln_engine::spec::{JobSpec, RenderedJob, SpecError};
use serde_json::{Value as Json, json};

use super::ctx::{Upstream, sha};
use super::objects::{manifest_sha256, prefix_exists};
use crate::config::{Sensor, SensorKind, SensorTarget};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskPolicy};

/// `sensor:<name>`: polls every `poke_seconds` until its input appears or its timeout.
pub(super) struct SensorTask {
    /// The sensor, checked against the spec.
    pub sensor: Sensor,
    /// The absolute URL it waits on, resolved for the run ([`resolve`]).
    pub url: String,
    /// `kind = "kafka"`: the topic and the end of the window ([`kafka_wait`]).
    pub kafka: Option<KafkaWait>,
}

/// What a Kafka sensor waits for: every partition of the topic past `window_end_ms`.
pub(super) struct KafkaWait {
    client: kiln_connectors::kafka::KafkaClient,
    /// End of the source's `days` window (exclusive), ms since the epoch.
    window_end_ms: i64,
    /// Seconds after the window's end after which lagging partitions are let through.
    grace_seconds: Option<f64>,
}

/// The Kafka wait of a `kind = "kafka"` sensor in the run `job` (`None` for other kinds).
pub(super) fn kafka_wait(
    spec: &JobSpec,
    job: &RenderedJob,
    sensor: &Sensor,
) -> anyhow::Result<Option<KafkaWait>> {
    let SensorTarget::Source { source, .. } = &sensor.target else {
        return Ok(None);
    };
    if sensor.config.kind != SensorKind::Kafka {
        return Ok(None);
    }
    let name = &sensor.config.name;
    let src = job
        .sources
        .iter()
        .find(|s| &s.name == source)
        .ok_or_else(|| spec.error(format!("[[pipeline.sensors]] `{name}`: unknown source")))?;
    let address = kiln_connectors::kafka::KafkaAddress::parse(&src.url)?;
    let client = kiln_connectors::kafka::KafkaClient::new(
        address,
        &src.kafka.properties,
        src.kafka
            .timeout_secs
            .map(std::time::Duration::from_secs_f64),
    )?;
    let last = src.days.map_or(0, |[_, last]| last);
    let end = job
        .date
        .checked_add_signed(chrono::Duration::days(last + 1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .ok_or_else(|| anyhow::anyhow!("sensor `{name}`: window end outside the calendar"))?;
    Ok(Some(KafkaWait {
        client,
        window_end_ms: end.and_utc().timestamp_millis(),
        grace_seconds: sensor.config.grace_seconds,
    }))
}

impl KafkaWait {
    /// Whether the window is complete; the partitions' progress for the task's output.
    fn check(&self) -> anyhow::Result<(bool, Json)> {
        let progress = self.client.window_closed(self.window_end_ms)?;
        let all = progress.iter().all(|p| p.closed);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let graced = self
            .grace_seconds
            .is_some_and(|g| now_ms as f64 >= self.window_end_ms as f64 + g * 1000.0);
        Ok((
            all || graced,
            json!({
                "window_end_ms": self.window_end_ms,
                "partitions": progress,
                "released_by_grace": !all && graced,
            }),
        ))
    }
}

/// The absolute URL `sensor` waits on in the run `job` (the spec rendered for the run date
/// with the run's overrides): its `path` rendered and made absolute, or its source's day
/// partition `<source url>/<partition_column>=<D+partition>/` (the source's whole URL when it
/// is not partitioned). Errors name the spec and the sensor.
pub(super) fn resolve(
    spec: &JobSpec,
    job: &RenderedJob,
    sensor: &Sensor,
) -> Result<String, SpecError> {
    let name = &sensor.config.name;
    match &sensor.target {
        SensorTarget::Path(path) => {
            let rendered = kiln_engine::template::render(path, job.date)
                .map_err(|e| spec.error(format!("[[pipeline.sensors]] `{name}` path: {e}")))?;
            spec.absolute_url(&rendered)
                .map_err(|e| spec.error_caused(format!("[[pipeline.sensors]] `{name}` path"), e))
        }
        SensorTarget::Source { source, partition } => {
            let Some(src) = job.sources.iter().find(|s| &s.name == source) else {
                return Err(spec.error(format!(
                    "[[pipeline.sensors]] `{name}` source: unknown source `{source}`"
                )));
            };
            let is_kafka = src.format == kiln_engine::spec::SourceFormat::Kafka;
            if is_kafka != (sensor.config.kind == SensorKind::Kafka) {
                return Err(spec.error(format!(
                    "[[pipeline.sensors]] `{name}`: source `{source}` is read from {} in this \
                     run; use kind = \"{}\"",
                    src.url,
                    if is_kafka {
                        "kafka"
                    } else {
                        "prefix\" or \"manifest"
                    }
                )));
            }
            match partition {
                None => Ok(src.url.clone()),
                Some(p) => src.day_partition_url(job.date, *p).ok_or_else(|| {
                    spec.error(format!(
                        "[[pipeline.sensors]] `{name}` partition = {p}: day {} {p:+} is \
                         outside the calendar",
                        job.date
                    ))
                }),
            }
        }
    }
}

/// The kind as earlier versions spelled it in the fingerprint (`Prefix`, `Manifest`): kept
/// so that recorded fingerprints stay valid.
fn fingerprint_kind(kind: SensorKind) -> &'static str {
    match kind {
        SensorKind::Prefix => "Prefix",
        SensorKind::Manifest => "Manifest",
        SensorKind::Kafka => "Kafka",
    }
}

impl SensorTask {
    fn present(&self) -> anyhow::Result<bool> {
        Ok(self.check()?.0)
    }

    /// Whether the input is there, and what the sensor saw (Kafka: each partition).
    fn check(&self) -> anyhow::Result<(bool, Option<Json>)> {
        match (self.sensor.config.kind, &self.kafka) {
            (SensorKind::Prefix, _) => Ok((prefix_exists(&self.url)?, None)),
            (SensorKind::Manifest, _) => Ok((manifest_sha256(&self.url)?.is_some(), None)),
            (SensorKind::Kafka, Some(wait)) => {
                let (done, seen) = wait.check()?;
                Ok((done, Some(seen)))
            }
            (SensorKind::Kafka, None) => bail!(
                "sensor `{}`: kind = \"kafka\" without a resolved topic",
                self.sensor.config.name
            ),
        }
    }
}

impl Task<TaskId> for SensorTask {
    fn name(&self) -> TaskId {
        TaskId::Sensor(self.sensor.config.name.clone())
    }
    fn deps(&self) -> Vec<TaskId> {
        Vec::new()
    }
    fn policy(&self) -> TaskPolicy {
        // The sensor's own timeout bounds the wait; retries follow the task defaults.
        TaskPolicy {
            retries: 0,
            backoff_seconds: 0.0,
            timeout_seconds: Some(self.sensor.config.timeout_seconds),
        }
    }
    fn fingerprint(&self, _: &Upstream) -> anyhow::Result<String> {
        Ok(sha(&[
            "sensor",
            &self.url,
            fingerprint_kind(self.sensor.config.kind),
        ]))
    }
    fn still_valid(&self, _: &Json) -> bool {
        self.present().unwrap_or(false)
    }
    fn run(&mut self, _: &Attempt, _: &Upstream) -> anyhow::Result<Json> {
        let cfg = &self.sensor.config;
        let start = Instant::now();
        let mut pokes = 0u64;
        loop {
            pokes += 1;
            let (present, seen) = self.check()?;
            if present {
                let mut out = json!({
                    "path": self.url,
                    "kind": cfg.kind,
                    "waited_seconds": start.elapsed().as_secs_f64(),
                    "pokes": pokes,
                });
                if let SensorTarget::Source { source, partition } = &self.sensor.target {
                    out["source"] = json!(source);
                    out["partition"] = json!(partition);
                }
                if let Some(seen) = seen {
                    out["kafka"] = seen;
                }
                return Ok(out);
            }
            if start.elapsed().as_secs_f64() >= cfg.timeout_seconds {
                bail!(
                    "sensor `{}`: {} {}{} did not appear within {:.0} s ({pokes} checks every {} s)",
                    cfg.name,
                    match cfg.kind {
                        SensorKind::Prefix => "input",
                        SensorKind::Manifest => "the committed manifest of",
                        SensorKind::Kafka => "records past the window's end in every partition of",
                    },
                    self.url,
                    describe(&self.sensor.target),
                    cfg.timeout_seconds,
                    cfg.poke_seconds
                );
            }
            let left = cfg.timeout_seconds - start.elapsed().as_secs_f64();
            std::thread::sleep(crate::dag::seconds(cfg.poke_seconds.min(left)));
        }
    }
}

/// Where a resolved URL came from, for messages: ` (source `events`, partition D+1)`.
fn describe(target: &SensorTarget) -> String {
    match target {
        SensorTarget::Path(_) => String::new(),
        SensorTarget::Source {
            source,
            partition: None,
        } => format!(" (source `{source}`)"),
        SensorTarget::Source {
            source,
            partition: Some(0),
        } => format!(" (source `{source}`, partition D)"),
        SensorTarget::Source {
            source,
            partition: Some(p),
        } => format!(" (source `{source}`, partition D{p:+})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use kiln_engine::Overrides;

    /// A spec with a partitioned and an unpartitioned source and one sensor per target.
    const SPEC: &str = r#"
name = "t"
[[sources]]
name = "events"
url = "data/events"
format = "parquet"
partition_column = "dt"
days = [-7, 1]
[[sources]]
name = "items"
url = "data/items/{{ ds }}/"
format = "parquet"
[[features]]
name = "x"
sql = "SELECT * FROM events"
[[outputs]]
statement = "x"
location = "out/x/dt={{ ds }}/"
key = "event_id"
shards = 1
formats = ["parquet"]
[[pipeline.sensors]]
name = "next_day"
source = "events"
partition = 1
[[pipeline.sensors]]
name = "day_before"
source = "events"
partition = -1
kind = "manifest"
[[pipeline.sensors]]
name = "last_read"
source = "events"
[[pipeline.sensors]]
name = "items"
source = "items"
[[pipeline.sensors]]
name = "literal"
path = "data/events/dt={{ ds | add_days(1) }}/"
"#;

    /// The URL of every sensor of [`SPEC`] for 2026-11-20 with `--source` overrides.
    fn urls(overrides: &[(&str, &str)]) -> (std::path::PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, SPEC).unwrap();
        let (spec, pipeline) = crate::config::load(&path).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let overrides = Overrides {
            sources: overrides
                .iter()
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .collect(),
            out: None,
            ..Default::default()
        };
        let job = spec.render(date, &overrides).unwrap();
        let urls = pipeline
            .sensors
            .iter()
            .map(|s| resolve(&spec, &job, s).unwrap())
            .collect();
        (spec.base_dir(), urls)
    }

    #[test]
    fn a_kafka_sensor_waits_for_the_end_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        let spec_text = r#"
name = "t"
[[sources]]
name = "events"
url = "kafka://127.0.0.1:9/events"
format = "kafka"
days = [-7, 1]
schema = ["event_id int64"]
[[sources]]
name = "files"
url = "data/files"
format = "parquet"
partition_column = "dt"
days = [0, 0]
schema = ["event_id int64"]
[[features]]
name = "x"
sql = "SELECT event_id FROM events"
[[outputs]]
statement = "x"
location = "out/x/"
key = "event_id"
shards = 1
formats = ["parquet"]
[[pipeline.sensors]]
name = "topic"
source = "events"
kind = "kafka"
grace_seconds = 600
[[pipeline.sensors]]
name = "files"
source = "files"
"#;
        std::fs::write(&path, spec_text).unwrap();
        let (spec, pipeline) = crate::config::load(&path).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let job = spec.render(date, &Overrides::default()).unwrap();
        let topic = &pipeline.sensors[0];
        assert_eq!(
            resolve(&spec, &job, topic).unwrap(),
            "kafka://127.0.0.1:9/events"
        );
        let wait = kafka_wait(&spec, &job, topic).unwrap().unwrap();
        // days = [-7, 1]: the window ends at the start of D+2.
        assert_eq!(wait.window_end_ms, 1_795_305_600_000); // 2026-11-22T00:00:00Z
        assert_eq!(wait.grace_seconds, Some(600.0));
        assert!(
            kafka_wait(&spec, &job, &pipeline.sensors[1])
                .unwrap()
                .is_none()
        );
        // The file source read from a topic in this run: a prefix sensor cannot wait on it.
        let overridden = Overrides {
            sources: vec![("files".into(), "kafka://127.0.0.1:9/files".into())],
            ..Default::default()
        };
        let job = spec.render(date, &overridden).unwrap();
        let e = resolve(&spec, &job, &pipeline.sensors[1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("use kind = \"kafka\""), "{e}");
    }

    #[test]
    fn a_source_sensor_waits_where_the_run_reads_the_source() {
        let (base, got) = urls(&[]);
        let base = base.display();
        assert_eq!(
            got,
            [
                format!("file://{base}/data/events/dt=2026-11-21/"),
                format!("file://{base}/data/events/dt=2026-11-19/"),
                format!("file://{base}/data/events/dt=2026-11-21/"),
                format!("file://{base}/data/items/2026-11-20/"),
                format!("file://{base}/data/events/dt=2026-11-21/"),
            ]
        );
        // Overrides move the source sensors, never the literal path.
        let (base, got) = urls(&[
            ("events", "s3://other/raw/events/"),
            ("items", "/elsewhere/items/dt={{ ds_nodash }}"),
        ]);
        assert_eq!(
            got,
            [
                "s3://other/raw/events/dt=2026-11-21/".to_string(),
                "s3://other/raw/events/dt=2026-11-19/".to_string(),
                "s3://other/raw/events/dt=2026-11-21/".to_string(),
                "file:///elsewhere/items/dt=20261120".to_string(),
                format!("file://{}/data/events/dt=2026-11-21/", base.display()),
            ]
        );
    }

    #[test]
    fn a_timeout_names_the_resolved_url_and_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(
            &path,
            SPEC.replace(
                "partition = 1\n",
                "partition = 1\npoke_seconds = 0.01\ntimeout_seconds = 0.05\n",
            ),
        )
        .unwrap();
        let (spec, pipeline) = crate::config::load(&path).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let other = dir.path().join("other");
        let job = spec
            .render(
                date,
                &Overrides {
                    sources: vec![("events".into(), other.display().to_string())],
                    out: None,
                    ..Default::default()
                },
            )
            .unwrap();
        let sensor = pipeline.sensors[0].clone();
        let url = resolve(&spec, &job, &sensor).unwrap();
        let mut task = SensorTask {
            sensor,
            url,
            kafka: None,
        };
        let want = format!("file://{}/dt=2026-11-21/", other.display());
        assert_eq!(task.url, want);
        let attempt = Attempt {
            number: 1,
            of: 1,
            log_base: dir.path().join("sensor.attempt-1"),
            timeout: None,
            force: false,
        };
        let e = task
            .run(&attempt, &Upstream::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "sensor `next_day`: input {want} (source `events`, partition D+1) did not appear"
            )),
            "{e}"
        );
        std::fs::create_dir_all(other.join("dt=2026-11-21")).unwrap();
        std::fs::write(other.join("dt=2026-11-21/part-0.parquet"), b"x").unwrap();
        let out = task.run(&attempt, &Upstream::new()).unwrap();
        assert_eq!(out["path"], want.as_str());
        assert_eq!(out["source"], "events");
        assert_eq!(out["partition"], 1);
        assert!(task.still_valid(&out));
    }

    /// Fingerprints recorded by earlier versions still match (a rerun skips the sensor).
    #[test]
    fn fingerprint_is_unchanged() {
        for (kind, debug) in [
            (SensorKind::Prefix, "Prefix"),
            (SensorKind::Manifest, "Manifest"),
        ] {
            assert_eq!(fingerprint_kind(kind), debug);
            assert_eq!(fingerprint_kind(kind), format!("{kind:?}"));
        }
    }
}
