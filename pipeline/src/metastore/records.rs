//! Run records: runs, their tasks, attempts and events — written as a run proceeds, read by
//! skip checks (`last_success`) and `kiln runs`.
//!
//! Statuses and names are closed sets ([`crate::status`], [`crate::task`]), stored as their
//! names; a row holding a name outside the set is an error that names the row and the value.

use anyhow::Context;
use serde::Serialize;
use serde_json::Value as Json;

use super::{Store, Value, hostname, now_text, seconds_since};
use crate::status::{AttemptStatus, EventKind, RunStatus, TaskStatus, Trigger};
use crate::task::TaskId;

/// A new run's fixed facts.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Job name.
    pub job: String,
    /// Run date, `YYYY-MM-DD`.
    pub run_date: String,
    /// `run`, `backfill` or `schedule`.
    pub trigger: Trigger,
    /// Spec file.
    pub spec_path: String,
    /// SHA-256 of the spec file.
    pub spec_sha256: String,
    /// Command-line overrides (JSON).
    pub overrides: Json,
    /// The run's log directory.
    pub log_dir: String,
    /// The `[train]` table (JSON).
    pub hyperparams: Json,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// `success`, `rejected` or `failed`.
    pub status: RunStatus,
    /// Input lineage: manifest hashes, upstream outputs.
    pub lineage: Json,
    /// Held-out metrics.
    pub metrics: Option<Json>,
    /// Gate decision.
    pub gate: Option<Json>,
    /// Published model version.
    pub model_version: Option<i64>,
    /// Error (failed runs).
    pub error: Option<String>,
}

/// A run as stored.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub id: i64,
    /// Job name.
    pub job: String,
    /// Run date.
    pub run_date: String,
    /// `run`, `backfill`, `schedule`.
    pub trigger: Trigger,
    /// `running`, `success`, `rejected`, `failed`.
    pub status: RunStatus,
    /// Start time (UTC).
    pub started_at: String,
    /// End time (UTC).
    pub finished_at: Option<String>,
    /// Wall time.
    pub seconds: Option<f64>,
    /// Host that ran it.
    pub host: String,
    /// Process id of `kiln run`.
    pub pid: i64,
    /// Kiln version.
    pub kiln_version: String,
    /// Spec file.
    pub spec_path: String,
    /// Spec SHA-256.
    pub spec_sha256: String,
    /// Overrides.
    pub overrides: Json,
    /// Log directory.
    pub log_dir: String,
    /// Training hyperparameters.
    pub hyperparams: Option<Json>,
    /// Input lineage.
    pub lineage: Option<Json>,
    /// Metrics.
    pub metrics: Option<Json>,
    /// Gate decision.
    pub gate: Option<Json>,
    /// Model version published (or kept as a rejected candidate).
    pub model_version: Option<i64>,
    /// Error.
    pub error: Option<String>,
}

/// A task of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: i64,
    /// Run id.
    pub run_id: i64,
    /// Task name.
    pub name: TaskId,
    /// `running`, `success`, `failed`, `skipped`, `upstream_failed`.
    pub status: TaskStatus,
    /// Input fingerprint.
    pub fingerprint: String,
    /// Start time.
    pub started_at: String,
    /// End time.
    pub finished_at: Option<String>,
    /// Wall time.
    pub seconds: Option<f64>,
    /// Attempts made.
    pub attempts: i64,
    /// The task's result (JSON).
    pub output: Option<Json>,
    /// Error.
    pub error: Option<String>,
}

/// One attempt of a task.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// Attempt id.
    pub id: i64,
    /// Task id.
    pub task_id: i64,
    /// 1-based attempt number.
    pub attempt: i64,
    /// `running`, `success`, `failed` (a timeout is `failed`, with the timeout in `error`).
    pub status: AttemptStatus,
    /// Start time.
    pub started_at: String,
    /// End time.
    pub finished_at: Option<String>,
    /// Wall time.
    pub seconds: Option<f64>,
    /// Log file.
    pub log_path: Option<String>,
    /// Error.
    pub error: Option<String>,
}

/// An event recorded with a run (alerts, lock takeovers).
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// When.
    pub at: String,
    /// `alert`, `lock` or `accept`.
    pub kind: EventKind,
    /// What happened.
    pub message: String,
}

/// A run with its tasks, attempts and events.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: RunRecord,
    /// Tasks in execution order, each with its attempts.
    pub tasks: Vec<TaskDetail>,
    /// Events.
    pub events: Vec<EventRecord>,
}

