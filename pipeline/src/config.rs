//! The spec's `[pipeline]` section (see `docs/pipeline.md`): model repository, metadata
//! store, per-task retries, sensors, gate, alerts and schedule.
//!
//! Relative paths resolve against the spec file's directory, so a copied job directory is
//! self-contained.
//!
//! This is the spec model: it depends on the task names, the gate's rule parser and the
//! schedule's parser only, never on anything that runs tasks or reads data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_engine::JobSpec;
use serde::{Deserialize, Deserializer, Serialize};

use crate::gate::Rule;
use crate::schedule::Schedule;
pub use crate::schedule::ScheduleConfig;
use crate::task::{TaskKind, TaskPolicy};

/// The longest timeout, backoff or poke interval a spec may ask for (one year): longer
/// values are mistakes, and the doubling of backoffs is capped here.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Checks a number of seconds from the spec: finite, at most [`MAX_SECONDS`], and > 0 (or
/// >= 0 when `zero_ok`). The error names the key as the user wrote it.
fn check_seconds(key: &str, value: f64, zero_ok: bool) -> Result<(), String> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if value.is_finite() && low_ok && value <= MAX_SECONDS {
        return Ok(());
    }
    Err(format!(
        "{key} = {value}: must be a finite number of seconds {} {} and at most {MAX_SECONDS}",
        if zero_ok { ">=" } else { ">" },
        0
    ))
}

/// Environment variable that overrides `[pipeline] metastore`.
pub const METASTORE_ENV: &str = "KILN_METASTORE";

/// `[pipeline]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Model name in the repository (default: the job name).
    #[serde(default)]
    pub model_name: Option<String>,
    /// Model repository root; versions go to `<models_dir>/<model_name>/<version>/`. A path
    /// (relative to the spec's directory) or an `s3://bucket/prefix` /
    /// `hdfs://namenode:port/path` URL.
    #[serde(default = "default_models_dir")]
    pub models_dir: String,
    /// Retention: keep this many newest versions, plus every labelled one.
    #[serde(default = "default_keep")]
    pub keep_versions: usize,
    /// Label a model that passes the gate gets: `stable` (default) or `canary`.
    #[serde(default = "default_promote_to")]
    pub promote_to: kiln_registry::Label,
    /// Run metadata store: a SQLite file path or a `postgres://` URL
    /// (env `KILN_METASTORE` overrides).
    #[serde(default = "default_metastore")]
    pub metastore: String,
    /// Where runs keep logs, training staging directories and evaluation outputs.
    #[serde(default = "default_work_dir")]
    pub work_dir: String,
    /// Training worker processes (`kiln train --workers`) when training locally.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Where the `train` task trains: `local` (worker processes beside `kiln run`) or
    /// `kubernetes` (an indexed Job through the Kubernetes API, `[pipeline.kubernetes]`).
    #[serde(default)]
    pub train_on: TrainOn,
    /// The training Job's pods under `train_on = "kubernetes"`.
    #[serde(default)]
    pub kubernetes: Option<kiln_k8s::TrainCluster>,
    /// Held-out examples the publish step scores again to verify a version.
    #[serde(default = "default_verify_rows")]
    pub verify_rows: usize,
    /// A run lock whose heartbeat is older than this is stale and may be taken over.
    #[serde(default = "default_lock_stale")]
    pub lock_stale_seconds: u64,
    /// When a task times out its process group gets SIGTERM, then SIGKILL this many seconds
    /// later (the trainer writes a checkpoint on SIGTERM).
    #[serde(default = "default_term_grace")]
    pub term_grace_seconds: f64,
    /// Defaults for every task; `[pipeline.tasks.<name>]` overrides per task.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Default backoff before the first retry, seconds (doubles each retry).
    #[serde(default)]
    pub backoff_seconds: Option<f64>,
    /// Default per-attempt timeout, seconds.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Per-task policies: `features`, `train`, `evaluate`, `gate`, `publish`.
    #[serde(default, deserialize_with = "task_policies")]
    pub tasks: BTreeMap<TaskKind, TaskPolicyConfig>,
    /// Sensors: wait for inputs before `features`.
    #[serde(default)]
    pub sensors: Vec<SensorConfig>,
    /// The gate.
    #[serde(default)]
    pub gate: GateConfig,
    /// Alerts.
    #[serde(default)]
    pub alerts: Option<AlertConfig>,
    /// The schedule (`kiln schedule`).
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
}

