//! Checkpoints: parameters, optimizer state, step, every rank's loader position and shuffle
//! buffer (which carry the RNG state), the fitted transform, and what the run was
//! ([`RunIdentity`]: the dataset's manifest SHA-256, the seed, the config's hash) — one
//! safetensors file per checkpoint under `MODEL_DIR/checkpoints/`, written atomically by
//! rank 0 (temporary name, fsync, rename, directory fsync), then named in
//! `checkpoints/latest` (also replaced atomically).
//!
//! Reading one checks what a corrupt or foreign file could break before it reaches the
//! training loop: buffer lengths against the model's shapes, the loader states (RNG
//! position, shuffle rows, ids, labels) — errors name the checkpoint file, nothing panics.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::loader::{LoaderPosition, LoaderState};
use crate::model::{ModelSpec, Params};
use crate::optim::Optimizer;
use crate::source::ShardSource;
use crate::tensorfile::TensorFile;
use crate::transform::{Prepared, Transform};
use crate::{Error, Result};

/// What a run is, recorded in its checkpoints: `--resume` continues a checkpoint only with
/// the same data, seed and config ([`RunIdentity::resume_mismatch`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// SHA-256 of the dataset's manifest ([`ShardSource::dataset_sha256`]), if known.
    pub dataset_sha256: Option<String>,
    /// Where the data was read ([`ShardSource::describe`]), for messages.
    pub dataset: String,
    /// `[train] seed`.
    pub seed: u64,
    /// SHA-256 of the settings that shape the run ([`TrainConfig::run_fingerprint`]).
    pub config_sha256: String,
    /// Those settings, so that a mismatch can name the keys that changed.
    pub config: serde_json::Value,
}

impl RunIdentity {
    /// The identity of a run of `config` on `source`.
    pub fn new(config: &TrainConfig, source: &dyn ShardSource) -> Self {
        let (settings, hash) = config.run_fingerprint();
        Self {
            dataset_sha256: source.dataset_sha256(),
            dataset: source.describe(),
            seed: config.seed,
            config_sha256: hash,
            config: settings,
        }
    }

    /// Why a checkpoint of run `self` cannot continue as run `now` (`None`: it can). The
    /// dataset is compared when both sides know its SHA-256.
    pub fn resume_mismatch(&self, now: &RunIdentity) -> Option<String> {
        let fresh = "; start fresh without --resume (or resume with the checkpoint's";
        if let (Some(was), Some(is)) = (&self.dataset_sha256, &now.dataset_sha256)
            && was != is
        {
            return Some(format!(
                "the checkpoint was trained on dataset sha256 {was} ({}), this run reads \
                 {is} ({}){fresh} dataset)",
                self.dataset, now.dataset
            ));
        }
        if self.seed != now.seed {
            return Some(format!(
                "the checkpoint was trained with seed {}, this run has seed {}{fresh} seed)",
                self.seed, now.seed
            ));
        }
        if self.config_sha256 != now.config_sha256 {
            let keys = changed_keys(&self.config, &now.config);
            return Some(format!(
                "the checkpoint was trained with another [train] config (sha256 {}, this run \
                 {}); changed: {}{fresh} config)",
                self.config_sha256,
                now.config_sha256,
                if keys.is_empty() {
                    "(no key differs: another version of Kiln hashed it)".into()
                } else {
                    keys.join(", ")
                }
            ));
        }
        None
    }
}

/// The top-level keys whose values differ, each with both values (`key: old -> new`).
fn changed_keys(was: &serde_json::Value, is: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        was.as_object().unwrap_or(&empty),
        is.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show =
        |v: Option<&serde_json::Value>| v.map_or("(absent)".into(), crate::config::canonical_json);
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

/// Everything needed to continue a run.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// What the run is (absent in checkpoints of older versions).
    pub run: Option<RunIdentity>,
    /// Steps completed.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Fitted transform.
    pub transform: Transform,
    /// Parameters.
    pub params: Params,
    /// Optimizer state.
    pub optimizer: Optimizer,
    /// Loader state of each rank.
    pub loaders: Vec<LoaderState>,
}

/// Serialises one loader state (position + buffer) into tensor-file bytes.
pub fn loader_state_bytes(s: &LoaderState) -> Vec<u8> {
    let mut f = TensorFile::default();
    put_loader(&mut f, "", s);
    f.to_bytes()
}

/// Parses [`loader_state_bytes`].
pub fn loader_state_from_bytes(b: &[u8]) -> Result<LoaderState> {
    let what = Path::new("loader state message");
    get_loader(&TensorFile::from_bytes(b, what)?, "", what)
}

fn put_loader(f: &mut TensorFile, p: &str, s: &LoaderState) {
    let b = &s.buffer;
    f.meta.insert(
        format!("{p}position"),
        serde_json::to_string(&s.position).expect("json"),
    );
    f.meta
        .insert(format!("{p}widths"), format!("{},{}", b.nf, b.nd));
    f.put_u32(&format!("{p}ids"), &[b.len(), b.nf], &b.ids);
    f.put_f32(&format!("{p}dense"), &[b.len(), b.nd], &b.dense);
    f.put_f32(&format!("{p}labels"), &[b.len()], &b.labels);
    f.put_u32(&format!("{p}source_rows"), &[b.len()], &b.source_rows);
}

