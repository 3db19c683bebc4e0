//! The shared, read-only facts of one run, and what every task needs from them: the child
//! `kiln` invocation, fingerprints, upstream outputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use kiln_engine::JobSpec;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::config::Pipeline;
use crate::dag::{Attempt, Outputs};
use crate::proc;
use crate::task::{TaskId, TaskKind, TaskPolicy};

/// Outputs of the run's finished tasks.
pub(super) type Upstream = Outputs<TaskId>;

/// The output of fixed task `kind` among `up` (`null` when it has none).
pub(super) fn output(up: &Upstream, kind: TaskKind) -> &Json {
    static NULL: Json = Json::Null;
    up.get(&TaskId::Step(kind)).unwrap_or(&NULL)
}

/// SHA-256 (hex) of `parts`, each followed by a NUL byte.
pub(super) fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// An in-process task (`gate`, `publish` with its verification) ran past its timeout.
#[derive(Debug, thiserror::Error)]
#[error(
    "timed out after {seconds:.1} s (in-process task: given up; its thread is told to stop and \
     stops at its next check, before any further change to the repository)"
)]
pub(super) struct InProcessTimeout {
    /// The timeout, seconds.
    pub seconds: f64,
}

/// Set when an in-process task's attempt was given up: the body checks it before each step
/// that changes something ([`Cancel::check`]).
#[derive(Clone, Default)]
pub(super) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// An error once the attempt was given up.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            anyhow::bail!("stopped: the attempt timed out and was given up");
        }
        Ok(())
    }
}

/// Runs an in-process task's `body` on its own thread and waits at most `timeout` for it:
/// past that, the attempt fails with [`InProcessTimeout`] and the body is told to stop
/// (threads cannot be killed; the body checks its [`Cancel`] before each change).
pub(super) fn in_process<T: Send + 'static>(
    name: &str,
    timeout: Option<Duration>,
    body: impl FnOnce(Cancel) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let cancel = Cancel::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let c = cancel.clone();
    std::thread::Builder::new()
        .name(format!("kiln-task-{name}"))
        .spawn(move || {
            let _ = tx.send(body(c));
        })?;
    let r = match timeout {
        Some(t) => rx.recv_timeout(t),
        None => rx
            .recv()
            .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
    };
    match r {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            cancel.0.store(true, Ordering::SeqCst);
            Err(InProcessTimeout {
                seconds: timeout.unwrap_or_default().as_secs_f64(),
            }
            .into())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            anyhow::bail!("task `{name}` panicked")
        }
    }
}

/// Shared, read-only facts of one run.
pub(super) struct Ctx {
    /// The `kiln` binary (this process's executable).
    pub exe: PathBuf,
    /// The job spec.
    pub spec: JobSpec,
    /// Its `[pipeline]` section.
    pub pipeline: Pipeline,
    /// Run date.
    pub date: NaiveDate,
    /// `--source NAME=URL` overrides.
    pub sources: Vec<(String, String)>,
    /// `--out URL` override.
    pub out: Option<String>,
    /// `<work_dir>/staging/<job>/<date>`.
    pub staging: PathBuf,
    /// Run id in the metadata store.
    pub run_id: i64,
    /// Whether stderr is a terminal (progress lines).
    pub tty: bool,
    /// `--accept`: anomaly subjects (columns, `@rows`, `@all`) a human accepted.
    pub accept: Vec<String>,
}

impl Ctx {
    /// The run date, `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        self.date.to_string()
    }

    /// `SPEC --date D [--source ..] [--out ..]`.
    pub fn spec_args(&self) -> Vec<String> {
        let mut a = vec![
            self.spec.path.display().to_string(),
            "--date".into(),
            self.date(),
        ];
        for (n, u) in &self.sources {
            a.push("--source".into());
            a.push(format!("{n}={u}"));
        }
        if let Some(o) = &self.out {
            a.push("--out".into());
            a.push(o.clone());
        }
        a
    }

    /// The staging model directory (stable across reruns of this job and date).
    pub fn model_dir(&self) -> PathBuf {
        self.staging.join("model")
    }

    /// The retry/timeout policy of a fixed task.
    pub fn policy(&self, task: TaskKind) -> TaskPolicy {
        self.pipeline.policy(task)
    }

    /// Runs `kiln ARGS` for a task attempt and returns its `--json` result.
    pub fn child(&self, task: TaskKind, args: Vec<String>, a: &Attempt) -> anyhow::Result<Json> {
        let tty = self.tty;
        let tick = move |elapsed: Duration, log: &Path| {
            if tty {
                let last = proc::tail(log, 1);
                let last: String = last.chars().take(90).collect();
                eprint!(
                    "\r\x1b[2K  {task:<18} running {:>5.0}s  {last}",
                    elapsed.as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        };
        let grace = crate::dag::seconds(self.pipeline.config.term_grace_seconds);
        let r = proc::run_logged(&self.exe, &args, &a.log_base, a.timeout, grace, Some(&tick));
        if tty {
            eprint!("\r\x1b[2K");
        }
        proc::json_result(&r?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn in_process_tasks_honour_their_timeout() {
        assert_eq!(
            in_process("quick", Some(Duration::from_secs(5)), |_| Ok(7)).unwrap(),
            7
        );
        let stopped = Arc::new(AtomicBool::new(false));
        let s = stopped.clone();
        let t = Instant::now();
        let e = in_process("slow", Some(Duration::from_millis(200)), move |cancel| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if cancel.check().is_err() {
                    s.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        })
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            e.to_string()
                .starts_with("timed out after 0.2 s (in-process task"),
            "{e}"
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            stopped.load(Ordering::SeqCst),
            "the body was not told to stop"
        );
        let e = in_process::<()>("boom", None, |_| panic!("boom")).unwrap_err();
        assert!(e.to_string().contains("task `boom` panicked"), "{e}");
    }
}