/// Where the pipeline's `train` task trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    /// `kiln train --workers N` as child processes of `kiln run`.
    #[default]
    Local,
    /// An indexed Job on the cluster (`[pipeline.kubernetes]`), created and watched through
    /// the Kubernetes API; the model comes back from its shared model directory.
    Kubernetes,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_models_dir() -> String {
    "models".into()
}
fn default_keep() -> usize {
    5
}
fn default_promote_to() -> kiln_registry::Label {
    kiln_registry::Label::Stable
}
fn default_metastore() -> String {
    ".kiln/runs.sqlite".into()
}
fn default_work_dir() -> String {
    ".kiln".into()
}
fn default_workers() -> usize {
    1
}
fn default_verify_rows() -> usize {
    32
}
fn default_term_grace() -> f64 {
    crate::proc::TERM_GRACE.as_secs_f64()
}
fn default_lock_stale() -> u64 {
    60
}

/// `[pipeline.tasks.<name>]`: the keys are task names; an unknown one is an error naming the
/// key and the tasks.
fn task_policies<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<TaskKind, TaskPolicyConfig>, D::Error> {
    BTreeMap::<String, TaskPolicyConfig>::deserialize(d)?
        .into_iter()
        .map(|(name, policy)| match name.parse::<TaskKind>() {
            Ok(kind) => Ok((kind, policy)),
            Err(_) => Err(serde::de::Error::custom(format!(
                "[pipeline.tasks.{name}]: unknown task (tasks: {})",
                TaskKind::NAMES.join(", ")
            ))),
        })
        .collect()
}

/// `[pipeline.tasks.<name>]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPolicyConfig {
    /// Retries after the first attempt.
    pub retries: Option<u32>,
    /// Seconds before the first retry; doubles each retry.
    pub backoff_seconds: Option<f64>,
    /// Per-attempt timeout in seconds (the child process is killed).
    pub timeout_seconds: Option<f64>,
}

/// `[[pipeline.sensors]]`: wait until an input exists. It names what it waits on with exactly
/// one of `path` (a literal path or URL) and `source` (a source of the feature spec, with a
/// day `partition`); [`Pipeline::from_spec`] checks that and resolves it to a
/// [`SensorTarget`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// Task name suffix: the task is `sensor:<name>`.
    pub name: String,
    /// Path or URL (templated with the run date, relative to the spec directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A source of the feature spec, as it is rendered for the run (`--source NAME=URL`
    /// overrides applied): the sensor waits for its day partition `partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// With `source`: the day partition to wait for, as an offset from the run date (`1`:
    /// `dt=D+1`). Default: the last day the source reads (the end of its `days`), or `0` (the
    /// run date) when it has no `days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i64>,
    /// `prefix`: any object/file under the path; `manifest`: a committed `_manifest.json`.
    #[serde(default = "default_sensor_kind")]
    pub kind: SensorKind,
    /// Seconds between checks.
    #[serde(default = "default_poke")]
    pub poke_seconds: f64,
    /// Give up after this many seconds.
    #[serde(default = "default_sensor_timeout")]
    pub timeout_seconds: f64,
    /// `kind = "kafka"`: seconds after the end of the source's window after which partitions
    /// that have no record past the end (idle partitions) no longer hold the run back.
    /// Default: wait for every partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_seconds: Option<f64>,
}

/// Where a sensor looks, checked against the spec. A Kafka sensor (`kind = "kafka"`) is a
/// `Source` target whose rendered source is a Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorTarget {
    /// A literal path or URL (`path`), templated with the run date; relative paths resolve
    /// against the spec directory.
    Path(String),
    /// A source of the feature spec (`source`), rendered for the run with its overrides.
    Source {
        /// The source's name.
        source: String,
        /// The day partition to wait for, as an offset from the run date; `None` for a
        /// source without `partition_column`, whose whole (rendered) URL is waited for.
        partition: Option<i64>,
    },
}