fn get_loader(f: &TensorFile, p: &str, what: &Path) -> Result<LoaderState> {
    let meta = |k: &str| {
        f.meta
            .get(&format!("{p}{k}"))
            .ok_or_else(|| Error::invalid(what, format!("checkpoint lacks `{p}{k}`")))
    };
    let position: LoaderPosition =
        serde_json::from_str(meta("position")?).map_err(|source| Error::Metadata {
            path: what.into(),
            key: format!("{p}position"),
            source,
        })?;
    let (nf, nd) = meta("widths")?
        .split_once(',')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| Error::invalid(what, format!("bad loader widths `{p}widths`")))?;
    Ok(LoaderState {
        position,
        buffer: Prepared {
            nf,
            nd,
            ids: f.u32s(&format!("{p}ids"))?,
            dense: f.f32s(&format!("{p}dense"))?,
            labels: f.f32s(&format!("{p}labels"))?,
            source_rows: f.u32s(&format!("{p}source_rows"))?,
        },
    })
}

/// Checkpoints kept in a model directory (the newest; older ones are removed as new ones
/// are written).
pub const KEEP_CHECKPOINTS: usize = 2;

/// Whether `name` is a checkpoint file's name (`ckpt-<step>.safetensors`).
pub fn is_checkpoint_name(name: &str) -> bool {
    name.starts_with("ckpt-") && name.ends_with(".safetensors")
}

/// Removes `checkpoints/latest` of `model_dir` (a fresh run: a later `--resume` must not
/// continue an older run's checkpoint). Absent is fine.
pub fn clear_latest(model_dir: &Path) -> Result<()> {
    let latest = dir(model_dir).join("latest");
    match std::fs::remove_file(&latest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::file(&latest, e)),
    }
}

/// Directory of a model dir's checkpoints.
pub fn dir(model_dir: &Path) -> PathBuf {
    model_dir.join("checkpoints")
}

impl Checkpoint {
    /// Serialises the checkpoint.
    pub fn to_file(&self) -> TensorFile {
        let mut f = TensorFile::default();
        f.meta.insert("format".into(), "kiln-checkpoint-v1".into());
        if let Some(run) = &self.run {
            f.meta.insert(
                "run".into(),
                crate::config::canonical_json(&serde_json::to_value(run).expect("json")),
            );
        }
        f.meta.insert("step".into(), self.step.to_string());
        f.meta
            .insert("total_steps".into(), self.total_steps.to_string());
        f.meta
            .insert("world".into(), self.loaders.len().to_string());
        f.meta.insert(
            "spec".into(),
            serde_json::to_string(&self.params.spec).expect("json"),
        );
        f.meta.insert(
            "transform".into(),
            serde_json::to_string(&self.transform).expect("json"),
        );
        f.meta.insert(
            "optimizer".into(),
            serde_json::to_string(&self.optimizer.config).expect("json"),
        );
        f.put_f32(
            "params.dense",
            &[self.params.dense.len()],
            &self.params.dense,
        );
        f.put_f32(
            "params.table",
            &[self.params.table.len()],
            &self.params.table,
        );
        f.put_f32(
            "adam.dense_m",
            &[self.optimizer.dense_m.len()],
            &self.optimizer.dense_m,
        );
        f.put_f32(
            "adam.dense_v",
            &[self.optimizer.dense_v.len()],
            &self.optimizer.dense_v,
        );
        f.put_f32(
            "adam.table_m",
            &[self.optimizer.table_m.len()],
            &self.optimizer.table_m,
        );
        f.put_f32(
            "adam.table_v",
            &[self.optimizer.table_v.len()],
            &self.optimizer.table_v,
        );
        for (r, l) in self.loaders.iter().enumerate() {
            put_loader(&mut f, &format!("loader.{r}."), l);
        }
        f
    }

    /// Parses a checkpoint file's bytes (`what`: the file, named in errors) and checks that
    /// its parts fit together ([`Checkpoint::check`]).
    pub fn from_bytes(bytes: &[u8], what: impl AsRef<Path>) -> Result<Self> {
        let what = what.as_ref();
        let c = Self::parse(bytes, what)?;
        c.check().map_err(|message| Error::Resume {
            checkpoint: what.to_path_buf(),
            message: format!("corrupt checkpoint: {message}"),
        })?;
        Ok(c)
    }

