//! Shard write / read+decode throughput on one thread, for Examples shaped like the example
//! job's training table (29 scalar features, ~630 bytes each, some nulls).
//!
//! `cargo bench -p kiln-connectors` (rows: `KILN_BENCH_ROWS`, default 1,000,000).

use std::time::Instant;

use arrow::array::RecordBatch;
use kiln_connectors::dataset::write_dataset_blocking;
use kiln_connectors::sample::{training_batch, training_schema};
use kiln_connectors::tfrecord::CompressWriter;
use kiln_connectors::{
    Compression, Dataset, EncodeOptions, ExampleDecoder, ExampleEncoder, OpenOptions, ShardFormat,
    ShardOptions, TfRecordReader,
};
use std::io::Write;

const BATCH: usize = 8192;

fn report(what: &str, records: usize, bytes: usize, secs: f64) {
    println!(
        "{what:<52} {records:>9} records {:>8.3} s {:>12.0} records/s {:>9.1} MB/s",
        secs,
        records as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

fn write_stream(batches: &[RecordBatch], c: Compression) -> (Vec<u8>, usize, f64) {
    let mut enc = ExampleEncoder::new(training_schema(), &EncodeOptions::default()).unwrap();
    let mut framed = Vec::with_capacity(8 << 20);
    let mut z = CompressWriter::new(Vec::with_capacity(700 << 20), c);
    let mut uncompressed = 0usize;
    let t = Instant::now();
    for b in batches {
        framed.clear();
        enc.encode_batch_tfrecord(b, &mut framed).unwrap();
        uncompressed += framed.len();
        z.write_all(&framed).unwrap();
    }
    let out = z.finish().unwrap();
    (out, uncompressed, t.elapsed().as_secs_f64())
}

fn read_stream(bytes: &[u8], c: Compression) -> (usize, f64) {
    let mut dec = ExampleDecoder::new(training_schema()).unwrap();
    let t = Instant::now();
    let mut r = TfRecordReader::new(bytes, c, "bench");
    let mut rows = 0;
    while let Some(rec) = r.next_record().unwrap() {
        dec.append(rec).unwrap();
        if dec.buffered_rows() == BATCH {
            rows += dec.finish_batch().unwrap().num_rows();
        }
    }
    rows += dec.finish_batch().unwrap().num_rows();
    (rows, t.elapsed().as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let n: usize = std::env::var("KILN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let batches: Vec<RecordBatch> = (0..n.div_ceil(BATCH))
        .map(|i| training_batch((i * BATCH) as i64, BATCH.min(n - i * BATCH), 1))
        .collect();
    println!(
        "kiln-connectors shard benchmark: {n} Examples, {} columns, one thread",
        training_schema().fields().len()
    );

    let (plain, ubytes, secs) = write_stream(&batches, Compression::None);
    println!(
        "  average serialized record (framed): {:.0} bytes",
        ubytes as f64 / n as f64
    );
    report(
        "write  Arrow -> Example -> TFRecord (uncompressed, CRCs)",
        n,
        ubytes,
        secs,
    );
    let (gz, _, secs) = write_stream(&batches, Compression::Gzip);
    report(
        "write  Arrow -> Example -> TFRecord (gzip)",
        n,
        ubytes,
        secs,
    );

    let (rows, secs) = read_stream(&plain, Compression::None);
    assert_eq!(rows, n);
    report(
        "read   TFRecord (uncompressed) -> Arrow",
        n,
        plain.len(),
        secs,
    );
    let (rows, secs) = read_stream(&gz, Compression::Gzip);
    assert_eq!(rows, n);
    report("read   TFRecord (gzip) -> Arrow", n, ubytes, secs);
    println!("  gzip ratio: {:.2}x", ubytes as f64 / gz.len() as f64);

    // End to end through the dataset writer / reader on the local filesystem (1 shard).
    let tmp = tempfile::tempdir().unwrap();
    for (label, formats, c) in [
        ("tfrecord", vec![ShardFormat::TfRecord], Compression::None),
        (
            "tfrecord.gz",
            vec![ShardFormat::TfRecord],
            Compression::Gzip,
        ),
        ("parquet", vec![ShardFormat::Parquet], Compression::None),
    ] {
        let url = tmp.path().join(label);
        let url = url.to_str().unwrap();
        let t = Instant::now();
        let m = write_dataset_blocking(
            url,
            training_schema(),
            &batches,
            ShardOptions {
                num_shards: 1,
                formats: formats.clone(),
                tfrecord_compression: c,
                ..Default::default()
            },
            serde_json::json!({}),
        )
        .unwrap();
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        report(
            &format!("write  DatasetWriter -> file ({label})"),
            n,
            bytes as usize,
            t.elapsed().as_secs_f64(),
        );
        let t = Instant::now();
        let ds = Dataset::open_blocking(url, OpenOptions::default()).unwrap();
        let rows: usize = ds
            .read_shards(&[0], None, BATCH)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, n);
        report(
            &format!("read   Dataset::read_shards ({label})"),
            n,
            bytes as usize,
            t.elapsed().as_secs_f64(),
        );
    }
}
