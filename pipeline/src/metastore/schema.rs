//! The schema: versioned migrations (append only), applied in one exclusive transaction
//! when a store is opened.

use anyhow::{Context, bail};

use super::{Dialect, Store, Value, now_text};

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
    (
        3,
        "run lock: fencing number; heartbeats in database time",
        "ALTER TABLE kiln_locks ADD COLUMN fence BIGINT NOT NULL DEFAULT 1",
    ),
];

/// The schema version this build writes.
pub fn latest_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

impl Store {
    /// Creates the migrations table and applies pending migrations, under the store's
    /// exclusive transaction; refuses a schema newer than this build.
    pub(super) fn migrate(&mut self) -> anyhow::Result<()> {
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
}
