//! `train`: `kiln train ... --resume --json` into the staging model directory; a retry (or a
//! rerun of the same inputs) resumes from its checkpoint.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use kiln_registry as registry;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::ctx::{Ctx, Upstream, output, sha};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Train;
/// The `kiln` subcommand the task runs.
const COMMAND: &str = "train";

/// `train`: after `features`.
pub(super) struct TrainTask {
    /// The run.
    pub ctx: Arc<Ctx>,
}

/// SHA-256 of a model directory's checksums (without checkpoints, sums and lineage).
fn model_sha256(dir: &Path) -> anyhow::Result<String> {
    let sums = registry::checksums(dir, &["checkpoints", registry::SUMS, registry::LINEAGE])?;
    Ok(hex::encode(Sha256::digest(sums.as_bytes())))
}

impl Task<TaskId> for TrainTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        vec![TaskKind::Validate.into()]
    }
    fn policy(&self) -> TaskPolicy {
        self.ctx.policy(KIND)
    }
    fn fingerprint(&self, up: &Upstream) -> anyhow::Result<String> {
        let train = self
            .ctx
            .spec
            .train
            .as_ref()
            .with_context(|| format!("{}: no [train] section", self.ctx.spec.path.display()))?;
        Ok(sha(&[
            KIND.as_str(),
            &serde_json::to_string(train)?,
            output(up, TaskKind::Features)["manifest_sha256"]
                .as_str()
                .unwrap_or(""),
            &self.ctx.pipeline.config.workers.to_string(),
            env!("CARGO_PKG_VERSION"),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        let dir = self.ctx.model_dir();
        dir.join("model.json").is_file()
            && model_sha256(&dir).ok().as_deref() == out["model_sha256"].as_str()
    }
    fn run(&mut self, a: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let data = output(up, TaskKind::Features)["examples"]
            .as_str()
            .context("features output without the examples location")?;
        let fp = self.fingerprint(up)?;
        let dir = self.ctx.model_dir();
        let fp_file = self.ctx.staging.join("train.fingerprint");
        let same = std::fs::read_to_string(&fp_file).is_ok_and(|s| s.trim() == fp);
        // Resume only a run of the same inputs; anything else (or a forced run's first
        // attempt) starts from scratch. Retries resume.
        if (!same || (a.force && a.number == 1)) && dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        kiln_connectors::store::write_atomic(&fp_file, fp.as_bytes())?;
        let args = vec![
            COMMAND.to_string(),
            self.ctx.spec.path.display().to_string(),
            "--date".into(),
            self.ctx.date(),
            "--data".into(),
            data.to_string(),
            "--model-dir".into(),
            dir.display().to_string(),
            "--workers".into(),
            self.ctx.pipeline.config.workers.to_string(),
            "--resume".into(),
            "--json".into(),
        ];
        let mut out = self.ctx.child(KIND, args, a)?;
        out["model_sha256"] = Json::String(model_sha256(&dir)?);
        out["resumed"] = Json::Bool(out["start_step"].as_u64().unwrap_or(0) > 0);
        Ok(out)
    }
}
