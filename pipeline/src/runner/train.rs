//! `train`: `kiln train ... --resume --json` into the staging model directory; a retry (or a
//! rerun of the same inputs) resumes from its checkpoint.
//!
//! Under `[pipeline] train_on = "kubernetes"` the ranks are the pods of an indexed Job
//! (`kiln_k8s`): the task applies the run's spec ConfigMap, headless Service and Job through
//! the Kubernetes API, waits for the Job, takes rank 0's report from its log and downloads
//! the model from the shared model directory into the staging directory, so that evaluation,
//! the gate and publishing are the same for both.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use kiln_registry as registry;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::ctx::{Cancel, Ctx, Upstream, in_process, output, sha};
use crate::config::TrainOn;
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
            // Where it trains: the world size (and so the model) differs.
            &serde_json::to_string(&self.ctx.pipeline.config.kubernetes)?,
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
        if self.ctx.pipeline.config.train_on == TrainOn::Kubernetes {
            let fresh = !same || (a.force && a.number == 1);
            return self.run_on_kubernetes(a, data, &fp, fresh);
        }
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

impl TrainTask {
    /// The run on the cluster: the Job `<job>-train-<date>-<fingerprint>`, its model
    /// directory `<models_dir>/<job>/train/<date>/<fingerprint>` (the same inputs resume the
    /// same checkpoints), then the model downloaded into the staging directory.
    fn run_on_kubernetes(
        &self,
        a: &Attempt,
        data: &str,
        fp: &str,
        fresh: bool,
    ) -> anyhow::Result<Json> {
        let ctx = &self.ctx;
        let cluster = ctx
            .pipeline
            .config
            .kubernetes
            .clone()
            .context("[pipeline.kubernetes] missing")?;
        if !data.contains("://") || data.starts_with("file://") {
            anyhow::bail!(
                "train_on = \"kubernetes\": the training pods cannot read the examples at \
                 {data} (a path on this machine); write them to a shared store (`--out \
                 s3://...` or an s3:// / hdfs:// output in the spec)"
            );
        }
        let run = kubernetes_run(ctx, cluster, data, fp)?;
        let files = spec_files(&ctx.spec)?;
        let model_dir = kiln_connectors::store::resolve(&run.model_dir)?;
        if fresh && a.force && a.number == 1 {
            // A forced run starts over: no checkpoint of an earlier run is resumed.
            kiln_connectors::store::remove_dir(&model_dir)?;
        }
        let log = a.log_base.with_extension("log");
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let progress_log = log.clone();
        let job = run.name.clone();
        let outcome = in_process(KIND.as_str(), a.timeout, move |cancel: Cancel| {
            let append = |line: String| {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&progress_log)
                {
                    let _ = writeln!(f, "{} {line}", chrono::Utc::now().to_rfc3339());
                }
            };
            append(format!(
                "Job {}/{} ({} ranks, image {}), model directory {}",
                run.cluster.namespace,
                run.name,
                run.cluster.world(),
                run.cluster.image,
                run.model_dir
            ));
            let cancelled = || cancel.check().is_err();
            let progress = |s: &kiln_k8s::JobState| append(format!("Job {}: {s}", run.name));
            let watch = kiln_k8s::Watch {
                cancelled: &cancelled,
                progress: &progress,
                fresh,
            };
            kiln_k8s::train(&run, &files, &watch)
        })
        .with_context(|| format!("training Job `{job}` (its progress: {})", log.display()))?;
        let dir = ctx.model_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let files = kiln_connectors::store::download_dir(&model_dir, &dir)?;
        if !dir.join("model.json").is_file() {
            anyhow::bail!(
                "Job `{job}` completed, but {} holds no model.json ({files} files)",
                model_dir.url
            );
        }
        let mut out = outcome.report;
        out["model_sha256"] = Json::String(model_sha256(&dir)?);
        out["resumed"] = Json::Bool(out["start_step"].as_u64().unwrap_or(0) > 0);
        out["kubernetes"] = serde_json::json!({
            "job": job,
            "namespace": ctx.pipeline.config.kubernetes.as_ref().map(|k| k.namespace.clone()),
            "model_dir": model_dir.url,
            "adopted": outcome.adopted,
        });
        Ok(out)
    }
}

/// The cluster run of the pipeline run `ctx`: named and placed by the train fingerprint `fp`.
fn kubernetes_run(
    ctx: &Ctx,
    cluster: kiln_k8s::TrainCluster,
    data: &str,
    fp: &str,
) -> anyhow::Result<kiln_k8s::TrainRun> {
    let mut run = kiln_k8s::TrainRun::new(&ctx.spec.name, ctx.date, cluster);
    let short = &fp[..12.min(fp.len())];
    let base =
        kiln_k8s::manifests::dns_label(&run.name, kiln_k8s::manifests::MAX_NAME - short.len() - 1);
    run.name = format!("{base}-{short}");
    run.model_dir = format!("{}/{short}", run.model_dir);
    run.data = data.to_string();
    run.spec_configmap = format!("{}-spec", run.name);
    run.labels
        .insert("kiln.dev/run-id".into(), ctx.run_id.to_string());
    Ok(run)
}

/// The spec (under the key the ranks read) and the files it names beside it, for the run's
/// ConfigMap.
fn spec_files(spec: &kiln_engine::JobSpec) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = spec.files()?;
    files[0].0 = kiln_k8s::manifests::SPEC_KEY.to_string();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_files_carry_the_expectation_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
        let text = std::fs::read_to_string(src).unwrap();
        // Any file name: the ranks read it as job.toml. One expectations file beside it.
        let text = text.replacen(
            "[[outputs]]\n",
            "[[outputs]]\nexpect_file = \"expect.toml\"\n",
            1,
        );
        std::fs::write(dir.path().join("expect.toml"), "").unwrap();
        let p = dir.path().join("daily.toml");
        std::fs::write(&p, &text).unwrap();
        let spec = kiln_engine::JobSpec::load(&p).unwrap();
        let files = spec_files(&spec).unwrap();
        assert_eq!(files[0], ("job.toml".to_string(), text.clone()));
        assert_eq!(files[1], ("expect.toml".to_string(), String::new()));
        assert_eq!(files.len(), 2);
    }
}
