//! The per-(job, date) run lock: a row of `kiln_locks` taken by insert-if-absent, kept
//! alive by heartbeats, released by its owner, and taken over when stale (its holder is a
//! dead process on this host, or its heartbeat is too old).
//!
//! Time is the database's: heartbeats are written and ages computed with the server's
//! clock in the statement itself, so hosts whose clocks differ agree on staleness. Taking
//! the lock sets a fencing number (`fence`, incremented by each takeover); a store told to
//! [`fence_writes`](Store::fence_writes) checks, in the transaction of each write, that the
//! lock row still carries its token and fence, and fails with [`LostLock`] otherwise.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::{Dialect, Store, Value, hostname, now_text};
use kiln_registry::process_alive;

/// The database's current time in milliseconds since the epoch, as SQL.
fn db_now_ms(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

/// The lock a fenced store's writes must still hold.
#[derive(Debug, Clone)]
pub(super) struct Fence {
    job: String,
    date: String,
    token: String,
    fence: i64,
}

/// The run lost its lock: another process took it over (or it was removed). The run must
/// stop: record nothing more, publish nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "lost the run lock for job {job} date {date} to {}; stopping",
    match holder {
        Some(h) => format!(
            "{} on host {} (pid {}) at {}",
            h.run_id.map_or("another run".to_string(), |r| format!("run {r}")),
            h.host,
            h.pid,
            h.acquired_at
        ),
        None => "nobody (the lock row was removed)".to_string(),
    }
)]
pub struct LostLock {
    /// Job.
    pub job: String,
    /// Date.
    pub date: String,
    /// Who holds it now.
    pub holder: Option<LockHolder>,
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
        /// The lock's fencing number now (1 when fresh, incremented by each takeover).
        fence: i64,
    },
    /// Someone else holds it.
    Held(LockHolder),
}

impl Store {
    /// `sql` with `{NOW_MS}` replaced by this backend's current time (milliseconds).
    fn with_db_now(&self, sql: &str) -> String {
        sql.replace("{NOW_MS}", db_now_ms(self.db.dialect()))
    }

    fn holder(
        &mut self,
        job: &str,
        date: &str,
    ) -> anyhow::Result<Option<(String, i64, LockHolder)>> {
        let sql = self.with_db_now(
            "SELECT token, host, pid, run_id, acquired_at, {NOW_MS} - heartbeat_ms, fence FROM kiln_locks WHERE job = $1 AND run_date = $2",
        );
        let rows = self.db.query(&sql, &[job.into(), date.into()])?;
        Ok(rows.first().map(|r| {
            (
                r[0].text().unwrap_or_default(),
                r[6].int().unwrap_or_default(),
                LockHolder {
                    host: r[1].text().unwrap_or_default(),
                    pid: r[2].int().unwrap_or_default(),
                    run_id: r[3].int(),
                    acquired_at: r[4].text().unwrap_or_default(),
                    heartbeat_age_ms: r[5].int().unwrap_or_default(),
                },
            )
        }))
    }

    /// The current holder of the lock of (`job`, `date`), if any; its heartbeat age is
    /// measured with the database's clock.
    pub fn lock_holder(&mut self, job: &str, date: &str) -> anyhow::Result<Option<LockHolder>> {
        Ok(self.holder(job, date)?.map(|(_, _, h)| h))
    }

