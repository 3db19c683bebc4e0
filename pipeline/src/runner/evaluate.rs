//! `evaluate`: `kiln predict MODEL --input DATA --eval-split --json`, which must reproduce
//! the trainer's held-out metrics; writes the held-out predictions for `publish` to check.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

use super::ctx::{Ctx, Upstream, output, sha};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Evaluate;
/// The `kiln` subcommand the task runs.
const COMMAND: &str = "predict";

/// `evaluate`: after `train`.
pub(super) struct EvaluateTask {
    /// The run.
    pub ctx: Arc<Ctx>,
}

impl Task<TaskId> for EvaluateTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        vec![TaskKind::Train.into()]
    }
    fn policy(&self) -> TaskPolicy {
        self.ctx.policy(KIND)
    }
    fn fingerprint(&self, up: &Upstream) -> anyhow::Result<String> {
        Ok(sha(&[
            KIND.as_str(),
            output(up, TaskKind::Train)["model_sha256"]
                .as_str()
                .unwrap_or(""),
            output(up, TaskKind::Features)["manifest_sha256"]
                .as_str()
                .unwrap_or(""),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        out["predictions"]
            .as_str()
            .is_some_and(|p| Path::new(p).is_file())
    }
    fn run(&mut self, a: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let data = output(up, TaskKind::Features)["examples"]
            .as_str()
            .context("features output without the examples location")?;
        let preds = self.ctx.staging.join("eval_predictions.csv");
        let args = vec![
            COMMAND.to_string(),
            self.ctx.model_dir().display().to_string(),
            "--input".into(),
            data.to_string(),
            "--eval-split".into(),
            "--json".into(),
            "--output".into(),
            preds.display().to_string(),
        ];
        let p = self.ctx.child(KIND, args, a)?;
        let trained = &output(up, TaskKind::Train)["metrics"];
        if trained.is_null() {
            bail!("training reported no held-out metrics: set [train] eval (hash or time split)");
        }
        for k in ["rows", "auc", "logloss"] {
            if p["metrics"][k] != trained[k] {
                bail!(
                    "evaluation does not reproduce training: {k} {} from kiln predict vs {} from kiln train",
                    p["metrics"][k],
                    trained[k]
                );
            }
        }
        Ok(json!({
            "metrics": p["metrics"],
            "predictions": preds.display().to_string(),
            "rows": p["rows"],
        }))
    }
}
