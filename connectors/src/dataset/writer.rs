//! [`DatasetWriter`]: splits a stream of RecordBatches over N shard writers (by key hash or
//! round-robin) and commits the dataset.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use serde_json::Value;

use super::commit::commit_dataset;
use super::options::{ShardOptions, new_run_id, validate_run_id};
use super::shard_writer::ShardWriter;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::shard;
use crate::store::{self, Location};

/// Splits a stream of RecordBatches over N [`ShardWriter`]s and commits the dataset.
pub struct DatasetWriter {
    location: Location,
    run_id: String,
    schema: SchemaRef,
    options: ShardOptions,
    writers: Vec<ShardWriter>,
    key_idx: Option<usize>,
    next_row: u64,
}

impl DatasetWriter {
    /// A writer for a new run at `location` (`run_id`: None = [`new_run_id`]).
    pub fn new(
        location: Location,
        schema: SchemaRef,
        options: ShardOptions,
        run_id: Option<String>,
    ) -> Result<Self> {
        options.validate(&schema)?;
        let run_id = run_id.unwrap_or_else(new_run_id);
        validate_run_id(&run_id)?;
        let writers = (0..options.num_shards)
            .map(|i| ShardWriter::new(&location, &run_id, i, schema.clone(), &options))
            .collect::<Result<Vec<_>>>()?;
        let key_idx = match &options.key_column {
            Some(k) => Some(
                schema
                    .index_of(k)
                    .map_err(|e| Error::arrow("key column", e))?,
            ),
            None => None,
        };
        Ok(DatasetWriter {
            location,
            run_id,
            schema,
            options,
            writers,
            key_idx,
            next_row: 0,
        })
    }

    /// A writer for a URL or path (see [`store::resolve`]).
    pub fn create(
        url: &str,
        schema: SchemaRef,
        options: ShardOptions,
        run_id: Option<String>,
    ) -> Result<Self> {
        Self::new(store::resolve(url)?, schema, options, run_id)
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Split `batch` by shard and append the parts to the shard writers.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = self.options.num_shards;
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        if n == 1 {
            self.next_row += rows as u64;
            return self.writers[0].write_batch(batch).await;
        }
        let ids: Vec<u32> = match self.key_idx {
            Some(k) => shard::shard_ids(batch.column(k).as_ref(), n)?
                .values()
                .to_vec(),
            None => (0..rows as u64)
                .map(|i| ((self.next_row + i) % n as u64) as u32)
                .collect(),
        };
        self.next_row += rows as u64;
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
        for (row, s) in ids.iter().enumerate() {
            parts[*s as usize].push(row as u32);
        }
        for (s, idx) in parts.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let sub = if idx.len() == rows {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(idx))
                    .map_err(|e| Error::arrow("splitting batch by shard", e))?
            };
            self.writers[s].write_batch(&sub).await?;
        }
        Ok(())
    }

    /// Abandons the run: aborts every shard's uploads (no multipart parts or staging files
    /// are left behind) and commits nothing.
    pub async fn abort(self) -> Result<()> {
        let mut first = Ok(());
        for w in self.writers {
            let r = w.abort().await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Finish every shard and commit (manifest, `_SUCCESS`, cleanup of older runs). If a
    /// shard fails, the uploads of the shards not yet finished are aborted.
    pub async fn finish(self, lineage: Value) -> Result<Manifest> {
        let mut files = Vec::new();
        let mut writers = self.writers.into_iter();
        while let Some(w) = writers.next() {
            match w.finish().await {
                Ok(f) => files.extend(f),
                Err(e) => {
                    for rest in writers {
                        if let Err(abort) = rest.abort().await {
                            tracing::warn!("after a failed shard write: {abort}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        commit_dataset(
            &self.location,
            &self.run_id,
            self.schema,
            &self.options,
            files,
            lineage,
            false,
        )
        .await
    }

    /// Blocking [`write`](Self::write) (for synchronous callers; uses the crate's I/O runtime).
    pub fn write_blocking(&mut self, batch: &RecordBatch) -> Result<()> {
        store::block_on(self.write(batch))
    }

    /// Blocking [`finish`](Self::finish).
    pub fn finish_blocking(self, lineage: Value) -> Result<Manifest> {
        store::block_on(self.finish(lineage))
    }
}

/// Write `batches` as a committed dataset at `url` (blocking convenience).
pub fn write_dataset_blocking(
    url: &str,
    schema: SchemaRef,
    batches: &[RecordBatch],
    options: ShardOptions,
    lineage: Value,
) -> Result<Manifest> {
    let mut w = DatasetWriter::create(url, schema, options, None)?;
    for b in batches {
        w.write_blocking(b)?;
    }
    w.finish_blocking(lineage)
}