    fn parse(bytes: &[u8], what: &Path) -> Result<Self> {
        let f = TensorFile::from_bytes(bytes, what)?;
        let bad = |m: String| Error::invalid(what, m);
        let meta = |k: &str| {
            f.meta
                .get(k)
                .ok_or_else(|| bad(format!("checkpoint lacks `{k}`")))
        };
        let num =
            |k: &str| -> Result<u64> { meta(k)?.parse().map_err(|_| bad(format!("bad `{k}`"))) };
        let json = |k: &'static str| {
            move |source| Error::Metadata {
                path: what.into(),
                key: k.into(),
                source,
            }
        };
        let spec: ModelSpec = serde_json::from_str(meta("spec")?).map_err(json("spec"))?;
        let transform: Transform =
            serde_json::from_str(meta("transform")?).map_err(json("transform"))?;
        let run = f
            .meta
            .get("run")
            .map(|r| serde_json::from_str(r))
            .transpose()
            .map_err(json("run"))?;
        let world = num("world")?;
        if world == 0 || world > 1 << 16 {
            return Err(bad(format!("`world` {world} is not a number of workers")));
        }
        let world = world as usize;
        let optimizer = Optimizer {
            config: serde_json::from_str(meta("optimizer")?).map_err(json("optimizer"))?,
            dense_m: f.f32s("adam.dense_m")?,
            dense_v: f.f32s("adam.dense_v")?,
            table_m: f.f32s("adam.table_m")?,
            table_v: f.f32s("adam.table_v")?,
        };
        Ok(Checkpoint {
            run,
            step: num("step")?,
            total_steps: num("total_steps")?,
            transform,
            params: Params {
                spec,
                dense: f.f32s("params.dense")?,
                table: f.f32s("params.table")?,
            },
            optimizer,
            loaders: (0..world)
                .map(|r| get_loader(&f, &format!("loader.{r}."), what))
                .collect::<Result<_>>()?,
        })
    }

    /// Checks what the training loop relies on: parameter and optimizer buffers of the sizes
    /// the model's shapes give, the step within the run, and each rank's loader state (its
    /// RNG position, its shuffle buffer's shape, table ids and labels, its batch count equal
    /// to the step). The message says what is out of range.
    pub fn check(&self) -> std::result::Result<(), String> {
        let spec = &self.params.spec;
        let table = spec.table_rows as usize * spec.row_width();
        if self.params.dense.len() != spec.dense_len() || self.params.table.len() != table {
            return Err(format!(
                "{} dense and {} table parameters, the model's shapes give {} and {table}",
                self.params.dense.len(),
                self.params.table.len(),
                spec.dense_len()
            ));
        }
        if spec.table_rows > 0 && spec.table_rows != self.transform.table_rows() {
            return Err(format!(
                "a table of {} rows, the transform's columns have {}",
                spec.table_rows,
                self.transform.table_rows()
            ));
        }
        let o = &self.optimizer;
        let fits = |v: &[f32], n: usize, optional: bool| v.len() == n || (optional && v.is_empty());
        let sgd = matches!(o.config, crate::config::OptimizerConfig::Sgd { .. });
        if !fits(&o.dense_m, self.params.dense.len(), false)
            || !fits(&o.table_m, table, false)
            || !fits(&o.dense_v, self.params.dense.len(), sgd)
            || !fits(&o.table_v, table, sgd)
        {
            return Err("optimizer moments of other sizes than the parameters".into());
        }
        if self.step == 0 || self.step > self.total_steps {
            return Err(format!(
                "step {} of a run of {} steps",
                self.step, self.total_steps
            ));
        }
        for (r, l) in self.loaders.iter().enumerate() {
            let bad = |m: String| format!("loader state of rank {r}: {m}");
            l.position.word_pos().map_err(bad)?;
            if l.position.batches != self.step {
                return Err(bad(format!(
                    "{} batches read at step {}",
                    l.position.batches, self.step
                )));
            }
            l.buffer
                .check(&self.transform)
                .map_err(|m| bad(format!("shuffle buffer: {m}")))?;
        }
        Ok(())
    }

    /// Writes `ckpt-<step>.safetensors` and points `latest` at it; keeps the newest
    /// [`KEEP_CHECKPOINTS`].
    pub fn write(&self, model_dir: &Path) -> Result<PathBuf> {
        let d = dir(model_dir);
        let name = format!("ckpt-{:010}.safetensors", self.step);
        let path = d.join(&name);
        self.to_file().write_atomic(&path)?;
        kiln_connectors::store::write_atomic(d.join("latest"), name.as_bytes())
            .map_err(Error::write)?;
        let mut old: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| Error::file(&d, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_checkpoint_name)
            })
            .collect();
        old.sort();
        for p in old.iter().rev().skip(KEEP_CHECKPOINTS) {
            let _ = std::fs::remove_file(p);
        }
        Ok(path)
    }
}

/// Bytes of the latest checkpoint in `model_dir`, if any.
pub fn latest_bytes(model_dir: &Path) -> Result<Option<(PathBuf, Vec<u8>)>> {
    let latest = dir(model_dir).join("latest");
    let name = match std::fs::read_to_string(&latest) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(&latest, e)),
    };
    let path = dir(model_dir).join(name.trim());
    let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
    Ok(Some((path, bytes)))
}
