//! The pipeline's task names and retry policy: the bottom of the crate (the spec model, the
//! DAG, the metadata store and the runner all name tasks through this module).
//!
//! The fixed tasks are a closed set ([`TaskKind`]); sensors are named by the spec, so a task
//! of a run is a [`TaskId`]: one of the fixed tasks or `sensor:<name>`.

use std::fmt;
use std::str::FromStr;

use crate::names::{UnknownName, closed_set};

closed_set! {
    /// The pipeline's fixed tasks, in the order they run (sensors come first).
    pub enum TaskKind ("task") {
        /// `kiln features`: the day's examples dataset.
        Features => "features",
        /// The anomalies recorded at commit (expectations, drift) stop the run unless
        /// accepted.
        Validate => "validate",
        /// `kiln train`: the candidate model.
        Train => "train",
        /// `kiln predict --eval-split`: held-out metrics and predictions.
        Evaluate => "evaluate",
        /// The gate's rules against the stable model.
        Gate => "gate",
        /// Publish the version, move labels, apply retention.
        Publish => "publish",
    }
}

/// Prefix of a sensor task's name: `sensor:<name>`.
pub const SENSOR_PREFIX: &str = "sensor:";

/// A task of a run: a fixed task or a sensor. Written (and stored) as `features`, `train`,
/// ... or `sensor:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskId {
    /// `sensor:<name>`: waits for an input.
    Sensor(String),
    /// One of the fixed tasks.
    Step(TaskKind),
}

impl TaskId {
    /// The fixed task, if this is one.
    pub fn kind(&self) -> Option<TaskKind> {
        match self {
            TaskId::Step(k) => Some(*k),
            TaskId::Sensor(_) => None,
        }
    }
}

impl From<TaskKind> for TaskId {
    fn from(k: TaskKind) -> Self {
        TaskId::Step(k)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskId::Step(k) => f.pad(k.as_str()),
            TaskId::Sensor(name) => f.pad(&format!("{SENSOR_PREFIX}{name}")),
        }
    }
}

/// Every name a task may have, for error messages ([`TaskKind::NAMES`], then sensors).
const TASK_NAMES: &[&str] = &[
    "features",
    "validate",
    "train",
    "evaluate",
    "gate",
    "publish",
    "sensor:<name>",
];

impl FromStr for TaskId {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix(SENSOR_PREFIX) {
            return Ok(TaskId::Sensor(name.to_string()));
        }
        s.parse().map(TaskId::Step).map_err(|_| UnknownName {
            what: "task",
            value: s.to_string(),
            expected: TASK_NAMES,
        })
    }
}

impl serde::Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Retry/timeout policy of one task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Seconds before the first retry (doubles each retry).
    pub backoff_seconds: f64,
    /// Per-attempt timeout.
    pub timeout_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_before() {
        let names: Vec<&str> = TaskKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "features", "validate", "train", "evaluate", "gate", "publish"
            ]
        );
        assert_eq!(&TASK_NAMES[..TaskKind::NAMES.len()], TaskKind::NAMES);
        for k in TaskKind::ALL {
            let id = TaskId::from(*k);
            assert_eq!(id.to_string(), k.as_str());
            assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
            assert_eq!(
                serde_json::to_string(&id).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        let s = TaskId::Sensor("next_day".into());
        assert_eq!(s.to_string(), "sensor:next_day");
        assert_eq!(format!("{s:<18}|"), "sensor:next_day   |");
        assert_eq!("sensor:next_day".parse::<TaskId>().unwrap(), s);
        assert_eq!(
            serde_json::from_str::<TaskId>("\"sensor:next_day\"").unwrap(),
            s
        );
    }

    #[test]
    fn unknown_names_are_errors_naming_the_value() {
        let e = "trian".parse::<TaskKind>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown task `trian` (expected one of: features, validate, train, evaluate, gate, publish)"
        );
        let e = "trian".parse::<TaskId>().unwrap_err().to_string();
        assert!(e.contains("`trian`") && e.contains("sensor:<name>"), "{e}");
        let e = serde_json::from_str::<TaskKind>("\"Train\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown task `Train`"), "{e}");
    }
}
