//! The run lock's guard: a thread with its own metadata store connection refreshes the
//! lock's heartbeat while the run goes on, and releases the lock when the guard is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::metastore::{LockOwner, Store};

/// Holds the run lock and refreshes its heartbeat from a thread with its own connection;
/// releases it when dropped.
pub(super) struct LockGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    /// Starts the heartbeat thread for a lock `owner` already holds.
    pub fn start(
        url: &str,
        job: &str,
        date: &str,
        owner: &LockOwner,
        stale: Duration,
    ) -> anyhow::Result<Self> {
        let mut store = Store::open(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, job, date, owner) = (
            stop.clone(),
            job.to_string(),
            date.to_string(),
            owner.clone(),
        );
        let every = (stale / 4).max(Duration::from_millis(200));
        let thread = std::thread::Builder::new()
            .name("kiln-lock-heartbeat".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= every {
                        last = Instant::now();
                        match store.heartbeat(&job, &date, &owner) {
                            Ok(true) => {}
                            Ok(false) => eprintln!(
                                "warning: the run lock of {job} {date} was taken over by another process"
                            ),
                            Err(e) => eprintln!("warning: lock heartbeat failed: {e:#}"),
                        }
                    }
                }
                if let Err(e) = store.unlock(&job, &date, &owner) {
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
