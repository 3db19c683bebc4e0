//! [`ShardWriter`]: one shard index in every configured format, streamed to the object store
//! while hashing (SHA-256, byte count) and collecting key statistics.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::options::{ShardOptions, validate_run_id};
use crate::codec::ExampleEncoder;
use crate::error::{Error, Result};
use crate::manifest::{CREATED_BY, ShardCompression, ShardFile, ShardFormat, shard_file_name};
use crate::shard;
use crate::store::Location;
use crate::tfrecord::CompressWriter;

#[derive(Default)]
struct HashState {
    hasher: Sha256,
    bytes: u64,
}

/// Streams bytes to an object via `BufWriter` (multipart for large objects) while hashing.
struct Sink {
    w: BufWriter,
    state: Arc<Mutex<HashState>>,
    url: String,
    /// Completion or abort was attempted: the writer must not be touched again.
    closed: bool,
}

impl Sink {
    fn new(loc: &Location) -> Self {
        Sink {
            w: BufWriter::with_capacity(loc.store.clone(), loc.path.clone(), 16 << 20),
            state: Arc::default(),
            url: loc.url.clone(),
            closed: false,
        }
    }

    async fn put(&mut self, data: Bytes) -> Result<()> {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.hasher.update(&data);
            s.bytes += data.len() as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        self.w
            .put(data)
            .await
            .map_err(|e| Error::store(format!("writing {}", self.url), e))
    }

    async fn complete(&mut self) -> Result<()> {
        self.closed = true;
        self.w
            .shutdown()
            .await
            .map_err(|e| Error::io(format!("completing {}", self.url), e))
    }

    /// Abandons the object: aborts its multipart upload (or drops the buffered bytes), so no
    /// parts are left behind in the store.
    async fn abort(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        self.w
            .abort()
            .await
            .map_err(|e| Error::store(format!("aborting the upload of {}", self.url), e))
    }
}

struct ParquetSink(Sink);

impl AsyncFileWriter for ParquetSink {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .put(bs)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }
    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.0
                .complete()
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }
}

// ------------------------------------------------------------------------------------------
// Key statistics
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
enum KeyStats {
    #[default]
    Empty,
    Int(i64, i64),
    Bytes(Vec<u8>, Vec<u8>),
}

impl KeyStats {
    fn update(&mut self, key: &dyn Array) -> Result<()> {
        if let Some(ints) = shard::key_as_i64(key)? {
            for v in ints.iter().flatten() {
                *self = match std::mem::take(self) {
                    KeyStats::Int(a, b) => KeyStats::Int(a.min(v), b.max(v)),
                    _ => KeyStats::Int(v, v),
                };
            }
            return Ok(());
        }
        let mut add = |v: &[u8]| {
            match self {
                KeyStats::Bytes(a, b) => {
                    if v < a.as_slice() {
                        *a = v.to_vec();
                    }
                    if v > b.as_slice() {
                        *b = v.to_vec();
                    }
                }
                _ => *self = KeyStats::Bytes(v.to_vec(), v.to_vec()),
            };
        };
        match key.data_type() {
            DataType::Utf8 => key
                .as_string::<i32>()
                .iter()
                .flatten()
                .for_each(|v| add(v.as_bytes())),
            DataType::LargeUtf8 => key
                .as_string::<i64>()
                .iter()
                .flatten()
                .for_each(|v| add(v.as_bytes())),
            DataType::Utf8View => key
                .as_string_view()
                .iter()
                .flatten()
                .for_each(|v| add(v.as_bytes())),
            DataType::Binary => key.as_binary::<i32>().iter().flatten().for_each(add),
            DataType::LargeBinary => key.as_binary::<i64>().iter().flatten().for_each(add),
            DataType::BinaryView => key.as_binary_view().iter().flatten().for_each(add),
            _ => {}
        }
        Ok(())
    }

