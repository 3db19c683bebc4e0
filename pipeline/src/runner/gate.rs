//! `gate`: the spec's rules against the current stable version, re-scored on the candidate's
//! held-out rows (today's examples, the rows `evaluate` scored), so that both sides of a rule
//! such as `auc >= stable + 0.002` are measured on the same rows.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use kiln_trainer::ShardSource;
use kiln_trainer::source::{BatchIter, DatasetSource};
use kiln_trainer::transform::{Prepared, RowFilter, Transform};
use serde_json::Value as Json;

use super::ctx::{Cancel, Ctx, Upstream, in_process, output, sha};
use crate::dag::{Attempt, Task};
use crate::gate::Baseline;
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Gate;

/// `gate`: after `evaluate`; in process.
pub(super) struct GateTask {
    /// The run.
    pub ctx: Arc<Ctx>,
}

/// The stable version, if there is one: its recorded metrics, and its metrics on the
/// held-out rows of `data` (the candidate's examples) that the candidate was evaluated on
/// (`candidate_rows` of them).
fn stable(
    ctx: &Ctx,
    data: Option<&str>,
    candidate_rows: Option<u64>,
    cancel: &Cancel,
) -> anyhow::Result<Option<Baseline>> {
    let repo = ctx.pipeline.repo()?;
    let Some(v) = repo.labels()?.stable else {
        return Ok(None);
    };
    // A repository on an object store: a verified copy in the run's staging directory.
    let dir = repo
        .fetch_version(v, &ctx.staging.join("stable-versions"))
        .with_context(|| format!("stable version {v}: fetching it from {repo}"))?;
    let p = dir.join("metrics.json");
    let m = std::fs::read(&p)
        .with_context(|| format!("stable version {v}: reading {}", p.display()))?;
    let recorded: Json = serde_json::from_slice(&m)
        .with_context(|| format!("stable version {v}: parsing {}", p.display()))?;
    let p = ctx.model_dir().join("transform.json");
    let t = std::fs::read(&p)
        .with_context(|| format!("the candidate's transform: reading {}", p.display()))?;
    let candidate: Transform = serde_json::from_slice(&t)
        .with_context(|| format!("the candidate's transform: parsing {}", p.display()))?;
    let data = data.context("features output without the examples location")?;
    cancel.check()?;
    let source: Arc<dyn ShardSource> = Arc::new(Cancellable {
        inner: Arc::new(DatasetSource::open(data)?),
        cancel: cancel.clone(),
    });
    Ok(Some(
        match rescore(v, &dir, &candidate, source, candidate_rows)? {
            Ok(m) => Baseline::rescored(v, m, recorded),
            Err(why) => Baseline::unscorable(v, recorded, why),
        },
    ))
}

/// Scores stable version `version` (its directory `dir`) on the held-out rows of `source`
/// that the candidate (whose transform is `candidate`) was evaluated on, with the code
/// `kiln predict --eval-split` runs: the metrics, as JSON. `Ok(Err(why))` when it cannot be
/// scored on those rows (a column its transform reads is missing or unreadable, or it holds
/// out other rows); `Err` for what a retry may mend (reading the model or the dataset).
fn rescore(
    version: u64,
    dir: &Path,
    candidate: &Transform,
    source: Arc<dyn ShardSource>,
    candidate_rows: Option<u64>,
) -> anyhow::Result<Result<Json, String>> {
    let model = kiln_trainer::export::load(dir)
        .with_context(|| format!("stable version {version}: loading {}", dir.display()))?;
    let t = &model.transform;
    if t.label != candidate.label {
        return Ok(Err(format!(
            "stable version {version} predicts label `{}`, the candidate `{}`",
            t.label, candidate.label
        )));
    }
    if t.eval != candidate.eval {
        return Ok(Err(format!(
            "stable version {version} holds out other rows ({}) than the candidate ({}): they \
             would not be scored on the same rows",
            serde_json::to_string(&t.eval)?,
            serde_json::to_string(&candidate.eval)?
        )));
    }
    if let Err(why) = readable(version, t, &source.schema()) {
        return Ok(Err(why));
    }
    let (logits, labels, _) =
        match kiln_trainer::export::score(&model.params, t, &source, RowFilter::Eval) {
            Ok(s) => s,
            Err(e @ (kiln_trainer::Error::Column { .. } | kiln_trainer::Error::Value { .. })) => {
                return Ok(Err(cannot_read(version, &e)));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "stable version {version}: scoring today's held-out rows"
                )));
            }
        };
    let m = kiln_trainer::eval::metrics(&logits, &labels);
    if let Some(n) = candidate_rows
        && m.rows != n
    {
        return Ok(Err(format!(
            "stable version {version} selected {} held-out rows of today's examples, the \
             candidate {n}: not the same rows",
            m.rows
        )));
    }
    Ok(Ok(serde_json::to_value(m)?))
}

