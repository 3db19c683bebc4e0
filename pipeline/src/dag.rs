//! A DAG of named tasks with per-task retries (count, exponential backoff), per-attempt
//! timeouts and skip-if-done: a task whose last success (same job and date) had the same
//! input fingerprint, and whose output is still there, is skipped unless forced.
//!
//! Tasks run one at a time in dependency order (definition order among ready tasks). When a
//! task fails for good, every task downstream of it is recorded as `upstream_failed`.
//!
//! The DAG is generic over how tasks are named (`N`): the pipeline names them with
//! [`TaskId`](crate::task::TaskId).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use serde_json::Value as Json;

use crate::config::MAX_SECONDS;
use crate::status::TaskStatus;
use crate::task::TaskPolicy;

/// `x` seconds as a [`Duration`], never panicking: NaN and negative values are zero, values
/// over [`MAX_SECONDS`] are capped (the spec's values are checked when it is loaded; this
/// guards computed ones).
pub fn seconds(x: f64) -> Duration {
    let x = if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, MAX_SECONDS)
    };
    Duration::from_secs_f64(x)
}

/// The wait before retry `n + 1` after attempt `n` failed: `base`, doubling each retry.
pub fn backoff(base: f64, n: u32) -> Duration {
    seconds(base * 2f64.powi(n.saturating_sub(1).min(1024) as i32))
}

/// What names a task: compared, ordered, printed (log files, messages) and serialized.
pub trait TaskName: Clone + Ord + Display + Serialize {}
impl<T: Clone + Ord + Display + Serialize> TaskName for T {}

/// Outputs of finished tasks, by name.
pub type Outputs<N> = BTreeMap<N, Json>;

/// One attempt's context.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1-based attempt number.
    pub number: u32,
    /// Attempts allowed in total.
    pub of: u32,
    /// Path prefix for this attempt's log files (`<task>.attempt-<n>`).
    pub log_base: PathBuf,
    /// The task's per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Whether the run was forced (`--force`).
    pub force: bool,
}

/// A task of the DAG.
pub trait Task<N: TaskName> {
    /// Unique name.
    fn name(&self) -> N;
    /// Names of the tasks that must succeed first.
    fn deps(&self) -> Vec<N>;
    /// Retries, backoff, timeout.
    fn policy(&self) -> TaskPolicy;
    /// Fingerprint of everything the task's result depends on (given upstream outputs).
    fn fingerprint(&self, upstream: &Outputs<N>) -> anyhow::Result<String>;
    /// Whether a recorded successful output is still usable (e.g. the manifest it names is
    /// still committed).
    fn still_valid(&self, _output: &Json) -> bool {
        true
    }
    /// One attempt. Returns the task's output (recorded, and given to downstream tasks).
    fn run(&mut self, attempt: &Attempt, upstream: &Outputs<N>) -> anyhow::Result<Json>;
}

/// Where the DAG records what happens (the metadata store plus the progress view).
pub trait Recorder<N: TaskName> {
    /// The newest successful run of `task` for this job and date: (fingerprint, output).
    fn last_success(&mut self, task: &N) -> anyhow::Result<Option<(String, Json)>>;
    /// A task starts; returns its id.
    fn task_started(&mut self, task: &N, fingerprint: &str) -> anyhow::Result<i64>;
    /// A task is skipped, reusing `output`.
    fn task_skipped(&mut self, task: &N, fingerprint: &str, output: &Json) -> anyhow::Result<()>;
    /// An attempt starts; returns its id.
    fn attempt_started(&mut self, task_id: i64, task: &N, attempt: &Attempt)
    -> anyhow::Result<i64>;
    /// An attempt ends: failed when `error` is given, else succeeded.
    fn attempt_finished(
        &mut self,
        attempt_id: i64,
        task: &N,
        attempt: &Attempt,
        error: Option<&str>,
        retry_in: Option<Duration>,
    ) -> anyhow::Result<()>;
    /// A task ends (`success`, `failed`, `upstream_failed`); `task_id` is `None` when it
    /// never started.
    fn task_finished(
        &mut self,
        task_id: Option<i64>,
        outcome: &TaskOutcome<N>,
    ) -> anyhow::Result<()>;
}

