//! The per-(job, date) run lock: a row of `kiln_locks` taken by insert-if-absent, kept
//! alive by heartbeats, released by its owner, and taken over when stale (its holder is a
//! dead process on this host, or its heartbeat is too old).

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::{Store, hostname, now_ms, now_text};
use kiln_registry::process_alive;

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

impl Store {
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
