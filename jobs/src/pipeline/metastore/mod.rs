//! The run metadata store: runs, tasks, attempts, events (alerts), and the per-(job, date)
//! run lock, behind one interface with two backends — SQLite (embedded default, a file) and
//! PostgreSQL (a `postgres://` URL).
//!
//! A backend implements [`Db`] (execute / query / exclusive transaction on one connection);
//! every statement of [`Store`] is written once in the SQL both understand (`$N` parameters,
//! `INSERT ... RETURNING`, `ON CONFLICT DO NOTHING`). The schema is created by versioned
//! migrations recorded in `kiln_schema_migrations`.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value as Json;

/// A SQL value (the only types the store uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// 64-bit integer.
    Int(i64),
    /// Double.
    Real(f64),
    /// Text.
    Text(String),
}

impl Value {
    fn text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Real(r) => Some(r.to_string()),
            Value::Null => None,
        }
    }
    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Real(r) => Some(*r as i64),
            Value::Text(s) => s.parse().ok(),
            Value::Null => None,
        }
    }
    fn real(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            Value::Text(s) => s.parse().ok(),
            Value::Null => None,
        }
    }
    fn json(&self) -> Option<Json> {
        self.text().and_then(|s| serde_json::from_str(&s).ok())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Real(f)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}
impl From<&Json> for Value {
    fn from(j: &Json) -> Self {
        Value::Text(j.to_string())
    }
}

/// SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One database connection: what a backend provides.
pub trait Db: Send {
    /// The backend's dialect (only DDL differs).
    fn dialect(&self) -> Dialect;
    /// Runs one statement with `$1..$N` parameters; returns affected rows.
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64>;
    /// Runs one query with `$1..$N` parameters; returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Vec<Value>>>;
    /// Runs several `;`-separated statements without parameters.
    fn batch(&mut self, sql: &str) -> anyhow::Result<()>;
    /// Starts a transaction that excludes other writers of the store until commit
    /// (SQLite `BEGIN IMMEDIATE`; PostgreSQL `BEGIN` + a transaction advisory lock).
    fn begin_exclusive(&mut self) -> anyhow::Result<()>;
}

/// Versioned schema migrations: (version, name, DDL). `{ID}` is the dialect's
/// auto-increment primary key. Append only: never edit an applied migration.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "runs, tasks, attempts, events, locks",
        "CREATE TABLE kiln_runs (
            id {ID},
            job TEXT NOT NULL,
            run_date TEXT NOT NULL,
            trigger_kind TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            seconds DOUBLE PRECISION,
            host TEXT NOT NULL,
            pid BIGINT NOT NULL,
            kiln_version TEXT NOT NULL,
            spec_path TEXT NOT NULL,
            spec_sha256 TEXT NOT NULL,
            overrides TEXT NOT NULL,
            log_dir TEXT NOT NULL,
            hyperparams TEXT,
            lineage TEXT,
            metrics TEXT,
            gate TEXT,
            model_version BIGINT,
            error TEXT
        );
        CREATE TABLE kiln_tasks (
            id {ID},
            run_id BIGINT NOT NULL REFERENCES kiln_runs(id),
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            seconds DOUBLE PRECISION,
            attempts BIGINT NOT NULL DEFAULT 0,
            output TEXT,
            error TEXT
        );
        CREATE TABLE kiln_attempts (
            id {ID},
            task_id BIGINT NOT NULL REFERENCES kiln_tasks(id),
            attempt BIGINT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            seconds DOUBLE PRECISION,
            log_path TEXT,
            error TEXT
        );
        CREATE TABLE kiln_events (
            id {ID},
            run_id BIGINT NOT NULL REFERENCES kiln_runs(id),
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE kiln_locks (
            job TEXT NOT NULL,
            run_date TEXT NOT NULL,
            token TEXT NOT NULL,
            host TEXT NOT NULL,
            pid BIGINT NOT NULL,
            run_id BIGINT,
            acquired_at TEXT NOT NULL,
            heartbeat_ms BIGINT NOT NULL,
            PRIMARY KEY (job, run_date)
        )",
    ),
    (
        2,
        "indexes for skip checks and listings",
        "CREATE INDEX kiln_runs_job_date ON kiln_runs (job, run_date);
         CREATE INDEX kiln_tasks_run ON kiln_tasks (run_id, name);
         CREATE INDEX kiln_attempts_task ON kiln_attempts (task_id)",
    ),
];