impl SensorTarget {
    /// Checks a sensor's `path` / `source` / `partition` against `spec`; the error names the
    /// sensor and the key.
    fn of(spec: &JobSpec, s: &SensorConfig) -> Result<Self, String> {
        let key = |k: &str| format!("[[pipeline.sensors]] `{}` {k}", s.name);
        match (&s.path, &s.source) {
            (Some(_), Some(_)) => Err(format!(
                "[[pipeline.sensors]] `{}`: set one of `path` (a literal path or URL) and \
                 `source` (a source of the spec), not both",
                s.name
            )),
            (None, None) => Err(format!(
                "[[pipeline.sensors]] `{}`: needs `path` (a literal path or URL) or `source` \
                 (a source of the spec, e.g. source = \"events\", partition = 1)",
                s.name
            )),
            (Some(_), None) if s.kind == SensorKind::Kafka => Err(format!(
                "[[pipeline.sensors]] `{}`: kind = \"kafka\" needs `source` (a Kafka source \
                 of the spec), not `path`",
                s.name
            )),
            (Some(path), None) => match s.partition {
                Some(p) => Err(format!(
                    "[[pipeline.sensors]] `{}`: `partition` needs `source`; a `path` is \
                     literal (template it, e.g. dt={{{{ ds | add_days({p}) }}}})",
                    s.name
                )),
                None => Ok(SensorTarget::Path(path.clone())),
            },
            (None, Some(name)) => {
                let Some(source) = spec.sources.iter().find(|src| &src.name == name) else {
                    return Err(format!(
                        "{}: unknown source `{name}` (sources: {})",
                        key("source"),
                        if spec.sources.is_empty() {
                            "none".to_string()
                        } else {
                            spec.sources
                                .iter()
                                .map(|src| src.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ));
                };
                if s.kind == SensorKind::Kafka {
                    if s.partition.is_some() {
                        return Err(format!(
                            "{}: a kafka sensor waits for the end of the source's whole `days` \
                             window (remove `partition`)",
                            key("partition")
                        ));
                    }
                    return Ok(SensorTarget::Source {
                        source: name.clone(),
                        partition: None,
                    });
                }
                let partition = match (&source.partition_column, s.partition) {
                    (None, None) => None,
                    (None, Some(p)) => {
                        return Err(format!(
                            "{} = {p}: source `{name}` has no `partition_column`, so the \
                             sensor waits for its whole URL (remove `partition`)",
                            key("partition")
                        ));
                    }
                    (Some(_), Some(p)) => Some(p),
                    (Some(_), None) => Some(source.days.map_or(0, |[_, last]| last)),
                };
                if let Some(p) = partition
                    && p.abs() > kiln_engine::spec::MAX_DAY_OFFSET
                {
                    return Err(format!(
                        "{} = {p}: must be within ±{} days of the run date",
                        key("partition"),
                        kiln_engine::spec::MAX_DAY_OFFSET
                    ));
                }
                Ok(SensorTarget::Source {
                    source: name.clone(),
                    partition,
                })
            }
        }
    }
}

/// A sensor checked against the spec: as written, and what it waits on.
#[derive(Debug, Clone)]
pub struct Sensor {
    /// As written (defaults filled in).
    pub config: SensorConfig,
    /// What it waits on.
    pub target: SensorTarget,
}

fn default_sensor_kind() -> SensorKind {
    SensorKind::Prefix
}
fn default_poke() -> f64 {
    30.0
}
fn default_sensor_timeout() -> f64 {
    6.0 * 3600.0
}

/// What a sensor waits for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    /// Anything under the path.
    Prefix,
    /// `<path>/_manifest.json` (a committed Kiln dataset).
    Manifest,
    /// A Kafka source's day window is complete: every partition holds a record with a
    /// timestamp at or after the window's end (or `grace_seconds` have passed since it).
    Kafka,
}

/// `[pipeline.gate]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Rules, e.g. `"auc >= 0.70"`, `"auc >= stable + 0.002"`, `"logloss <= stable * 1.01"`.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// `[pipeline.alerts]`. Its `Debug` shows the webhook redacted (the URL carries a token).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Webhook URL receiving a JSON POST on failure or gate rejection.
    pub webhook: String,
    /// Retries after the first attempt.
    #[serde(default = "default_alert_retries")]
    pub retries: u32,
    /// Per-request timeout, seconds.
    #[serde(default = "default_alert_timeout")]
    pub timeout_seconds: f64,
    /// Seconds before the first retry (doubles each retry).
    #[serde(default = "default_alert_backoff")]
    pub backoff_seconds: f64,
}

