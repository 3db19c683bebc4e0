//! One daily run (`kiln run SPEC --date D`): lock, DAG of tasks, records, alerts.
//!
//! Tasks, in order: `sensor:<name>`... -> `features` -> `validate` -> `train` -> `evaluate`
//! -> `gate` -> `publish`. `features`, `train` and `evaluate` run as child processes of this binary
//! (`kiln features|train|predict --json`) with logs per attempt; `gate` and `publish` run in
//! process; so does `validate`, which reads the anomalies recorded in the outputs'
//! manifests. Training uses a staging model directory that is stable across reruns of the same
//! job and date (`<work_dir>/staging/<job>/<date>/model`), so a rerun after a crash resumes
//! from its checkpoint.
//!
//! Layout: `driver` plans and drives one run; one module per task (`sensor`, `features`,
//! `train`, `evaluate`, `gate`, `publish`) over the shared run facts in `ctx` and the storage
//! helpers in `objects`; `recorder` writes what happens to the metadata store, the terminal
//! and the run log; `lock` holds the run lock.

mod ctx;
mod driver;
mod evaluate;
mod features;
mod gate;
mod lock;
mod objects;
mod publish;
mod recorder;
mod sensor;
mod train;
mod validate;

use std::path::PathBuf;

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::Value as Json;

use crate::dag::TaskOutcome;
use crate::gate::Decision;
use crate::metastore::LockHolder;
use crate::status::{RunStatus, Trigger};
use crate::task::TaskId;

pub use driver::run;

/// What to run.
#[derive(Debug, Clone)]
pub struct Request {
    /// The job spec.
    pub spec: PathBuf,
    /// Run date.
    pub date: NaiveDate,
    /// `--source NAME=URL` overrides.
    pub sources: Vec<(String, String)>,
    /// `--out URL` override.
    pub out: Option<String>,
    /// Rerun tasks that already succeeded with the same inputs.
    pub force: bool,
    /// `run`, `backfill` or `schedule`.
    pub trigger: Trigger,
    /// `--accept`: anomaly subjects (columns, `@rows`, `@all`) accepted by a human.
    pub accept: Vec<String>,
    /// `--quiet`: no progress line on the terminal.
    pub quiet: bool,
}

/// The result of a run (`kiln run --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run id in the metadata store.
    pub run_id: i64,
    /// Job name.
    pub job: String,
    /// Run date.
    pub date: String,
    /// `success`, `rejected` (the gate refused the model), `anomalies` (data validation
    /// stopped the run) or `failed`.
    pub status: RunStatus,
    /// The anomalies recorded for the day's outputs (`statement`, anomaly), accepted or not.
    pub anomalies: Vec<Json>,
    /// The version published (or kept as a rejected candidate).
    pub model_version: Option<u64>,
    /// Its directory.
    pub model_path: Option<String>,
    /// Held-out metrics.
    pub metrics: Option<Json>,
    /// The gate's decision.
    pub gate: Option<Decision>,
    /// Every task's outcome.
    pub tasks: Vec<TaskOutcome<TaskId>>,
    /// The run's log directory.
    pub log_dir: String,
    /// The metadata store.
    pub metastore: String,
    /// What failed.
    pub error: Option<String>,
    /// The alert's delivery, when one was sent.
    pub alert: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Another process holds the run lock of this job and date.
#[derive(Debug, thiserror::Error)]
#[error(
    "{job} {date} is already running: lock {holder}; refusing to start a second run (metadata store {store})"
)]
pub struct AlreadyRunning {
    /// Job.
    pub job: String,
    /// Date.
    pub date: String,
    /// The holder.
    pub holder: LockHolder,
    /// Where the lock lives.
    pub store: String,
}
