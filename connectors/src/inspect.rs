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

/// Whether a store error means "not there" (not found, or a path under a file on a local
/// filesystem) rather than a store that failed or refused.
fn is_missing(e: &object_store::Error) -> bool {
    if matches!(e, object_store::Error::NotFound { .. }) {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            );
        }
        source = s.source();
    }
    false
}

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
    inspect_with(url, limit, false, out)
}

/// [`inspect`]; with `skip_corrupt`, corrupt TFRecord records are skipped (as
/// [`TfRecordReader::with_skip_corrupt`] allows) and reported in a last line
/// `{"skipped": [{"index", "offset", "record_start", "reason"}, ...]}`.
///
/// A missing file or dataset ("no such file or dataset") is told apart from a store that
/// cannot be reached or refuses access (the store's error, naming the URL).
pub fn inspect_with(
    url: &str,
    limit: usize,
    skip_corrupt: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let loc = store::resolve(url)?;
    let m = loc.child(MANIFEST_FILE);
    match store::block_on(async { m.store.head(&m.path).await }) {
        Ok(_) => return inspect_dataset(&loc, limit, out),
        Err(e) if is_missing(&e) => {}
        Err(e) => return Err(Error::store(format!("checking {}", m.url), e)),
    }
    let head = store::block_on(async { loc.store.head(&loc.path).await });
    let meta = match head {
        Ok(meta) => meta,
        Err(e) if !is_missing(&e) => {
            return Err(Error::store(format!("reading {}", loc.url), e));
        }
        Err(_) => {
            // A directory with content but no manifest is an uncommitted dataset.
            let any = store::block_on(async {
                let mut l = loc.store.list(Some(&loc.path));
                l.next().await
            });
            return Err(match any {
                Some(Ok(_)) => Error::NotCommitted { location: loc.url },
                Some(Err(e)) if !is_missing(&e) => Error::store(format!("listing {}", loc.url), e),
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
        inspect_tfrecord(&loc, c, limit, skip_corrupt, out)
    }
}

fn inspect_tfrecord(
    loc: &Location,
    c: Compression,
    limit: usize,
    skip_corrupt: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let stream = store::block_on(async { loc.store.get(&loc.path).await })
        .map_err(|e| Error::store(format!("reading {}", loc.url), e))?
        .into_stream();
    let r = crate::dataset::reader::ObjectRead::new(stream, loc.url.clone());
    let mut reader = TfRecordReader::new(r, c, loc.url.clone()).with_skip_corrupt(skip_corrupt);
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
    if !reader.skipped().is_empty() {
        write_line(out, &json!({"skipped": reader.skipped()}), &loc.url)?;
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

#[cfg(test)]
mod tests {
    use super::is_missing;

    #[test]
    fn missing_is_told_apart_from_failures() {
        let generic = |kind: std::io::ErrorKind| object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::new(kind, "x")),
        };
        assert!(is_missing(&object_store::Error::NotFound {
            path: "a".into(),
            source: "404".into()
        }));
        assert!(is_missing(&generic(std::io::ErrorKind::NotADirectory)));
        assert!(!is_missing(&generic(std::io::ErrorKind::PermissionDenied)));
        assert!(!is_missing(&generic(std::io::ErrorKind::ConnectionRefused)));
        assert!(!is_missing(&object_store::Error::Unauthenticated {
            path: "a".into(),
            source: "403".into()
        }));
    }
}
