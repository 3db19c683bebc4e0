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

use std::path::Path;
use std::sync::Arc;

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

/// Writes the model directory (each file atomically).
pub fn export(
    dir: &Path,
    file: &ModelFile,
    transform: &Transform,
    params: &Params,
    metrics: Option<&Metrics>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
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
            let sel = transform.rows(&batch, filter)?;
            rows.clear();
            transform.prepare(&batch, &sel, &mut rows)?;
            logits.extend(predict_logits(params, &rows)?);
            labels.extend_from_slice(&rows.labels);
            where_.extend(sel.iter().map(|&r| (shard as u32, start + r as u64)));
            start += batch.num_rows() as u64;
        }
    }
    Ok((logits, labels, where_))
}