/// A task with its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct TaskDetail {
    /// The task.
    #[serde(flatten)]
    pub task: TaskRecord,
    /// Its attempts.
    pub attempt_log: Vec<AttemptRecord>,
}

const RUN_COLUMNS: &str = "id, job, run_date, trigger_kind, status, started_at, finished_at, seconds, host, pid, kiln_version, spec_path, spec_sha256, overrides, log_dir, hyperparams, lineage, metrics, gate, model_version, error";
const TASK_COLUMNS: &str = "id, run_id, name, status, fingerprint, started_at, finished_at, seconds, attempts, output, error";
const ATTEMPT_COLUMNS: &str =
    "id, task_id, attempt, status, started_at, finished_at, seconds, log_path, error";

/// Column `i` of a row of `table` as one of a closed set of names.
fn name_at<T: std::str::FromStr<Err = crate::names::UnknownName>>(
    r: &[Value],
    i: usize,
    table: &str,
    column: &str,
) -> anyhow::Result<T> {
    r[i].name().with_context(|| {
        format!(
            "{table} row {}: column {column}",
            r[0].int().map_or("?".into(), |id| id.to_string())
        )
    })
}

fn run_from(r: &[Value]) -> anyhow::Result<RunRecord> {
    Ok(RunRecord {
        id: r[0].int().unwrap_or_default(),
        job: r[1].text().unwrap_or_default(),
        run_date: r[2].text().unwrap_or_default(),
        trigger: name_at(r, 3, "kiln_runs", "trigger_kind")?,
        status: name_at(r, 4, "kiln_runs", "status")?,
        started_at: r[5].text().unwrap_or_default(),
        finished_at: r[6].text(),
        seconds: r[7].real(),
        host: r[8].text().unwrap_or_default(),
        pid: r[9].int().unwrap_or_default(),
        kiln_version: r[10].text().unwrap_or_default(),
        spec_path: r[11].text().unwrap_or_default(),
        spec_sha256: r[12].text().unwrap_or_default(),
        overrides: r[13].json().unwrap_or(Json::Null),
        log_dir: r[14].text().unwrap_or_default(),
        hyperparams: r[15].json(),
        lineage: r[16].json(),
        metrics: r[17].json(),
        gate: r[18].json(),
        model_version: r[19].int(),
        error: r[20].text(),
    })
}

fn task_from(r: &[Value]) -> anyhow::Result<TaskRecord> {
    Ok(TaskRecord {
        id: r[0].int().unwrap_or_default(),
        run_id: r[1].int().unwrap_or_default(),
        name: name_at(r, 2, "kiln_tasks", "name")?,
        status: name_at(r, 3, "kiln_tasks", "status")?,
        fingerprint: r[4].text().unwrap_or_default(),
        started_at: r[5].text().unwrap_or_default(),
        finished_at: r[6].text(),
        seconds: r[7].real(),
        attempts: r[8].int().unwrap_or_default(),
        output: r[9].json(),
        error: r[10].text(),
    })
}

fn attempt_from(r: &[Value]) -> anyhow::Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: r[0].int().unwrap_or_default(),
        task_id: r[1].int().unwrap_or_default(),
        attempt: r[2].int().unwrap_or_default(),
        status: name_at(r, 3, "kiln_attempts", "status")?,
        started_at: r[4].text().unwrap_or_default(),
        finished_at: r[5].text(),
        seconds: r[6].real(),
        log_path: r[7].text(),
        error: r[8].text(),
    })
}

fn event_from(r: &[Value]) -> anyhow::Result<EventRecord> {
    Ok(EventRecord {
        at: r[1].text().unwrap_or_default(),
        kind: name_at(r, 2, "kiln_events", "kind")?,
        message: r[3].text().unwrap_or_default(),
    })
}

