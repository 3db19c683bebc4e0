//! The run lock's guard: a thread with its own metadata store connection refreshes the
//! lock's heartbeat while the run goes on, and releases the lock when the guard is dropped.
//!
//! When a heartbeat finds the lock taken over, the thread marks the lock lost ([`LockCheck`])
//! and stops the run's children (SIGTERM to each child's process group, a grace period,
//! then SIGKILL); the run's next write to the store (fenced, see
//! [`Store::fence_writes`]) or publish check then fails with [`LostLock`] and the run stops;
//! if the main thread is inside an in-process task that does not return within the grace
//! period plus a few seconds, the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metastore::{LockOwner, LostLock, Store};

/// How long a run that lost its lock waits, after stopping its children, for the main
/// thread to stop by itself before the process exits.
const IN_PROCESS_STOP: Duration = Duration::from_secs(5);

/// The run's hold on its lock: whether it was lost, and a check against the store.
pub(super) struct LockCheck {
    store: Mutex<Store>,
    job: String,
    date: String,
    owner: LockOwner,
    fence: i64,
    lost: AtomicBool,
    why: Mutex<Option<LostLock>>,
}

impl LockCheck {
    /// A check on its own store connection for the lock `owner` holds with `fence`.
    pub fn open(
        url: &str,
        job: &str,
        date: &str,
        owner: &LockOwner,
        fence: i64,
    ) -> anyhow::Result<Self> {
        Ok(LockCheck {
            store: Mutex::new(Store::open(url)?),
            job: job.into(),
            date: date.into(),
            owner: owner.clone(),
            fence,
            lost: AtomicBool::new(false),
            why: Mutex::new(None),
        })
    }

    /// Whether the lock was found lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Why the lock was lost, once it was.
    pub fn lost(&self) -> Option<LostLock> {
        self.why.lock().ok().and_then(|w| w.clone())
    }

    fn mark_lost(&self, e: LostLock) {
        if let Ok(mut w) = self.why.lock()
            && w.is_none()
        {
            *w = Some(e);
        }
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Asks the store whether the run still holds its lock (same token and fencing
    /// number); `Err(LostLock)` when not (and the lock is marked lost).
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(e) = self.lost() {
            return Err(e.into());
        }
        let r = match self.store.lock() {
            Ok(mut s) => s.check_lock(&self.job, &self.date, &self.owner, self.fence),
            Err(_) => Err(anyhow::anyhow!(
                "the lock check's store connection is poisoned"
            )),
        };
        if let Err(e) = &r
            && let Some(l) = e.downcast_ref::<LostLock>()
        {
            self.mark_lost(l.clone());
        }
        r
    }
}

/// Holds the run lock and refreshes its heartbeat from a thread with its own connection;
/// releases it when dropped.
pub(super) struct LockGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    /// Starts the heartbeat thread for a lock `owner` already holds; a lost lock is marked
    /// on `check` and the run's children are stopped (`grace` between SIGTERM and SIGKILL).
    pub fn start(
        url: &str,
        owner: &LockOwner,
        stale: Duration,
        check: Arc<LockCheck>,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        let mut store = Store::open(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, job, date, owner) = (
            stop.clone(),
            check.job.clone(),
            check.date.clone(),
            owner.clone(),
        );
        let every = (stale / 4).max(Duration::from_millis(200));
        let thread = std::thread::Builder::new()
            .name("kiln-lock-heartbeat".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() < every || check.is_lost() {
                        continue;
                    }
                    last = Instant::now();
                    match store.heartbeat(&job, &date, &owner) {
                        Ok(true) => {}
                        Ok(false) => {
                            // Marks the lock lost (with who holds it now).
                            let _ = check.check();
                            let msg = check.lost().map_or_else(
                                || format!("lost the run lock for job {job} date {date}; stopping"),
                                |l| l.to_string(),
                            );
                            eprintln!("error: {msg}");
                            stop_children(grace);
                            // The run stops at its next record or publish check; an
                            // in-process task (a sensor waiting, the gate) that does not
                            // return soon is not waited for.
                            let deadline = Instant::now() + grace + IN_PROCESS_STOP;
                            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            if !s.load(Ordering::Relaxed) {
                                eprintln!(
                                    "error: {msg} (the running in-process task did not stop within {:.0} s; exiting)",
                                    (grace + IN_PROCESS_STOP).as_secs_f64()
                                );
                                std::process::exit(1);
                            }
                        }
                        Err(e) => eprintln!("warning: lock heartbeat failed: {e:#}"),
                    }
                }
                if !check.is_lost()
                    && let Err(e) = store.unlock(&job, &date, &owner)
                {
                    eprintln!("warning: releasing the run lock of {job} {date}: {e:#}");
                }
            })?;
        Ok(LockGuard {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This process's children that lead their own process group (the task children
/// [`crate::proc::run_logged`] starts). Linux (`/proc`); elsewhere none are found.
fn child_groups() -> Vec<i32> {
    let me = std::process::id() as i64;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(pgrp)) = (
            f.get(1).and_then(|v| v.parse::<i64>().ok()),
            f.get(2).and_then(|v| v.parse::<i32>().ok()),
        ) else {
            continue;
        };
        if ppid == me && pgrp == pid {
            out.push(pid);
        }
    }
    out
}

/// Stops the run's task children and everything they started: SIGTERM to each child's
/// process group, up to `grace` for them to exit, then SIGKILL.
fn stop_children(grace: Duration) {
    let groups = child_groups();
    if groups.is_empty() {
        return;
    }
    eprintln!(
        "stopping {} running task process group(s): {groups:?}",
        groups.len()
    );
    let signal = |sig: libc::c_int| {
        for g in &groups {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is
            // touched.
            unsafe {
                libc::kill(-(*g as libc::pid_t), sig);
            }
        }
    };
    signal(libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace && !child_groups().is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(libc::SIGKILL);
}
