//! The shared, read-only facts of one run, and what every task needs from them: the child
//! `kiln` invocation, fingerprints, upstream outputs.

use std::io::Write;
use std::path::{Path, PathBuf};
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
        let r = proc::run_logged(&self.exe, &args, &a.log_base, a.timeout, Some(&tick));
        if tty {
            eprint!("\r\x1b[2K");
        }
        proc::json_result(&r?)
    }
}
