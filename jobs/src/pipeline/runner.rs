//! One daily run (`kiln run SPEC --date D`): lock, DAG of tasks, records, alerts.
//!
//! Tasks, in order: `sensor:<name>`... -> `features` -> `train` -> `evaluate` -> `gate` ->
//! `publish`. `features`, `train` and `evaluate` run as child processes of this binary
//! (`kiln features|train|predict --json`) with logs per attempt; `gate` and `publish` run in
//! process. Training uses a staging model directory that is stable across reruns of the same
//! job and date (`<work_dir>/staging/<job>/<date>/model`), so a rerun after a crash resumes
//! from its checkpoint.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use kiln_engine::{JobSpec, Overrides};
use serde::Serialize;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::config::{self, Pipeline, SensorConfig, SensorKind, TaskPolicy};
use super::dag::{Attempt, Dag, Outputs, Recorder, Task, TaskOutcome};
use super::gate::{self, Decision};
use super::metastore::{LockHolder, LockOutcome, LockOwner, NewRun, RunOutcome, Store};
use super::models::{self, Repo};
use super::{alert, proc};

/// The pipeline's fixed tasks (sensors come first, named `sensor:<name>`).
pub const TASKS: &[&str] = &["features", "train", "evaluate", "gate", "publish"];

/// What to run.
#[derive(Debug, Clone)]
pub struct Request {
    /// The job spec.
    pub spec: PathBuf,
    /// Run date.
    pub date: NaiveDate,
    /// `--source NAME=URL` overrides.
    pub sources: Vec<(String, String)>,
    /// `--out URL` override.
    pub out: Option<String>,
    /// Rerun tasks that already succeeded with the same inputs.
    pub force: bool,
    /// `run`, `backfill` or `schedule`.
    pub trigger: String,
}

/// The result of a run (`kiln run --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run id in the metadata store.
    pub run_id: i64,
    /// Job name.
    pub job: String,
    /// Run date.
    pub date: String,
    /// `success`, `rejected` (the gate refused the model) or `failed`.
    pub status: String,
    /// The version published (or kept as a rejected candidate).
    pub model_version: Option<u64>,
    /// Its directory.
    pub model_path: Option<String>,
    /// Held-out metrics.
    pub metrics: Option<Json>,
    /// The gate's decision.
    pub gate: Option<Decision>,
    /// Every task's outcome.
    pub tasks: Vec<TaskOutcome>,
    /// The run's log directory.
    pub log_dir: String,
    /// The metadata store.
    pub metastore: String,
    /// What failed.
    pub error: Option<String>,
    /// The alert's delivery, when one was sent.
    pub alert: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Another process holds the run lock of this job and date.
#[derive(Debug, thiserror::Error)]
#[error(
    "{job} {date} is already running: lock {holder}; refusing to start a second run (metadata store {store})"
)]
pub struct AlreadyRunning {
    /// Job.
    pub job: String,
    /// Date.
    pub date: String,
    /// The holder.
    pub holder: LockHolder,
    /// Where the lock lives.
    pub store: String,
}

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