    fn json(&self) -> (Option<Value>, Option<Value>) {
        match self {
            KeyStats::Empty => (None, None),
            KeyStats::Int(a, b) => (Some((*a).into()), Some((*b).into())),
            KeyStats::Bytes(a, b) => (
                Some(crate::example::bytes_json(a)),
                Some(crate::example::bytes_json(b)),
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------
// ShardWriter
// ------------------------------------------------------------------------------------------

struct TfOut {
    enc: ExampleEncoder,
    z: CompressWriter<Vec<u8>>,
    /// Framed records not yet handed to the compressor (see [`COMPRESS_CHUNK_BYTES`]).
    framed: Vec<u8>,
    sink: Sink,
    path: String,
}

struct PqOut {
    w: AsyncArrowWriter<ParquetSink>,
    state: Arc<Mutex<HashState>>,
    path: String,
    /// Rows not yet handed to the Parquet writer (see [`PARQUET_CHUNK_ROWS`]).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

/// Rows per call into the Parquet writer. Its page and dictionary decisions depend on how
/// rows are chunked into calls, so rows are re-chunked to this fixed size: the shard's bytes
/// then depend only on the rows, not on the batch boundaries the writer received.
const PARQUET_CHUNK_ROWS: usize = 8192;

impl PqOut {
    async fn write(&mut self, batch: &RecordBatch, schema: &SchemaRef) -> Result<()> {
        self.pending.push(batch.clone());
        self.pending_rows += batch.num_rows();
        if self.pending_rows < PARQUET_CHUNK_ROWS {
            return Ok(());
        }
        let all = arrow::compute::concat_batches(schema, &self.pending)
            .map_err(|e| Error::Schema(e.to_string()))?;
        self.pending.clear();
        let full = all.num_rows() / PARQUET_CHUNK_ROWS * PARQUET_CHUNK_ROWS;
        for start in (0..full).step_by(PARQUET_CHUNK_ROWS) {
            self.write_now(&all.slice(start, PARQUET_CHUNK_ROWS))
                .await?;
        }
        self.pending_rows = all.num_rows() - full;
        if self.pending_rows > 0 {
            self.pending.push(all.slice(full, self.pending_rows));
        }
        Ok(())
    }

    async fn write_now(&mut self, batch: &RecordBatch) -> Result<()> {
        self.w
            .write(batch)
            .await
            .map_err(|e| Error::parquet(format!("writing shard {}", self.path), e))
    }

    /// Writes the pending rows, the footer, and completes the upload.
    async fn finish(&mut self) -> Result<()> {
        for b in std::mem::take(&mut self.pending) {
            self.write_now(&b).await?;
        }
        self.pending_rows = 0;
        self.w
            .finish()
            .await
            .map_err(|e| Error::parquet(format!("finishing shard {}", self.path), e))?;
        Ok(())
    }
}

impl TfOut {
    /// Compresses what is left and completes the upload.
    async fn finish(&mut self) -> Result<()> {
        if !self.framed.is_empty() {
            self.z
                .write_all(&self.framed)
                .map_err(|e| Error::io(format!("compressing {}", self.sink.url), e))?;
            self.framed.clear();
        }
        let z = std::mem::replace(&mut self.z, CompressWriter::None(Vec::new()));
        let rest = z
            .finish()
            .map_err(|e| Error::io(format!("compressing {}", self.sink.url), e))?;
        self.sink.put(Bytes::from(rest)).await?;
        self.sink.complete().await
    }
}

const FLUSH_BYTES: usize = 8 << 20;

/// Bytes per call into the gzip/zlib compressor. Deflate's block choices depend on how the
/// input is split into calls, so framed records are re-chunked to this fixed size: compressed
/// shards then depend only on the rows, not on the batch boundaries the writer received.
const COMPRESS_CHUNK_BYTES: usize = 256 << 10;

/// Writes one shard index in every configured format (`run-<id>/part-NNNNN-of-MMMMM.*`).
pub struct ShardWriter {
    index: u32,
    options: ShardOptions,
    schema: SchemaRef,
    key_idx: Option<usize>,
    rows: u64,
    keys: KeyStats,
    /// Statistics of the rows written, for the dataset's `_stats.json` (unless the options
    /// turned them off).
    stats: Option<crate::stats::DatasetStatsBuilder>,
    tf: Option<TfOut>,
    pq: Option<PqOut>,
}

impl ShardWriter {
    /// A writer for shard `index` of a run at `location`. No I/O happens until data is written.
    pub fn new(
        location: &Location,
        run_id: &str,
        index: u32,
        schema: SchemaRef,
        options: &ShardOptions,
    ) -> Result<Self> {
        validate_run_id(run_id)?;
        options.validate(&schema)?;
        if index >= options.num_shards {
            return Err(Error::Options(format!(
                "shard index {index} out of range for {} shards",
                options.num_shards
            )));
        }
        let key_idx = match &options.key_column {
            Some(k) => Some(
                schema
                    .index_of(k)
                    .map_err(|e| Error::arrow("key column", e))?,
            ),
            None => None,
        };
        let rel = |f| {
            format!(
                "run-{run_id}/{}",
                shard_file_name(index, options.num_shards, f, options.tfrecord_compression)
            )
        };
        let mut tf = None;
        let mut pq = None;
        for f in &options.formats {
            let path = rel(*f);
            let loc = location.child(&path);
            match f {
                ShardFormat::TfRecord => {
                    tf = Some(TfOut {
                        enc: ExampleEncoder::new(schema.clone(), &options.encode)?,
                        z: CompressWriter::with_level(
                            Vec::with_capacity(FLUSH_BYTES + (1 << 20)),
                            options.tfrecord_compression,
                            options.tfrecord_compression_level,
                        ),
                        framed: Vec::with_capacity(1 << 20),
                        sink: Sink::new(&loc),
                        path,
                    })
                }
                ShardFormat::Parquet => {
                    // Fail early (naming the column) on types the Example mapping rejects, so
                    // that both formats accept the same schemas.
                    ExampleEncoder::new(schema.clone(), &options.encode)?;
                    let props = WriterProperties::builder()
                        .set_compression(options.parquet_compression.to_parquet()?)
                        .set_max_row_group_row_count(Some(options.parquet_row_group_rows.max(1)))
                        .set_created_by(format!("{} (parquet-rs)", CREATED_BY))
                        .build();
                    let sink = Sink::new(&loc);
                    let state = sink.state.clone();
                    let w =
                        AsyncArrowWriter::try_new(ParquetSink(sink), schema.clone(), Some(props))
                            .map_err(|e| Error::parquet(format!("creating {}", loc.url), e))?;
                    pq = Some(PqOut {
                        w,
                        state,
                        path,
                        pending: Vec::new(),
                        pending_rows: 0,
                    });
                }
            }
        }
        let stats = options
            .statistics
            .then(|| crate::stats::DatasetStatsBuilder::new(&schema));
        Ok(ShardWriter {
            index,
            options: options.clone(),
            schema,
            key_idx,
            rows: 0,
            keys: KeyStats::Empty,
            stats,
            tf,
            pq,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes this writer holds in memory: the TFRecord encode/compress buffers and the
    /// Parquet writer's pending rows and in-progress row group (what a memory pool should
    /// account for; the upload buffers of `object_store`'s writer come on top, up to 16 MiB
    /// per format).
    pub fn buffered_bytes(&self) -> usize {
        let tf = self
            .tf
            .as_ref()
            .map_or(0, |tf| tf.framed.capacity() + tf.z.get_ref().capacity());
        let pq = self.pq.as_ref().map_or(0, |pq| {
            pq.w.memory_size()
                + pq.pending
                    .iter()
                    .map(RecordBatch::get_array_memory_size)
                    .sum::<usize>()
        });
        tf + pq
    }

    /// Append a batch (must have the writer's schema).
    pub async fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::Schema(format!(
                "batch schema {:?} differs from the dataset schema {:?}",
                batch.schema().fields(),
                self.schema.fields()
            )));
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(k) = self.key_idx {
            self.keys.update(batch.column(k).as_ref())?;
        }
        if let Some(stats) = &mut self.stats {
            stats.update(batch)?;
        }
        if let Some(tf) = &mut self.tf {
            if let CompressWriter::None(buf) = &mut tf.z {
                // Uncompressed: encode straight into the output buffer.
                tf.enc.encode_batch_tfrecord(batch, buf)?;
            } else {
                tf.enc.encode_batch_tfrecord(batch, &mut tf.framed)?;
                let whole = tf.framed.len() / COMPRESS_CHUNK_BYTES * COMPRESS_CHUNK_BYTES;
                for chunk in tf.framed[..whole].chunks(COMPRESS_CHUNK_BYTES) {
                    tf.z.write_all(chunk)
                        .map_err(|e| Error::io(format!("compressing {}", tf.sink.url), e))?;
                }
                tf.framed.drain(..whole);
            }
            if tf.z.get_mut().len() >= FLUSH_BYTES {
                let data =
                    std::mem::replace(tf.z.get_mut(), Vec::with_capacity(FLUSH_BYTES + (1 << 20)));
                tf.sink.put(Bytes::from(data)).await?;
            }
        }
        if let Some(pq) = &mut self.pq {
            pq.write(batch, &self.schema).await?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Abandons the shard: aborts the upload of every format, so a failed writer leaves no
    /// multipart parts (S3) or staging files (local) behind. Dropping an unfinished writer
    /// does the same in the background (a cancelled task); call this to wait for it.
    pub async fn abort(mut self) -> Result<()> {
        abort_outputs(self.tf.take(), self.pq.take()).await
    }

    /// Finish every format; returns one [`ShardFile`] per format (in `options.formats` order).
    /// If any format fails, the uploads of every format of this shard are aborted.
    pub async fn finish(mut self) -> Result<Vec<ShardFile>> {
        if let Err(e) = self.complete_uploads().await {
            if let Err(abort) = abort_outputs(self.tf.take(), self.pq.take()).await {
                tracing::warn!("after a failed shard write: {abort}");
            }
            return Err(e);
        }
        let (tf, pq) = (self.tf.take(), self.pq.take());
        let (key_min, key_max) = self.keys.json();
        let file = |format, path: &str, compression, state: &Mutex<HashState>| {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            ShardFile {
                index: self.index,
                format,
                path: path.to_string(),
                compression,
                rows: self.rows,
                bytes: s.bytes,
                sha256: hex::encode(s.hasher.clone().finalize()),
                key_min: key_min.clone(),
                key_max: key_max.clone(),
                stats_state: None,
            }
        };
        let mut tf_file = tf.map(|tf| {
            file(
                ShardFormat::TfRecord,
                &tf.path,
                ShardCompression::TfRecord(self.options.tfrecord_compression),
                &tf.sink.state,
            )
        });
        let mut pq_file = pq.map(|pq| {
            file(
                ShardFormat::Parquet,
                &pq.path,
                ShardCompression::Parquet(self.options.parquet_compression),
                &pq.state,
            )
        });
        let mut out: Vec<ShardFile> = Vec::new();
        for f in &self.options.formats {
            match f {
                ShardFormat::TfRecord => out.extend(tf_file.take()),
                ShardFormat::Parquet => out.extend(pq_file.take()),
            }
        }
        if let Some(first) = out.first_mut() {
            first.stats_state = self.stats.as_ref().map(|s| s.to_base64());
        }
        Ok(out)
    }

    async fn complete_uploads(&mut self) -> Result<()> {
        if let Some(tf) = &mut self.tf {
            tf.finish().await?;
        }
        if let Some(pq) = &mut self.pq {
            pq.finish().await?;
        }
        Ok(())
    }
}

impl Drop for ShardWriter {
    /// An unfinished writer (its task failed or was cancelled) aborts its uploads in the
    /// background on the crate's I/O runtime.
    fn drop(&mut self) {
        let (tf, pq) = (self.tf.take(), self.pq.take());
        if tf.is_none() && pq.is_none() {
            return;
        }
        let abort = async move {
            if let Err(e) = abort_outputs(tf, pq).await {
                tracing::warn!("abandoned shard writer: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(abort)),
            Err(_) => drop(crate::store::runtime().spawn(abort)),
        }
    }
}

/// Aborts the uploads of a shard's outputs; reports the first failure after trying all.
async fn abort_outputs(tf: Option<TfOut>, pq: Option<PqOut>) -> Result<()> {
    let tf = match tf {
        Some(mut tf) => tf.sink.abort().await,
        None => Ok(()),
    };
    let pq = match pq {
        Some(pq) => pq.w.into_inner().0.abort().await,
        None => Ok(()),
    };
    tf.and(pq)
}

/// Write shard `index` with no rows in every configured format (a hash partition may be empty).
pub async fn write_empty_shard(
    location: &Location,
    run_id: &str,
    index: u32,
    schema: SchemaRef,
    options: &ShardOptions,
) -> Result<Vec<ShardFile>> {
    ShardWriter::new(location, run_id, index, schema, options)?
        .finish()
        .await
}
