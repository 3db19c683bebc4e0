//! The run metadata store: runs, tasks, attempts, events (alerts), and the per-(job, date)
//! run lock, behind one interface with two backends — SQLite (embedded default, a file) and
//! PostgreSQL (a `postgres://` URL).
//!
//! A backend implements [`Db`] (execute / query / exclusive transaction on one connection);
//! every statement of [`Store`] is written once in the SQL both understand (`$N` parameters,
//! `INSERT ... RETURNING`, `ON CONFLICT DO NOTHING`). The schema is created by versioned
//! migrations recorded in `kiln_schema_migrations`.
//!
//! Layout: [`value`] (SQL values, the backend interface), [`schema`] (migrations),
//! [`records`] (runs, tasks, attempts, events), [`lock`] (the run lock), and the backends
//! [`sqlite`] and [`postgres`].

pub mod lock;
pub mod postgres;
pub mod records;
pub mod schema;
pub mod sqlite;
pub mod value;

use anyhow::Context;

pub use kiln_registry::process_alive;
pub use lock::{LockHolder, LockOutcome, LockOwner, LostLock};
pub use records::{
    AttemptRecord, EventRecord, NewRun, RunDetail, RunOutcome, RunRecord, TaskDetail, TaskRecord,
};
pub use schema::latest_schema_version;
pub use value::{Db, Dialect, Value};

/// This host's clock. Debug builds (tests) shift it by `KILN_TEST_CLOCK_SKEW_SECONDS` to
/// simulate hosts whose clocks differ; nothing that decides lock staleness reads it (the
/// run lock uses the database's clock).
pub fn host_now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    #[cfg(debug_assertions)]
    if let Some(skew) = std::env::var("KILN_TEST_CLOCK_SKEW_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && s.abs() < 1e9)
    {
        return now + chrono::Duration::milliseconds((skew * 1000.0) as i64);
    }
    now
}

/// `now` (this host's clock) as RFC 3339 UTC with milliseconds.
pub fn now_text() -> String {
    host_now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Seconds between an RFC 3339 start and now.
fn seconds_since(started: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(started).ok()?;
    Some((host_now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0)
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

/// The metadata store: run records and run locks on one backend connection.
pub struct Store {
    db: Box<dyn Db>,
    /// Where it lives (path or URL without password), for messages.
    pub describe: String,
    /// The run lock every write must still hold ([`Store::fence_writes`]).
    fence: Option<lock::Fence>,
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
        let mut store = Store {
            db,
            describe,
            fence: None,
        };
        store
            .migrate()
            .with_context(|| format!("metadata store {}: migrating", store.describe))?;
        Ok(store)
    }

    fn insert_returning_id(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<i64> {
        let rows = self.db.query(sql, params)?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(Value::int)
            .context("INSERT ... RETURNING id returned no id")
    }
}

#[cfg(test)]
mod tests;
