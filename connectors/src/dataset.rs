//! Sharded datasets: writing shards, committing them with `_manifest.json`, reading them back.
//!
//! Layout and commit protocol (docs/ARCHITECTURE.md, "Dataset layout and commit protocol"):
//! ```text
//! <location>/_manifest.json                         the only commit point
//! <location>/_SUCCESS                               written after the manifest
//! <location>/run-<run_id>/part-00000-of-00016.tfrecord.gz
//! <location>/run-<run_id>/part-00000-of-00016.parquet
//! ```
//! Shards are written under their final names inside a run-specific prefix (object_store puts
//! are atomic: local files are written to a temporary name and renamed, S3 multipart uploads
//! become visible on completion). [`commit_dataset`] checks that every shard of every format is
//! present exactly once, writes the manifest, then `_SUCCESS`, then deletes older `run-*`
//! prefixes. A writer killed before the manifest lands leaves the previous manifest (or none)
//! in place, and [`Dataset::open`] trusts nothing but the manifest.
//!
//! Row -> shard: `shard::shard_ids` of the key column, or, without a key column, round-robin
//! by the row's position in the input stream (`row_number % num_shards`). Inside a shard, rows
//! keep the order in which the writer received them. Shard bytes depend only on the rows and
//! the options: gzip headers carry no timestamp, Parquet files carry no timestamp.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use tokio::io::AsyncWriteExt;

use crate::codec::{EncodeOptions, ExampleDecoder, ExampleEncoder};
use crate::error::{Error, Result};
use crate::manifest::{
    FORMAT_VERSION, MANIFEST_FILE, ManifestOptions, SUCCESS_FILE, SchemaJson, shard_file_name,
};
pub use crate::manifest::{Manifest, ParquetCompression, ShardFile, ShardFormat};
use crate::shard;
use crate::store::{self, Location};
use crate::tfrecord::{CompressWriter, Compression, TfRecordReader};

/// Options of a sharded write.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardOptions {
    /// Number of shards per format (>= 1).
    pub num_shards: u32,
    /// Formats written side by side (non-empty, no duplicates).
    pub formats: Vec<ShardFormat>,
    /// Stream compression of TFRecord shards (default GZIP, file suffix `.tfrecord.gz`).
    pub tfrecord_compression: Compression,
    /// Parquet codec (default Snappy).
    pub parquet_compression: ParquetCompression,
    /// Column whose hash assigns rows to shards; None = round-robin by row number.
    pub key_column: Option<String>,
    /// Example encoding options (values for nulls).
    pub encode: EncodeOptions,
    /// Maximum rows per Parquet row group (default 1,048,576).
    pub parquet_row_group_rows: usize,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            num_shards: 1,
            formats: vec![ShardFormat::TfRecord],
            tfrecord_compression: Compression::Gzip,
            parquet_compression: ParquetCompression::Snappy,
            key_column: None,
            encode: EncodeOptions::default(),
            parquet_row_group_rows: 1 << 20,
        }
    }
}

