//! Writes TFRecord files and a committed dataset covering every supported Arrow type, plus the
//! values TensorFlow must read back (`expected.json`), for `.ci/tf_compat.py`.
//!
//! Usage: `cargo run -p kiln-connectors --example write_compat -- OUT_DIR`
//!
//! The expected values are computed here from the same Rust values the Arrow columns are built
//! from (not by decoding what was written): ints as ints, floats as the f32 value widened to
//! f64, bytes as base64.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::*;
use arrow::buffer::NullBuffer;
use arrow::datatypes::*;
use kiln_connectors::codec::example_round_trip;
use kiln_connectors::dataset::write_dataset_blocking;
use kiln_connectors::{
    Compression, EncodeOptions, ExampleEncoder, ShardFormat, ShardOptions, TfRecordWriter,
};
use kiln_connectors::{Dataset, OpenOptions};
use serde_json::{Value, json};

/// Standard base64 (RFC 4648, padded), as `tf_compat.py` decodes it.
fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

const N: usize = 40;

/// Per row: feature name -> {"kind", "value"} for the features that must be present.
type Expected = Vec<BTreeMap<String, Value>>;

struct Cols {
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
    expected: Expected,
}

impl Cols {
    fn add(
        &mut self,
        name: &str,
        nullable: bool,
        a: ArrayRef,
        kind: &str,
        vals: Vec<Option<Vec<Value>>>,
    ) {
        self.fields
            .push(Field::new(name, a.data_type().clone(), nullable));
        self.arrays.push(a);
        for (i, v) in vals.into_iter().enumerate() {
            if let Some(v) = v {
                self.expected[i].insert(name.to_string(), json!({"kind": kind, "value": v}));
            }
        }
    }
}

