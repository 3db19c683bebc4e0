//! Statuses and other closed sets of the run records: what the metadata store writes and
//! `kiln run --json` / `kiln runs --json` print. The names are the stored strings: never
//! rename one (old rows must still parse).

use crate::names::closed_set;

closed_set! {
    /// How a task stands: in the metadata store, and (never `running`) in a run's summary.
    pub enum TaskStatus ("task status") {
        /// Started, not finished (or its process died; see `abandon_run`).
        Running => "running",
        /// Ran and succeeded.
        Success => "success",
        /// Done before with the same inputs; its recorded output was reused.
        Skipped => "skipped",
        /// Every attempt failed (or its inputs could not be fingerprinted).
        Failed => "failed",
        /// Not run: a task it depends on did not succeed.
        UpstreamFailed => "upstream_failed",
    }
}

impl TaskStatus {
    /// Whether the task's output is usable downstream (`success` or `skipped`).
    pub fn is_done(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Skipped)
    }
}

closed_set! {
    /// How one attempt of a task stands. A timed-out attempt is `failed`, with the timeout
    /// in its error.
    pub enum AttemptStatus ("attempt status") {
        /// Started, not finished.
        Running => "running",
        /// Succeeded.
        Success => "success",
        /// Failed (error, non-zero exit, timeout).
        Failed => "failed",
    }
}

closed_set! {
    /// How a run stands: in the metadata store and in `kiln run --json`.
    pub enum RunStatus ("run status") {
        /// Started, not finished.
        Running => "running",
        /// Every task succeeded (or was skipped) and the gate passed.
        Success => "success",
        /// The gate refused the model (kept as a rejected candidate).
        Rejected => "rejected",
        /// Data validation found anomalies in the day's outputs: nothing was trained
        /// (`kiln run --accept` overrides).
        Anomalies => "anomalies",
        /// A task failed, or the run could not be planned.
        Failed => "failed",
    }
}

impl RunStatus {
    /// Whether the run completed its date (`success`, `rejected`, or `anomalies`, which
    /// waits for a human's `kiln run --accept`): backfill and the scheduler do not run such a
    /// date again.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            RunStatus::Success | RunStatus::Rejected | RunStatus::Anomalies
        )
    }
}

closed_set! {
    /// What started a run.
    pub enum Trigger ("trigger") {
        /// `kiln run`.
        Run => "run",
        /// `kiln backfill`.
        Backfill => "backfill",
        /// `kiln schedule`.
        Schedule => "schedule",
    }
}

closed_set! {
    /// Kinds of events recorded with a run.
    pub enum EventKind ("event kind") {
        /// A stale run lock was taken over.
        Lock => "lock",
        /// An alert was sent (or could not be).
        Alert => "alert",
        /// Anomalies were accepted (`kiln run --accept`).
        Accept => "accept",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: serde::Serialize + std::fmt::Display>(v: T, want: &str) {
        assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{want}\""));
        assert_eq!(v.to_string(), want);
    }

    /// The stored and printed strings are exactly those of earlier versions.
    #[test]
    fn names_are_the_stored_strings() {
        check(TaskStatus::Running, "running");
        check(TaskStatus::Success, "success");
        check(TaskStatus::Skipped, "skipped");
        check(TaskStatus::Failed, "failed");
        check(TaskStatus::UpstreamFailed, "upstream_failed");
        check(AttemptStatus::Running, "running");
        check(AttemptStatus::Success, "success");
        check(AttemptStatus::Failed, "failed");
        check(RunStatus::Running, "running");
        check(RunStatus::Success, "success");
        check(RunStatus::Rejected, "rejected");
        check(RunStatus::Failed, "failed");
        check(RunStatus::Anomalies, "anomalies");
        check(Trigger::Run, "run");
        check(Trigger::Backfill, "backfill");
        check(Trigger::Schedule, "schedule");
        check(EventKind::Lock, "lock");
        check(EventKind::Alert, "alert");
        check(EventKind::Accept, "accept");
        assert_eq!(TaskStatus::ALL.len(), 5);
        assert_eq!(RunStatus::ALL.len(), 5);
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), *s);
            let back: TaskStatus = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(back, *s);
        }
        assert_eq!(format!("{:<9}|", RunStatus::Success), "success  |");
    }

    #[test]
    fn unknown_names_are_errors_naming_the_value() {
        let e = "succeeded".parse::<RunStatus>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown run status `succeeded` (expected one of: running, success, rejected, anomalies, failed)"
        );
        let e = serde_json::from_str::<TaskStatus>("\"upstream-failed\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown task status `upstream-failed`"), "{e}");
    }
}