/// What the gate reports for a stable version whose transform cannot read today's examples.
fn cannot_read(version: u64, why: &dyn std::fmt::Display) -> String {
    format!("stable version {version}'s transform cannot read today's examples: {why}")
}

/// Whether stable version `version`'s transform `t` can read rows of `schema`: runs it on
/// an empty batch of that schema, so that it meets what scoring would (a missing column, a
/// type it cannot read) before any row is read, and names the column.
fn readable(version: u64, t: &Transform, schema: &SchemaRef) -> Result<(), String> {
    if schema.column_with_name(&t.label).is_none() {
        return Err(cannot_read(
            version,
            &format!("label column `{}` is not in the dataset", t.label),
        ));
    }
    let batch = RecordBatch::new_empty(schema.clone());
    let rows = t
        .rows(&batch, RowFilter::Eval)
        .map_err(|e| cannot_read(version, &e))?;
    let mut out = Prepared::new(t.categorical.len(), t.dense_width());
    t.prepare(&batch, &rows, &mut out)
        .map_err(|e| cannot_read(version, &e))
}

/// A dataset whose reads stop once the attempt was given up (its timeout passed): scoring
/// stops within a record batch rather than running on in the background.
struct Cancellable {
    inner: Arc<dyn ShardSource>,
    cancel: Cancel,
}

impl Cancellable {
    fn check(cancel: &Cancel) -> kiln_trainer::Result<()> {
        cancel
            .check()
            .map_err(|e| kiln_trainer::Error::Data(e.to_string()))
    }
}