fn f(v: f32) -> Value {
    json!(v as f64)
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: write_compat OUT_DIR");
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out).unwrap();
    let mut c = Cols {
        fields: vec![],
        arrays: vec![],
        expected: vec![BTreeMap::new(); N],
    };
    let null = |i: usize, k: usize| i % k == k - 1;
    let rows = 0..N;

    let ids: Vec<i64> = rows.clone().map(|i| i as i64).collect();
    c.add(
        "id",
        false,
        Arc::new(Int64Array::from(ids.clone())),
        "int64_list",
        ids.iter().map(|v| Some(vec![json!(v)])).collect(),
    );

    let v: Vec<Option<i8>> = rows
        .clone()
        .map(|i| (!null(i, 5)).then(|| ((i * 37) % 256) as u8 as i8))
        .collect();
    c.add(
        "i8",
        true,
        Arc::new(Int8Array::from(v.clone())),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x)])).collect(),
    );
    let v: Vec<Option<u32>> = rows
        .clone()
        .map(|i| (!null(i, 4)).then(|| u32::MAX - i as u32))
        .collect();
    c.add(
        "u32",
        true,
        Arc::new(UInt32Array::from(v.clone())),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x)])).collect(),
    );
    let v: Vec<Option<u64>> = rows
        .clone()
        .map(|i| Some(i64::MAX as u64 - i as u64))
        .collect();
    c.add(
        "u64",
        true,
        Arc::new(UInt64Array::from(v.clone())),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x)])).collect(),
    );
    let v: Vec<Option<bool>> = rows
        .clone()
        .map(|i| (!null(i, 6)).then_some(i % 2 == 0))
        .collect();
    c.add(
        "flag",
        true,
        Arc::new(BooleanArray::from(v.clone())),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x as i64)])).collect(),
    );
    let v: Vec<Option<i32>> = rows.clone().map(|i| Some(20_000 + i as i32)).collect();
    c.add(
        "day",
        true,
        Arc::new(Date32Array::from(v.clone())),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x)])).collect(),
    );
    let v: Vec<Option<i64>> = rows
        .clone()
        .map(|i| (!null(i, 7)).then(|| 1_795_392_000_000_000 + i as i64 * 1_234_567))
        .collect();
    c.add(
        "ts",
        true,
        Arc::new(TimestampMicrosecondArray::from(v.clone()).with_timezone("UTC")),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x)])).collect(),
    );
    let v: Vec<Option<i64>> = rows.clone().map(|i| Some(i as i64 * -1000)).collect();
    c.add(
        "dur_ms",
        true,
        Arc::new(DurationMillisecondArray::from(v.clone())),
        "int64_list",
        v.iter().map(|x| x.map(|x| vec![json!(x)])).collect(),
    );

    let v: Vec<Option<f32>> = rows
        .clone()
        .map(|i| (!null(i, 5)).then_some(i as f32 * 0.1 - 1.5))
        .collect();
    c.add(
        "f32",
        true,
        Arc::new(Float32Array::from(v.clone())),
        "float_list",
        v.iter().map(|x| x.map(|x| vec![f(x)])).collect(),
    );
    let v: Vec<Option<f64>> = rows
        .clone()
        .map(|i| (!null(i, 3)).then(|| i as f64 / 3.0 + 1e-9))
        .collect();
    c.add(
        "f64",
        true,
        Arc::new(Float64Array::from(v.clone())),
        "float_list",
        v.iter().map(|x| x.map(|x| vec![f(x as f32)])).collect(),
    );
    type F16 = <Float16Type as ArrowPrimitiveType>::Native;
    let v: Vec<Option<F16>> = rows
        .clone()
        .map(|i| Some(F16::from_f32(i as f32 * 0.25)))
        .collect();
    c.add(
        "f16",
        true,
        Arc::new(Float16Array::from(v.clone())),
        "float_list",
        v.iter().map(|x| x.map(|x| vec![f(x.to_f32())])).collect(),
    );
    let v: Vec<Option<i128>> = rows
        .clone()
        .map(|i| (!null(i, 8)).then(|| i as i128 * 125 - 2000))
        .collect();
    c.add(
        "amount",
        true,
        Arc::new(
            Decimal128Array::from(v.clone())
                .with_precision_and_scale(12, 3)
                .unwrap(),
        ),
        "float_list",
        v.iter()
            .map(|x| x.map(|x| vec![f((x as f64 / 1000.0) as f32)]))
            .collect(),
    );

    let strs: Vec<Option<String>> = rows
        .clone()
        .map(|i| (!null(i, 4)).then(|| format!("ünïcødé ✓ {i}")))
        .collect();
    c.add(
        "s",
        true,
        Arc::new(StringArray::from(strs.clone())),
        "bytes_list",
        strs.iter()
            .map(|x| x.as_ref().map(|x| vec![json!(b64(x.as_bytes()))]))
            .collect(),
    );
    c.add(
        "sv",
        true,
        Arc::new(StringViewArray::from(strs.clone())),
        "bytes_list",
        strs.iter()
            .map(|x| x.as_ref().map(|x| vec![json!(b64(x.as_bytes()))]))
            .collect(),
    );
    let city: Vec<Option<&str>> = rows
        .clone()
        .map(|i| (!null(i, 9)).then(|| ["Berlin", "Paris", ""][i % 3]))
        .collect();
    let dict: DictionaryArray<Int32Type> = city.iter().copied().collect();
    c.add(
        "city",
        true,
        Arc::new(dict),
        "bytes_list",
        city.iter()
            .map(|x| x.map(|x| vec![json!(b64(x.as_bytes()))]))
            .collect(),
    );
    let bins: Vec<Option<Vec<u8>>> = rows
        .clone()
        .map(|i| (!null(i, 5)).then(|| vec![0xff, 0x00, i as u8, 0x80]))
        .collect();
    c.add(
        "blob",
        true,
        Arc::new(LargeBinaryArray::from_iter(bins.clone())),
        "bytes_list",
        bins.iter()
            .map(|x| x.as_ref().map(|x| vec![json!(b64(x))]))
            .collect(),
    );
    c.add(
        "fsb",
        true,
        Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(bins.iter().cloned(), 4).unwrap(),
        ),
        "bytes_list",
        bins.iter()
            .map(|x| x.as_ref().map(|x| vec![json!(b64(x))]))
            .collect(),
    );

    // Lists: lengths 0..4 (empty lists present), every 6th row null.
    let lists: Vec<Option<Vec<i64>>> = rows
        .clone()
        .map(|i| {
            (!null(i, 6)).then(|| {
                let mut v: Vec<i64> = (0..(i % 4) as i64).map(|k| k * 1000 + i as i64).collect();
                if i % 10 == 0 {
                    v.extend([i64::MIN, i64::MAX, 0, -1]);
                }
                v
            })
        })
        .collect();
    let list = ListArray::from_iter_primitive::<Int64Type, _, _>(lists.iter().map(|x| {
        x.as_ref()
            .map(|v| v.iter().map(|y| Some(*y)).collect::<Vec<_>>())
    }));
    c.add(
        "history",
        true,
        Arc::new(list),
        "int64_list",
        lists
            .iter()
            .map(|x| x.as_ref().map(|v| v.iter().map(|y| json!(y)).collect()))
            .collect(),
    );
    let tags: Vec<Option<Vec<String>>> = rows
        .clone()
        .map(|i| (!null(i, 5)).then(|| (0..i % 3).map(|k| format!("tag{k}")).collect()))
        .collect();
    let mut lb = LargeListBuilder::new(StringBuilder::new());
    for t in &tags {
        match t {
            Some(t) => lb.append_value(t.iter().map(|s| Some(s.as_str()))),
            None => lb.append_null(),
        }
    }
    c.add(
        "tags",
        true,
        Arc::new(lb.finish()),
        "bytes_list",
        tags.iter()
            .map(|x| {
                x.as_ref()
                    .map(|v| v.iter().map(|s| json!(b64(s.as_bytes()))).collect())
            })
            .collect(),
    );
    let emb: Vec<Option<[f32; 3]>> = rows
        .clone()
        .map(|i| (!null(i, 7)).then(|| [i as f32 * 0.5, -(i as f32) / 7.0, 1e-3]))
        .collect();
    let child = Float32Array::from_iter_values(emb.iter().flat_map(|e| e.unwrap_or([0.0; 3])));
    let fsl = FixedSizeListArray::new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        3,
        Arc::new(child),
        Some(NullBuffer::from_iter(emb.iter().map(|e| e.is_some()))),
    );
    c.add(
        "emb",
        true,
        Arc::new(fsl),
        "float_list",
        emb.iter()
            .map(|x| x.map(|v| v.iter().map(|y| f(*y)).collect()))
            .collect(),
    );

    let schema = Arc::new(Schema::new(c.fields.clone()));
    let batch = RecordBatch::try_new(schema.clone(), c.arrays.clone()).unwrap();

    // Plain TFRecord files in all three compressions.
    let recs = ExampleEncoder::new(schema.clone(), &EncodeOptions::default())
        .unwrap()
        .encode_batch(&batch)
        .unwrap();
    let mut files = Vec::new();
    for (name, comp) in [
        ("all_types.tfrecord", Compression::None),
        ("all_types.tfrecord.gz", Compression::Gzip),
        ("all_types.tfrecord.zz", Compression::Zlib),
    ] {
        let mut w = TfRecordWriter::new(std::fs::File::create(out.join(name)).unwrap(), comp);
        for r in &recs {
            w.write_record(r).unwrap();
        }
        w.finish().unwrap();
        files.push(json!({"path": name, "compression": comp.tf_name()}));
    }

    // A committed dataset (4 shards, GZIP TFRecord + Parquet).
    let ds = out.join("dataset");
    let _ = std::fs::remove_dir_all(&ds);
    let m = write_dataset_blocking(
        ds.to_str().unwrap(),
        schema.clone(),
        std::slice::from_ref(&batch),
        ShardOptions {
            num_shards: 4,
            formats: vec![ShardFormat::TfRecord, ShardFormat::Parquet],
            key_column: Some("id".into()),
            ..Default::default()
        },
        json!({"writer": "write_compat"}),
    )
    .unwrap();

    // Read the dataset back through the manifest: per shard, the TFRecord and Parquet copies
    // agree (TFRecord values rounded like the Example mapping says), and all rows come back.
    let dsr = Dataset::open_blocking(
        ds.to_str().unwrap(),
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    let mut total = 0;
    for i in 0..dsr.num_shards() {
        let tf: Vec<_> = dsr
            .read_shards(&[i], Some(ShardFormat::TfRecord), 7)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let pq: Vec<_> = dsr
            .read_shards(&[i], Some(ShardFormat::Parquet), 7)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let tf = arrow::compute::concat_batches(&schema, &tf).unwrap();
        let pq = arrow::compute::concat_batches(&schema, &pq).unwrap();
        assert_eq!(
            tf,
            example_round_trip(&pq).unwrap(),
            "shard {i}: TFRecord and Parquet copies differ"
        );
        total += tf.num_rows();
    }
    assert_eq!(total, N);

    let kinds: BTreeMap<String, &str> = c
        .fields
        .iter()
        .map(|f| {
            let leaf = match f.data_type() {
                DataType::List(x) | DataType::LargeList(x) | DataType::FixedSizeList(x, _) => {
                    x.data_type().clone()
                }
                DataType::Dictionary(_, v) => (**v).clone(),
                d => d.clone(),
            };
            (
                f.name().clone(),
                kiln_connectors::codec::leaf_kind(f.name(), &leaf)
                    .unwrap()
                    .name(),
            )
        })
        .collect();
    let expected = json!({
        "rows": c.expected,
        "kinds": kinds,
        "files": files,
        "dataset": {"path": "dataset", "total_rows": m.total_rows},
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    println!(
        "wrote {} records, {} files and a {}-shard dataset to {}",
        N,
        files.len(),
        m.options.num_shards,
        out.display()
    );
}