/// The schema version this build writes.
pub fn latest_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// `now` as RFC 3339 UTC with milliseconds.
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A new run's fixed facts.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Job name.
    pub job: String,
    /// Run date, `YYYY-MM-DD`.
    pub run_date: String,
    /// `run`, `backfill` or `schedule`.
    pub trigger: String,
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
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// `success`, `rejected` or `failed`.
    pub status: String,
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
    pub trigger: String,
    /// `running`, `success`, `rejected`, `failed`.
    pub status: String,
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
    pub name: String,
    /// `running`, `success`, `failed`, `skipped`, `upstream_failed`.
    pub status: String,
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
    /// `running`, `success`, `failed`, `timeout`.
    pub status: String,
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
    /// Kind, e.g. `alert`.
    pub kind: String,
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

/// The lock holder's identity.
#[derive(Debug, Clone, Serialize)]
pub struct LockOwner {
    /// Random token proving ownership.
    pub token: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
}

impl LockOwner {
    /// This process.
    pub fn this_process() -> Self {
        let mut token = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut token[..]);
        LockOwner {
            token: hex::encode(token),
            host: hostname(),
            pid: std::process::id() as i64,
        }
    }
}

/// The current holder of a lock.
#[derive(Debug, Clone, Serialize)]
pub struct LockHolder {
    /// Host.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// Run id, once known.
    pub run_id: Option<i64>,
    /// When it was acquired.
    pub acquired_at: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "held by pid {} on host {}{} since {} (last heartbeat {:.1} s ago)",
            self.pid,
            self.host,
            self.run_id
                .map(|r| format!(", run {r}"))
                .unwrap_or_default(),
            self.acquired_at,
            self.heartbeat_age_ms as f64 / 1000.0
        )
    }
}