impl ShardSource for Cancellable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn shard_rows(&self) -> Vec<u64> {
        self.inner.shard_rows()
    }
    fn read_shard(&self, index: usize) -> kiln_trainer::Result<BatchIter> {
        Self::check(&self.cancel)?;
        let cancel = self.cancel.clone();
        let batches = self.inner.read_shard(index)?;
        Ok(Box::new(batches.map(move |b| {
            Self::check(&cancel)?;
            b
        })))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn dataset_sha256(&self) -> Option<String> {
        self.inner.dataset_sha256()
    }
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
    /// Runs on its own thread, within the task's timeout: a given-up attempt stops scoring
    /// the stable version at its next record batch.
    fn run(&mut self, a: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let ctx = self.ctx.clone();
        let metrics = output(up, TaskKind::Evaluate)["metrics"].clone();
        let rows = metrics["rows"].as_u64();
        let data = output(up, TaskKind::Features)["examples"]
            .as_str()
            .map(str::to_string);
        in_process(KIND.as_str(), a.timeout, move |cancel| {
            let stable = stable(&ctx, data.as_deref(), rows, &cancel)?;
            let d = crate::gate::evaluate(&ctx.pipeline.gate, &metrics, stable.as_ref());
            Ok(serde_json::to_value(d)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use kiln_trainer::config::{EvalSplit, TrainConfig};
    use kiln_trainer::export::ModelFile;
    use kiln_trainer::model::{ModelSpec, Params};
    use kiln_trainer::source::MemorySource;
    use kiln_trainer::transform::{CategoricalMap, CategoricalTransform, NumericTransform};

    fn transform() -> Transform {
        Transform {
            label: "label".into(),
            categorical: vec![CategoricalTransform {
                column: "user".into(),
                map: CategoricalMap::Hash { buckets: 8 },
                offset: 0,
                size: 9,
            }],
            numeric: vec![NumericTransform {
                column: "dwell_ms".into(),
                mean: 5.0,
                std: 2.0,
                null_indicator: false,
            }],
            eval: EvalSplit::Hash {
                key: "id".into(),
                fraction: 0.5,
            },
            train_rows: 100,
            eval_rows: 100,
            train_label_mean: 0.5,
        }
    }

    /// Exports a small model over [`transform`] into `dir`.
    fn export(dir: &Path) {
        let t = transform();
        let config = TrainConfig {
            embedding_dim: 2,
            hidden: vec![4],
            ..TrainConfig::default()
        };
        let spec = ModelSpec::new(&config, &t);
        let params = Params::init(&spec, 7);
        let file = ModelFile {
            format: "kiln-model-v1".into(),
            spec,
            config,
            steps: 1,
            workers: 1,
        };
        kiln_trainer::export::export(dir, &file, &t, &params, None).unwrap();
    }

    /// 200 rows of `id`, `user`, `label` and, when `with_dwell`, `dwell_ms`.
    fn rows(with_dwell: bool) -> Arc<dyn ShardSource> {
        let n = 200;
        let mut fields = vec![
            Field::new("id", DataType::Int64, false),
            Field::new("user", DataType::Int64, false),
            Field::new("label", DataType::Int32, false),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 13))),
            Arc::new(Int32Array::from_iter_values(
                (0..n).map(|i| (i % 3 == 0) as i32),
            )),
        ];
        if with_dwell {
            fields.push(Field::new("dwell_ms", DataType::Float64, false));
            cols.push(Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i % 11) as f64),
            )));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let (a, b) = (batch.slice(0, 120), batch.slice(120, 80));
        Arc::new(MemorySource::new(schema, vec![vec![a], vec![b]]).unwrap())
    }

    #[test]
    fn the_stable_model_is_scored_on_todays_held_out_rows() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("3");
        export(&dir);
        let source = rows(true);
        // What `kiln predict --eval-split` computes.
        let model = kiln_trainer::export::load(&dir).unwrap();
        let (logits, labels, _) =
            kiln_trainer::export::score(&model.params, &model.transform, &source, RowFilter::Eval)
                .unwrap();
        let want = kiln_trainer::eval::metrics(&logits, &labels);
        assert!(want.rows > 50 && want.rows < 150, "{want:?}");
        let got = rescore(3, &dir, &transform(), source.clone(), Some(want.rows))
            .unwrap()
            .unwrap();
        assert_eq!(got, serde_json::to_value(&want).unwrap());
        // Another count of held-out rows than the candidate's is not a comparison.
        let why = rescore(3, &dir, &transform(), source.clone(), Some(want.rows + 1))
            .unwrap()
            .unwrap_err();
        assert!(why.contains("not the same rows"), "{why}");
        // Nor is another held-out split.
        let mut other = transform();
        other.eval = EvalSplit::Hash {
            key: "id".into(),
            fraction: 0.2,
        };
        let why = rescore(3, &dir, &other, source, None).unwrap().unwrap_err();
        assert!(
            why.starts_with("stable version 3 holds out other rows"),
            "{why}"
        );
    }

    #[test]
    fn a_transform_that_cannot_read_todays_columns_is_reported_with_version_and_column() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("3");
        export(&dir);
        let why = rescore(3, &dir, &transform(), rows(false), None)
            .unwrap()
            .unwrap_err();
        assert!(
            why.starts_with(
                "stable version 3's transform cannot read today's examples: column `dwell_ms`: \
                 not in the dataset (columns: id, user, label)"
            ),
            "{why}"
        );
        // A column of a type the transform cannot read is reported the same way.
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("user", DataType::Int64, false),
            Field::new("label", DataType::Int32, false),
            Field::new("dwell_ms", DataType::Utf8, false),
        ]));
        let why = readable(3, &transform(), &schema).unwrap_err();
        assert!(
            why.starts_with(
                "stable version 3's transform cannot read today's examples: column `dwell_ms`"
            ),
            "{why}"
        );
        // The gate turns it into failed rules on `stable`, naming the version and the column.
        let stable = Baseline::unscorable(3, serde_json::json!({"auc": 0.7}), why.clone());
        let rules = vec![crate::gate::Rule::parse("auc >= stable + 0.002").unwrap()];
        let decision =
            crate::gate::evaluate(&rules, &serde_json::json!({"auc": 0.9}), Some(&stable));
        assert!(!decision.passed);
        assert!(
            decision.failures().contains(&why),
            "{}",
            decision.failures()
        );
        assert!(decision.failures().contains("stable v3"));
    }

    #[test]
    fn scoring_stops_once_the_attempt_is_given_up() {
        use std::time::Duration;
        let (tx, rx) = std::sync::mpsc::channel();
        let e = in_process(
            "gate-test",
            Some(Duration::from_millis(50)),
            move |cancel| {
                let c = Cancellable {
                    inner: rows(true),
                    cancel,
                };
                // A shard being read when the timeout passes stops at its next batch, and no
                // further shard is opened.
                let mut batches = c.read_shard(0)?;
                std::thread::sleep(Duration::from_millis(400));
                let next = batches.next().map(|b| b.err().map(|e| e.to_string()));
                let again = c.read_shard(1).err().map(|e| e.to_string());
                let _ = tx.send((next, again));
                Ok(())
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("timed out after"), "{e}");
        let (next, again) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        for got in [next.flatten(), again] {
            let got = got.expect("a read after the timeout succeeded");
            assert!(got.contains("stopped: the attempt timed out"), "{got}");
        }
    }
}
