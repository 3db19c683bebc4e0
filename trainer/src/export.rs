//! The model directory: everything `kiln predict` (or a server) needs to score rows exactly as
//! the trainer's evaluation did.
//!
//! | file | contents |
//! |---|---|
//! | `model.json` | [`ModelSpec`] (shapes), the `[train]` config, the file formats |
//! | `transform.json` | the fitted [`Transform`]: hash buckets, vocabularies, mean/std |
//! | `deep.bpk` | the MLP in Burn's record format (burnpack): `layers.N.weight` `[in, out]`, `layers.N.bias` |
//! | `embeddings.safetensors` | tensor `table` `[rows, width]` f32: per categorical id its embedding (`embedding_dim` values) then, for wide models, its wide weight; column `c` owns rows `offset..offset+size` of `transform.json` |
//! | `metrics.json` | held-out metrics |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use burn::module::Module;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::device::infer_device;
use crate::eval::Metrics;
use crate::model::{DeepNet, ModelSpec, Params, predict_logits};
use crate::source::ShardSource;
use crate::tensorfile::TensorFile;
use crate::transform::{Prepared, RowFilter, Transform};
use crate::{Error, Result};

/// `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFile {
    /// Format tag.
    pub format: String,
    /// Shapes.
    pub spec: ModelSpec,
    /// The training configuration.
    pub config: TrainConfig,
    /// Steps trained.
    pub steps: u64,
    /// Workers used.
    pub workers: usize,
}

/// A loaded model directory.
#[derive(Debug, Clone)]
pub struct Model {
    /// `model.json`.
    pub file: ModelFile,
    /// `transform.json`.
    pub transform: Transform,
    /// Weights.
    pub params: Params,
}

fn json_atomic<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::file(path, e))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    kiln_connectors::store::write_atomic(path, bytes).map_err(Error::write)
}

/// The files [`export`] writes. Anything else in a model directory (`checkpoints/`, files
/// of other tools) is kept across an export; these are all replaced together.
pub const MODEL_FILES: [&str; 5] = [
    "model.json",
    "transform.json",
    "deep.bpk",
    "embeddings.safetensors",
    "metrics.json",
];

/// Writes the model directory atomically: a reader (or a crash) sees the old model or the new
/// one, never files of both. The files are written (and fsynced) into a staging directory
/// next to `dir`, which then takes `dir`'s place in one rename: on Linux `renameat2`'s
/// `RENAME_EXCHANGE` (macOS: `renamex_np`'s `RENAME_SWAP`) swaps the two directories, and the
/// entries of the old one that are not [`MODEL_FILES`] (`checkpoints/`, ...) are moved into
/// the new one; where a swap is not supported, the old directory is renamed away first (a
/// reader in between finds no model rather than a mixed one). A model file the new export
/// lacks (`metrics.json` without an evaluation) does not survive from the old model.
pub fn export(
    dir: &Path,
    file: &ModelFile,
    transform: &Transform,
    params: &Params,
    metrics: Option<&Metrics>,
) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::file(&parent, e))?;
    // A model directory that is a symbolic link is replaced where it points.
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir.to_path_buf(),
        Err(e) => return Err(Error::file(dir, e)),
    };
    let parent = dir.parent().map_or(parent, Path::to_path_buf);
    let name = dir
        .file_name()
        .ok_or_else(|| Error::invalid(&dir, "a model directory needs a name"))?
        .to_string_lossy()
        .into_owned();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let stage = parent.join(format!(".{name}.export-{tag}"));
    std::fs::create_dir(&stage).map_err(|e| Error::file(&stage, e))?;
    let written = write_model_files(&stage, file, transform, params, metrics);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    install(&stage, &dir, &parent.join(format!(".{name}.old-{tag}")))
}

fn write_model_files(
    dir: &Path,
    file: &ModelFile,
    transform: &Transform,
    params: &Params,
    metrics: Option<&Metrics>,
) -> Result<()> {
    let deep = params
        .to_burn(&infer_device())
        .into_record()
        .into_bytes()
        .map_err(|e| Error::file(dir.join("deep.bpk"), e))?;
    write_atomic(&dir.join("deep.bpk"), &deep)?;
    let mut emb = TensorFile::default();
    emb.meta
        .insert("format".into(), "kiln-embeddings-v1".into());
    emb.meta.insert(
        "embedding_dim".into(),
        params.spec.embedding_dim.to_string(),
    );
    emb.meta.insert("wide".into(), params.spec.wide.to_string());
    emb.put_f32(
        "table",
        &[params.spec.table_rows as usize, params.spec.row_width()],
        &params.table,
    );
    emb.write_atomic(&dir.join("embeddings.safetensors"))?;
    json_atomic(&dir.join("transform.json"), transform)?;
    if let Some(m) = metrics {
        json_atomic(&dir.join("metrics.json"), m)?;
    }
    json_atomic(&dir.join("model.json"), file)
}