async fn get_object(
    loc: kiln_connectors::store::Location,
) -> Result<Option<Vec<u8>>, object_store::Error> {
    use object_store::ObjectStoreExt;
    match loc.store.get(&loc.path).await {
        Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn any_object(loc: kiln_connectors::store::Location) -> Result<bool, object_store::Error> {
    use futures::StreamExt;
    match loc.store.list(Some(&loc.path)).next().await {
        Some(Ok(_)) => Ok(true),
        None | Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
        Some(Err(e)) => Err(e),
    }
}

/// Reads an object (`file://`, `s3://`, path); `None` when it does not exist.
fn read_object(url: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let loc = kiln_connectors::store::resolve(url).with_context(|| format!("resolving {url}"))?;
    kiln_connectors::store::block_on(get_object(loc)).with_context(|| format!("reading {url}"))
}

/// Whether anything exists under a prefix.
fn prefix_exists(url: &str) -> anyhow::Result<bool> {
    let loc = kiln_connectors::store::resolve(url).with_context(|| format!("resolving {url}"))?;
    kiln_connectors::store::block_on(any_object(loc)).with_context(|| format!("listing {url}"))
}

/// SHA-256 of a dataset's committed `_manifest.json`, `None` when not committed.
fn manifest_sha256(location: &str) -> anyhow::Result<Option<String>> {
    let url = format!("{}/_manifest.json", location.trim_end_matches('/'));
    Ok(read_object(&url)?.map(|b| hex::encode(Sha256::digest(&b))))
}

/// Shared, read-only facts of one run.
struct Ctx {
    exe: PathBuf,
    spec: JobSpec,
    pipeline: Pipeline,
    date: NaiveDate,
    sources: Vec<(String, String)>,
    out: Option<String>,
    staging: PathBuf,
    run_id: i64,
    tty: bool,
}

impl Ctx {
    fn date(&self) -> String {
        self.date.to_string()
    }

    /// `SPEC --date D [--source ..] [--out ..]`.
    fn spec_args(&self) -> Vec<String> {
        let mut a = vec![
            self.spec.path.display().to_string(),
            "--date".into(),
            self.date(),
        ];
        for (n, u) in &self.sources {
            a.push("--source".into());
            a.push(format!("{n}={u}"));
        }
        if let Some(o) = &self.out {
            a.push("--out".into());
            a.push(o.clone());
        }
        a
    }

    fn model_dir(&self) -> PathBuf {
        self.staging.join("model")
    }

    /// Runs `kiln ARGS` for a task attempt and returns its `--json` result.
    fn child(&self, task: &str, args: Vec<String>, a: &Attempt) -> anyhow::Result<Json> {
        let tty = self.tty;
        let name = task.to_string();
        let tick = move |elapsed: Duration, log: &Path| {
            if tty {
                let last = proc::tail(log, 1);
                let last: String = last.chars().take(90).collect();
                eprint!(
                    "\r\x1b[2K  {name:<18} running {:>5.0}s  {last}",
                    elapsed.as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        };
        let r = proc::run_logged(&self.exe, &args, &a.log_base, a.timeout, Some(&tick));
        if tty {
            eprint!("\r\x1b[2K");
        }
        proc::json_result(&r?)
    }
}

fn policy(ctx: &Ctx, task: &str) -> TaskPolicy {
    ctx.pipeline.policy(task)
}

/// `sensor:<name>`: waits until a path (prefix or committed manifest) exists.
struct SensorTask {
    cfg: SensorConfig,
    url: String,
}

impl SensorTask {
    fn present(&self) -> anyhow::Result<bool> {
        match self.cfg.kind {
            SensorKind::Prefix => prefix_exists(&self.url),
            SensorKind::Manifest => Ok(manifest_sha256(&self.url)?.is_some()),
        }
    }
}

impl Task for SensorTask {
    fn name(&self) -> String {
        format!("sensor:{}", self.cfg.name)
    }
    fn deps(&self) -> Vec<String> {
        Vec::new()
    }
    fn policy(&self) -> TaskPolicy {
        // The sensor's own timeout bounds the wait; retries follow the task defaults.
        TaskPolicy {
            retries: 0,
            backoff_seconds: 0.0,
            timeout_seconds: Some(self.cfg.timeout_seconds),
        }
    }
    fn fingerprint(&self, _: &Outputs) -> anyhow::Result<String> {
        Ok(sha(&["sensor", &self.url, &format!("{:?}", self.cfg.kind)]))
    }
    fn still_valid(&self, _: &Json) -> bool {
        self.present().unwrap_or(false)
    }
    fn run(&mut self, _: &Attempt, _: &Outputs) -> anyhow::Result<Json> {
        let start = Instant::now();
        let mut pokes = 0u64;
        loop {
            pokes += 1;
            if self.present()? {
                return Ok(json!({
                    "path": self.url,
                    "kind": self.cfg.kind,
                    "waited_seconds": start.elapsed().as_secs_f64(),
                    "pokes": pokes,
                }));
            }
            if start.elapsed().as_secs_f64() >= self.cfg.timeout_seconds {
                bail!(
                    "sensor `{}`: {} {} did not appear within {:.0} s ({pokes} checks every {} s)",
                    self.cfg.name,
                    match self.cfg.kind {
                        SensorKind::Prefix => "input",
                        SensorKind::Manifest => "the committed manifest of",
                    },
                    self.url,
                    self.cfg.timeout_seconds,
                    self.cfg.poke_seconds
                );
            }
            let left = self.cfg.timeout_seconds - start.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs_f64(
                self.cfg.poke_seconds.min(left.max(0.0)),
            ));
        }
    }
}

/// `features`: `kiln features SPEC --date D --json`; output: the examples dataset and the
/// SHA-256 of its committed manifest.
struct FeaturesTask {
    ctx: Arc<Ctx>,
    deps: Vec<String>,
}

/// The spec without `[train]` and `[pipeline]`: what the feature step depends on.
fn features_spec_text(spec: &JobSpec) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&spec.path)
        .with_context(|| format!("reading {}", spec.path.display()))?;
    let mut t: toml::Table = toml::from_str(&text)?;
    t.remove("train");
    t.remove("pipeline");
    Ok(toml::to_string(&t)?)
}

impl Task for FeaturesTask {
    fn name(&self) -> String {
        "features".into()
    }
    fn deps(&self) -> Vec<String> {
        self.deps.clone()
    }
    fn policy(&self) -> TaskPolicy {
        policy(&self.ctx, "features")
    }
    fn fingerprint(&self, _: &Outputs) -> anyhow::Result<String> {
        Ok(sha(&[
            "features",
            &features_spec_text(&self.ctx.spec)?,
            &self.ctx.date(),
            &format!("{:?}", self.ctx.sources),
            self.ctx.out.as_deref().unwrap_or(""),
            env!("CARGO_PKG_VERSION"),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        match (out["examples"].as_str(), out["manifest_sha256"].as_str()) {
            (Some(loc), Some(want)) => manifest_sha256(loc).ok().flatten().as_deref() == Some(want),
            _ => false,
        }
    }
    fn run(&mut self, a: &Attempt, _: &Outputs) -> anyhow::Result<Json> {
        let mut args = vec!["features".to_string()];
        args.extend(self.ctx.spec_args());
        args.push("--json".into());
        let report = self.ctx.child("features", args, a)?;
        let outputs = report["outputs"].as_array().cloned().unwrap_or_default();
        let examples = outputs
            .iter()
            .find(|o| o["statement"] == "examples")
            .or_else(|| (outputs.len() == 1).then(|| &outputs[0]))
            .with_context(|| {
                format!(
                    "{}: no `examples` output to train on",
                    self.ctx.spec.path.display()
                )
            })?;
        let location = examples["location"]
            .as_str()
            .context("features report without a location")?
            .to_string();
        let manifest = manifest_sha256(&location)?
            .with_context(|| format!("{location}: no committed _manifest.json after features"))?;
        Ok(json!({
            "examples": location,
            "manifest_sha256": manifest,
            "rows": examples["rows"],
            "shards": examples["shards"],
            "feature_run_id": report["run_id"],
            "inputs": report["inputs"],
        }))
    }
}

/// `train`: `kiln train ... --resume --json` into the staging model directory.
struct TrainTask {
    ctx: Arc<Ctx>,
}

fn model_sha256(dir: &Path) -> anyhow::Result<String> {
    let sums = models::checksums(dir, &["checkpoints", models::SUMS, models::LINEAGE])?;
    Ok(hex::encode(Sha256::digest(sums.as_bytes())))
}

impl Task for TrainTask {
    fn name(&self) -> String {
        "train".into()
    }
    fn deps(&self) -> Vec<String> {
        vec!["features".into()]
    }
    fn policy(&self) -> TaskPolicy {
        policy(&self.ctx, "train")
    }
    fn fingerprint(&self, up: &Outputs) -> anyhow::Result<String> {
        let train = self
            .ctx
            .spec
            .train
            .as_ref()
            .with_context(|| format!("{}: no [train] section", self.ctx.spec.path.display()))?;
        Ok(sha(&[
            "train",
            &serde_json::to_string(train)?,
            up["features"]["manifest_sha256"].as_str().unwrap_or(""),
            &self.ctx.pipeline.config.workers.to_string(),
            env!("CARGO_PKG_VERSION"),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        let dir = self.ctx.model_dir();
        dir.join("model.json").is_file()
            && model_sha256(&dir).ok().as_deref() == out["model_sha256"].as_str()
    }
    fn run(&mut self, a: &Attempt, up: &Outputs) -> anyhow::Result<Json> {
        let data = up["features"]["examples"]
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
        models::write_atomic(&fp_file, fp.as_bytes())?;
        let args = vec![
            "train".to_string(),
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
        let mut out = self.ctx.child("train", args, a)?;
        out["model_sha256"] = Json::String(model_sha256(&dir)?);
        out["resumed"] = Json::Bool(out["start_step"].as_u64().unwrap_or(0) > 0);
        Ok(out)
    }
}

/// `evaluate`: `kiln predict MODEL --input DATA --eval-split --json`, which must reproduce
/// the trainer's held-out metrics; writes the held-out predictions for `publish` to check.
struct EvaluateTask {
    ctx: Arc<Ctx>,
}

impl Task for EvaluateTask {
    fn name(&self) -> String {
        "evaluate".into()
    }
    fn deps(&self) -> Vec<String> {
        vec!["train".into()]
    }
    fn policy(&self) -> TaskPolicy {
        policy(&self.ctx, "evaluate")
    }
    fn fingerprint(&self, up: &Outputs) -> anyhow::Result<String> {
        Ok(sha(&[
            "evaluate",
            up["train"]["model_sha256"].as_str().unwrap_or(""),
            up["features"]["manifest_sha256"].as_str().unwrap_or(""),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        out["predictions"]
            .as_str()
            .is_some_and(|p| Path::new(p).is_file())
    }
    fn run(&mut self, a: &Attempt, up: &Outputs) -> anyhow::Result<Json> {
        let data = up["features"]["examples"]
            .as_str()
            .context("features output without the examples location")?;
        let preds = self.ctx.staging.join("eval_predictions.csv");
        let args = vec![
            "predict".to_string(),
            self.ctx.model_dir().display().to_string(),
            "--input".into(),
            data.to_string(),
            "--eval-split".into(),
            "--json".into(),
            "--output".into(),
            preds.display().to_string(),
        ];
        let p = self.ctx.child("evaluate", args, a)?;
        let trained = &up["train"]["metrics"];
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

/// `gate`: the spec's rules against the current stable version's metrics.
struct GateTask {
    ctx: Arc<Ctx>,
}

impl GateTask {
    fn stable(&self) -> anyhow::Result<Option<(u64, Json)>> {
        let repo = Repo::new(&self.ctx.pipeline.repo_dir);
        let Some(v) = repo.labels()?.stable else {
            return Ok(None);
        };
        let p = repo.version_dir(v).join("metrics.json");
        let m = std::fs::read(&p)
            .with_context(|| format!("stable version {v}: reading {}", p.display()))?;
        Ok(Some((v, serde_json::from_slice(&m)?)))
    }
}

impl Task for GateTask {
    fn name(&self) -> String {
        "gate".into()
    }
    fn deps(&self) -> Vec<String> {
        vec!["evaluate".into()]
    }
    fn policy(&self) -> TaskPolicy {
        policy(&self.ctx, "gate")
    }
    /// The decision is made once per candidate: a rerun does not re-judge a model against a
    /// stable version that may be the model itself (`--force` does).
    fn fingerprint(&self, up: &Outputs) -> anyhow::Result<String> {
        Ok(sha(&[
            "gate",
            up["train"]["model_sha256"].as_str().unwrap_or(""),
            &up["evaluate"]["metrics"].to_string(),
            &serde_json::to_string(&self.ctx.pipeline.config.gate.rules)?,
        ]))
    }
    fn run(&mut self, _: &Attempt, up: &Outputs) -> anyhow::Result<Json> {
        let stable = self.stable()?;
        let d = gate::evaluate(
            &self.ctx.pipeline.gate,
            &up["evaluate"]["metrics"],
            stable.as_ref().map(|(v, m)| (*v, m)),
        );
        Ok(serde_json::to_value(d)?)
    }
}

/// `publish`: assemble, checksum, verify and atomically publish a version; move labels as
/// the gate decided; apply retention.
struct PublishTask {
    ctx: Arc<Ctx>,
}

/// Held-out logits `kiln predict` wrote, by (shard, row).
fn read_predictions(path: &Path) -> anyhow::Result<std::collections::HashMap<(u32, u64), f32>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut m = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let parse = || -> Option<((u32, u64), f32)> {
            Some((
                (f.first()?.parse().ok()?, f.get(1)?.parse().ok()?),
                f.get(3)?.parse().ok()?,
            ))
        };
        let (k, v) = parse().with_context(|| format!("{}:{}: bad line", path.display(), i + 1))?;
        m.insert(k, v);
    }
    Ok(m)
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
/// what evaluation saw for that row, bit for bit.
fn verify_model(dir: &Path, data: &str, predictions: &Path, n: usize) -> anyhow::Result<usize> {
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
        if z.to_bits() != want.to_bits() && !(z.is_nan() && want.is_nan()) {
            bail!(
                "shard {} row {}: the published copy predicts logit {z:?}, evaluation saw {want:?}",
                key.0,
                key.1
            );
        }
        checked += 1;
    }
    Ok(checked)
}

impl Task for PublishTask {
    fn name(&self) -> String {
        "publish".into()
    }
    fn deps(&self) -> Vec<String> {
        vec!["gate".into()]
    }
    fn policy(&self) -> TaskPolicy {
        policy(&self.ctx, "publish")
    }
    fn fingerprint(&self, up: &Outputs) -> anyhow::Result<String> {
        Ok(sha(&[
            "publish",
            &self.ctx.pipeline.repo_dir.display().to_string(),
            up["train"]["model_sha256"].as_str().unwrap_or(""),
            &up["gate"]["passed"].to_string(),
            &self.ctx.pipeline.config.promote_to,
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        let repo = Repo::new(&self.ctx.pipeline.repo_dir);
        match out["version"].as_u64() {
            // Present, or pruned by retention after newer versions appeared.
            Some(v) => {
                repo.version_dir(v).is_dir()
                    || repo.versions().ok().and_then(|vs| vs.last().copied()) > Some(v)
            }
            None => false,
        }
    }
    fn run(&mut self, _: &Attempt, up: &Outputs) -> anyhow::Result<Json> {
        let ctx = &self.ctx;
        let repo = Repo::new(&ctx.pipeline.repo_dir);
        let decision: Decision = serde_json::from_value(up["gate"].clone())?;
        let model_sha = up["train"]["model_sha256"]
            .as_str()
            .context("train output without model_sha256")?;
        let data = up["features"]["examples"].as_str().unwrap_or_default();
        let predictions = PathBuf::from(up["evaluate"]["predictions"].as_str().unwrap_or_default());
        // One key per (job, date, model): a rerun after a crash between the rename and the
        // record finds its version instead of publishing a second copy.
        let publish_key = sha(&[&ctx.spec.name, &ctx.date(), model_sha]);
        let mut verified_rows = None;
        let version = match repo.find_by_lineage("publish_key", &publish_key)? {
            Some(v) => {
                models::verify_checksums(&repo.version_dir(v))?;
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
                    "examples_manifest_sha256": up["features"]["manifest_sha256"],
                    "model_sha256": model_sha,
                    "publish_key": publish_key,
                    "metrics": up["evaluate"]["metrics"],
                    "gate": up["gate"],
                    "train": {
                        "steps": up["train"]["steps"],
                        "workers": up["train"]["workers"],
                        "start_step": up["train"]["start_step"],
                        "param_checksum": up["train"]["param_checksum"],
                    },
                    "published_at": super::metastore::now_text(),
                });
                let n = ctx.pipeline.config.verify_rows;
                let mut rows = 0;
                let v = repo.publish(&ctx.model_dir(), &lineage, |tmp| {
                    rows = verify_model(tmp, data, &predictions, n)?;
                    Ok(())
                })?;
                verified_rows = Some(rows);
                v
            }
        };
        let label = &ctx.pipeline.config.promote_to;
        let labels = repo.update_labels(|l, _| {
            if decision.passed {
                l.rejected.retain(|x| *x != version);
                l.set(label, version)?;
            } else if !l.rejected.contains(&version) {
                l.rejected.push(version);
            }
            Ok(l.clone())
        })?;
        let pruned = repo.prune(ctx.pipeline.config.keep_versions)?;
        // The checkpoints are no longer needed once the version is published.
        let ckpt = ctx.model_dir().join("checkpoints");
        if ckpt.exists() {
            std::fs::remove_dir_all(&ckpt)
                .with_context(|| format!("removing {}", ckpt.display()))?;
        }
        Ok(json!({
            "version": version,
            "path": repo.version_dir(version).display().to_string(),
            "status": if decision.passed { "published" } else { "rejected" },
            "label": if decision.passed { Some(label) } else { None },
            "labels": labels,
            "pruned": pruned,
            "verified_rows": verified_rows,
        }))
    }
}

/// The metadata store plus the progress view and the run's log file.
struct StoreRecorder {
    store: Store,
    run_id: i64,
    job: String,
    date: String,
    log: std::fs::File,
}

impl StoreRecorder {
    fn say(&mut self, line: &str) {
        eprintln!("{line}");
        let _ = writeln!(self.log, "{} {line}", super::metastore::now_text());
    }
}

/// One line describing a task's output.
fn summarize(task: &str, out: &Json) -> String {
    let f = |v: &Json| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.4}"));
    match task {
        "features" => format!(
            "{} rows, manifest {:.12}",
            out["rows"],
            out["manifest_sha256"].as_str().unwrap_or("")
        ),
        "train" => format!(
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
        "evaluate" => format!(
            "{} held-out rows: auc {} logloss {}",
            out["rows"],
            f(&out["metrics"]["auc"]),
            f(&out["metrics"]["logloss"])
        ),
        "gate" => {
            if out["passed"] == true {
                "passed".into()
            } else {
                "REJECTED".into()
            }
        }
        "publish" => format!(
            "version {} {}{}",
            out["version"],
            out["status"].as_str().unwrap_or(""),
            out["label"]
                .as_str()
                .map(|l| format!(", labelled {l}"))
                .unwrap_or_default()
        ),
        _ => String::new(),
    }
}

impl Recorder for StoreRecorder {
    fn last_success(&mut self, task: &str) -> anyhow::Result<Option<(String, Json)>> {
        Ok(self
            .store
            .last_success(&self.job, &self.date, task)?
            .map(|t| (t.fingerprint, t.output.unwrap_or(Json::Null))))
    }
    fn task_started(&mut self, task: &str, fingerprint: &str) -> anyhow::Result<i64> {
        let _ = writeln!(
            self.log,
            "{} task {task} started",
            super::metastore::now_text()
        );
        self.store
            .start_task(self.run_id, task, fingerprint, "running", None)
    }
    fn task_skipped(&mut self, task: &str, fingerprint: &str, output: &Json) -> anyhow::Result<()> {
        let summary = summarize(task, output);
        self.say(&format!(
            "  {task:<18} skipped  done before with the same inputs{}",
            if summary.is_empty() {
                String::new()
            } else {
                format!(" ({summary})")
            }
        ));
        self.store
            .start_task(self.run_id, task, fingerprint, "skipped", Some(output))?;
        Ok(())
    }
    fn attempt_started(&mut self, task_id: i64, task: &str, a: &Attempt) -> anyhow::Result<i64> {
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
        task: &str,
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
                None => {
                    let _ = writeln!(
                        self.log,
                        "{} {task} attempt {} failed: {e}",
                        super::metastore::now_text(),
                        a.number
                    );
                }
            }
        }
        self.store.finish_attempt(
            attempt_id,
            if error.is_some() { "failed" } else { "success" },
            error,
        )
    }
    fn task_finished(&mut self, task_id: Option<i64>, o: &TaskOutcome) -> anyhow::Result<()> {
        let id = match task_id {
            Some(id) => id,
            None => self
                .store
                .start_task(self.run_id, &o.name, "", &o.status, None)?,
        };
        self.store.finish_task(
            id,
            &o.status,
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

/// Holds the run lock and refreshes its heartbeat from a thread with its own connection;
/// releases it when dropped.
struct LockGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    fn start(
        url: &str,
        job: &str,
        date: &str,
        owner: &LockOwner,
        stale: Duration,
    ) -> anyhow::Result<Self> {
        let mut store = Store::open(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, job, date, owner) = (
            stop.clone(),
            job.to_string(),
            date.to_string(),
            owner.clone(),
        );
        let every = (stale / 4).max(Duration::from_millis(200));
        let thread = std::thread::Builder::new()
            .name("kiln-lock-heartbeat".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= every {
                        last = Instant::now();
                        match store.heartbeat(&job, &date, &owner) {
                            Ok(true) => {}
                            Ok(false) => eprintln!(
                                "warning: the run lock of {job} {date} was taken over by another process"
                            ),
                            Err(e) => eprintln!("warning: lock heartbeat failed: {e:#}"),
                        }
                    }
                }
                if let Err(e) = store.unlock(&job, &date, &owner) {
                    eprintln!("warning: releasing the run lock of {job} {date}: {e:#}");
                }
            })?;
        Ok(LockGuard {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the pipeline for one date.
pub fn run(req: &Request) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (spec, pipeline) = config::load(&req.spec)?;
    if spec.train.is_none() {
        bail!(
            "{}: kiln run needs a [train] section (see docs/training.md)",
            spec.path.display()
        );
    }
    let date = req.date.to_string();
    // Spec and override mistakes surface before anything runs.
    spec.render(
        req.date,
        &Overrides {
            sources: req.sources.clone(),
            out: req.out.clone(),
        },
    )?;
    let mut sensors = Vec::new();
    for s in &pipeline.config.sensors {
        let rendered = kiln_engine::template::render(&s.path, req.date)
            .map_err(|e| spec.error(format!("[[pipeline.sensors]] `{}` path: {e}", s.name)))?;
        let url = spec
            .absolute_url(&rendered)
            .map_err(|e| spec.error(format!("[[pipeline.sensors]] `{}` path: {e}", s.name)))?;
        sensors.push((s.clone(), url));
    }

    let mut store = Store::open(&pipeline.metastore)?;
    let owner = LockOwner::this_process();
    let stale = Duration::from_secs(pipeline.config.lock_stale_seconds.max(1));
    let took_over = match store.try_lock(&spec.name, &date, &owner, stale)? {
        LockOutcome::Held(holder) => {
            return Err(AlreadyRunning {
                job: spec.name.clone(),
                date,
                holder,
                store: store.describe.clone(),
            }
            .into());
        }
        LockOutcome::Acquired { took_over } => took_over,
    };
    // Held (and heartbeating) until this function returns.
    let _lock = match LockGuard::start(&pipeline.metastore, &spec.name, &date, &owner, stale) {
        Ok(g) => g,
        Err(e) => {
            let _ = store.unlock(&spec.name, &date, &owner);
            return Err(e);
        }
    };

    let log_dir = pipeline
        .work_dir
        .join("logs")
        .join(&spec.name)
        .join(&date)
        .join(format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
            std::process::id()
        ));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let overrides = json!({"sources": req.sources, "out": req.out});
    let hyperparams = serde_json::to_value(&spec.train)?;
    let run_id = store.start_run(&NewRun {
        job: spec.name.clone(),
        run_date: date.clone(),
        trigger: req.trigger.clone(),
        spec_path: spec.path.display().to_string(),
        spec_sha256: spec.sha256.clone(),
        overrides: overrides.clone(),
        log_dir: log_dir.display().to_string(),
        hyperparams,
    })?;
    store.set_lock_run(&spec.name, &date, &owner, run_id)?;
    let run_log_path = log_dir.join("run.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run_log_path)
        .with_context(|| format!("creating {}", run_log_path.display()))?;
    let mut rec = StoreRecorder {
        store,
        run_id,
        job: spec.name.clone(),
        date: date.clone(),
        log,
    };
    rec.say(&format!(
        "kiln run {} {date}: run {run_id}, logs {}",
        spec.name,
        log_dir.display()
    ));
    if let Some(h) = &took_over {
        let msg = format!("took over a stale run lock ({h})");
        rec.say(&format!("  {msg}"));
        rec.store.add_event(run_id, "lock", &msg)?;
        if let Some(old) = h.run_id {
            rec.store.abandon_run(
                old,
                &format!(
                    "abandoned: process {} on {} stopped without finishing; run {run_id} took over",
                    h.pid, h.host
                ),
            )?;
        }
    }

    let staging = pipeline
        .work_dir
        .join("staging")
        .join(&spec.name)
        .join(&date);
    let ctx = Arc::new(Ctx {
        exe: std::env::current_exe().context("locating the kiln binary")?,
        spec: spec.clone(),
        pipeline: pipeline.clone(),
        date: req.date,
        sources: req.sources.clone(),
        out: req.out.clone(),
        staging,
        run_id,
        tty: std::io::stderr().is_terminal(),
    });
    let mut tasks: Vec<Box<dyn Task>> = Vec::new();
    let mut sensor_names = Vec::new();
    for (cfg, url) in sensors {
        let t = SensorTask { cfg, url };
        sensor_names.push(t.name());
        tasks.push(Box::new(t));
    }
    tasks.push(Box::new(FeaturesTask {
        ctx: ctx.clone(),
        deps: sensor_names,
    }));
    tasks.push(Box::new(TrainTask { ctx: ctx.clone() }));
    tasks.push(Box::new(EvaluateTask { ctx: ctx.clone() }));
    tasks.push(Box::new(GateTask { ctx: ctx.clone() }));
    tasks.push(Box::new(PublishTask { ctx: ctx.clone() }));
    let outcomes = Dag::new(tasks).and_then(|mut dag| dag.run(&mut rec, &log_dir, req.force));
    let (outcomes, dag_error) = match outcomes {
        Ok(o) => (o, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let out_of = |name: &str| {
        outcomes
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.output.clone())
    };
    let failed = outcomes.iter().find(|t| t.status == "failed");
    let error = dag_error.or_else(|| {
        failed.map(|t| {
            format!(
                "task `{}` failed after {} attempt(s): {}",
                t.name,
                t.attempts,
                t.error.as_deref().unwrap_or("")
            )
        })
    });
    let gate: Option<Decision> = out_of("gate").and_then(|g| serde_json::from_value(g).ok());
    let publish = out_of("publish");
    let status = if error.is_some() {
        "failed"
    } else if gate.as_ref().is_some_and(|g| !g.passed) {
        "rejected"
    } else {
        "success"
    };
    let model_version = publish.as_ref().and_then(|p| p["version"].as_u64());
    let metrics = out_of("evaluate").map(|e| e["metrics"].clone());
    let features = out_of("features");
    let lineage = json!({
        "spec_sha256": spec.sha256,
        "examples": features.as_ref().map(|f| f["examples"].clone()),
        "examples_manifest_sha256": features.as_ref().map(|f| f["manifest_sha256"].clone()),
        "inputs": features.as_ref().map(|f| f["inputs"].clone()),
        "model_sha256": out_of("train").map(|t| t["model_sha256"].clone()),
        "overrides": overrides,
    });
    match status {
        "success" => rec.say(&format!(
            "{} {date}: success{}",
            spec.name,
            model_version
                .map(|v| format!(", model version {v} published"))
                .unwrap_or_default()
        )),
        "rejected" => rec.say(&format!(
            "{} {date}: gate REJECTED version {}: {}",
            spec.name,
            model_version.map_or("-".into(), |v| v.to_string()),
            gate.as_ref().map(|g| g.failures()).unwrap_or_default()
        )),
        _ => rec.say(&format!(
            "{} {date}: FAILED: {}",
            spec.name,
            error.as_deref().unwrap_or("")
        )),
    }

    let mut alert_result = None;
    if status != "success" {
        let payload = json!({
            "kind": if status == "rejected" { "rejected" } else { "failure" },
            "job": spec.name,
            "date": date,
            "run_id": run_id,
            "status": status,
            "failed_task": failed.map(|t| t.name.clone()),
            "error": error,
            "gate_failures": gate.as_ref().map(|g| g.rules.iter().filter(|r| r.outcome == "fail").map(|r| r.detail.clone()).collect::<Vec<_>>()),
            "model": pipeline.model_name,
            "model_version": model_version,
            "stable_version": gate.as_ref().and_then(|g| g.stable_version),
            "host": super::metastore::hostname(),
            "kiln_version": env!("CARGO_PKG_VERSION"),
            "log_dir": log_dir.display().to_string(),
            "at": super::metastore::now_text(),
        });
        let line = match &pipeline.config.alerts {
            Some(cfg) => alert::send(cfg, &payload).1,
            None => "no [pipeline.alerts] webhook configured; alert not sent".to_string(),
        };
        let _ = writeln!(
            rec.log,
            "{} alert payload: {payload}",
            super::metastore::now_text()
        );
        rec.say(&format!("  {line}"));
        rec.store.add_event(run_id, "alert", &line)?;
        alert_result = Some(line);
    }
    rec.store.finish_run(
        run_id,
        &RunOutcome {
            status: status.into(),
            lineage,
            metrics: metrics.clone(),
            gate: gate.as_ref().map(serde_json::to_value).transpose()?,
            model_version: model_version.map(|v| v as i64),
            error: error.clone(),
        },
    )?;
    Ok(Summary {
        run_id,
        job: spec.name.clone(),
        date,
        status: status.into(),
        model_version,
        model_path: publish.and_then(|p| p["path"].as_str().map(String::from)),
        metrics,
        gate,
        tasks: outcomes,
        log_dir: log_dir.display().to_string(),
        metastore: rec.store.describe.clone(),
        error,
        alert: alert_result,
        seconds: started.elapsed().as_secs_f64(),
    })
}
