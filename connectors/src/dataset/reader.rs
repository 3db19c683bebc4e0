//! Reading a committed dataset: [`Dataset`] opens a location only through its manifest,
//! verifies sizes (and SHA-256 on request) and streams RecordBatches from any subset of shards
//! on a background thread.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

use crate::codec::ExampleDecoder;
use crate::error::{Error, Result};
use crate::manifest::{MANIFEST_FILE, Manifest, ShardCompression, ShardFile, ShardFormat};
use crate::store::{self, Location};
use crate::tfrecord::{SkippedRecord, TfRecordReader};

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
    skip_corrupt: bool,
    /// What `skip_corrupt` skipped so far, shared by clones and reader threads.
    skipped: Arc<Mutex<Vec<SkippedInShard>>>,
}

/// What [`Dataset::with_skip_corrupt`] skipped in one TFRecord shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedInShard {
    /// The shard's URL.
    pub shard: String,
    /// Each corrupt record, with its index, offset and reason.
    pub records: Vec<SkippedRecord>,
    /// Rows the manifest lists that were not read: the skipped records and, after a length
    /// CRC mismatch or truncation (reading cannot resynchronise), every record after it.
    pub rows_lost: u64,
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
            skip_corrupt: false,
            skipped: Arc::default(),
        })
    }

    /// Skip corrupt TFRecord records (CRC mismatch, truncation) instead of failing, as
    /// TensorFlow's `ignore_errors` does; [`skipped`](Self::skipped) reports each one and the
    /// rows lost. Parquet shards carry their own checks and still fail.
    pub fn with_skip_corrupt(mut self, skip: bool) -> Self {
        self.skip_corrupt = skip;
        self
    }

    /// What `skip_corrupt` skipped so far, one entry per shard read with corrupt records
    /// (each time a shard is read).
    pub fn skipped(&self) -> Vec<SkippedInShard> {
        self.skipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let (tx, rx) = sync_channel(4);
        let location = self.location.clone();
        let schema = self.schema.clone();
        let batch_size = batch_size.max(1);
        let skipped = self.skip_corrupt.then(|| Arc::clone(&self.skipped));
        let handle = std::thread::Builder::new()
            .name("kiln-shard-reader".into())
            .spawn(move || {
                for s in todo {
                    let loc = location.child(&s.path);
                    let r = match s.format {
                        ShardFormat::TfRecord => read_tfrecord_shard(
                            &loc,
                            &s,
                            schema.clone(),
                            batch_size,
                            skipped.as_deref(),
                            &tx,
                        ),
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
    rx: Receiver<Result<RecordBatch>>,
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

type Tx = SyncSender<Result<RecordBatch>>;

/// Streams one TFRecord shard; with `skipped` (skip_corrupt), corrupt records are skipped
/// and reported there.
fn read_tfrecord_shard(
    loc: &Location,
    s: &ShardFile,
    schema: SchemaRef,
    batch_size: usize,
    skipped: Option<&Mutex<Vec<SkippedInShard>>>,
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
    let ShardCompression::TfRecord(compression) = s.compression else {
        return Err(Error::dataset(
            &loc.url,
            format!(
                "the manifest gives TFRecord shard {} the Parquet codec '{}'",
                s.path, s.compression
            ),
        ));
    };
    let mut reader =
        TfRecordReader::new(r, compression, loc.url.clone()).with_skip_corrupt(skipped.is_some());
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
    let corrupt = reader.skipped();
    if let Some(report) = skipped
        && !corrupt.is_empty()
        && rows < s.rows
    {
        report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SkippedInShard {
                shard: loc.url.clone(),
                records: corrupt.to_vec(),
                rows_lost: s.rows - rows,
            });
        return Ok(true);
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
            cols.push(crate::codec::cast_strict(c, f.data_type())?);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::dataset::{ShardOptions, write_dataset_blocking};
    use crate::tfrecord::Compression;

    #[test]
    fn unknown_shard_compression_is_an_error_not_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        let options = ShardOptions {
            tfrecord_compression: Compression::Zlib,
            ..Default::default()
        };
        write_dataset_blocking(url, schema, &[batch], options, serde_json::json!({})).unwrap();
        let rows = |ds: &Dataset| -> usize {
            ds.read_shards(&[0], None, 10)
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum()
        };
        assert_eq!(
            rows(&Dataset::open_blocking(url, OpenOptions::default()).unwrap()),
            2
        );

        let path = dir.path().join(MANIFEST_FILE);
        let json = std::fs::read_to_string(&path).unwrap();
        assert!(json.contains(r#""compression": "zlib""#), "{json}");
        std::fs::write(
            &path,
            json.replace(r#""compression": "zlib""#, r#""compression": "zstd""#),
        )
        .unwrap();
        let e = Dataset::open_blocking(url, OpenOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Dataset { .. }), "{e:?}");
        assert!(
            msg.contains("'zstd'") && msg.contains("none, gzip, zlib"),
            "{msg}"
        );
    }
}