/// How one task ended.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome<N> {
    /// Task name.
    pub name: N,
    /// `success`, `skipped`, `failed`, `upstream_failed` (never `running`).
    pub status: TaskStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Wall time.
    pub seconds: f64,
    /// Output.
    pub output: Option<Json>,
    /// Error of the last attempt.
    pub error: Option<String>,
}

/// The DAG: tasks in definition order.
pub struct Dag<N: TaskName> {
    tasks: Vec<Box<dyn Task<N>>>,
}

impl<N: TaskName> Dag<N> {
    /// Checks names and dependencies (unknown, duplicate, cycles).
    pub fn new(tasks: Vec<Box<dyn Task<N>>>) -> anyhow::Result<Self> {
        let names: Vec<N> = tasks.iter().map(|t| t.name()).collect();
        let mut seen = BTreeSet::new();
        for n in &names {
            if !seen.insert(n.clone()) {
                bail!("task `{n}` is defined twice");
            }
        }
        for t in &tasks {
            for d in t.deps() {
                if !seen.contains(&d) {
                    bail!("task `{}` depends on unknown task `{d}`", t.name());
                }
            }
        }
        let dag = Dag { tasks };
        dag.order()?;
        Ok(dag)
    }

    /// Task indices in execution order (Kahn; ties in definition order).
    fn order(&self) -> anyhow::Result<Vec<usize>> {
        let names: Vec<N> = self.tasks.iter().map(|t| t.name()).collect();
        let mut done: BTreeSet<N> = BTreeSet::new();
        let mut order = Vec::new();
        while order.len() < self.tasks.len() {
            let next = (0..self.tasks.len()).find(|&i| {
                !done.contains(&names[i]) && self.tasks[i].deps().iter().all(|d| done.contains(d))
            });
            match next {
                Some(i) => {
                    done.insert(names[i].clone());
                    order.push(i);
                }
                None => {
                    let stuck: Vec<String> = names
                        .iter()
                        .filter(|n| !done.contains(*n))
                        .map(N::to_string)
                        .collect();
                    bail!("task dependencies form a cycle among: {}", stuck.join(", "));
                }
            }
        }
        Ok(order)
    }

    /// Task names in execution order.
    #[cfg(test)]
    pub fn names(&self) -> Vec<N> {
        self.order()
            .unwrap_or_default()
            .into_iter()
            .map(|i| self.tasks[i].name())
            .collect()
    }