impl std::fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertConfig")
            .field("webhook", &crate::secret::redact_url(&self.webhook))
            .field("retries", &self.retries)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("backoff_seconds", &self.backoff_seconds)
            .finish()
    }
}

fn default_alert_retries() -> u32 {
    3
}
fn default_alert_timeout() -> f64 {
    10.0
}
fn default_alert_backoff() -> f64 {
    1.0
}

/// The `[pipeline]` section resolved against a spec: absolute paths, checked values.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// As written (defaults filled in).
    pub config: PipelineConfig,
    /// Model name.
    pub model_name: String,
    /// `<models_dir>/<model_name>`: an absolute local path, or an `s3://` / `hdfs://` URL.
    pub repo_url: String,
    /// [`Pipeline::repo_url`] as a path: the model's directory for a local repository; for
    /// one on an object store, the URL (use [`Pipeline::repo`] to reach it).
    pub repo_dir: PathBuf,
    /// Metadata store URL or SQLite path (absolute).
    pub metastore: String,
    /// Work directory (absolute).
    pub work_dir: PathBuf,
    /// Parsed gate rules.
    pub gate: Vec<Rule>,
    /// The sensors, in spec order, checked against the spec's sources.
    pub sensors: Vec<Sensor>,
}

impl Pipeline {
    /// The model repository at [`Pipeline::repo_url`] (local, `s3://` or `hdfs://`).
    pub fn repo(&self) -> Result<kiln_registry::Repo, kiln_registry::RegistryError> {
        kiln_registry::Repo::open(&self.repo_url)
    }

    /// Reads `[pipeline]` from a loaded spec (an absent section means all defaults).
    pub fn from_spec(spec: &JobSpec) -> anyhow::Result<Self> {
        let config: PipelineConfig = match &spec.pipeline {
            Some(t) => toml::Value::Table(t.clone())
                .try_into()
                .map_err(|e| spec.error(format!("[pipeline]: {e}")))?,
            None => PipelineConfig::default(),
        };
        let base = spec.base_dir();
        let model_name = config
            .model_name
            .clone()
            .unwrap_or_else(|| spec.name.clone());
        if model_name.is_empty() || model_name.contains('/') || model_name.starts_with('.') {
            return Err(spec
                .error(format!(
                    "[pipeline] model_name `{model_name}`: must be a non-empty directory name"
                ))
                .into());
        }
        if config.keep_versions == 0 {
            return Err(spec
                .error("[pipeline] keep_versions must be at least 1")
                .into());
        }
        if config.workers == 0 {
            return Err(spec.error("[pipeline] workers must be at least 1").into());
        }
        match (config.train_on, &config.kubernetes) {
            (TrainOn::Kubernetes, Some(k)) => k
                .check()
                .map_err(|e| spec.error(format!("[pipeline.kubernetes] {e}")))?,
            (TrainOn::Kubernetes, None) => {
                return Err(spec
                    .error(
                        "[pipeline] train_on = \"kubernetes\" needs [pipeline.kubernetes] \
                         (image, workers, models_dir: where the pods write the model)",
                    )
                    .into());
            }
            (TrainOn::Local, Some(_)) => {
                return Err(spec
                    .error(
                        "[pipeline.kubernetes] is set but train_on is \"local\": set \
                         train_on = \"kubernetes\" or remove the section",
                    )
                    .into());
            }
            (TrainOn::Local, None) => {}
        }
        if config.lock_stale_seconds == 0 {
            return Err(spec
                .error("[pipeline] lock_stale_seconds = 0: must be at least 1")
                .into());
        }
        Self::check_durations(&config).map_err(|e| spec.error(e))?;
        let mut seen = std::collections::BTreeSet::new();
        let mut sensors = Vec::new();
        for s in &config.sensors {
            if !seen.insert(s.name.clone()) {
                return Err(spec
                    .error(format!(
                        "[[pipeline.sensors]] `{}` is defined twice",
                        s.name
                    ))
                    .into());
            }
            sensors.push(Sensor {
                config: s.clone(),
                target: SensorTarget::of(spec, s).map_err(|e| spec.error(e))?,
            });
        }
        let gate = config
            .gate
            .rules
            .iter()
            .map(|r| Rule::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| spec.error(format!("[pipeline.gate] rules: {e}")))?;
        if let Some(s) = &config.schedule {
            Schedule::new(s).map_err(|e| spec.error(format!("[pipeline.schedule]: {e:#}")))?;
        }
        let metastore = std::env::var(METASTORE_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| config.metastore.clone());
        let metastore = if metastore.contains("://") {
            metastore
        } else {
            resolve_path(&base, &metastore).display().to_string()
        };
        let repo_url =
            if config.models_dir.contains("://") && !config.models_dir.starts_with("file://") {
                format!("{}/{model_name}", config.models_dir.trim_end_matches('/'))
            } else {
                let dir = config
                    .models_dir
                    .strip_prefix("file://")
                    .unwrap_or(&config.models_dir);
                resolve_path(&base, dir)
                    .join(&model_name)
                    .display()
                    .to_string()
            };
        Ok(Pipeline {
            repo_dir: PathBuf::from(&repo_url),
            repo_url,
            work_dir: resolve_path(&base, &config.work_dir),
            model_name,
            metastore,
            gate,
            sensors,
            config,
        })
    }