impl Store {
    /// Records a new run (status `running`); returns its id.
    pub fn start_run(&mut self, r: &NewRun) -> anyhow::Result<i64> {
        self.fenced(|s| {
            s.insert_returning_id(
                "INSERT INTO kiln_runs (job, run_date, trigger_kind, status, started_at, host, pid, kiln_version, spec_path, spec_sha256, overrides, log_dir, hyperparams)
                 VALUES ($1, $2, $3, $13, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                &[
                    r.job.as_str().into(),
                    r.run_date.as_str().into(),
                    r.trigger.into(),
                    now_text().into(),
                    hostname().into(),
                    (std::process::id() as i64).into(),
                    env!("CARGO_PKG_VERSION").into(),
                    r.spec_path.as_str().into(),
                    r.spec_sha256.as_str().into(),
                    (&r.overrides).into(),
                    r.log_dir.as_str().into(),
                    (&r.hyperparams).into(),
                    RunStatus::Running.into(),
                ],
            )
        })
    }

    /// Records how a run ended.
    pub fn finish_run(&mut self, run_id: i64, o: &RunOutcome) -> anyhow::Result<()> {
        self.fenced(|s| {
            let started = s
                .db
                .query(
                    "SELECT started_at FROM kiln_runs WHERE id = $1",
                    &[run_id.into()],
                )?
                .first()
                .and_then(|r| r[0].text())
                .with_context(|| format!("run {run_id} not found"))?;
            s.db.execute(
                "UPDATE kiln_runs SET status = $2, finished_at = $3, seconds = $4, lineage = $5, metrics = $6, gate = $7, model_version = $8, error = $9 WHERE id = $1",
                &[
                    run_id.into(),
                    o.status.into(),
                    now_text().into(),
                    seconds_since(&started).into(),
                    (&o.lineage).into(),
                    o.metrics.as_ref().into(),
                    o.gate.as_ref().into(),
                    o.model_version.into(),
                    o.error.clone().into(),
                ],
            )?;
            Ok(())
        })
    }

    /// Records a task starting (status `running`) or skipped (status `skipped`, with the
    /// reused output); returns its id.
    pub fn start_task(
        &mut self,
        run_id: i64,
        name: &TaskId,
        fingerprint: &str,
        status: TaskStatus,
        output: Option<&Json>,
    ) -> anyhow::Result<i64> {
        self.fenced(|s| {
            let now = now_text();
            let finished = (status != TaskStatus::Running).then(|| now.clone());
            s.insert_returning_id(
                "INSERT INTO kiln_tasks (run_id, name, status, fingerprint, started_at, finished_at, seconds, output)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[
                    run_id.into(),
                    name.into(),
                    status.into(),
                    fingerprint.into(),
                    now.into(),
                    finished.into(),
                    (status != TaskStatus::Running).then_some(0.0).into(),
                    output.into(),
                ],
            )
        })
    }

    /// Records how a task ended.
    pub fn finish_task(
        &mut self,
        task_id: i64,
        status: TaskStatus,
        attempts: u32,
        output: Option<&Json>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        self.fenced(|s| {
            let started = s
                .db
                .query(
                    "SELECT started_at FROM kiln_tasks WHERE id = $1",
                    &[task_id.into()],
                )?
                .first()
                .and_then(|r| r[0].text())
                .unwrap_or_default();
            s.db.execute(
                "UPDATE kiln_tasks SET status = $2, finished_at = $3, seconds = $4, attempts = $5, output = $6, error = $7 WHERE id = $1",
                &[
                    task_id.into(),
                    status.into(),
                    now_text().into(),
                    seconds_since(&started).into(),
                    (attempts as i64).into(),
                    output.into(),
                    error.into(),
                ],
            )?;
            Ok(())
        })
    }

    /// Records an attempt starting (status `running`); returns its id.
    pub fn start_attempt(
        &mut self,
        task_id: i64,
        attempt: u32,
        log_path: &str,
    ) -> anyhow::Result<i64> {
        self.fenced(|s| {
            s.insert_returning_id(
                "INSERT INTO kiln_attempts (task_id, attempt, status, started_at, log_path)
                 VALUES ($1, $2, $5, $3, $4) RETURNING id",
                &[
                    task_id.into(),
                    (attempt as i64).into(),
                    now_text().into(),
                    log_path.into(),
                    AttemptStatus::Running.into(),
                ],
            )
        })
    }

    /// Records how an attempt ended (`success` or `failed`).
    pub fn finish_attempt(
        &mut self,
        attempt_id: i64,
        status: AttemptStatus,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        self.fenced(|s| {
            let started = s
                .db
                .query(
                    "SELECT started_at FROM kiln_attempts WHERE id = $1",
                    &[attempt_id.into()],
                )?
                .first()
                .and_then(|r| r[0].text())
                .unwrap_or_default();
            s.db.execute(
                "UPDATE kiln_attempts SET status = $2, finished_at = $3, seconds = $4, error = $5 WHERE id = $1",
                &[
                    attempt_id.into(),
                    status.into(),
                    now_text().into(),
                    seconds_since(&started).into(),
                    error.into(),
                ],
            )?;
            Ok(())
        })
    }

