//! `publish`: assemble, checksum, verify and atomically publish a version; move labels as
//! the gate decided; apply retention.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use kiln_registry as registry;
use serde_json::{Value as Json, json};

use super::ctx::{Cancel, Ctx, Upstream, in_process, output, sha};
use super::lock::LockCheck;
use crate::dag::{Attempt, Task};
use crate::gate::Decision;
use crate::metastore::now_text;
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Publish;

/// `publish`: after `gate`; in process.
pub(super) struct PublishTask {
    /// The run.
    pub ctx: Arc<Ctx>,
    /// The run's hold on its lock: checked before each change to the repository, so a run
    /// whose lock was taken over publishes nothing.
    pub lock: Arc<LockCheck>,
}

/// Held-out logits `kiln predict` wrote, by (shard, row).
fn read_predictions(path: &Path) -> anyhow::Result<HashMap<(u32, u64), f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(kiln_trainer::predictions::logits_by_row(
        &bytes,
        &path.display().to_string(),
    )?)
}

/// The first shard of a dataset (a few held-out rows to score when verifying).
struct FirstShard(kiln_trainer::source::DatasetSource);

impl kiln_trainer::ShardSource for FirstShard {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }
    fn shard_rows(&self) -> Vec<u64> {
        self.0.shard_rows().into_iter().take(1).collect()
    }
    fn read_shard(&self, index: usize) -> kiln_trainer::Result<kiln_trainer::source::BatchIter> {
        self.0.read_shard(index)
    }
    fn describe(&self) -> String {
        format!("{} (first shard)", self.0.describe())
    }
}

/// Loads the assembled version and scores up to `n` held-out rows; each logit must equal
/// what evaluation saw for that row as `agreement` says (bit for bit when evaluation scored
/// on the CPU like this process; within a tolerance when it scored on a GPU).
fn verify_model(
    dir: &Path,
    data: &str,
    predictions: &Path,
    n: usize,
    agreement: kiln_trainer::device::Agreement,
) -> anyhow::Result<usize> {
    let model = kiln_trainer::export::load(dir)?;
    let source: Arc<dyn kiln_trainer::ShardSource> =
        Arc::new(FirstShard(kiln_trainer::source::DatasetSource::open(data)?));
    let (logits, _, rows) = kiln_trainer::export::score(
        &model.params,
        &model.transform,
        &source,
        kiln_trainer::transform::RowFilter::Eval,
    )?;
    let seen = read_predictions(predictions)?;
    let mut checked = 0;
    for (z, key) in logits.iter().zip(&rows).take(n) {
        let want = seen.get(key).with_context(|| {
            format!(
                "held-out row {key:?} is missing from {}",
                predictions.display()
            )
        })?;
        if !agreement.logit_agrees(*z, *want) {
            bail!(
                "shard {} row {}: the published copy predicts logit {z:?}, evaluation saw \
                 {want:?} (they must agree {agreement})",
                key.0,
                key.1
            );
        }
        checked += 1;
    }
    Ok(checked)
}