    /// Runs every task; stops scheduling downstream of a failure.
    pub fn run(
        &mut self,
        rec: &mut dyn Recorder<N>,
        log_dir: &std::path::Path,
        force: bool,
    ) -> anyhow::Result<Vec<TaskOutcome<N>>> {
        let order = self.order()?;
        let mut outputs = Outputs::new();
        let mut failed: BTreeSet<N> = BTreeSet::new();
        let mut outcomes = Vec::new();
        for i in order {
            let task = &mut self.tasks[i];
            let name = task.name();
            let not_run = |status: TaskStatus, error: String| TaskOutcome {
                name: name.clone(),
                status,
                attempts: 0,
                seconds: 0.0,
                output: None,
                error: Some(error),
            };
            if let Some(up) = task.deps().iter().find(|d| failed.contains(*d)) {
                let o = not_run(
                    TaskStatus::UpstreamFailed,
                    format!("upstream task `{up}` did not succeed"),
                );
                rec.task_finished(None, &o)?;
                failed.insert(name.clone());
                outcomes.push(o);
                continue;
            }
            let start = Instant::now();
            let fingerprint = match task.fingerprint(&outputs) {
                Ok(f) => f,
                Err(e) => {
                    let o = not_run(TaskStatus::Failed, format!("{e:#}"));
                    rec.task_finished(None, &o)?;
                    failed.insert(name.clone());
                    outcomes.push(o);
                    continue;
                }
            };
            if !force
                && let Some((fp, out)) = rec.last_success(&name)?
                && fp == fingerprint
                && task.still_valid(&out)
            {
                rec.task_skipped(&name, &fingerprint, &out)?;
                outputs.insert(name.clone(), out.clone());
                outcomes.push(TaskOutcome {
                    name,
                    status: TaskStatus::Skipped,
                    attempts: 0,
                    seconds: 0.0,
                    output: Some(out),
                    error: None,
                });
                continue;
            }
            let task_id = rec.task_started(&name, &fingerprint)?;
            let policy = task.policy();
            let total = policy.retries + 1;
            let mut last_error = None;
            let mut result = None;
            let mut attempts = 0;
            for n in 1..=total {
                attempts = n;
                let attempt = Attempt {
                    number: n,
                    of: total,
                    log_base: log_dir.join(format!(
                        "{}.attempt-{n}",
                        name.to_string().replace(':', "-")
                    )),
                    timeout: policy.timeout_seconds.map(seconds),
                    force,
                };
                let attempt_id = rec.attempt_started(task_id, &name, &attempt)?;
                match task.run(&attempt, &outputs) {
                    Ok(out) => {
                        rec.attempt_finished(attempt_id, &name, &attempt, None, None)?;
                        result = Some(out);
                        break;
                    }
                    Err(e) => {
                        let error = format!("{e:#}");
                        let retry_in = (n < total).then(|| backoff(policy.backoff_seconds, n));
                        rec.attempt_finished(attempt_id, &name, &attempt, Some(&error), retry_in)?;
                        last_error = Some(error);
                        if let Some(d) = retry_in {
                            std::thread::sleep(d);
                        }
                    }
                }
            }
            let o = TaskOutcome {
                name: name.clone(),
                status: if result.is_some() {
                    TaskStatus::Success
                } else {
                    TaskStatus::Failed
                },
                attempts,
                seconds: start.elapsed().as_secs_f64(),
                error: if result.is_some() { None } else { last_error },
                output: result,
            };
            rec.task_finished(Some(task_id), &o)?;
            match &o.output {
                Some(out) => {
                    outputs.insert(name, out.clone());
                }
                None => {
                    failed.insert(name);
                }
            }
            outcomes.push(o);
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fake {
        name: &'static str,
        deps: Vec<String>,
        fail_times: u32,
        calls: u32,
        retries: u32,
        input: String,
    }

    impl Task<String> for Fake {
        fn name(&self) -> String {
            self.name.into()
        }
        fn deps(&self) -> Vec<String> {
            self.deps.clone()
        }
        fn policy(&self) -> TaskPolicy {
            TaskPolicy {
                retries: self.retries,
                backoff_seconds: 0.05,
                timeout_seconds: None,
            }
        }
        fn fingerprint(&self, up: &Outputs<String>) -> anyhow::Result<String> {
            Ok(format!("{}|{}", self.input, serde_json::to_string(up)?))
        }
        fn run(&mut self, _a: &Attempt, _up: &Outputs<String>) -> anyhow::Result<Json> {
            self.calls += 1;
            if self.calls <= self.fail_times {
                bail!("{} failed (call {})", self.name, self.calls)
            }
            Ok(json!({"by": self.name}))
        }
    }

    #[derive(Default)]
    struct Memory {
        done: BTreeMap<String, (String, Json)>,
        log: Vec<String>,
    }

    impl Recorder<String> for Memory {
        fn last_success(&mut self, task: &String) -> anyhow::Result<Option<(String, Json)>> {
            Ok(self.done.get(task).cloned())
        }
        fn task_started(&mut self, task: &String, _fp: &str) -> anyhow::Result<i64> {
            self.log.push(format!("start {task}"));
            Ok(0)
        }
        fn task_skipped(&mut self, task: &String, _fp: &str, _o: &Json) -> anyhow::Result<()> {
            self.log.push(format!("skip {task}"));
            Ok(())
        }
        fn attempt_started(
            &mut self,
            _t: i64,
            _task: &String,
            _a: &Attempt,
        ) -> anyhow::Result<i64> {
            Ok(0)
        }
        fn attempt_finished(
            &mut self,
            _id: i64,
            task: &String,
            a: &Attempt,
            e: Option<&str>,
            retry_in: Option<Duration>,
        ) -> anyhow::Result<()> {
            self.log.push(format!(
                "{task} attempt {}/{} {} retry_in={:?}",
                a.number,
                a.of,
                e.map_or("ok", |_| "err"),
                retry_in.map(|d| d.as_millis())
            ));
            Ok(())
        }
        fn task_finished(
            &mut self,
            _id: Option<i64>,
            o: &TaskOutcome<String>,
        ) -> anyhow::Result<()> {
            self.log.push(format!("{} {}", o.name, o.status));
            Ok(())
        }
    }

    fn fake(
        name: &'static str,
        deps: &[&str],
        fail_times: u32,
        retries: u32,
    ) -> Box<dyn Task<String>> {
        Box::new(Fake {
            name,
            deps: deps.iter().map(|s| s.to_string()).collect(),
            fail_times,
            calls: 0,
            retries,
            input: "v1".into(),
        })
    }

    #[test]
    fn durations_never_panic() {
        assert_eq!(seconds(f64::NAN), Duration::ZERO);
        assert_eq!(seconds(-1.0), Duration::ZERO);
        assert_eq!(seconds(f64::INFINITY), Duration::from_secs_f64(MAX_SECONDS));
        assert_eq!(backoff(1.0, 3), Duration::from_secs(4));
        assert_eq!(backoff(1e6, u32::MAX), Duration::from_secs_f64(MAX_SECONDS));
    }

    #[test]
    fn retries_with_backoff_then_skips_on_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let mut dag = Dag::new(vec![
            fake("b", &["a"], 2, 2),
            fake("a", &[], 0, 0),
            fake("c", &["b"], 0, 0),
        ])
        .unwrap();
        assert_eq!(dag.names(), ["a", "b", "c"]);
        let mut rec = Memory::default();
        let t = Instant::now();
        let out = dag.run(&mut rec, dir.path(), false).unwrap();
        // Backoff 50 ms then 100 ms.
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert!(
            out.iter().all(|o| o.status == TaskStatus::Success),
            "{out:?}"
        );
        assert_eq!(out[1].attempts, 3);
        assert!(
            rec.log
                .contains(&"b attempt 1/3 err retry_in=Some(50)".to_string())
        );
        assert!(
            rec.log
                .contains(&"b attempt 2/3 err retry_in=Some(100)".to_string())
        );
        // Record successes; a rerun skips all; --force reruns.
        let mut done = BTreeMap::new();
        let mut up = Outputs::new();
        for o in &out {
            let fp = format!("v1|{}", serde_json::to_string(&up).unwrap());
            done.insert(o.name.clone(), (fp, o.output.clone().unwrap()));
            up.insert(o.name.clone(), o.output.clone().unwrap());
        }
        let mut rec = Memory { done, log: vec![] };
        let out = dag.run(&mut rec, dir.path(), false).unwrap();
        assert!(
            out.iter().all(|o| o.status == TaskStatus::Skipped),
            "{out:?}"
        );
        let out = dag.run(&mut rec, dir.path(), true).unwrap();
        assert!(
            out.iter().all(|o| o.status == TaskStatus::Success),
            "{out:?}"
        );
    }

    #[test]
    fn failure_stops_downstream() {
        let dir = tempfile::tempdir().unwrap();
        let mut dag = Dag::new(vec![
            fake("a", &[], 5, 1),
            fake("b", &["a"], 0, 0),
            fake("x", &[], 0, 0),
        ])
        .unwrap();
        let mut rec = Memory::default();
        let out = dag.run(&mut rec, dir.path(), false).unwrap();
        let st: Vec<(&str, &str)> = out
            .iter()
            .map(|o| (o.name.as_str(), o.status.as_str()))
            .collect();
        assert_eq!(
            st,
            [("a", "failed"), ("b", "upstream_failed"), ("x", "success")]
        );
        assert_eq!(out[0].attempts, 2);
        assert_eq!(out[0].error.as_deref(), Some("a failed (call 2)"));
    }

    #[test]
    fn rejects_cycles_and_unknown_deps() {
        let e = Dag::new(vec![fake("a", &["b"], 0, 0), fake("b", &["a"], 0, 0)])
            .err()
            .unwrap();
        assert!(e.to_string().contains("cycle among: a, b"), "{e}");
        let e = Dag::new(vec![fake("a", &["z"], 0, 0)]).err().unwrap();
        assert!(e.to_string().contains("unknown task `z`"), "{e}");
    }
}