    /// The newest successful (or skipped-as-done) task `name` of `job` on `date`.
    pub fn last_success(
        &mut self,
        job: &str,
        date: &str,
        name: &TaskId,
    ) -> anyhow::Result<Option<TaskRecord>> {
        let sql = format!(
            "SELECT {} FROM kiln_tasks t JOIN kiln_runs r ON t.run_id = r.id
             WHERE r.job = $1 AND r.run_date = $2 AND t.name = $3 AND t.status IN ($4, $5)
             ORDER BY t.id DESC LIMIT 1",
            TASK_COLUMNS
                .split(", ")
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.db
            .query(
                &sql,
                &[
                    job.into(),
                    date.into(),
                    name.into(),
                    TaskStatus::Success.into(),
                    TaskStatus::Skipped.into(),
                ],
            )?
            .first()
            .map(|r| task_from(r))
            .transpose()
    }

    /// Records an event (alerts, lock takeovers) with a run.
    pub fn add_event(&mut self, run_id: i64, kind: EventKind, message: &str) -> anyhow::Result<()> {
        self.fenced(|s| {
            s.db.execute(
                "INSERT INTO kiln_events (run_id, at, kind, message) VALUES ($1, $2, $3, $4)",
                &[
                    run_id.into(),
                    now_text().into(),
                    kind.into(),
                    message.into(),
                ],
            )?;
            Ok(())
        })
    }

    /// Newest runs first, optionally of one job and/or date.
    pub fn list_runs(
        &mut self,
        job: Option<&str>,
        date: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM kiln_runs
             WHERE ($1 = '' OR job = $1) AND ($2 = '' OR run_date = $2)
             ORDER BY id DESC LIMIT $3"
        );
        self.db
            .query(
                &sql,
                &[
                    job.unwrap_or("").into(),
                    date.unwrap_or("").into(),
                    (limit as i64).into(),
                ],
            )?
            .iter()
            .map(|r| run_from(r))
            .collect()
    }

    /// One run with its tasks, attempts and events.
    pub fn run(&mut self, id: i64) -> anyhow::Result<Option<RunDetail>> {
        let Some(run) = self
            .db
            .query(
                &format!("SELECT {RUN_COLUMNS} FROM kiln_runs WHERE id = $1"),
                &[id.into()],
            )?
            .first()
            .map(|r| run_from(r))
            .transpose()?
        else {
            return Ok(None);
        };
        let tasks = self
            .db
            .query(
                &format!("SELECT {TASK_COLUMNS} FROM kiln_tasks WHERE run_id = $1 ORDER BY id"),
                &[id.into()],
            )?
            .iter()
            .map(|r| task_from(r))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut details = Vec::new();
        for t in tasks {
            let attempt_log = self
                .db
                .query(
                    &format!(
                        "SELECT {ATTEMPT_COLUMNS} FROM kiln_attempts WHERE task_id = $1 ORDER BY attempt"
                    ),
                    &[t.id.into()],
                )?
                .iter()
                .map(|r| attempt_from(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            details.push(TaskDetail {
                task: t,
                attempt_log,
            });
        }
        let events = self
            .db
            .query(
                "SELECT id, at, kind, message FROM kiln_events WHERE run_id = $1 ORDER BY id",
                &[id.into()],
            )?
            .iter()
            .map(|r| event_from(r))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(RunDetail {
            run,
            tasks: details,
            events,
        }))
    }

    /// Marks a run whose process died (its lock was taken over) and its unfinished tasks
    /// and attempts as failed.
    pub fn abandon_run(&mut self, run_id: i64, reason: &str) -> anyhow::Result<()> {
        self.fenced(|s| {
            let now = now_text();
            s.db.execute(
                "UPDATE kiln_attempts SET status = $4, finished_at = $2, error = $3
                 WHERE status = $5 AND task_id IN (SELECT id FROM kiln_tasks WHERE run_id = $1)",
                &[
                    run_id.into(),
                    now.as_str().into(),
                    reason.into(),
                    AttemptStatus::Failed.into(),
                    AttemptStatus::Running.into(),
                ],
            )?;
            s.db.execute(
                "UPDATE kiln_tasks SET status = $4, finished_at = $2, error = $3
                 WHERE run_id = $1 AND status = $5",
                &[
                    run_id.into(),
                    now.as_str().into(),
                    reason.into(),
                    TaskStatus::Failed.into(),
                    TaskStatus::Running.into(),
                ],
            )?;
            s.db.execute(
                "UPDATE kiln_runs SET status = $4, finished_at = $2, error = $3
                 WHERE id = $1 AND status = $5",
                &[
                    run_id.into(),
                    now.as_str().into(),
                    reason.into(),
                    RunStatus::Failed.into(),
                    RunStatus::Running.into(),
                ],
            )?;
            Ok(())
        })
    }
}