/// Result of [`Store::try_lock`].
#[derive(Debug, Clone)]
pub enum LockOutcome {
    /// Acquired (possibly by taking over a stale lock, whose holder is given).
    Acquired {
        /// The stale holder that was replaced.
        took_over: Option<LockHolder>,
    },
    /// Someone else holds it.
    Held(LockHolder),
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` on this host is alive (zombies count as dead).
pub fn process_alive(pid: i64) -> bool {
    if pid <= 0 || pid > i32::MAX as i64 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => r == 0,
    }
}

/// The metadata store: run records and run locks on one backend connection.
pub struct Store {
    db: Box<dyn Db>,
    /// Where it lives (path or URL without password), for messages.
    pub describe: String,
}

const RUN_COLUMNS: &str = "id, job, run_date, trigger_kind, status, started_at, finished_at, seconds, host, pid, kiln_version, spec_path, spec_sha256, overrides, log_dir, hyperparams, lineage, metrics, gate, model_version, error";
const TASK_COLUMNS: &str = "id, run_id, name, status, fingerprint, started_at, finished_at, seconds, attempts, output, error";

fn run_from(r: &[Value]) -> RunRecord {
    RunRecord {
        id: r[0].int().unwrap_or_default(),
        job: r[1].text().unwrap_or_default(),
        run_date: r[2].text().unwrap_or_default(),
        trigger: r[3].text().unwrap_or_default(),
        status: r[4].text().unwrap_or_default(),
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
    }
}

fn task_from(r: &[Value]) -> TaskRecord {
    TaskRecord {
        id: r[0].int().unwrap_or_default(),
        run_id: r[1].int().unwrap_or_default(),
        name: r[2].text().unwrap_or_default(),
        status: r[3].text().unwrap_or_default(),
        fingerprint: r[4].text().unwrap_or_default(),
        started_at: r[5].text().unwrap_or_default(),
        finished_at: r[6].text(),
        seconds: r[7].real(),
        attempts: r[8].int().unwrap_or_default(),
        output: r[9].json(),
        error: r[10].text(),
    }
}

/// Seconds between an RFC 3339 start and now.
fn seconds_since(started: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(started).ok()?;
    Some((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0)
}

impl Store {
    /// Opens a store: `postgres://` / `postgresql://` URLs use PostgreSQL, anything else is
    /// a SQLite file path (created with its directory). Applies pending migrations.
    pub fn open(url: &str) -> anyhow::Result<Store> {
        let (db, describe): (Box<dyn Db>, String) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                (
                    Box::new(postgres::Postgres::connect(url)?),
                    postgres::redact(url),
                )
            } else {
                let path = std::path::Path::new(url.strip_prefix("sqlite://").unwrap_or(url));
                (
                    Box::new(sqlite::Sqlite::open(path)?),
                    path.display().to_string(),
                )
            };
        let mut store = Store { db, describe };
        store
            .migrate()
            .with_context(|| format!("metadata store {}: migrating", store.describe))?;
        Ok(store)
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        let id = match self.db.dialect() {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        self.db.begin_exclusive()?;
        let result = (|| -> anyhow::Result<()> {
            self.db.batch(
                "CREATE TABLE IF NOT EXISTS kiln_schema_migrations (
                    version BIGINT PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TEXT NOT NULL)",
            )?;
            let current = self.schema_version_in_tx()?;
            if current > latest_schema_version() {
                bail!(
                    "schema version {current} is newer than this kiln knows ({}): upgrade kiln",
                    latest_schema_version()
                );
            }
            for (version, name, ddl) in MIGRATIONS {
                if *version <= current {
                    continue;
                }
                self.db
                    .batch(&ddl.replace("{ID}", id))
                    .with_context(|| format!("migration {version} ({name})"))?;
                self.db.execute(
                    "INSERT INTO kiln_schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    &[(*version).into(), (*name).into(), now_text().into()],
                )?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.db.batch("COMMIT"),
            Err(e) => {
                let _ = self.db.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn schema_version_in_tx(&mut self) -> anyhow::Result<i64> {
        let rows = self
            .db
            .query("SELECT MAX(version) FROM kiln_schema_migrations", &[])?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(Value::int)
            .unwrap_or(0))
    }

    /// Applied migrations: (version, name, applied_at).
    #[cfg(test)]
    pub fn migrations(&mut self) -> anyhow::Result<Vec<(i64, String, String)>> {
        Ok(self
            .db
            .query(
                "SELECT version, name, applied_at FROM kiln_schema_migrations ORDER BY version",
                &[],
            )?
            .iter()
            .map(|r| {
                (
                    r[0].int().unwrap_or_default(),
                    r[1].text().unwrap_or_default(),
                    r[2].text().unwrap_or_default(),
                )
            })
            .collect())
    }

    fn insert_returning_id(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<i64> {
        let rows = self.db.query(sql, params)?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(Value::int)
            .context("INSERT ... RETURNING id returned no id")
    }

    /// Records a new run (status `running`); returns its id.
    pub fn start_run(&mut self, r: &NewRun) -> anyhow::Result<i64> {
        self.insert_returning_id(
            "INSERT INTO kiln_runs (job, run_date, trigger_kind, status, started_at, host, pid, kiln_version, spec_path, spec_sha256, overrides, log_dir, hyperparams)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            &[
                r.job.as_str().into(),
                r.run_date.as_str().into(),
                r.trigger.as_str().into(),
                now_text().into(),
                hostname().into(),
                (std::process::id() as i64).into(),
                env!("CARGO_PKG_VERSION").into(),
                r.spec_path.as_str().into(),
                r.spec_sha256.as_str().into(),
                (&r.overrides).into(),
                r.log_dir.as_str().into(),
                (&r.hyperparams).into(),
            ],
        )
    }

    /// Records how a run ended.
    pub fn finish_run(&mut self, run_id: i64, o: &RunOutcome) -> anyhow::Result<()> {
        let started = self
            .db
            .query(
                "SELECT started_at FROM kiln_runs WHERE id = $1",
                &[run_id.into()],
            )?
            .first()
            .and_then(|r| r[0].text())
            .with_context(|| format!("run {run_id} not found"))?;
        self.db.execute(
            "UPDATE kiln_runs SET status = $2, finished_at = $3, seconds = $4, lineage = $5, metrics = $6, gate = $7, model_version = $8, error = $9 WHERE id = $1",
            &[
                run_id.into(),
                o.status.as_str().into(),
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
    }

    /// Records a task starting (status `running`) or skipped (status `skipped`, with the
    /// reused output); returns its id.
    pub fn start_task(
        &mut self,
        run_id: i64,
        name: &str,
        fingerprint: &str,
        status: &str,
        output: Option<&Json>,
    ) -> anyhow::Result<i64> {
        let now = now_text();
        let finished = (status != "running").then(|| now.clone());
        self.insert_returning_id(
            "INSERT INTO kiln_tasks (run_id, name, status, fingerprint, started_at, finished_at, seconds, output)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                run_id.into(),
                name.into(),
                status.into(),
                fingerprint.into(),
                now.into(),
                finished.into(),
                (status != "running").then_some(0.0).into(),
                output.into(),
            ],
        )
    }

    /// Records how a task ended.
    pub fn finish_task(
        &mut self,
        task_id: i64,
        status: &str,
        attempts: u32,
        output: Option<&Json>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let started = self
            .db
            .query(
                "SELECT started_at FROM kiln_tasks WHERE id = $1",
                &[task_id.into()],
            )?
            .first()
            .and_then(|r| r[0].text())
            .unwrap_or_default();
        self.db.execute(
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
    }

    /// Records an attempt starting; returns its id.
    pub fn start_attempt(
        &mut self,
        task_id: i64,
        attempt: u32,
        log_path: &str,
    ) -> anyhow::Result<i64> {
        self.insert_returning_id(
            "INSERT INTO kiln_attempts (task_id, attempt, status, started_at, log_path)
             VALUES ($1, $2, 'running', $3, $4) RETURNING id",
            &[
                task_id.into(),
                (attempt as i64).into(),
                now_text().into(),
                log_path.into(),
            ],
        )
    }

    /// Records how an attempt ended (`success`, `failed`, `timeout`).
    pub fn finish_attempt(
        &mut self,
        attempt_id: i64,
        status: &str,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let started = self
            .db
            .query(
                "SELECT started_at FROM kiln_attempts WHERE id = $1",
                &[attempt_id.into()],
            )?
            .first()
            .and_then(|r| r[0].text())
            .unwrap_or_default();
        self.db.execute(
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
    }

    /// The newest successful (or skipped-as-done) task `name` of `job` on `date`.
    pub fn last_success(
        &mut self,
        job: &str,
        date: &str,
        name: &str,
    ) -> anyhow::Result<Option<TaskRecord>> {
        let sql = format!(
            "SELECT {} FROM kiln_tasks t JOIN kiln_runs r ON t.run_id = r.id
             WHERE r.job = $1 AND r.run_date = $2 AND t.name = $3 AND t.status IN ('success', 'skipped')
             ORDER BY t.id DESC LIMIT 1",
            TASK_COLUMNS
                .split(", ")
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(self
            .db
            .query(&sql, &[job.into(), date.into(), name.into()])?
            .first()
            .map(|r| task_from(r)))
    }

    /// Records an event (alerts, lock takeovers) with a run.
    pub fn add_event(&mut self, run_id: i64, kind: &str, message: &str) -> anyhow::Result<()> {
        self.db.execute(
            "INSERT INTO kiln_events (run_id, at, kind, message) VALUES ($1, $2, $3, $4)",
            &[
                run_id.into(),
                now_text().into(),
                kind.into(),
                message.into(),
            ],
        )?;
        Ok(())
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
        Ok(self
            .db
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
            .collect())
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
        else {
            return Ok(None);
        };
        let tasks: Vec<TaskRecord> = self
            .db
            .query(
                &format!("SELECT {TASK_COLUMNS} FROM kiln_tasks WHERE run_id = $1 ORDER BY id"),
                &[id.into()],
            )?
            .iter()
            .map(|r| task_from(r))
            .collect();
        let mut details = Vec::new();
        for t in tasks {
            let attempt_log = self
                .db
                .query(
                    "SELECT id, task_id, attempt, status, started_at, finished_at, seconds, log_path, error
                     FROM kiln_attempts WHERE task_id = $1 ORDER BY attempt",
                    &[t.id.into()],
                )?
                .iter()
                .map(|r| AttemptRecord {
                    id: r[0].int().unwrap_or_default(),
                    task_id: r[1].int().unwrap_or_default(),
                    attempt: r[2].int().unwrap_or_default(),
                    status: r[3].text().unwrap_or_default(),
                    started_at: r[4].text().unwrap_or_default(),
                    finished_at: r[5].text(),
                    seconds: r[6].real(),
                    log_path: r[7].text(),
                    error: r[8].text(),
                })
                .collect();
            details.push(TaskDetail {
                task: t,
                attempt_log,
            });
        }
        let events = self
            .db
            .query(
                "SELECT at, kind, message FROM kiln_events WHERE run_id = $1 ORDER BY id",
                &[id.into()],
            )?
            .iter()
            .map(|r| EventRecord {
                at: r[0].text().unwrap_or_default(),
                kind: r[1].text().unwrap_or_default(),
                message: r[2].text().unwrap_or_default(),
            })
            .collect();
        Ok(Some(RunDetail {
            run,
            tasks: details,
            events,
        }))
    }

    fn holder(&mut self, job: &str, date: &str) -> anyhow::Result<Option<(String, LockHolder)>> {
        let rows = self.db.query(
            "SELECT token, host, pid, run_id, acquired_at, heartbeat_ms FROM kiln_locks WHERE job = $1 AND run_date = $2",
            &[job.into(), date.into()],
        )?;
        Ok(rows.first().map(|r| {
            (
                r[0].text().unwrap_or_default(),
                LockHolder {
                    host: r[1].text().unwrap_or_default(),
                    pid: r[2].int().unwrap_or_default(),
                    run_id: r[3].int(),
                    acquired_at: r[4].text().unwrap_or_default(),
                    heartbeat_age_ms: now_ms() - r[5].int().unwrap_or_default(),
                },
            )
        }))
    }

    /// Takes the run lock of (`job`, `date`) for `owner`. An existing lock is taken over
    /// when stale: its holder is a dead process on this host, or its heartbeat is older than
    /// `stale_after`. Atomic across processes and hosts (insert-if-absent, then
    /// compare-and-swap on the holder's token).
    pub fn try_lock(
        &mut self,
        job: &str,
        date: &str,
        owner: &LockOwner,
        stale_after: Duration,
    ) -> anyhow::Result<LockOutcome> {
        for _ in 0..5 {
            let inserted = self.db.execute(
                "INSERT INTO kiln_locks (job, run_date, token, host, pid, acquired_at, heartbeat_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job, run_date) DO NOTHING",
                &[
                    job.into(),
                    date.into(),
                    owner.token.as_str().into(),
                    owner.host.as_str().into(),
                    owner.pid.into(),
                    now_text().into(),
                    now_ms().into(),
                ],
            )?;
            if inserted == 1 {
                return Ok(LockOutcome::Acquired { took_over: None });
            }
            let Some((token, holder)) = self.holder(job, date)? else {
                continue; // released in between: try to insert again
            };
            let dead = holder.host == owner.host && !process_alive(holder.pid);
            let silent = holder.heartbeat_age_ms > stale_after.as_millis() as i64;
            if !(dead || silent) {
                return Ok(LockOutcome::Held(holder));
            }
            let swapped = self.db.execute(
                "UPDATE kiln_locks SET token = $3, host = $4, pid = $5, run_id = NULL, acquired_at = $6, heartbeat_ms = $7
                 WHERE job = $1 AND run_date = $2 AND token = $8",
                &[
                    job.into(),
                    date.into(),
                    owner.token.as_str().into(),
                    owner.host.as_str().into(),
                    owner.pid.into(),
                    now_text().into(),
                    now_ms().into(),
                    token.into(),
                ],
            )?;
            if swapped == 1 {
                return Ok(LockOutcome::Acquired {
                    took_over: Some(holder),
                });
            }
        }
        match self.holder(job, date)? {
            Some((_, h)) => Ok(LockOutcome::Held(h)),
            None => bail!("could not take the run lock of {job} {date}: contention"),
        }
    }

    /// Marks a run whose process died (its lock was taken over) and its unfinished tasks
    /// and attempts as failed.
    pub fn abandon_run(&mut self, run_id: i64, reason: &str) -> anyhow::Result<()> {
        let now = now_text();
        self.db.execute(
            "UPDATE kiln_attempts SET status = 'failed', finished_at = $2, error = $3
             WHERE status = 'running' AND task_id IN (SELECT id FROM kiln_tasks WHERE run_id = $1)",
            &[run_id.into(), now.as_str().into(), reason.into()],
        )?;
        self.db.execute(
            "UPDATE kiln_tasks SET status = 'failed', finished_at = $2, error = $3
             WHERE run_id = $1 AND status = 'running'",
            &[run_id.into(), now.as_str().into(), reason.into()],
        )?;
        self.db.execute(
            "UPDATE kiln_runs SET status = 'failed', finished_at = $2, error = $3
             WHERE id = $1 AND status = 'running'",
            &[run_id.into(), now.as_str().into(), reason.into()],
        )?;
        Ok(())
    }

    /// Attaches the run id to a held lock.
    pub fn set_lock_run(
        &mut self,
        job: &str,
        date: &str,
        owner: &LockOwner,
        run_id: i64,
    ) -> anyhow::Result<()> {
        self.db.execute(
            "UPDATE kiln_locks SET run_id = $4 WHERE job = $1 AND run_date = $2 AND token = $3",
            &[
                job.into(),
                date.into(),
                owner.token.as_str().into(),
                run_id.into(),
            ],
        )?;
        Ok(())
    }

    /// Refreshes the heartbeat; false when the lock is no longer ours.
    pub fn heartbeat(&mut self, job: &str, date: &str, owner: &LockOwner) -> anyhow::Result<bool> {
        Ok(self.db.execute(
            "UPDATE kiln_locks SET heartbeat_ms = $4 WHERE job = $1 AND run_date = $2 AND token = $3",
            &[
                job.into(),
                date.into(),
                owner.token.as_str().into(),
                now_ms().into(),
            ],
        )? == 1)
    }

    /// Releases the lock if it is still ours.
    pub fn unlock(&mut self, job: &str, date: &str, owner: &LockOwner) -> anyhow::Result<()> {
        self.db.execute(
            "DELETE FROM kiln_locks WHERE job = $1 AND run_date = $2 AND token = $3",
            &[job.into(), date.into(), owner.token.as_str().into()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