impl Task<TaskId> for PublishTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        vec![TaskKind::Gate.into()]
    }
    fn policy(&self) -> TaskPolicy {
        self.ctx.policy(KIND)
    }
    fn fingerprint(&self, up: &Upstream) -> anyhow::Result<String> {
        Ok(sha(&[
            KIND.as_str(),
            &self.ctx.pipeline.repo_url,
            output(up, TaskKind::Train)["model_sha256"]
                .as_str()
                .unwrap_or(""),
            &output(up, TaskKind::Gate)["passed"].to_string(),
            self.ctx.pipeline.config.promote_to.as_str(),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        let Ok(repo) = self.ctx.pipeline.repo() else {
            return false;
        };
        match out["version"].as_u64() {
            // Present, or pruned by retention after newer versions appeared.
            Some(v) => {
                repo.has_version(v).unwrap_or(false)
                    || repo.versions().ok().and_then(|vs| vs.last().copied()) > Some(v)
            }
            None => false,
        }
    }
    /// Runs on its own thread, within the task's timeout; a given-up attempt stops before
    /// its next change to the repository (a version renamed in before that is found again
    /// by its publish key on the retry).
    fn run(&mut self, a: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let (ctx, up, lock) = (self.ctx.clone(), up.clone(), self.lock.clone());
        in_process(KIND.as_str(), a.timeout, move |cancel| {
            publish(&ctx, &up, &cancel, &lock)
        })
    }
}

/// The publish task's body (see [`PublishTask`]).
fn publish(ctx: &Ctx, up: &Upstream, cancel: &Cancel, lock: &LockCheck) -> anyhow::Result<Json> {
    lock.check()?;
    let repo = ctx.pipeline.repo()?;
    let (features, train) = (output(up, TaskKind::Features), output(up, TaskKind::Train));
    let (evaluate, gate) = (output(up, TaskKind::Evaluate), output(up, TaskKind::Gate));
    let decision: Decision = serde_json::from_value(gate.clone())?;
    let model_sha = train["model_sha256"]
        .as_str()
        .context("train output without model_sha256")?;
    let data = features["examples"].as_str().unwrap_or_default();
    let predictions = PathBuf::from(evaluate["predictions"].as_str().unwrap_or_default());
    // Evaluation scored where the model was trained; this process scores on the CPU.
    let evaluated_on = match evaluate["device"].as_str() {
        Some(d) => d
            .parse()
            .with_context(|| format!("evaluate output: device `{d}`"))?,
        None => kiln_trainer::device::ComputeDevice::Cpu,
    };
    let agreement = kiln_trainer::device::Agreement::between(
        kiln_trainer::device::selected_device(),
        evaluated_on,
    );
    // One key per (job, date, model): a rerun after a crash between the rename and the
    // record finds its version instead of publishing a second copy.
    let publish_key = sha(&[&ctx.spec.name, &ctx.date(), model_sha]);
    let mut verified_rows = None;
    let version = match repo.find_by_lineage("publish_key", &publish_key)? {
        Some(v) => {
            repo.verify_version(v)?;
            v
        }
        None => {
            let lineage = json!({
                "job": ctx.spec.name,
                "model": ctx.pipeline.model_name,
                "date": ctx.date(),
                "run_id": ctx.run_id,
                "spec_path": ctx.spec.path.display().to_string(),
                "spec_sha256": ctx.spec.sha256,
                "kiln_version": env!("CARGO_PKG_VERSION"),
                "examples": data,
                "examples_manifest_sha256": features["manifest_sha256"],
                "model_sha256": model_sha,
                "publish_key": publish_key,
                "metrics": evaluate["metrics"],
                "gate": gate,
                "train": {
                    "steps": train["steps"],
                    "workers": train["workers"],
                    "start_step": train["start_step"],
                    "param_checksum": train["param_checksum"],
                },
                "published_at": now_text(),
            });
            let n = ctx.pipeline.config.verify_rows;
            let mut rows = 0;
            let v = repo.publish(&ctx.model_dir(), &lineage, |tmp| {
                rows = verify_model(tmp, data, &predictions, n, agreement)?;
                cancel.check()?;
                // Last check before the version is renamed in.
                lock.check()?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })?;
            verified_rows = Some(rows);
            v
        }
    };
    cancel.check()?;
    lock.check()?;
    let label = ctx.pipeline.config.promote_to;
    let labels = repo.update_labels(|l, _| {
        if decision.passed {
            l.rejected.retain(|x| *x != version);
            l.set(label, version);
        } else if !l.rejected.contains(&version) {
            l.rejected.push(version);
        }
        Ok::<_, registry::RegistryError>(l.clone())
    })?;
    cancel.check()?;
    lock.check()?;
    let pruned = repo.prune(ctx.pipeline.config.keep_versions)?;
    // The checkpoints are no longer needed once the version is published.
    let ckpt = ctx.model_dir().join("checkpoints");
    if ckpt.exists() {
        std::fs::remove_dir_all(&ckpt).with_context(|| format!("removing {}", ckpt.display()))?;
    }
    Ok(json!({
        "version": version,
        "path": repo.version_location(version),
        "status": if decision.passed { "published" } else { "rejected" },
        "label": if decision.passed { Some(label) } else { None },
        "labels": labels,
        "pruned": pruned,
        "verified_rows": verified_rows,
    }))
}
