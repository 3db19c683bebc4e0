//! `gate`: the spec's rules against the current stable version's metrics.

use std::sync::Arc;

use anyhow::Context;
use kiln_registry::Repo;
use serde_json::Value as Json;

use super::ctx::{Ctx, Upstream, in_process, output, sha};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Gate;

/// `gate`: after `evaluate`; in process.
pub(super) struct GateTask {
    /// The run.
    pub ctx: Arc<Ctx>,
}

/// The stable version and its metrics, if there is one.
fn stable(ctx: &Ctx) -> anyhow::Result<Option<(u64, Json)>> {
    let repo = Repo::new(&ctx.pipeline.repo_dir);
    let Some(v) = repo.labels()?.stable else {
        return Ok(None);
    };
    let p = repo.version_dir(v).join("metrics.json");
    let m = std::fs::read(&p)
        .with_context(|| format!("stable version {v}: reading {}", p.display()))?;
    Ok(Some((v, serde_json::from_slice(&m)?)))
}

impl Task<TaskId> for GateTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        vec![TaskKind::Evaluate.into()]
    }
    fn policy(&self) -> TaskPolicy {
        self.ctx.policy(KIND)
    }
    /// The decision is made once per candidate: a rerun does not re-judge a model against a
    /// stable version that may be the model itself (`--force` does).
    fn fingerprint(&self, up: &Upstream) -> anyhow::Result<String> {
        Ok(sha(&[
            KIND.as_str(),
            output(up, TaskKind::Train)["model_sha256"]
                .as_str()
                .unwrap_or(""),
            &output(up, TaskKind::Evaluate)["metrics"].to_string(),
            &serde_json::to_string(&self.ctx.pipeline.config.gate.rules)?,
        ]))
    }
    /// Runs on its own thread, within the task's timeout.
    fn run(&mut self, a: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let ctx = self.ctx.clone();
        let metrics = output(up, TaskKind::Evaluate)["metrics"].clone();
        in_process(KIND.as_str(), a.timeout, move |_| {
            let stable = stable(&ctx)?;
            let d = crate::gate::evaluate(
                &ctx.pipeline.gate,
                &metrics,
                stable.as_ref().map(|(v, m)| (*v, m)),
            );
            Ok(serde_json::to_value(d)?)
        })
    }
}
