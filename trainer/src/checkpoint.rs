//! Checkpoints: parameters, optimizer state, step, every rank's loader position and shuffle
//! buffer (which carry the RNG state), and the fitted transform — one safetensors file
//! per checkpoint under `MODEL_DIR/checkpoints/`, written atomically by rank 0 (temporary
//! name, fsync, rename, directory fsync), then named in `checkpoints/latest` (also replaced
//! atomically).

use std::path::{Path, PathBuf};

use crate::loader::{LoaderPosition, LoaderState};
use crate::model::{ModelSpec, Params};
use crate::optim::Optimizer;
use crate::tensorfile::TensorFile;
use crate::transform::{Prepared, Transform};
use crate::{Error, Result};

/// Everything needed to continue a run.
#[derive(Debug, Clone)]
pub struct Checkpoint {
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
    const WHAT: &str = "loader state message";
    get_loader(&TensorFile::from_bytes(b, WHAT)?, "", WHAT)
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

fn get_loader(f: &TensorFile, p: &str, what: &str) -> Result<LoaderState> {
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

/// Directory of a model dir's checkpoints.
pub fn dir(model_dir: &Path) -> PathBuf {
    model_dir.join("checkpoints")
}

impl Checkpoint {
    /// Serialises the checkpoint.
    pub fn to_file(&self) -> TensorFile {
        let mut f = TensorFile::default();
        f.meta.insert("format".into(), "kiln-checkpoint-v1".into());
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

    /// Parses a checkpoint file's bytes.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
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
        let world = num("world")? as usize;
        let optimizer = Optimizer {
            config: serde_json::from_str(meta("optimizer")?).map_err(json("optimizer"))?,
            dense_m: f.f32s("adam.dense_m")?,
            dense_v: f.f32s("adam.dense_v")?,
            table_m: f.f32s("adam.table_m")?,
            table_v: f.f32s("adam.table_v")?,
        };
        Ok(Checkpoint {
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

    /// Writes `ckpt-<step>.safetensors` and points `latest` at it; keeps the two newest.
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
                    .is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".safetensors"))
            })
            .collect();
        old.sort();
        for p in old.iter().rev().skip(2) {
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
