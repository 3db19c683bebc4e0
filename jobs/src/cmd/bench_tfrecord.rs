//! `kiln bench tfrecord`: `tf.train.Example` TFRecords written and read + decoded on one
//! thread, from the rows of a committed dataset, next to TensorFlow doing the same on one thread
//! (bench/tf_tfrecord.py), with each side's file checked against the other's.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, SchemaRef};
use kiln_connectors::codec::{FeatureKind, leaf_kind};
use kiln_connectors::{
    Compression, Dataset, EncodeOptions, ExampleDecoder, ExampleEncoder, OpenOptions,
    TfRecordReader,
};

/// Arguments of `kiln bench tfrecord`.
#[derive(clap::Args)]
pub struct BenchTfrecordArgs {
    /// The committed dataset whose rows are written and read (path or URL), e.g. the example
    /// job's `examples` output.
    #[arg(long, value_name = "DATASET_URL")]
    pub data: String,
    /// Rows taken from the start of the dataset (all of it when it is smaller).
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Timed runs of each side; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Records per decoded batch (TensorFlow: `.batch(N)` before `parse_example`).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// A Python with TensorFlow and pyarrow: also run bench/tf_tfrecord.py on the same rows,
    /// check both files decode to the same values, and print Kiln's speed as a multiple of
    /// TensorFlow's.
    #[arg(long, value_name = "PYTHON")]
    pub tf: Option<PathBuf>,
    /// The TensorFlow script. Default: bench/tf_tfrecord.py of this source tree.
    #[arg(long, value_name = "FILE")]
    pub tf_script: Option<PathBuf>,
    /// Working directory (the TFRecord files and the rows as Parquet for TensorFlow).
    #[arg(long, default_value = "target/bench-tfrecord")]
    pub work: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kiln bench tfrecord`.
pub fn run(a: BenchTfrecordArgs) -> anyhow::Result<()> {
    if a.repeat == 0 || a.batch == 0 || a.rows == 0 {
        bail!("--repeat, --batch and --rows must be at least 1");
    }
    std::fs::create_dir_all(&a.work).with_context(|| format!("creating {}", a.work.display()))?;
    let (schema, batches) = load_rows(&a.data, a.rows)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let native = native_schema(&schema)?;
    let kiln_file = a.work.join("kiln.tfrecord");

    let mut write_s = f64::INFINITY;
    for _ in 0..a.repeat {
        let t = Instant::now();
        write_file(&kiln_file, &schema, &batches)?;
        write_s = write_s.min(t.elapsed().as_secs_f64());
    }
    let file_bytes = std::fs::metadata(&kiln_file)?.len();
    let mut read_s = f64::INFINITY;
    for _ in 0..a.repeat {
        let t = Instant::now();
        let mut read = 0;
        decode_file(&kiln_file, &native, a.batch, |b| read += b.num_rows())?;
        read_s = read_s.min(t.elapsed().as_secs_f64());
        if read != rows {
            bail!("{}: decoded {read} rows, wrote {rows}", kiln_file.display());
        }
    }
    let kiln = serde_json::json!({
        "write": {"seconds": write_s, "records_per_sec": rows as f64 / write_s, "bytes": file_bytes},
        "read": {"seconds": read_s, "records_per_sec": rows as f64 / read_s},
    });

    let tf = match &a.tf {
        Some(python) => Some(run_tensorflow(&a, python, &schema, &batches, &native)?),
        None => None,
    };
    let ratio = |what: &str| {
        tf.as_ref().map(|t| {
            t[what]["seconds"].as_f64().unwrap_or(f64::NAN)
                / kiln[what]["seconds"].as_f64().unwrap_or(f64::NAN)
        })
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "data": a.data, "rows": rows, "columns": schema.fields().len(), "batch": a.batch,
                "cores": cores, "threads": 1, "kiln": kiln, "tensorflow": tf,
                "ratios": {"write": ratio("write"), "read": ratio("read")},
            })
        );
        return Ok(());
    }
    println!(
        "TFRecord of {rows} Examples ({} columns) from {}, uncompressed, one thread, best of {}:",
        schema.fields().len(),
        a.data,
        a.repeat
    );
    let line = |who: &str, what: &str, s: f64| {
        println!(
            "  {who:<11} {what:<44} {s:>8.3} s {:>12.0} records/s",
            rows as f64 / s
        );
    };
    line("kiln", "write  Arrow -> Example -> TFRecord file", write_s);
    line("kiln", "read   file -> Example -> Arrow batches", read_s);
    println!(
        "  kiln file: {file_bytes} bytes ({:.0} per record)",
        file_bytes as f64 / rows as f64
    );
    if let Some(t) = &tf {
        let version = t["tensorflow"].as_str().unwrap_or("?");
        let secs = |what: &str| t[what]["seconds"].as_f64().unwrap_or(f64::NAN);
        line(
            &format!("tf {version}"),
            "write  tf.train.Example + TFRecordWriter",
            secs("write"),
        );
        line(
            &format!("tf {version}"),
            "read   tf.data + parse_example",
            secs("read"),
        );
        println!(
            "  tensorflow file: {} bytes; the files checked: each decodes the other's to the same values",
            t["write"]["bytes"]
        );
        println!(
            "  kiln / tensorflow: write {:.1}x, read + decode {:.1}x faster",
            ratio("write").unwrap_or(f64::NAN),
            ratio("read").unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// The first `rows` rows of the dataset at `url`, in shard order.
fn load_rows(url: &str, rows: usize) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    let ds = Dataset::open_blocking(url, OpenOptions::default())?;
    let shards: Vec<usize> = (0..ds.num_shards()).collect();
    let mut batches = Vec::new();
    let mut have = 0;
    for b in ds.read_shards(&shards, None, 8192)? {
        let b = b?;
        let take = b.num_rows().min(rows - have);
        batches.push(b.slice(0, take));
        have += take;
        if have == rows {
            break;
        }
    }
    if have == 0 {
        bail!("{url}: the dataset has no rows");
    }
    Ok((ds.schema(), batches))
}

/// The schema TensorFlow's `parse_example` gives back: int64, float32 or a string per column
/// (the Example kinds), nullable (a feature left out is a null).
fn native_schema(schema: &Schema) -> anyhow::Result<SchemaRef> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            use DataType::*;
            if matches!(f.data_type(), List(_) | LargeList(_) | FixedSizeList(..)) {
                bail!("column {}: lists are not part of this benchmark", f.name());
            }
            let dt = match leaf_kind(f.name(), f.data_type())? {
                FeatureKind::Int64List => Int64,
                FeatureKind::FloatList => Float32,
                FeatureKind::BytesList if matches!(f.data_type(), Binary | LargeBinary) => Binary,
                FeatureKind::BytesList => Utf8,
            };
            Ok(Field::new(f.name(), dt, true))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Kiln's write: the batches encoded as Examples, framed as TFRecords, into `path`.
fn write_file(path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<()> {
    let mut encoder = ExampleEncoder::new(schema.clone(), &EncodeOptions::default())?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut framed = Vec::with_capacity(8 << 20);
    for b in batches {
        framed.clear();
        encoder.encode_batch_tfrecord(b, &mut framed)?;
        out.write_all(&framed)?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Kiln's read: the file streamed, each record decoded, batches of `batch` rows to `each`.
fn decode_file(
    path: &Path,
    schema: &SchemaRef,
    batch: usize,
    mut each: impl FnMut(RecordBatch),
) -> anyhow::Result<()> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("opening {name}"))?;
    let mut reader = TfRecordReader::new(file, Compression::None, name.clone());
    let mut decoder = ExampleDecoder::new(schema.clone())?.with_source(name);
    while let Some(record) = reader.next_record()? {
        decoder.append(record)?;
        if decoder.buffered_rows() == batch {
            each(decoder.finish_batch()?);
        }
    }
    if decoder.buffered_rows() > 0 {
        each(decoder.finish_batch()?);
    }
    Ok(())
}

/// The rows as Parquet for the script, the script's run, then the checks both ways: Kiln
/// decodes TensorFlow's file to the values it decodes from its own, and TensorFlow's sums of
/// Kiln's file match Kiln's.
fn run_tensorflow(
    a: &BenchTfrecordArgs,
    python: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    native: &SchemaRef,
) -> anyhow::Result<serde_json::Value> {
    let rows_file = a.work.join("rows.parquet");
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
        File::create(&rows_file)?,
        schema.clone(),
        None,
    )?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    let script = a.tf_script.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/tf_tfrecord.py")
    });
    let tf_file = a.work.join("tensorflow.tfrecord");
    let kiln_file = a.work.join("kiln.tfrecord");
    eprintln!("kiln bench tfrecord: TensorFlow ({})...", python.display());
    let v = super::bench::python_json(
        Command::new(python)
            .arg(&script)
            .arg(&rows_file)
            .arg("--out")
            .arg(&tf_file)
            .arg("--kiln")
            .arg(&kiln_file)
            .args([
                "--repeat",
                &a.repeat.to_string(),
                "--batch",
                &a.batch.to_string(),
            ]),
        &script,
    )?;

    let collect = |path: &Path| -> anyhow::Result<RecordBatch> {
        let mut all = Vec::new();
        decode_file(path, native, a.batch, |b| all.push(b))?;
        Ok(datafusion::arrow::compute::concat_batches(native, &all)?)
    };
    let ours = collect(&kiln_file)?;
    let theirs = collect(&tf_file)?;
    check_same(&ours, &theirs).with_context(|| {
        format!(
            "{} decoded differs from {}",
            tf_file.display(),
            kiln_file.display()
        )
    })?;
    check_sums(&ours, &v["kiln_file"]).with_context(|| {
        format!(
            "TensorFlow's parse of {} differs from Kiln's decode",
            kiln_file.display()
        )
    })?;
    Ok(v)
}

/// Equal batches, or the first column and row that differ.
fn check_same(ours: &RecordBatch, theirs: &RecordBatch) -> anyhow::Result<()> {
    if ours.num_rows() != theirs.num_rows() {
        bail!("{} rows against {}", theirs.num_rows(), ours.num_rows());
    }
    for (i, f) in ours.schema().fields().iter().enumerate() {
        let (x, y) = (ours.column(i), theirs.column(i));
        if x != y {
            let row = (0..x.len())
                .find(|&r| x.slice(r, 1) != y.slice(r, 1))
                .unwrap_or(0);
            bail!(
                "column {} row {row}: {:?} against {:?}",
                f.name(),
                y.slice(row, 1),
                x.slice(row, 1)
            );
        }
    }
    Ok(())
}

/// TensorFlow's row count and per-column sums (nulls read as its defaults: 0, 0.0, b"")
/// against the same sums of Kiln's decode.
fn check_sums(ours: &RecordBatch, tf: &serde_json::Value) -> anyhow::Result<()> {
    if tf["rows"].as_u64() != Some(ours.num_rows() as u64) {
        bail!("{} rows against {}", tf["rows"], ours.num_rows());
    }
    for (i, f) in ours.schema().fields().iter().enumerate() {
        let col = ours.column(i);
        let name = f.name().as_str();
        match f.data_type() {
            DataType::Int64 => {
                let sum: i128 = col
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.unwrap_or(0) as i128)
                    .sum();
                let theirs = tf["int_sums"][name].as_str().unwrap_or("?");
                if theirs != sum.to_string() {
                    bail!("column {name}: int64 sum {theirs} against {sum}");
                }
            }
            DataType::Float32 => {
                let sum: f64 = col
                    .as_primitive::<Float32Type>()
                    .iter()
                    .map(|v| v.unwrap_or(0.0) as f64)
                    .sum();
                let theirs = tf["float_sums"][name].as_f64().unwrap_or(f64::NAN);
                let diff = (theirs - sum).abs();
                if diff.is_nan() || diff > 1e-9 * theirs.abs().max(sum.abs()).max(1.0) {
                    bail!("column {name}: float sum {theirs} against {sum}");
                }
            }
            _ => {
                let len = match col.data_type() {
                    DataType::Utf8 => col.as_string::<i32>().iter().flatten().map(str::len).sum(),
                    _ => col
                        .as_binary::<i32>()
                        .iter()
                        .flatten()
                        .map(<[u8]>::len)
                        .sum::<usize>(),
                };
                let theirs = tf["byte_lengths"][name].as_u64();
                if theirs != Some(len as u64) {
                    bail!("column {name}: string bytes {:?} against {len}", theirs);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn native_schema_is_what_parse_example_returns() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("price", DataType::Decimal128(12, 2), true),
            Field::new("ctr", DataType::Float64, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("blob", DataType::Binary, true),
        ]);
        let native = native_schema(&schema).unwrap();
        let types: Vec<_> = native
            .fields()
            .iter()
            .map(|f| (f.data_type().clone(), f.is_nullable()))
            .collect();
        use DataType::*;
        assert_eq!(
            types,
            [Int64, Int64, Float32, Float32, Utf8, Binary].map(|t| (t, true))
        );
        let lists = Schema::new(vec![Field::new(
            "ids",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        )]);
        let e = native_schema(&lists).unwrap_err().to_string();
        assert!(e.contains("column ids: lists"), "{e}");
    }
}