    /// Takes the run lock of (`job`, `date`) for `owner`. An existing lock is taken over
    /// when stale: its holder is a dead process on this host, or its heartbeat is older than
    /// `stale_after` by the database's clock. Atomic across processes and hosts
    /// (insert-if-absent, then compare-and-swap on the holder's token, with the staleness
    /// test in the same statement); a takeover increments the lock's fencing number.
    pub fn try_lock(
        &mut self,
        job: &str,
        date: &str,
        owner: &LockOwner,
        stale_after: Duration,
    ) -> anyhow::Result<LockOutcome> {
        let insert = self.with_db_now(
            "INSERT INTO kiln_locks (job, run_date, token, host, pid, acquired_at, heartbeat_ms, fence)
             VALUES ($1, $2, $3, $4, $5, $6, {NOW_MS}, 1) ON CONFLICT (job, run_date) DO NOTHING",
        );
        let swap = self.with_db_now(
            "UPDATE kiln_locks SET token = $3, host = $4, pid = $5, run_id = NULL, acquired_at = $6, heartbeat_ms = {NOW_MS}, fence = fence + 1
             WHERE job = $1 AND run_date = $2 AND token = $7 AND ($8 = 1 OR {NOW_MS} - heartbeat_ms > $9)
             RETURNING fence",
        );
        for _ in 0..5 {
            let inserted = self.db.execute(
                &insert,
                &[
                    job.into(),
                    date.into(),
                    owner.token.as_str().into(),
                    owner.host.as_str().into(),
                    owner.pid.into(),
                    now_text().into(),
                ],
            )?;
            if inserted == 1 {
                return Ok(LockOutcome::Acquired {
                    took_over: None,
                    fence: 1,
                });
            }
            let Some((token, _, holder)) = self.holder(job, date)? else {
                continue; // released in between: try to insert again
            };
            let dead = holder.host == owner.host && !process_alive(holder.pid);
            let stale_ms = stale_after.as_millis().min(i64::MAX as u128) as i64;
            if !dead && holder.heartbeat_age_ms <= stale_ms {
                return Ok(LockOutcome::Held(holder));
            }
            // Under the store's exclusive transaction, so that no fenced write of the old
            // holder interleaves with the takeover.
            self.db.begin_exclusive()?;
            let swapped = self.db.query(
                &swap,
                &[
                    job.into(),
                    date.into(),
                    owner.token.as_str().into(),
                    owner.host.as_str().into(),
                    owner.pid.into(),
                    now_text().into(),
                    token.into(),
                    (dead as i64).into(),
                    stale_ms.into(),
                ],
            );
            let swapped = match swapped {
                Ok(rows) => {
                    self.db.batch("COMMIT")?;
                    rows
                }
                Err(e) => {
                    let _ = self.db.batch("ROLLBACK");
                    return Err(e);
                }
            };
            if let Some(fence) = swapped.first().and_then(|r| r[0].int()) {
                return Ok(LockOutcome::Acquired {
                    took_over: Some(holder),
                    fence,
                });
            }
        }
        match self.holder(job, date)? {
            Some((_, _, h)) => Ok(LockOutcome::Held(h)),
            None => bail!("could not take the run lock of {job} {date}: contention"),
        }
    }

    /// From now on, every write of this store (runs, tasks, attempts, events) first checks,
    /// in the same exclusive transaction, that `owner` still holds the lock of (`job`,
    /// `date`) with fencing number `fence`; if not, nothing is written and the write fails
    /// with [`LostLock`].
    pub fn fence_writes(&mut self, job: &str, date: &str, owner: &LockOwner, fence: i64) {
        self.fence = Some(Fence {
            job: job.into(),
            date: date.into(),
            token: owner.token.clone(),
            fence,
        });
    }

    /// Whether `owner` still holds the lock of (`job`, `date`) with fencing number `fence`:
    /// `Err(LostLock)` (downcastable) when not.
    pub fn check_lock(
        &mut self,
        job: &str,
        date: &str,
        owner: &LockOwner,
        fence: i64,
    ) -> anyhow::Result<()> {
        let f = Fence {
            job: job.into(),
            date: date.into(),
            token: owner.token.clone(),
            fence,
        };
        self.check_fence(&f)
    }

    fn check_fence(&mut self, f: &Fence) -> anyhow::Result<()> {
        match self.holder(&f.job, &f.date)? {
            Some((token, fence, _)) if token == f.token && fence == f.fence => Ok(()),
            other => Err(LostLock {
                job: f.job.clone(),
                date: f.date.clone(),
                holder: other.map(|(_, _, h)| h),
            }
            .into()),
        }
    }

    /// Runs `write` — in one exclusive transaction with the lock check when the store is
    /// fenced ([`Store::fence_writes`]), else as is.
    pub(super) fn fenced<T>(
        &mut self,
        write: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Some(f) = self.fence.clone() else {
            return write(self);
        };
        self.db.begin_exclusive()?;
        let r = self.check_fence(&f).and_then(|()| write(self));
        match r {
            Ok(v) => {
                self.db.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.db.batch("ROLLBACK");
                Err(e)
            }
        }
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

    /// Refreshes the heartbeat (with the database's clock); false when the lock is no
    /// longer ours.
    pub fn heartbeat(&mut self, job: &str, date: &str, owner: &LockOwner) -> anyhow::Result<bool> {
        let sql = self.with_db_now(
            "UPDATE kiln_locks SET heartbeat_ms = {NOW_MS} WHERE job = $1 AND run_date = $2 AND token = $3",
        );
        Ok(self.db.execute(
            &sql,
            &[job.into(), date.into(), owner.token.as_str().into()],
        )? == 1)
    }

    /// Moves the heartbeat of the lock of (`job`, `date`) back by `by` (database time), so
    /// that it looks stale. For tests that simulate a holder that stopped heartbeating.
    #[doc(hidden)]
    pub fn backdate_heartbeat(
        &mut self,
        job: &str,
        date: &str,
        by: Duration,
    ) -> anyhow::Result<()> {
        self.db.execute(
            "UPDATE kiln_locks SET heartbeat_ms = heartbeat_ms - $3 WHERE job = $1 AND run_date = $2",
            &[
                job.into(),
                date.into(),
                Value::Int(by.as_millis().min(i64::MAX as u128) as i64),
            ],
        )?;
        Ok(())
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