impl ShardOptions {
    fn validate(&self, schema: &arrow::datatypes::Schema) -> Result<()> {
        if self.num_shards == 0 || self.num_shards > 99_999 {
            return Err(Error::Options(format!(
                "num_shards must be in 1..=99999, got {}",
                self.num_shards
            )));
        }
        if self.formats.is_empty() {
            return Err(Error::Options(
                "at least one shard format is required".into(),
            ));
        }
        let mut f = self.formats.clone();
        f.sort();
        f.dedup();
        if f.len() != self.formats.len() {
            return Err(Error::Options(format!(
                "duplicate formats in {:?}",
                self.formats
            )));
        }
        if let Some(k) = &self.key_column {
            let field = schema.field_with_name(k).map_err(|_| {
                Error::Options(format!(
                    "key column '{k}' is not in the schema ({})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if !shard::is_supported_key_type(field.data_type()) {
                return Err(Error::Options(format!(
                    "key column '{k}' has type {}, not an integer, temporal, string or binary type",
                    field.data_type()
                )));
            }
        }
        Ok(())
    }

    fn manifest_options(&self) -> ManifestOptions {
        ManifestOptions {
            num_shards: self.num_shards,
            formats: self.formats.clone(),
            tfrecord_compression: self.tfrecord_compression,
            parquet_compression: self.parquet_compression,
            key_column: self.key_column.clone(),
            null_defaults: self.encode.null_defaults.clone(),
        }
    }
}

fn validate_run_id(run_id: &str) -> Result<()> {
    if run_id.is_empty()
        || run_id.len() > 128
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Options(format!(
            "run id '{run_id}' must be 1..128 characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// A fresh run id: UTC time plus process id and a counter, e.g. `20261121T060102Z-1234-0`.
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
    .replace('.', "")
}

// ------------------------------------------------------------------------------------------
// Hashing sink
// ------------------------------------------------------------------------------------------

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
}

impl Sink {
    fn new(loc: &Location) -> Self {
        Sink {
            w: BufWriter::with_capacity(loc.store.clone(), loc.path.clone(), 16 << 20),
            state: Arc::default(),
            url: loc.url.clone(),
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
        self.w
            .shutdown()
            .await
            .map_err(|e| Error::io(format!("completing {}", self.url), e))
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

    async fn close(mut self) -> Result<()> {
        for b in std::mem::take(&mut self.pending) {
            self.write_now(&b).await?;
        }
        let path = self.path.clone();
        self.w
            .close()
            .await
            .map_err(|e| Error::parquet(format!("finishing shard {path}"), e))?;
        Ok(())
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
                        z: CompressWriter::new(
                            Vec::with_capacity(FLUSH_BYTES + (1 << 20)),
                            options.tfrecord_compression,
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
                        .set_created_by(format!("{} (parquet-rs)", crate::CREATED_BY))
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
        Ok(ShardWriter {
            index,
            options: options.clone(),
            schema,
            key_idx,
            rows: 0,
            keys: KeyStats::Empty,
            tf,
            pq,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
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

    /// Finish every format; returns one [`ShardFile`] per format (in `options.formats` order).
    pub async fn finish(self) -> Result<Vec<ShardFile>> {
        let (key_min, key_max) = self.keys.json();
        let mut tf_file = None;
        let mut pq_file = None;
        if let Some(mut tf) = self.tf {
            if !tf.framed.is_empty() {
                tf.z.write_all(&tf.framed)
                    .map_err(|e| Error::io(format!("compressing {}", tf.sink.url), e))?;
            }
            let rest =
                tf.z.finish()
                    .map_err(|e| Error::io(format!("compressing {}", tf.sink.url), e))?;
            tf.sink.put(Bytes::from(rest)).await?;
            tf.sink.complete().await?;
            let s = tf.sink.state.lock().unwrap_or_else(|p| p.into_inner());
            tf_file = Some(ShardFile {
                index: self.index,
                format: ShardFormat::TfRecord,
                path: tf.path.clone(),
                compression: format!("{:?}", self.options.tfrecord_compression).to_lowercase(),
                rows: self.rows,
                bytes: s.bytes,
                sha256: hex::encode(s.hasher.clone().finalize()),
                key_min: key_min.clone(),
                key_max: key_max.clone(),
            });
        }
        if let Some(pq) = self.pq {
            let path = pq.path.clone();
            let state = Arc::clone(&pq.state);
            pq.close().await?;
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            pq_file = Some(ShardFile {
                index: self.index,
                format: ShardFormat::Parquet,
                path,
                compression: self.options.parquet_compression.name(),
                rows: self.rows,
                bytes: s.bytes,
                sha256: hex::encode(s.hasher.clone().finalize()),
                key_min: key_min.clone(),
                key_max: key_max.clone(),
            });
        }
        let mut out = Vec::new();
        for f in &self.options.formats {
            match f {
                ShardFormat::TfRecord => out.extend(tf_file.take()),
                ShardFormat::Parquet => out.extend(pq_file.take()),
            }
        }
        Ok(out)
    }
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

/// Commit a run: check that every shard 0..N of every format is present exactly once (with
/// `fill_missing_empty_shards`, write empty shards for absent indices first), write
/// `_manifest.json`, then `_SUCCESS`, then delete older `run-*` prefixes.
#[allow(clippy::too_many_arguments)]
pub async fn commit_dataset(
    location: &Location,
    run_id: &str,
    schema: SchemaRef,
    options: &ShardOptions,
    shard_files: Vec<ShardFile>,
    lineage: Value,
    fill_missing_empty_shards: bool,
) -> Result<Manifest> {
    validate_run_id(run_id)?;
    options.validate(&schema)?;
    let loc_url = location.url.clone();
    let n = options.num_shards;
    let mut files: BTreeMap<(u32, ShardFormat), ShardFile> = BTreeMap::new();
    let prefix = format!("run-{run_id}/");
    for f in shard_files {
        if f.index >= n {
            return Err(Error::dataset(
                &loc_url,
                format!("shard {} has index {} >= num_shards {n}", f.path, f.index),
            ));
        }
        if !options.formats.contains(&f.format) {
            return Err(Error::dataset(
                &loc_url,
                format!(
                    "shard {} has format {:?}, not one of {:?}",
                    f.path, f.format, options.formats
                ),
            ));
        }
        if !f.path.starts_with(&prefix) {
            return Err(Error::dataset(
                &loc_url,
                format!("shard {} is not under {prefix}", f.path),
            ));
        }
        let key = (f.index, f.format);
        if let Some(prev) = files.insert(key, f) {
            return Err(Error::dataset(
                &loc_url,
                format!(
                    "shard {} of format {} given twice ({})",
                    prev.index,
                    prev.format.name(),
                    prev.path
                ),
            ));
        }
    }
    let missing: Vec<u32> = (0..n)
        .filter(|i| {
            options
                .formats
                .iter()
                .any(|f| !files.contains_key(&(*i, *f)))
        })
        .collect();
    if !missing.is_empty() {
        if !fill_missing_empty_shards {
            return Err(Error::dataset(
                &loc_url,
                format!(
                    "cannot commit: shards {missing:?} are missing (pass fill_missing_empty_shards to write empty ones)"
                ),
            ));
        }
        for i in missing {
            let present: Vec<ShardFormat> = options
                .formats
                .iter()
                .copied()
                .filter(|f| files.contains_key(&(i, *f)))
                .collect();
            if !present.is_empty() {
                return Err(Error::dataset(
                    &loc_url,
                    format!(
                        "shard {i} exists in {present:?} but not in every format; refusing to fill it with an empty shard"
                    ),
                ));
            }
            for f in write_empty_shard(location, run_id, i, schema.clone(), options).await? {
                files.insert((f.index, f.format), f);
            }
        }
    }
    // Formats of the same shard must agree on row counts.
    let mut total_rows = 0u64;
    for i in 0..n {
        let rows: Vec<u64> = options
            .formats
            .iter()
            .map(|f| files[&(i, *f)].rows)
            .collect();
        if rows.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::dataset(
                &loc_url,
                format!("shard {i}: formats disagree on row counts {rows:?}"),
            ));
        }
        total_rows += rows[0];
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_by: crate::CREATED_BY.to_string(),
        run_id: run_id.to_string(),
        schema: SchemaJson::from_schema(&schema),
        options: options.manifest_options(),
        total_rows,
        shards: files.into_values().collect(),
        lineage,
    };
    if location.url.starts_with("file://") {
        remove_stray_local_files(location, run_id, &manifest);
    }
    let m = location.child(MANIFEST_FILE);
    m.store
        .put(&m.path, manifest.to_json_bytes().into())
        .await
        .map_err(|e| Error::store(format!("writing {}", m.url), e))?;
    let s = location.child(SUCCESS_FILE);
    s.store
        .put(&s.path, Bytes::new().into())
        .await
        .map_err(|e| Error::store(format!("writing {}", s.url), e))?;
    if let Err(e) = delete_old_runs(location, run_id).await {
        tracing::warn!("committed {loc_url}, but deleting older runs failed: {e}");
    }
    Ok(manifest)
}

/// Removes files of this run that the manifest does not list: staging files of a shard
/// writer that was killed mid-write (a distributed task attempt on a lost executor). Readers
/// never trust them, but they should not linger next to the committed shards.
fn remove_stray_local_files(location: &Location, run_id: &str, manifest: &Manifest) {
    let dir = std::path::PathBuf::from(format!("/{}", location.path.as_ref()))
        .join(format!("run-{run_id}"));
    let listed: std::collections::HashSet<&str> =
        manifest.shards.iter().map(|s| s.path.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !listed.contains(format!("run-{run_id}/{name}").as_str()) {
            tracing::warn!(
                "removing {}/{name}: not a committed shard (left by an interrupted writer)",
                dir.display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

async fn delete_old_runs(location: &Location, keep_run: &str) -> Result<()> {
    let keep = format!("run-{keep_run}");
    let listing = location
        .store
        .list_with_delimiter(Some(&location.path))
        .await
        .map_err(|e| Error::store(format!("listing {}", location.url), e))?;
    for p in listing.common_prefixes {
        let name = p.filename().unwrap_or_default().to_string();
        if !name.starts_with("run-") || name == keep {
            continue;
        }
        let objs: Vec<Path> = location
            .store
            .list(Some(&p))
            .map(|r| r.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::store(format!("listing {}/{name}", location.url), e))?;
        for o in objs {
            location
                .store
                .delete(&o)
                .await
                .map_err(|e| Error::store(format!("deleting {o}"), e))?;
        }
        // Local filesystems keep empty directories; remove the run directory if we can.
        if location.url.starts_with("file://") {
            let dir = std::path::PathBuf::from(format!("/{}", p.as_ref()));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// DatasetWriter
// ------------------------------------------------------------------------------------------

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

    /// Finish every shard and commit (manifest, `_SUCCESS`, cleanup of older runs).
    pub async fn finish(self, lineage: Value) -> Result<Manifest> {
        let mut files = Vec::new();
        for w in self.writers {
            files.extend(w.finish().await?);
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

// ------------------------------------------------------------------------------------------
// Dataset reader
// ------------------------------------------------------------------------------------------

/// Options of [`Dataset::open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Read every shard and compare its SHA-256 with the manifest.
    pub verify_checksums: bool,
}

/// A committed dataset, opened through its manifest.
#[derive(Debug, Clone)]
pub struct Dataset {
    location: Location,
    manifest: Manifest,
    schema: SchemaRef,
}

impl Dataset {
    /// Open the dataset at a URL or path.
    pub async fn open(url: &str, options: OpenOptions) -> Result<Dataset> {
        Self::open_location(store::resolve(url)?, options).await
    }

    /// Blocking [`open`](Self::open), usable from any thread (no tokio runtime needed).
    pub fn open_blocking(url: &str, options: OpenOptions) -> Result<Dataset> {
        store::block_on(Self::open(url, options))
    }

    /// Open the dataset at an explicit store location.
    pub async fn open_location(location: Location, options: OpenOptions) -> Result<Dataset> {
        let url = location.url.clone();
        let m = location.child(MANIFEST_FILE);
        let bytes = match m.store.get(&m.path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| Error::store(format!("reading {}", m.url), e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotCommitted { location: url });
            }
            Err(e) => return Err(Error::store(format!("reading {}", m.url), e)),
        };
        let manifest = Manifest::from_json_bytes(&bytes, &url)?;
        let schema = manifest
            .arrow_schema()
            .map_err(|e| Error::dataset(&url, e.to_string()))?;
        let n = manifest.options.num_shards;
        for f in &manifest.options.formats {
            let idx: Vec<u32> = manifest.shards_of(*f).iter().map(|s| s.index).collect();
            if idx != (0..n).collect::<Vec<_>>() {
                return Err(Error::dataset(
                    &url,
                    format!(
                        "manifest lists {} shards {idx:?}, expected 0..{n}",
                        f.name()
                    ),
                ));
            }
        }
        for s in &manifest.shards {
            let loc = location.child(&s.path);
            let meta = match loc.store.head(&loc.path).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::dataset(
                        &url,
                        format!("shard {} listed in the manifest is missing", loc.url),
                    ));
                }
                Err(e) => return Err(Error::store(format!("checking {}", loc.url), e)),
            };
            if meta.size != s.bytes {
                return Err(Error::dataset(
                    &url,
                    format!(
                        "shard {} has {} bytes, the manifest says {} (partial or replaced file)",
                        loc.url, meta.size, s.bytes
                    ),
                ));
            }
            if options.verify_checksums {
                let mut h = Sha256::new();
                let mut st = loc
                    .store
                    .get(&loc.path)
                    .await
                    .map_err(|e| Error::store(format!("reading {}", loc.url), e))?
                    .into_stream();
                while let Some(chunk) = st.next().await {
                    h.update(chunk.map_err(|e| Error::store(format!("reading {}", loc.url), e))?);
                }
                let got = hex::encode(h.finalize());
                if got != s.sha256 {
                    return Err(Error::dataset(
                        &url,
                        format!(
                            "shard {}: SHA-256 {got} does not match the manifest's {}",
                            loc.url, s.sha256
                        ),
                    ));
                }
            }
        }
        Ok(Dataset {
            location,
            manifest,
            schema,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The Arrow schema of every batch.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The dataset location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Number of shards (per format).
    pub fn num_shards(&self) -> usize {
        self.manifest.options.num_shards as usize
    }

    /// Rows per shard index, from the manifest (no data is read).
    pub fn shard_rows(&self) -> Vec<u64> {
        let f = self.default_format();
        self.manifest.shards_of(f).iter().map(|s| s.rows).collect()
    }

    fn default_format(&self) -> ShardFormat {
        self.manifest.options.formats[0]
    }

    /// Stream the rows of the given shards (in the given order) as RecordBatches of at most
    /// `batch_size` rows. Decoding happens on a background thread with a bounded read-ahead
    /// of a few batches; dropping the iterator stops it. `format`: None = the first format in
    /// the manifest. Batches never span shards.
    pub fn read_shards(
        &self,
        indices: &[usize],
        format: Option<ShardFormat>,
        batch_size: usize,
    ) -> Result<ShardBatches> {
        let format = format.unwrap_or_else(|| self.default_format());
        if !self.manifest.options.formats.contains(&format) {
            return Err(Error::dataset(
                &self.location.url,
                format!(
                    "no {} shards (formats: {:?})",
                    format.name(),
                    self.manifest.options.formats
                ),
            ));
        }
        let shards = self.manifest.shards_of(format);
        let mut todo = Vec::new();
        for &i in indices {
            let s = shards.get(i).ok_or_else(|| {
                Error::dataset(
                    &self.location.url,
                    format!("shard index {i} out of range (0..{})", shards.len()),
                )
            })?;
            todo.push((*s).clone());
        }
        let (tx, rx) = crossbeam_channel::bounded(4);
        let location = self.location.clone();
        let schema = self.schema.clone();
        let batch_size = batch_size.max(1);
        let handle = std::thread::Builder::new()
            .name("kiln-shard-reader".into())
            .spawn(move || {
                for s in todo {
                    let loc = location.child(&s.path);
                    let r = match s.format {
                        ShardFormat::TfRecord => {
                            read_tfrecord_shard(&loc, &s, schema.clone(), batch_size, &tx)
                        }
                        ShardFormat::Parquet => {
                            read_parquet_shard(&loc, &s, schema.clone(), batch_size, &tx)
                        }
                    };
                    match r {
                        Ok(true) => {}
                        Ok(false) => return, // receiver dropped
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::io("spawning shard reader thread", e))?;
        Ok(ShardBatches {
            rx,
            _handle: handle,
        })
    }
}

/// Blocking iterator of RecordBatches from [`Dataset::read_shards`].
pub struct ShardBatches {
    rx: crossbeam_channel::Receiver<Result<RecordBatch>>,
    _handle: std::thread::JoinHandle<()>,
}

impl Iterator for ShardBatches {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// `Read` over an object's byte stream, driven by the crate runtime (for plain threads).
pub(crate) struct ObjectRead {
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    cur: Bytes,
    url: String,
}

impl ObjectRead {
    pub(crate) fn new(
        stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
        url: String,
    ) -> Self {
        ObjectRead {
            stream,
            cur: Bytes::new(),
            url,
        }
    }
}

impl std::io::Read for ObjectRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match store::block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!("reading {}: {e}", self.url)));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

type Tx = crossbeam_channel::Sender<Result<RecordBatch>>;

fn read_tfrecord_shard(
    loc: &Location,
    s: &ShardFile,
    schema: SchemaRef,
    batch_size: usize,
    tx: &Tx,
) -> Result<bool> {
    let got = store::runtime()
        .block_on(loc.store.get(&loc.path))
        .map_err(|e| Error::store(format!("reading {}", loc.url), e))?;
    let r: Box<dyn std::io::Read + Send> = match got.payload {
        // Local files: read the open file directly (no per-chunk hop through the runtime).
        object_store::GetResultPayload::File(file, _) => Box::new(file),
        payload => Box::new(ObjectRead::new(
            match payload {
                object_store::GetResultPayload::Stream(st) => st,
                object_store::GetResultPayload::File(..) => unreachable!("matched above"),
            },
            loc.url.clone(),
        )),
    };
    let compression = match s.compression.as_str() {
        "gzip" => Compression::Gzip,
        "zlib" => Compression::Zlib,
        _ => Compression::None,
    };
    let mut reader = TfRecordReader::new(r, compression, loc.url.clone());
    let mut dec = ExampleDecoder::new(schema)?.with_source(loc.url.clone());
    let mut rows = 0u64;
    while let Some(rec) = reader.next_record()? {
        dec.append(rec)?;
        rows += 1;
        if dec.buffered_rows() >= batch_size && tx.send(dec.finish_batch()).is_err() {
            return Ok(false);
        }
    }
    if dec.buffered_rows() > 0 && tx.send(dec.finish_batch()).is_err() {
        return Ok(false);
    }
    if rows != s.rows {
        return Err(Error::dataset(
            &loc.url,
            format!("shard has {rows} records, the manifest says {}", s.rows),
        ));
    }
    Ok(true)
}

/// Give a batch read from Parquet exactly the manifest's schema: Parquet may return a column
/// with an equivalent but differently spelled type (e.g. list item names), which is cast.
fn conform(
    b: &RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let mut cols = Vec::with_capacity(b.num_columns());
    for (c, f) in b.columns().iter().zip(schema.fields()) {
        if c.data_type() == f.data_type() {
            cols.push(c.clone());
        } else {
            cols.push(arrow::compute::cast(c, f.data_type())?);
        }
    }
    RecordBatch::try_new(schema.clone(), cols)
}

// ParquetObjectReader is deprecated in parquet 59 in favour of a hand-written AsyncFileReader;
// it is still the reader DataFusion 55 uses, so Kiln keeps it until both move.
#[allow(deprecated)]
fn read_parquet_shard(
    loc: &Location,
    s: &ShardFile,
    schema: SchemaRef,
    batch_size: usize,
    tx: &Tx,
) -> Result<bool> {
    use parquet::arrow::ParquetRecordBatchStreamBuilder;
    use parquet::arrow::async_reader::ParquetObjectReader;
    let url = loc.url.clone();
    let store = loc.store.clone();
    let path = loc.path.clone();
    let size = s.bytes;
    let expected_rows = s.rows;
    let tx = tx.clone();
    // The future runs on this (non-runtime) thread; the blocking channel send is fine here.
    store::runtime().block_on(async move {
        let reader = ParquetObjectReader::new(store, path).with_file_size(size);
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| Error::parquet(format!("opening {url}"), e))?
            .with_batch_size(batch_size)
            .build()
            .map_err(|e| Error::parquet(format!("opening {url}"), e))?;
        let mut rows = 0u64;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| Error::parquet(format!("reading {url}"), e))?;
            rows += b.num_rows() as u64;
            let b = conform(&b, &schema).map_err(|e| {
                Error::arrow(
                    format!("{url}: Parquet columns do not match the manifest schema"),
                    e,
                )
            })?;
            if tx.send(Ok(b)).is_err() {
                return Ok(false);
            }
        }
        if rows != expected_rows {
            return Err(Error::dataset(
                &url,
                format!("shard has {rows} rows, the manifest says {expected_rows}"),
            ));
        }
        Ok(true)
    })
}