/// Puts the staged model directory `stage` in the place of `dir` (see [`export`]); `old` is
/// a free name next to them for the fallback without a swap.
fn install(stage: &Path, dir: &Path, old: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::file(p, e)
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::rename(stage, dir).map_err(io(dir))?;
            return sync_dir(parent);
        }
        Err(e) => return Err(Error::file(dir, e)),
        Ok(m) if !m.is_dir() => {
            let _ = std::fs::remove_dir_all(stage);
            return Err(Error::invalid(
                dir,
                "the model directory is not a directory",
            ));
        }
        Ok(_) => {}
    }
    match swap_dirs(stage, dir) {
        Ok(true) => {
            // `dir` is the new model; `stage` the old directory, whose other entries move over.
            move_kept_entries(stage, dir)?;
            std::fs::remove_dir_all(stage).map_err(io(stage))?;
            return sync_dir(parent);
        }
        Ok(false) => {}
        Err(e) if cannot_rename(&e) => return replace_in_place(stage, dir),
        Err(e) => {
            let _ = std::fs::remove_dir_all(stage);
            return Err(Error::file(dir, e));
        }
    }
    if let Err(e) = std::fs::rename(dir, old) {
        if cannot_rename(&e) {
            return replace_in_place(stage, dir);
        }
        let _ = std::fs::remove_dir_all(stage);
        return Err(Error::file(dir, e));
    }
    let moved =
        move_kept_entries(old, stage).and_then(|()| std::fs::rename(stage, dir).map_err(io(dir)));
    if let Err(e) = moved {
        // Put the old directory back (with whatever did not move), keep the staged model.
        let _ = move_kept_entries(stage, old);
        let _ = std::fs::rename(old, dir);
        return Err(e);
    }
    std::fs::remove_dir_all(old).map_err(io(old))?;
    sync_dir(parent)
}

/// A directory that cannot be renamed: a mount point (`EBUSY`), or a staging directory on
/// another file system (`EXDEV`).
fn cannot_rename(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EXDEV))
}

/// Replaces the model files of `dir` with those of `stage` in place, for a model directory
/// that cannot be renamed (a mount point): `model.json` is removed first and written last,
/// each file atomically, and model files `stage` lacks are removed; so a reader finds the old
/// model, no model, or the new one, never `model.json` with another model's files.
fn replace_in_place(stage: &Path, dir: &Path) -> Result<()> {
    let remove = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::file(p, e)),
        _ => Ok(()),
    };
    remove(&dir.join("model.json"))?;
    for name in MODEL_FILES
        .iter()
        .filter(|n| **n != "model.json")
        .chain(["model.json"].iter())
    {
        let from = stage.join(name);
        match std::fs::read(&from) {
            Ok(bytes) => write_atomic(&dir.join(name), &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove(&dir.join(name))?,
            Err(e) => return Err(Error::file(&from, e)),
        }
    }
    std::fs::remove_dir_all(stage).map_err(|e| Error::file(stage, e))
}

/// Moves every entry of `from` that is not one of [`MODEL_FILES`] into `to`.
fn move_kept_entries(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).map_err(|e| Error::file(from, e))? {
        let e = e.map_err(|e| Error::file(from, e))?;
        let name = e.file_name();
        if MODEL_FILES.iter().any(|m| name == *m) {
            continue;
        }
        std::fs::rename(e.path(), to.join(&name)).map_err(|err| Error::file(e.path(), err))?;
    }
    Ok(())
}

/// Swaps two directories atomically; `Ok(false)` where the file system cannot.
#[cfg(any(target_os = "linux", target_vendor = "apple"))]
fn swap_dirs(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths that outlive the call.
    #[cfg(target_os = "linux")]
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    // SAFETY: as above.
    #[cfg(target_vendor = "apple")]
    let r = unsafe { libc::renamex_np(ca.as_ptr(), cb.as_ptr(), libc::RENAME_SWAP) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(code)
            if [libc::EINVAL, libc::ENOSYS, libc::ENOTSUP, libc::EOPNOTSUPP].contains(&code) =>
        {
            Ok(false)
        }
        _ => Err(e),
    }
}