    /// Every timeout, backoff and poke interval of `config` is a usable number of seconds
    /// (`Duration::from_secs_f64` panics on negative, NaN and infinite values); the error
    /// names the key.
    fn check_durations(config: &PipelineConfig) -> Result<(), String> {
        check_seconds(
            "[pipeline] term_grace_seconds",
            config.term_grace_seconds,
            true,
        )?;
        if let Some(t) = config.timeout_seconds {
            check_seconds("[pipeline] timeout_seconds", t, false)?;
        }
        if let Some(b) = config.backoff_seconds {
            check_seconds("[pipeline] backoff_seconds", b, true)?;
        }
        for (task, p) in &config.tasks {
            if let Some(t) = p.timeout_seconds {
                check_seconds(
                    &format!("[pipeline.tasks.{task}] timeout_seconds"),
                    t,
                    false,
                )?;
            }
            if let Some(b) = p.backoff_seconds {
                check_seconds(&format!("[pipeline.tasks.{task}] backoff_seconds"), b, true)?;
            }
        }
        for s in &config.sensors {
            let key = |k: &str| format!("[[pipeline.sensors]] `{}` {k}", s.name);
            check_seconds(&key("poke_seconds"), s.poke_seconds, false)?;
            check_seconds(&key("timeout_seconds"), s.timeout_seconds, false)?;
        }
        if let Some(a) = &config.alerts {
            check_seconds(
                "[pipeline.alerts] timeout_seconds",
                a.timeout_seconds,
                false,
            )?;
            check_seconds("[pipeline.alerts] backoff_seconds", a.backoff_seconds, true)?;
        }
        Ok(())
    }

    /// The retry/timeout policy of a fixed task (`sensor:*` tasks use their own timeout).
    pub fn policy(&self, task: TaskKind) -> TaskPolicy {
        let t = self.config.tasks.get(&task).cloned().unwrap_or_default();
        TaskPolicy {
            retries: t.retries.or(self.config.retries).unwrap_or(0),
            backoff_seconds: t
                .backoff_seconds
                .or(self.config.backoff_seconds)
                .unwrap_or(10.0),
            timeout_seconds: t.timeout_seconds.or(self.config.timeout_seconds),
        }
    }
}

