//! Where training rows come from: a list of shards with row counts, each readable as a stream
//! of Arrow record batches in a fixed order.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::{Error, Result};

/// Record batches of one shard, in the shard's row order.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// A sharded dataset as the trainer sees it.
pub trait ShardSource: Send + Sync {
    /// Schema of every shard.
    fn schema(&self) -> SchemaRef;
    /// Rows per shard, from the manifest.
    fn shard_rows(&self) -> Vec<u64>;
    /// Streams shard `index` from its first row.
    fn read_shard(&self, index: usize) -> Result<BatchIter>;
    /// Human-readable location (for messages and `--json`).
    fn describe(&self) -> String;
    /// What identifies these rows: the SHA-256 (hex) of the committed dataset's manifest,
    /// which lists every shard with its own SHA-256. Checkpoints record it, and `--resume`
    /// refuses a checkpoint of other data. `None` (the default): unknown, not checked.
    fn dataset_sha256(&self) -> Option<String> {
        None
    }
}

/// Shards held in memory (tests, benchmarks).
#[derive(Clone)]
pub struct MemorySource {
    schema: SchemaRef,
    shards: Vec<Arc<Vec<RecordBatch>>>,
    sha256: Option<String>,
}

impl MemorySource {
    /// Shards given as lists of batches sharing one schema.
    pub fn new(schema: SchemaRef, shards: Vec<Vec<RecordBatch>>) -> Result<Self> {
        for (i, s) in shards.iter().enumerate() {
            for b in s {
                if b.schema().fields() != schema.fields() {
                    return Err(Error::Data(format!(
                        "memory shard {i}: batch schema differs from the dataset schema"
                    )));
                }
            }
        }
        Ok(Self {
            schema,
            shards: shards.into_iter().map(Arc::new).collect(),
            sha256: None,
        })
    }

    /// The same rows, identified as `sha256` (see [`ShardSource::dataset_sha256`]).
    pub fn with_dataset_sha256(mut self, sha256: impl Into<String>) -> Self {
        self.sha256 = Some(sha256.into());
        self
    }
}

impl ShardSource for MemorySource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn shard_rows(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|s| s.iter().map(|b| b.num_rows() as u64).sum())
            .collect()
    }
    fn read_shard(&self, index: usize) -> Result<BatchIter> {
        let shard = self
            .shards
            .get(index)
            .ok_or_else(|| Error::Data(format!("memory shard {index} does not exist")))?
            .clone();
        let n = shard.len();
        Ok(Box::new((0..n).map(move |i| Ok(shard[i].clone()))))
    }
    fn describe(&self) -> String {
        format!("memory ({} shards)", self.shards.len())
    }
    fn dataset_sha256(&self) -> Option<String> {
        self.sha256.clone()
    }
}

/// A committed dataset read through its manifest (`kiln_connectors::dataset::Dataset`).
pub struct DatasetSource {
    dataset: kiln_connectors::dataset::Dataset,
    batch_rows: usize,
    /// SHA-256 of the manifest's bytes as committed (`Manifest::to_json_bytes`, which is
    /// what the commit writes).
    manifest_sha256: String,
}

impl DatasetSource {
    /// Opens the dataset at `url` (path, `file://` or `s3://`); fails if it is not committed.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, false)
    }

    /// [`open`](Self::open); with `skip_corrupt`, corrupt TFRecord records are skipped and
    /// reported by [`skipped`](Self::skipped) instead of failing the read.
    pub fn open_with(url: &str, skip_corrupt: bool) -> Result<Self> {
        let dataset = kiln_connectors::dataset::Dataset::open_blocking(url, Default::default())
            .map_err(|e| Error::Dataset {
                url: url.into(),
                shard: None,
                source: Box::new(e),
            })?
            .with_skip_corrupt(skip_corrupt);
        let manifest_sha256 = crate::config::sha256_hex(&dataset.manifest().to_json_bytes());
        Ok(Self {
            dataset,
            batch_rows: 4096,
            manifest_sha256,
        })
    }
}

impl DatasetSource {
    /// What `skip_corrupt` skipped so far (each read of a shard reports its own skips).
    pub fn skipped(&self) -> Vec<kiln_connectors::dataset::SkippedInShard> {
        self.dataset.skipped()
    }
}

impl ShardSource for DatasetSource {
    fn schema(&self) -> SchemaRef {
        self.dataset.schema()
    }
    fn shard_rows(&self) -> Vec<u64> {
        self.dataset.shard_rows()
    }
    fn read_shard(&self, index: usize) -> Result<BatchIter> {
        let url = self.dataset.location().url.clone();
        let err = move |e| Error::Dataset {
            url: url.clone(),
            shard: Some(index),
            source: Box::new(e),
        };
        let it = self
            .dataset
            .read_shards(&[index], None, self.batch_rows)
            .map_err(err.clone())?;
        Ok(Box::new(it.map(move |r| r.map_err(&err))))
    }
    fn describe(&self) -> String {
        self.dataset.location().url.clone()
    }
    fn dataset_sha256(&self) -> Option<String> {
        Some(self.manifest_sha256.clone())
    }
}