/// Swaps two directories atomically; `Ok(false)`: not on this system.
#[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
fn swap_dirs(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

fn sync_dir(dir: &Path) -> Result<()> {
    kiln_connectors::store::fsync(dir).map_err(|e| Error::file(dir, e))
}

/// Reads a model directory written by [`export`].
pub fn load(dir: &Path) -> Result<Model> {
    let read_json = |name: &str| -> Result<Vec<u8>> {
        std::fs::read(dir.join(name)).map_err(|e| Error::file(dir.join(name), e))
    };
    let file: ModelFile = serde_json::from_slice(&read_json("model.json")?)
        .map_err(|e| Error::file(dir.join("model.json"), e))?;
    let transform: Transform = serde_json::from_slice(&read_json("transform.json")?)
        .map_err(|e| Error::file(dir.join("transform.json"), e))?;
    let spec = file.spec.clone();
    let emb = TensorFile::read(&dir.join("embeddings.safetensors"))?;
    let table = emb.f32s("table")?;
    if table.len() != spec.table_rows as usize * spec.row_width() {
        return Err(Error::invalid(
            dir.join("embeddings.safetensors"),
            format!(
                "table has {} floats, model.json implies {} x {}",
                table.len(),
                spec.table_rows,
                spec.row_width()
            ),
        ));
    }
    let bpk = dir.join("deep.bpk");
    let bytes = std::fs::read(&bpk).map_err(|e| Error::file(&bpk, e))?;
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::file(&bpk, e))?;
    let net = DeepNet::zeros(&spec, &infer_device())
        .try_load_record(record)
        .map_err(|e| Error::file(&bpk, e))?;
    let mut params = Params {
        spec: spec.clone(),
        dense: vec![0.0; spec.dense_len()],
        table,
    };
    params.load_burn(&net)?;
    Ok(Model {
        file,
        transform,
        params,
    })
}

/// Scores every selected row of `source`, shard by shard in index order, one record batch
/// at a time. Evaluation and `kiln predict` both go through here, so they agree bit for bit.
/// Logits, labels and `(shard, row in shard)` of each scored row.
pub type Scores = (Vec<f32>, Vec<f32>, Vec<(u32, u64)>);

/// Returns (logits, labels, (shard, row in shard) of each scored row).
pub fn score(
    params: &Params,
    transform: &Transform,
    source: &Arc<dyn ShardSource>,
    filter: RowFilter,
) -> Result<Scores> {
    let (mut logits, mut labels, mut where_) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = Prepared::new(transform.categorical.len(), transform.dense_width());
    for shard in 0..source.shard_rows().len() {
        let mut start = 0u64;
        for batch in source.read_shard(shard)? {
            let batch = batch?;
            let at = |e: Error| e.in_shard(shard, start);
            let sel = transform.rows(&batch, filter).map_err(at)?;
            score_rows(
                params,
                transform,
                &batch,
                &sel,
                &mut rows,
                &mut logits,
                &mut labels,
            )
            .map_err(at)?;
            where_.extend(sel.iter().map(|&r| (shard as u32, start + r as u64)));
            start += batch.num_rows() as u64;
        }
    }
    Ok((logits, labels, where_))
}

/// Rows of every scoring forward pass. The CPU matrix multiply picks its blocking (and a
/// parallel path) by the number of rows, so a row's logit can differ in the last bits between
/// a 1-row and a 400-row pass. Scoring always this many rows at a time (a short chunk padded
/// by repeating its first row, whose results are dropped) makes a row's logit depend on the
/// row alone: evaluation, `kiln predict` and `kiln serve` (any request size) agree bit for bit.
pub const SCORE_CHUNK_ROWS: usize = 512;

/// Logits and labels of `rows` of `batch`, appended to `logits` and `labels`, scored in
/// padded chunks of [`SCORE_CHUNK_ROWS`] (`scratch` is reused between calls).
#[allow(clippy::too_many_arguments)]
pub fn score_rows(
    params: &Params,
    transform: &Transform,
    batch: &RecordBatch,
    rows: &[u32],
    scratch: &mut Prepared,
    logits: &mut Vec<f32>,
    labels: &mut Vec<f32>,
) -> Result<()> {
    let mut padded = Vec::with_capacity(SCORE_CHUNK_ROWS);
    for chunk in rows.chunks(SCORE_CHUNK_ROWS) {
        padded.clear();
        padded.extend_from_slice(chunk);
        padded.resize(SCORE_CHUNK_ROWS, chunk[0]);
        scratch.clear();
        transform.prepare(batch, &padded, scratch)?;
        let z = predict_logits(params, scratch)?;
        logits.extend_from_slice(&z[..chunk.len()]);
        labels.extend_from_slice(&scratch.labels[..chunk.len()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_in_place_keeps_other_entries_and_drops_stale_model_files() {
        let d = tempfile::tempdir().unwrap();
        let (stage, dir) = (d.path().join("stage"), d.path().join("model"));
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        std::fs::create_dir_all(&stage).unwrap();
        for f in MODEL_FILES {
            std::fs::write(dir.join(f), "old").unwrap();
            if f != "metrics.json" {
                std::fs::write(stage.join(f), "new").unwrap();
            }
        }
        std::fs::write(dir.join("checkpoints/latest"), "ckpt").unwrap();
        replace_in_place(&stage, &dir).unwrap();
        for f in MODEL_FILES {
            if f == "metrics.json" {
                assert!(!dir.join(f).exists(), "a stale {f} is left");
            } else {
                assert_eq!(std::fs::read_to_string(dir.join(f)).unwrap(), "new", "{f}");
            }
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("checkpoints/latest")).unwrap(),
            "ckpt"
        );
        assert!(!stage.exists());
    }
}