/// `rel` against `base` unless absolute (a `file://` prefix is accepted).
pub fn resolve_path(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.strip_prefix("file://").unwrap_or(rel);
    let p = Path::new(rel);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Loads a spec and its pipeline section.
pub fn load(spec_path: &Path) -> anyhow::Result<(JobSpec, Pipeline)> {
    let spec = JobSpec::load(spec_path)?;
    let pipeline = Pipeline::from_spec(&spec)?;
    Ok((spec, pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_pipeline_section_is_valid() {
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
        let (spec, p) = load(&spec).unwrap();
        let base = spec.base_dir();
        assert_eq!(p.model_name, "daily_ctr");
        assert_eq!(
            p.repo_url,
            base.join("models/daily_ctr").display().to_string()
        );
        if std::env::var_os(METASTORE_ENV).is_none() {
            assert_eq!(
                p.metastore,
                base.join(".kiln/runs.sqlite").display().to_string()
            );
        }
        assert_eq!(p.gate.len(), 3);
        assert_eq!(p.policy(TaskKind::Train).retries, 2);
        assert_eq!(p.policy(TaskKind::Features).retries, 1);
        assert_eq!(p.policy(TaskKind::Features).timeout_seconds, None);
        assert_eq!(p.config.sensors[0].kind, SensorKind::Prefix);
        assert_eq!(
            p.sensors[0].target,
            SensorTarget::Source {
                source: "events".into(),
                partition: Some(1)
            }
        );
        assert!(p.config.schedule.as_ref().unwrap().catch_up);
    }

    /// Loads the example spec with each `from` replaced by its `to` (once), from a copy in
    /// `dir`; returns the copy's path and the outcome.
    fn load_example_edited(
        dir: &Path,
        edits: &[(&str, &str)],
    ) -> (PathBuf, anyhow::Result<(JobSpec, Pipeline)>) {
        let mut text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml"),
        )
        .unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            text = text.replacen(from, to, 1);
        }
        let p = dir.join("job.toml");
        std::fs::write(&p, text).unwrap();
        let loaded = load(&p);
        (p, loaded)
    }

    /// Loads the example spec with `edits` applied; the error names the spec file and
    /// contains `want`.
    fn check_example_edits(edits: &[(&str, &str)], want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let (p, loaded) = load_example_edited(dir.path(), edits);
        let e = format!("{:#}", loaded.err().unwrap());
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains(want), "{e}");
    }

    /// [`check_example_edits`] with one edit.
    fn check_example_edit(from: &str, to: &str, want: &str) {
        check_example_edits(&[(from, to)], want);
    }

    /// The example's sensor lines, edited below.
    const SENSOR_SOURCE: &str = "source = \"events\"\n";
    const SENSOR_PARTITION: &str = "partition = 1                      # dt = run date + 1\n";
    /// The example source's partitioning.
    const SOURCE_PARTITIONS: &str = "partition_column = \"dt\"\n";
    const SOURCE_DAYS: &str = "days = [-7, 1]\n";

    #[test]
    fn a_sensor_names_one_path_or_one_known_source() {
        let check = check_example_edits;
        check(
            &[(SENSOR_SOURCE, "source = \"events\"\npath = \"data/x/\"\n")],
            "[[pipeline.sensors]] `events_next_day`: set one of `path` (a literal path or URL) \
             and `source` (a source of the spec), not both",
        );
        check(
            &[(SENSOR_SOURCE, ""), (SENSOR_PARTITION, "")],
            "[[pipeline.sensors]] `events_next_day`: needs `path` (a literal path or URL) or \
             `source`",
        );
        check(
            &[(SENSOR_SOURCE, "path = \"data/events/\"\n")],
            "[[pipeline.sensors]] `events_next_day`: `partition` needs `source`; a `path` is \
             literal (template it, e.g. dt={{ ds | add_days(1) }})",
        );
        check(
            &[(SENSOR_SOURCE, "source = \"evnts\"\n")],
            "[[pipeline.sensors]] `events_next_day` source: unknown source `evnts` (sources: \
             events)",
        );
        check(
            &[(SENSOR_PARTITION, "partition = -4000\n")],
            "[[pipeline.sensors]] `events_next_day` partition = -4000: must be within ±3660 \
             days of the run date",
        );
        check(
            &[(SOURCE_PARTITIONS, ""), (SOURCE_DAYS, "")],
            "[[pipeline.sensors]] `events_next_day` partition = 1: source `events` has no \
             `partition_column`, so the sensor waits for its whole URL (remove `partition`)",
        );
        check(
            &[(SENSOR_SOURCE, "source = 7\n")],
            "[pipeline]: invalid type: integer `7`, expected a string",
        );
    }

    #[test]
    fn the_model_repository_may_be_a_path_or_an_s3_or_hdfs_url() {
        let repo_url = |models_dir: &str| {
            let dir = tempfile::tempdir().unwrap();
            let line = format!("models_dir = \"{models_dir}\"");
            let (_, loaded) =
                load_example_edited(dir.path(), &[("models_dir = \"models\"", line.as_str())]);
            let (spec, pipeline) = loaded.unwrap();
            (spec.base_dir(), pipeline)
        };
        let (_, p) = repo_url("s3://lake/models/");
        assert_eq!(p.repo_url, "s3://lake/models/daily_ctr");
        assert!(p.repo().unwrap().is_remote());
        let (_, p) = repo_url("hdfs://127.0.0.1:9000/kiln/models");
        assert_eq!(p.repo_url, "hdfs://127.0.0.1:9000/kiln/models/daily_ctr");
        assert!(p.repo().unwrap().is_remote());
        let (base, p) = repo_url("repo");
        assert_eq!(
            p.repo_url,
            base.join("repo/daily_ctr").display().to_string()
        );
        assert!(!p.repo().unwrap().is_remote());
        let (_, p) = repo_url("file:///srv/models");
        assert_eq!(p.repo_url, "/srv/models/daily_ctr");
        assert!(!p.repo().unwrap().is_remote());
    }

    #[test]
    fn a_source_sensor_defaults_to_the_last_day_the_source_reads() {
        let target = |edits: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let (_, loaded) = load_example_edited(dir.path(), edits);
            let (_, p) = loaded.unwrap();
            p.sensors[0].target.clone()
        };
        let source = |partition| SensorTarget::Source {
            source: "events".into(),
            partition,
        };
        // days = [-7, 1]: the newest partition the features read is D+1.
        assert_eq!(target(&[(SENSOR_PARTITION, "")]), source(Some(1)));
        assert_eq!(
            target(&[(SENSOR_PARTITION, ""), (SOURCE_DAYS, "days = [-7, 0]\n")]),
            source(Some(0))
        );
        // No `days` (every partition is read): the run date.
        assert_eq!(
            target(&[(SENSOR_PARTITION, ""), (SOURCE_DAYS, "")]),
            source(Some(0))
        );
        assert_eq!(
            target(&[(SENSOR_PARTITION, "partition = -2\n")]),
            source(Some(-2))
        );
        // Not partitioned: the source's whole URL.
        assert_eq!(
            target(&[
                (SENSOR_PARTITION, ""),
                (SOURCE_PARTITIONS, ""),
                (SOURCE_DAYS, "")
            ]),
            source(None)
        );
        // A literal path stays possible.
        assert_eq!(
            target(&[
                (SENSOR_PARTITION, ""),
                (SENSOR_SOURCE, "path = \"data/events/dt={{ ds }}/\"\n")
            ]),
            SensorTarget::Path("data/events/dt={{ ds }}/".into())
        );
    }

    #[test]
    fn a_kafka_sensor_waits_on_a_whole_source_window() {
        let dir = tempfile::tempdir().unwrap();
        let kafka = "kind = \"kafka\"\n";
        let (_, loaded) = load_example_edited(
            dir.path(),
            &[(SENSOR_PARTITION, ""), ("kind = \"prefix\"\n", kafka)],
        );
        let (_, p) = loaded.unwrap();
        assert_eq!(p.sensors[0].config.kind, SensorKind::Kafka);
        assert_eq!(
            p.sensors[0].target,
            SensorTarget::Source {
                source: "events".into(),
                partition: None
            }
        );
        check_example_edits(
            &[("kind = \"prefix\"\n", kafka)],
            "a kafka sensor waits for the end of the source's whole `days` window",
        );
        check_example_edits(
            &[
                (SENSOR_PARTITION, ""),
                ("kind = \"prefix\"\n", kafka),
                (SENSOR_SOURCE, "path = \"data/x\"\n"),
            ],
            "kind = \"kafka\" needs `source`",
        );
    }

    #[test]
    fn training_on_kubernetes_needs_its_section_and_a_shared_models_dir() {
        const WORKERS: &str = "workers = 2 ";
        const TRAIN_ON: &str = "workers = 2\ntrain_on = \"kubernetes\"\n";
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The section goes at the end of the file, after every other [pipeline.*] table.
        let load = |section: &str| {
            let p = dir.path().join("k8s.toml");
            std::fs::write(&p, text.replacen(WORKERS, TRAIN_ON, 1) + section).unwrap();
            Pipeline::from_spec(&JobSpec::load(&p).unwrap())
        };
        let pl = load(
            "\n[pipeline.kubernetes]\nimage = \"r.example/kiln:1\"\nworkers = 4\n\
             gpus_per_worker = 1\nmodels_dir = \"s3://models/train\"\n",
        )
        .unwrap();
        assert_eq!(pl.config.train_on, TrainOn::Kubernetes);
        let k = pl.config.kubernetes.unwrap();
        assert_eq!((k.workers, k.gpus_per_worker, k.world()), (4, 1, 4));
        assert_eq!((k.namespace.as_str(), k.poll_seconds), ("kiln", 10.0));
        let e = format!(
            "{:#}",
            load("\n[pipeline.kubernetes]\nmodels_dir = \"/var/models\"\n").unwrap_err()
        );
        assert!(
            e.contains("[pipeline.kubernetes] models_dir `/var/models`: the pods write there"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load("\n[pipeline.kubernetes]\nworker = 4\n").unwrap_err()
        );
        assert!(e.contains("unknown field `worker`"), "{e}");
        check_example_edit(
            WORKERS,
            TRAIN_ON,
            "train_on = \"kubernetes\" needs [pipeline.kubernetes]",
        );
        check_example_edit(WORKERS, "train_on = \"moon\"\n", "unknown variant `moon`");
    }

    #[test]
    fn mistakes_name_the_spec_and_the_key() {
        let check = check_example_edit;
        check(
            "keep_versions = 5",
            "keep_version = 5",
            "unknown field `keep_version`",
        );
        check(
            "[pipeline.tasks.train]",
            "[pipeline.tasks.trian]",
            "[pipeline.tasks.trian]: unknown task (tasks: features, validate, train, evaluate, gate, publish)",
        );
        check("\"auc >= 0.60\"", "\"auc => 0.60\"", "rule `auc => 0.60`");
        check("Europe/Berlin", "Europe/Berln", "timezone `Europe/Berln`");
    }

    #[test]
    fn bad_durations_are_errors_naming_the_key() {
        let check = check_example_edit;
        check(
            "backoff_seconds = 10 ",
            "backoff_seconds = -1 ",
            "[pipeline] backoff_seconds = -1: must be a finite number of seconds >= 0",
        );
        check(
            "backoff_seconds = 10 ",
            "backoff_seconds = nan ",
            "[pipeline] backoff_seconds = NaN",
        );
        check(
            "backoff_seconds = 10 ",
            "backoff_seconds = 10\ntimeout_seconds = inf",
            "[pipeline] timeout_seconds = inf",
        );
        check(
            "timeout_seconds = 7200",
            "timeout_seconds = -5",
            "[pipeline.tasks.train] timeout_seconds = -5: must be a finite number of seconds > 0",
        );
        check(
            "timeout_seconds = 7200",
            "timeout_seconds = 0",
            "[pipeline.tasks.train] timeout_seconds = 0",
        );
        check(
            "timeout_seconds = 7200",
            "timeout_seconds = 7200\nbackoff_seconds = -inf",
            "[pipeline.tasks.train] backoff_seconds = -inf",
        );
        check(
            "poke_seconds = 60",
            "poke_seconds = -60",
            "[[pipeline.sensors]] `events_next_day` poke_seconds = -60",
        );
        check(
            "timeout_seconds = 21600",
            "timeout_seconds = nan",
            "[[pipeline.sensors]] `events_next_day` timeout_seconds = NaN",
        );
        check(
            "keep_versions = 5 ",
            "lock_stale_seconds = 0\nkeep_versions = 5 ",
            "[pipeline] lock_stale_seconds = 0: must be at least 1",
        );
        check(
            "# [pipeline.alerts]\n# webhook = \"https://hooks.example.com/kiln\"",
            "[pipeline.alerts]\nwebhook = \"https://hooks.example.com/kiln\"\ntimeout_seconds = inf",
            "[pipeline.alerts] timeout_seconds = inf",
        );
        check(
            "backoff_seconds = 10 ",
            "backoff_seconds = 1e300 ",
            "[pipeline] backoff_seconds = 1000000000000000000000",
        );
    }
}
