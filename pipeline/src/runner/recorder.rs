//! The run's recorder: what the DAG does goes to the metadata store, to the terminal (one
//! line per task) and to the run's log file.

use std::io::Write;
use std::time::Duration;

use serde_json::Value as Json;

use crate::dag::{Attempt, Recorder, TaskOutcome};
use crate::metastore::{Store, now_text};
use crate::status::{AttemptStatus, TaskStatus};
use crate::task::{TaskId, TaskKind};

/// The metadata store plus the progress view and the run's log file.
pub(super) struct StoreRecorder {
    /// The metadata store.
    pub store: Store,
    /// The run's id there.
    pub run_id: i64,
    /// Job.
    pub job: String,
    /// Run date.
    pub date: String,
    /// The run's log file (`run.log`).
    pub log: std::fs::File,
}

impl StoreRecorder {
    /// A progress line: to the terminal and, timestamped, to the run log.
    pub fn say(&mut self, line: &str) {
        eprintln!("{line}");
        let _ = writeln!(self.log, "{} {line}", now_text());
    }

    /// A line to the run log only.
    pub fn log_line(&mut self, line: &str) {
        let _ = writeln!(self.log, "{} {line}", now_text());
    }
}

/// One line describing a task's output.
fn summarize(task: &TaskId, out: &Json) -> String {
    let f = |v: &Json| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.4}"));
    let Some(kind) = task.kind() else {
        return String::new();
    };
    match kind {
        TaskKind::Features => format!(
            "{} rows, manifest {:.12}",
            out["rows"],
            out["manifest_sha256"].as_str().unwrap_or("")
        ),
        TaskKind::Validate => {
            let outs = out["outputs"].as_array().cloned().unwrap_or_default();
            let checks: u64 = outs.iter().filter_map(|o| o["checks"].as_u64()).sum();
            let accepted: usize = outs
                .iter()
                .map(|o| o["accepted"].as_array().map_or(0, Vec::len))
                .sum();
            let no_baseline: Vec<&str> = outs
                .iter()
                .filter(|o| !o["baseline_missing"].is_null())
                .filter_map(|o| o["statement"].as_str())
                .collect();
            format!(
                "{checks} checks passed{}{}",
                if accepted > 0 {
                    format!(", {accepted} anomalies accepted")
                } else {
                    String::new()
                },
                if no_baseline.is_empty() {
                    String::new()
                } else {
                    format!(" (no baseline for {})", no_baseline.join(", "))
                }
            )
        }
        TaskKind::Train => format!(
            "{} steps{}, held-out auc {} logloss {}",
            out["steps"],
            if out["resumed"] == true {
                format!(" (resumed at step {})", out["start_step"])
            } else {
                String::new()
            },
            f(&out["metrics"]["auc"]),
            f(&out["metrics"]["logloss"])
        ),
        TaskKind::Evaluate => format!(
            "{} held-out rows: auc {} logloss {}",
            out["rows"],
            f(&out["metrics"]["auc"]),
            f(&out["metrics"]["logloss"])
        ),
        TaskKind::Gate => {
            if out["passed"] == true {
                "passed".into()
            } else {
                "REJECTED".into()
            }
        }
        TaskKind::Publish => format!(
            "version {} {}{}",
            out["version"],
            out["status"].as_str().unwrap_or(""),
            out["label"]
                .as_str()
                .map(|l| format!(", labelled {l}"))
                .unwrap_or_default()
        ),
    }
}

impl Recorder<TaskId> for StoreRecorder {
    fn last_success(&mut self, task: &TaskId) -> anyhow::Result<Option<(String, Json)>> {
        Ok(self
            .store
            .last_success(&self.job, &self.date, task)?
            .map(|t| (t.fingerprint, t.output.unwrap_or(Json::Null))))
    }
    fn task_started(&mut self, task: &TaskId, fingerprint: &str) -> anyhow::Result<i64> {
        self.log_line(&format!("task {task} started"));
        self.store
            .start_task(self.run_id, task, fingerprint, TaskStatus::Running, None)
    }
    fn task_skipped(
        &mut self,
        task: &TaskId,
        fingerprint: &str,
        output: &Json,
    ) -> anyhow::Result<()> {
        let summary = summarize(task, output);
        self.say(&format!(
            "  {task:<18} skipped  done before with the same inputs{}",
            if summary.is_empty() {
                String::new()
            } else {
                format!(" ({summary})")
            }
        ));
        self.store.start_task(
            self.run_id,
            task,
            fingerprint,
            TaskStatus::Skipped,
            Some(output),
        )?;
        Ok(())
    }
    fn attempt_started(&mut self, task_id: i64, task: &TaskId, a: &Attempt) -> anyhow::Result<i64> {
        let log = a.log_base.with_extension("log");
        if a.number > 1 {
            self.say(&format!("  {task:<18} attempt {}/{}", a.number, a.of));
        }
        self.store
            .start_attempt(task_id, a.number, &log.display().to_string())
    }
    fn attempt_finished(
        &mut self,
        attempt_id: i64,
        task: &TaskId,
        a: &Attempt,
        error: Option<&str>,
        retry_in: Option<Duration>,
    ) -> anyhow::Result<()> {
        if let Some(e) = error {
            let first = e.lines().next().unwrap_or("");
            match retry_in {
                Some(d) => self.say(&format!(
                    "  {task:<18} attempt {}/{} failed: {first}; retrying in {:.1} s",
                    a.number,
                    a.of,
                    d.as_secs_f64()
                )),
                None => self.log_line(&format!("{task} attempt {} failed: {e}", a.number)),
            }
        }
        self.store.finish_attempt(
            attempt_id,
            if error.is_some() {
                AttemptStatus::Failed
            } else {
                AttemptStatus::Success
            },
            error,
        )
    }
    fn task_finished(
        &mut self,
        task_id: Option<i64>,
        o: &TaskOutcome<TaskId>,
    ) -> anyhow::Result<()> {
        let id = match task_id {
            Some(id) => id,
            None => self
                .store
                .start_task(self.run_id, &o.name, "", o.status, None)?,
        };
        self.store.finish_task(
            id,
            o.status,
            o.attempts,
            o.output.as_ref(),
            o.error.as_deref(),
        )?;
        let name = &o.name;
        match &o.output {
            Some(out) => self.say(&format!(
                "  {name:<18} ok       {:>6.1}s  {}",
                o.seconds,
                summarize(name, out)
            )),
            None => self.say(&format!(
                "  {name:<18} {}  {}",
                o.status,
                o.error.as_deref().unwrap_or("")
            )),
        }
        Ok(())
    }
}
