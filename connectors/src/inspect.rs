//! The library side of `kiln inspect PATH [--limit K]`.
//!
//! * a TFRecord file (compression from the extension `.gz`/`.zz`, else sniffed from the first
//!   bytes): one JSON object per record, feature name -> list of values (see
//!   [`crate::example`] for the float / bytes conventions); a record that is not a parsable
//!   Example prints as `{"record": i, "bytes": n, "base64": "..."}`;
//! * a Parquet file (`.parquet` or `PAR1` magic): one JSON object per row;
//! * a dataset directory (has `_manifest.json`): one line with a JSON summary of the manifest,
//!   then the first K rows of shards 0, 1, ... (decoded to Arrow through the manifest schema,
//!   one JSON object per row).
//!
//! Arrow rows print with `arrow-json` conventions: floats in their shortest round-trip form
//! (full precision), timestamps / dates as ISO strings, binary as hex, nulls omitted.

use std::io::Write;

use arrow::array::RecordBatch;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;

use crate::dataset::{Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::example::{Example, example_to_json};
use crate::manifest::MANIFEST_FILE;
use crate::store::{self, Location};
use crate::tfrecord::{Compression, TfRecordReader};

fn write_line(out: &mut dyn Write, v: &serde_json::Value, url: &str) -> Result<()> {
    serde_json::to_writer(&mut *out, v)
        .map_err(|e| Error::io(format!("printing {url}"), e.into()))?;
    out.write_all(b"\n")
        .map_err(|e| Error::io(format!("printing {url}"), e))
}

fn write_batch_rows(out: &mut dyn Write, batch: &RecordBatch, url: &str) -> Result<()> {
    let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
    w.write(batch)
        .map_err(|e| Error::arrow(format!("printing rows of {url}"), e))?;
    w.finish()
        .map_err(|e| Error::arrow(format!("printing rows of {url}"), e))
}

/// Print the first `limit` records / rows at `url` as JSON lines (see the module docs).
pub fn inspect(url: &str, limit: usize, out: &mut dyn Write) -> Result<()> {
    let loc = store::resolve(url)?;
    let m = loc.child(MANIFEST_FILE);
    let has_manifest = store::block_on(async { m.store.head(&m.path).await }).is_ok();
    if has_manifest {
        return inspect_dataset(&loc, limit, out);
    }
    let head = store::block_on(async { loc.store.head(&loc.path).await });
    let meta = match head {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) | Err(_) => {
            // A directory with content but no manifest is an uncommitted dataset.
            let any = store::block_on(async {
                let mut l = loc.store.list(Some(&loc.path));
                l.next().await
            });
            return Err(match any {
                Some(Ok(_)) => Error::NotCommitted { location: loc.url },
                _ => Error::InvalidUrl {
                    url: url.to_string(),
                    message: "no such file or dataset".into(),
                },
            });
        }
    };
    let first =
        store::block_on(async { loc.store.get_range(&loc.path, 0..meta.size.min(16)).await })
            .map_err(|e| Error::store(format!("reading {}", loc.url), e))?;
    if loc.url.ends_with(".parquet") || first.starts_with(b"PAR1") {
        inspect_parquet(&loc, meta.size, limit, out)
    } else {
        let mut c = Compression::from_path(&loc.url);
        if c == Compression::None {
            c = Compression::sniff(&first).unwrap_or(Compression::None);
        }
        inspect_tfrecord(&loc, c, limit, out)
    }
}

fn inspect_tfrecord(
    loc: &Location,
    c: Compression,
    limit: usize,
    out: &mut dyn Write,
) -> Result<()> {
    let stream = store::block_on(async { loc.store.get(&loc.path).await })
        .map_err(|e| Error::store(format!("reading {}", loc.url), e))?
        .into_stream();
    let r = crate::dataset::reader::ObjectRead::new(stream, loc.url.clone());
    let mut reader = TfRecordReader::new(r, c, loc.url.clone());
    let mut i = 0usize;
    while i < limit {
        let Some(rec) = reader.next_record()? else {
            break;
        };
        let v = match Example::parse(rec, "") {
            Ok(e) => example_to_json(&e, false),
            Err(_) => json!({"record": i, "bytes": rec.len(), "base64": BASE64.encode(rec)}),
        };
        write_line(out, &v, &loc.url)?;
        i += 1;
    }
    Ok(())
}

#[allow(deprecated)] // see dataset::reader::read_parquet_shard
fn inspect_parquet(loc: &Location, size: u64, limit: usize, out: &mut dyn Write) -> Result<()> {
    use parquet::arrow::ParquetRecordBatchStreamBuilder;
    use parquet::arrow::async_reader::ParquetObjectReader;
    let url = loc.url.clone();
    let batches: Vec<RecordBatch> = store::block_on(async {
        let reader =
            ParquetObjectReader::new(loc.store.clone(), loc.path.clone()).with_file_size(size);
        let stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| Error::parquet(format!("opening {url}"), e))?
            .with_limit(limit)
            .with_batch_size(limit.clamp(1, 8192))
            .build()
            .map_err(|e| Error::parquet(format!("opening {url}"), e))?;
        stream
            .map(|b| b.map_err(|e| Error::parquet(format!("reading {url}"), e)))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()
    })?;
    for b in &batches {
        write_batch_rows(out, b, &loc.url)?;
    }
    Ok(())
}

fn inspect_dataset(loc: &Location, limit: usize, out: &mut dyn Write) -> Result<()> {
    let ds = store::block_on(Dataset::open_location(loc.clone(), OpenOptions::default()))?;
    write_line(out, &ds.manifest().summary_json(&loc.url), &loc.url)?;
    if limit == 0 {
        return Ok(());
    }
    let indices: Vec<usize> = (0..ds.num_shards()).collect();
    let mut left = limit;
    for b in ds.read_shards(&indices, None, limit.min(8192))? {
        let b = b?;
        let take = b.num_rows().min(left);
        write_batch_rows(out, &b.slice(0, take), &loc.url)?;
        left -= take;
        if left == 0 {
            break;
        }
    }
    Ok(())
}
