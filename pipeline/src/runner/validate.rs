//! `validate`: the anomalies the feature job recorded in each output's manifest (expectations
//! and drift checked on the statistics at commit) stop the run before training, unless a
//! human accepted them (`kiln run --accept COLUMN|@rows|@all`).

use std::sync::Arc;

use anyhow::Context;
use kiln_connectors::stats::{Anomaly, Validation};
use kiln_connectors::{Dataset, OpenOptions};
use serde_json::{Value as Json, json};

use super::ctx::{Ctx, Upstream, output, sha};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Validate;

/// How a failed `validate` attempt's error begins when it found anomalies (as opposed to,
/// say, a manifest it could not read): the run's status is then `anomalies`.
pub(crate) const ANOMALIES_FOUND: &str = "data validation:";

/// `validate`: runs after `features`, before `train`.
pub(super) struct ValidateTask {
    /// The run.
    pub ctx: Arc<Ctx>,
}

/// One output of the feature task: its statement and committed location.
struct Output {
    statement: String,
    location: String,
}

/// The outputs the `features` task committed (every output; older records name only
/// `examples`).
fn outputs(features: &Json) -> Vec<Output> {
    match features["outputs"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(|o| {
                Some(Output {
                    statement: o["statement"].as_str()?.to_string(),
                    location: o["location"].as_str()?.to_string(),
                })
            })
            .collect(),
        None => features["examples"]
            .as_str()
            .map(|l| Output {
                statement: "examples".into(),
                location: l.to_string(),
            })
            .into_iter()
            .collect(),
    }
}

/// The validation recorded in the manifest at `location` (`None` when the output was written
/// without statistics).
fn recorded(location: &str) -> anyhow::Result<Option<Validation>> {
    let ds = Dataset::open_blocking(location, OpenOptions::default())
        .with_context(|| format!("opening {location}"))?;
    Ok(ds.manifest().validation.clone())
}

/// Every anomaly recorded for the outputs of a `features` task output, by statement.
pub(crate) fn anomalies(features: &Json) -> anyhow::Result<Vec<(String, Anomaly)>> {
    let mut out = Vec::new();
    for o in outputs(features) {
        if let Some(v) = recorded(&o.location)? {
            out.extend(v.anomalies.into_iter().map(|a| (o.statement.clone(), a)));
        }
    }
    Ok(out)
}

impl Task<TaskId> for ValidateTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        vec![TaskKind::Features.into()]
    }
    /// No retries unless configured: the same manifest gives the same anomalies.
    fn policy(&self) -> TaskPolicy {
        let p = self.ctx.policy(KIND);
        if self.ctx.pipeline.config.tasks.contains_key(&KIND) {
            p
        } else {
            TaskPolicy { retries: 0, ..p }
        }
    }
    fn fingerprint(&self, up: &Upstream) -> anyhow::Result<String> {
        let f = output(up, TaskKind::Features);
        let mut accepted = self.ctx.accept.clone();
        accepted.sort();
        Ok(sha(&[
            KIND.as_str(),
            f["manifest_sha256"].as_str().unwrap_or(""),
            &f["outputs"].to_string(),
            &accepted.join(","),
        ]))
    }
    fn run(&mut self, _: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let features = output(up, TaskKind::Features);
        let accept = &self.ctx.accept;
        let mut report = Vec::new();
        let mut blocking = Vec::new();
        for o in outputs(features) {
            let Some(v) = recorded(&o.location)? else {
                report.push(
                    json!({"statement": o.statement, "location": o.location, "validated": false}),
                );
                continue;
            };
            let open = v.unaccepted(accept);
            for a in &open {
                blocking.push(format!("  {}: {a}", o.statement));
            }
            let accepted: Vec<&Anomaly> =
                v.anomalies.iter().filter(|a| !open.contains(a)).collect();
            report.push(json!({
                "statement": o.statement,
                "location": o.location,
                "validated": true,
                "checks": v.checks,
                "baseline": v.baseline,
                "baseline_missing": v.baseline_missing,
                "skipped": v.skipped,
                "anomalies": v.anomalies,
                "accepted": accepted,
            }));
        }
        if !blocking.is_empty() {
            anyhow::bail!(
                "{ANOMALIES_FOUND} {} anomal{} (nothing trained; after checking the data, \
                 `kiln run --accept COLUMN` (or @rows, @all) overrides):\n{}",
                blocking.len(),
                if blocking.len() == 1 { "y" } else { "ies" },
                blocking.join("\n")
            );
        }
        Ok(json!({"outputs": report, "accepted": accept}))
    }
}
