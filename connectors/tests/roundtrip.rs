//! Arrow -> Example -> Arrow round trips across every supported type, with nulls and empty
//! lists, plus byte-level cross-checks of the hand-written encoder against prost.

use std::sync::Arc;

use arrow::array::*;
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::*;
use kiln_connectors::codec::{DefaultValue, EncodeOptions};
use kiln_connectors::example::{Example, Feature};
use kiln_connectors::{ExampleDecoder, ExampleEncoder, infer_schema};
use proptest::prelude::*;
use prost::Message;

type F16 = <Float16Type as ArrowPrimitiveType>::Native;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn text(v: u64) -> String {
    const WORDS: [&str; 6] = ["", "a", "city_7", "ünïcødé ✓", "x y z", "\u{1F600}"];
    format!(
        "{}{}",
        WORDS[(v % 6) as usize],
        if v.is_multiple_of(5) {
            String::new()
        } else {
            (v % 1000).to_string()
        }
    )
}

fn bin(v: u64) -> Vec<u8> {
    let n = (v % 7) as usize;
    (0..n).map(|i| (mix(v + i as u64) & 0xff) as u8).collect()
}

fn item_field(dt: DataType) -> FieldRef {
    Arc::new(Field::new_list_field(dt, true))
}

/// All supported column types.
fn all_types() -> Vec<(&'static str, DataType, bool)> {
    use DataType::*;
    vec![
        ("id", Int64, false),
        ("i8", Int8, true),
        ("i16", Int16, true),
        ("i32", Int32, true),
        ("i64", Int64, true),
        ("u8", UInt8, true),
        ("u16", UInt16, true),
        ("u32", UInt32, true),
        ("u64", UInt64, true),
        ("flag", Boolean, true),
        ("d32", Date32, true),
        ("d64", Date64, true),
        (
            "ts_us_utc",
            Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        ("ts_ns", Timestamp(TimeUnit::Nanosecond, None), true),
        ("t32", Time32(TimeUnit::Millisecond), true),
        ("t64", Time64(TimeUnit::Microsecond), true),
        ("dur", Duration(TimeUnit::Second), true),
        ("f16", Float16, true),
        ("f32", Float32, true),
        ("f64", Float64, true),
        ("dec", Decimal128(9, 2), true),
        ("dec256", Decimal256(20, 3), true),
        ("s", Utf8, true),
        ("ls", LargeUtf8, true),
        ("sv", Utf8View, true),
        ("b", Binary, true),
        ("lb", LargeBinary, true),
        ("bv", BinaryView, true),
        ("fsb", FixedSizeBinary(3), true),
        ("dict", Dictionary(Box::new(Int32), Box::new(Utf8)), true),
        ("list_i64", List(item_field(Int64)), true),
        ("list_bool", List(item_field(Boolean)), true),
        (
            "list_ts",
            List(item_field(Timestamp(TimeUnit::Millisecond, None))),
            true,
        ),
        ("list_f64", List(item_field(Float64)), true),
        ("llist_s", LargeList(item_field(Utf8)), true),
        (
            "list_b",
            List(Arc::new(Field::new("element", Binary, false))),
            true,
        ),
        ("fsl_f32", FixedSizeList(item_field(Float32), 2), true),
        ("list_u8", List(item_field(UInt8)), false),
    ]
}

fn leaf_array(dt: &DataType, seeds: &[Option<u64>]) -> ArrayRef {
    use DataType::*;
    let m =
        |f: &dyn Fn(u64) -> i64| -> Vec<Option<i64>> { seeds.iter().map(|s| s.map(f)).collect() };
    match dt {
        Int8 => Arc::new(Int8Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v as i8)),
        )),
        Int16 => Arc::new(Int16Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v as i16)),
        )),
        Int32 => Arc::new(Int32Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v as i32)),
        )),
        Int64 => Arc::new(Int64Array::from(m(&|v| v as i64))),
        UInt8 => Arc::new(UInt8Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v as u8)),
        )),
        UInt16 => Arc::new(UInt16Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v as u16)),
        )),
        UInt32 => Arc::new(UInt32Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v as u32)),
        )),
        UInt64 => Arc::new(UInt64Array::from_iter(
            seeds.iter().map(|s| s.map(|v| v >> 1)),
        )),
        Boolean => Arc::new(BooleanArray::from_iter(
            seeds.iter().map(|s| s.map(|v| v % 2 == 0)),
        )),
        Date32 => Arc::new(Date32Array::from_iter(
            seeds
                .iter()
                .map(|s| s.map(|v| (v % 100_000) as i32 - 50_000)),
        )),
        Date64 => Arc::new(Date64Array::from(m(&|v| v as i64 / 1000))),
        Timestamp(_, _) | Duration(_) | Time64(_) => {
            cast(&Int64Array::from(m(&|v| (v as i64) >> 8)), dt).unwrap()
        }
        Time32(_) => cast(
            &Int32Array::from_iter(seeds.iter().map(|s| s.map(|v| (v % 86_400_000) as i32))),
            dt,
        )
        .unwrap(),
        Float16 => {
            Arc::new(Float16Array::from_iter(seeds.iter().map(|s| {
                s.map(|v| F16::from_f32(((v % 4096) as f32 - 2048.0) / 4.0))
            })))
        }
        Float32 => Arc::new(Float32Array::from_iter(
            seeds.iter().map(|s| s.map(|v| (v as i32) as f32 * 0.37)),
        )),
        Float64 => Arc::new(Float64Array::from_iter(
            seeds
                .iter()
                .map(|s| s.map(|v| ((v as i32) as f32 / 8.0) as f64)),
        )),
        Decimal128(p, sc) => Arc::new(
            Decimal128Array::from_iter(
                seeds
                    .iter()
                    .map(|s| s.map(|v| (v % 1_000_000) as i128 - 500_000)),
            )
            .with_precision_and_scale(*p, *sc)
            .unwrap(),
        ),
        Decimal256(p, sc) => Arc::new(
            Decimal256Array::from_iter(
                seeds
                    .iter()
                    .map(|s| s.map(|v| i256::from_i128((v % 1_000_000) as i128 - 500_000))),
            )
            .with_precision_and_scale(*p, *sc)
            .unwrap(),
        ),
        Utf8 | LargeUtf8 | Utf8View | Dictionary(_, _) => {
            let a = StringArray::from_iter(seeds.iter().map(|s| s.map(text)));
            cast(&a, dt).unwrap()
        }
        Binary | LargeBinary | BinaryView => {
            let a = BinaryArray::from_iter(seeds.iter().map(|s| s.map(bin)));
            cast(&a, dt).unwrap()
        }
        FixedSizeBinary(n) => Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                seeds.iter().map(|s| {
                    s.map(|v| {
                        (0..*n)
                            .map(|i| (mix(v + i as u64) & 0xff) as u8)
                            .collect::<Vec<_>>()
                    })
                }),
                *n,
            )
            .unwrap(),
        ),
        other => panic!("no generator for {other}"),
    }
}

fn column(dt: &DataType, seeds: &[Option<u64>]) -> ArrayRef {
    match dt {
        DataType::List(f) | DataType::LargeList(f) => {
            let mut offs = vec![0i64];
            let mut child = Vec::new();
            for s in seeds {
                if let Some(v) = s {
                    let n = (v % 4) as usize; // 0 = empty list
                    for k in 0..n {
                        child.push(Some(mix(v + k as u64)));
                    }
                }
                offs.push(child.len() as i64);
            }
            let values = leaf_array(f.data_type(), &child);
            let nulls = NullBuffer::from_iter(seeds.iter().map(|s| s.is_some()));
            if matches!(dt, DataType::List(_)) {
                let o: Vec<i32> = offs.iter().map(|x| *x as i32).collect();
                Arc::new(ListArray::new(
                    f.clone(),
                    OffsetBuffer::new(o.into()),
                    values,
                    Some(nulls),
                ))
            } else {
                Arc::new(LargeListArray::new(
                    f.clone(),
                    OffsetBuffer::new(offs.into()),
                    values,
                    Some(nulls),
                ))
            }
        }
        DataType::FixedSizeList(f, n) => {
            let mut child = Vec::new();
            for s in seeds {
                for k in 0..*n {
                    child.push(Some(mix(s.unwrap_or(0) + k as u64)));
                }
            }
            let values = leaf_array(f.data_type(), &child);
            let nulls = NullBuffer::from_iter(seeds.iter().map(|s| s.is_some()));
            Arc::new(FixedSizeListArray::new(f.clone(), *n, values, Some(nulls)))
        }
        _ => leaf_array(dt, seeds),
    }
}

fn batch_from_seeds(seeds: &[Vec<Option<u64>>]) -> RecordBatch {
    let types = all_types();
    let schema = Arc::new(Schema::new(
        types
            .iter()
            .map(|(n, t, nullable)| Field::new(*n, t.clone(), *nullable))
            .collect::<Vec<_>>(),
    ));
    let cols: Vec<ArrayRef> = types
        .iter()
        .enumerate()
        .map(|(ci, (_, t, nullable))| {
            let s: Vec<Option<u64>> = seeds
                .iter()
                .map(|row| {
                    if *nullable {
                        row[ci]
                    } else {
                        Some(row[ci].unwrap_or(ci as u64))
                    }
                })
                .collect();
            column(t, &s)
        })
        .collect();
    RecordBatch::try_new_with_options(
        schema,
        cols,
        &RecordBatchOptions::new().with_row_count(Some(seeds.len())),
    )
    .unwrap()
}

fn round_trip(batch: &RecordBatch) -> RecordBatch {
    let mut enc = ExampleEncoder::new(batch.schema(), &EncodeOptions::default()).unwrap();
    let recs = enc.encode_batch(batch).unwrap();
    // The framed fast path produces the same payloads.
    let mut framed = Vec::new();
    enc.encode_batch_tfrecord(batch, &mut framed).unwrap();
    let back: Vec<Vec<u8>> = kiln_connectors::TfRecordReader::new(
        &framed[..],
        kiln_connectors::Compression::None,
        "mem",
    )
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(back, recs);
    ExampleDecoder::new(batch.schema())
        .unwrap()
        .decode(&recs)
        .unwrap()
}

fn row_strategy() -> impl Strategy<Value = Vec<Option<u64>>> {
    prop::collection::vec(prop::option::weighted(0.8, any::<u64>()), all_types().len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arrow_example_arrow(rows in prop::collection::vec(row_strategy(), 0..24)) {
        let batch = batch_from_seeds(&rows);
        let back = round_trip(&batch);
        for (i, f) in batch.schema().fields().iter().enumerate() {
            prop_assert_eq!(back.column(i).as_ref(), batch.column(i).as_ref(), "column {}", f.name());
        }
        prop_assert_eq!(back, batch);
    }

    #[test]
    fn sliced_batches_round_trip(rows in prop::collection::vec(row_strategy(), 2..16), cut in 0usize..8) {
        let batch = batch_from_seeds(&rows);
        let off = cut.min(batch.num_rows() - 1);
        let sliced = batch.slice(off, batch.num_rows() - off);
        prop_assert_eq!(round_trip(&sliced), sliced);
    }

    #[test]
    fn encoder_matches_prost_byte_for_byte(vals in prop::collection::vec((any::<i64>(), any::<f32>(), ".{0,12}", prop::collection::vec(any::<i64>(), 0..5)), 1..10)) {
        // Fields in alphabetical order: prost's BTreeMap serializes in key order too.
        let schema = Arc::new(Schema::new(vec![
            Field::new("a_int", DataType::Int64, false),
            Field::new("b_float", DataType::Float32, false),
            Field::new("c_str", DataType::Utf8, false),
            Field::new("d_list", DataType::List(item_field(DataType::Int64)), false),
        ]));
        let mut lb = ListBuilder::new(Int64Builder::new());
        for v in &vals { lb.values().append_slice(&v.3); lb.append(true); }
        let batch = RecordBatch::try_new(schema.clone(), vec![
            Arc::new(Int64Array::from_iter_values(vals.iter().map(|v| v.0))),
            Arc::new(Float32Array::from_iter_values(vals.iter().map(|v| v.1))),
            Arc::new(StringArray::from_iter_values(vals.iter().map(|v| v.2.clone()))),
            Arc::new(lb.finish()),
        ]).unwrap();
        let recs = ExampleEncoder::new(schema, &EncodeOptions::default()).unwrap().encode_batch(&batch).unwrap();
        for (i, v) in vals.iter().enumerate() {
            let e = Example::from_features([
                ("a_int", Feature::int64s(vec![v.0])),
                ("b_float", Feature::floats(vec![v.1])),
                ("c_str", Feature::bytes([v.2.as_bytes().to_vec()])),
                ("d_list", Feature::int64s(v.3.clone())),
            ]);
            prop_assert_eq!(&recs[i], &e.encode_to_vec());
        }
    }
}

#[test]
fn nulls_are_absent_and_empty_lists_present() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, true),
        Field::new("l", DataType::List(item_field(DataType::Utf8)), true),
    ]));
    let mut lb = ListBuilder::new(StringBuilder::new());
    lb.append(true); // empty list
    lb.append(false); // null
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![None, Some(3)])),
            Arc::new(lb.finish()),
        ],
    )
    .unwrap();
    let recs = ExampleEncoder::new(schema.clone(), &EncodeOptions::default())
        .unwrap()
        .encode_batch(&batch)
        .unwrap();
    let e0 = Example::decode(&recs[0][..]).unwrap().feature_map();
    assert!(!e0.contains_key("x"));
    assert_eq!(e0["l"], Feature::bytes(Vec::<Vec<u8>>::new()));
    let e1 = Example::decode(&recs[1][..]).unwrap().feature_map();
    assert_eq!(e1["x"], Feature::int64s(vec![3]));
    assert!(!e1.contains_key("l"));

    // Configured defaults replace nulls.
    let mut opts = EncodeOptions::default();
    opts.null_defaults
        .insert("x".into(), DefaultValue::Int64(-1));
    opts.null_defaults.insert("l".into(), DefaultValue::Empty);
    let recs = ExampleEncoder::new(schema.clone(), &opts)
        .unwrap()
        .encode_batch(&batch)
        .unwrap();
    assert_eq!(
        Example::decode(&recs[0][..]).unwrap().feature_map()["x"],
        Feature::int64s(vec![-1])
    );
    assert_eq!(
        Example::decode(&recs[1][..]).unwrap().feature_map()["l"],
        Feature::bytes(Vec::<Vec<u8>>::new())
    );
    // Wrong-kind default is rejected up front.
    let mut bad = EncodeOptions::default();
    bad.null_defaults
        .insert("x".into(), DefaultValue::Float(1.0));
    assert!(ExampleEncoder::new(schema, &bad).is_err());
}

#[test]
fn unsupported_types_and_bad_values_name_the_column() {
    let st = DataType::Struct(vec![Field::new("a", DataType::Int32, true)].into());
    let schema = Arc::new(Schema::new(vec![Field::new("geo", st, true)]));
    let e = ExampleEncoder::new(schema.clone(), &EncodeOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'geo'") && e.contains("Struct"), "{e}");
    assert!(ExampleDecoder::new(schema).is_err());
    let nested = DataType::List(item_field(DataType::List(item_field(DataType::Int64))));
    let schema = Arc::new(Schema::new(vec![Field::new("nest", nested, true)]));
    let e = ExampleEncoder::new(schema, &EncodeOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'nest'"), "{e}");

    let schema = Arc::new(Schema::new(vec![Field::new("big", DataType::UInt64, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(UInt64Array::from(vec![1, u64::MAX]))],
    )
    .unwrap();
    let e = ExampleEncoder::new(schema, &EncodeOptions::default())
        .unwrap()
        .encode_batch(&batch)
        .unwrap_err()
        .to_string();
    assert!(e.contains("column 'big', row 1"), "{e}");

    let schema = Arc::new(Schema::new(vec![Field::new(
        "l",
        DataType::List(item_field(DataType::Int64)),
        true,
    )]));
    let mut lb = ListBuilder::new(Int64Builder::new());
    lb.append_value([Some(1)]);
    lb.append_value([Some(1), None]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(lb.finish())]).unwrap();
    let e = ExampleEncoder::new(schema, &EncodeOptions::default())
        .unwrap()
        .encode_batch(&batch)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("column 'l', row 1") && e.contains("null item"),
        "{e}"
    );
}

#[test]
fn infer_schema_from_encoded_rows() {
    let rows: Vec<Vec<Option<u64>>> = (0..20u64)
        .map(|r| {
            (0..all_types().len() as u64)
                .map(|c| Some(mix(r * 100 + c)))
                .collect()
        })
        .collect();
    let batch = batch_from_seeds(&rows);
    let recs = ExampleEncoder::new(batch.schema(), &EncodeOptions::default())
        .unwrap()
        .encode_batch(&batch)
        .unwrap();
    let s = infer_schema(&recs, 10).unwrap();
    let get = |n: &str| s.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(get("i8"), DataType::Int64);
    assert_eq!(get("flag"), DataType::Int64);
    assert_eq!(get("f64"), DataType::Float32);
    assert_eq!(get("s"), DataType::Utf8);
    assert_eq!(get("b"), DataType::Binary);
    assert_eq!(
        get("fsl_f32"),
        DataType::List(item_field(DataType::Float32))
    );
    assert!(matches!(get("list_i64"), DataType::List(_)));
    // Inferred schema decodes what was encoded.
    let b = ExampleDecoder::new(Arc::new(s))
        .unwrap()
        .decode(&recs)
        .unwrap();
    assert_eq!(b.num_rows(), 20);
    assert_eq!(
        b.column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values(),
        batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
    );
}

/// A key present twice in one Example: the last value wins, as in protobuf's map merge (prost
/// decoding the same bytes) and TensorFlow's parser.
#[test]
fn duplicate_feature_key_takes_the_last_value() {
    use kiln_connectors::example::{Features, Int64List, feature::Kind};
    let one = |v: i64| Example {
        features: Some(Features {
            feature: [(
                "a".to_string(),
                Feature {
                    kind: Some(Kind::Int64List(Int64List { value: vec![v] })),
                },
            )]
            .into_iter()
            .collect(),
        }),
    };
    // Concatenated messages merge: `features` twice, each with key "a".
    let mut bytes = one(1).encode_to_vec();
    bytes.extend(one(2).encode_to_vec());
    let merged = Example::decode(bytes.as_slice()).unwrap();
    assert_eq!(merged, one(2));
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let batch = ExampleDecoder::new(schema)
        .unwrap()
        .decode(&[bytes])
        .unwrap();
    assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 2);
}

/// A value that does not fit the column's type is an error naming the column, never a null.
#[test]
fn decoding_an_out_of_range_value_fails_instead_of_nulling_it() {
    use kiln_connectors::example::{Features, Int64List, feature::Kind};
    let e = Example {
        features: Some(Features {
            feature: [(
                "small".to_string(),
                Feature {
                    kind: Some(Kind::Int64List(Int64List {
                        value: vec![1 << 40],
                    })),
                },
            )]
            .into_iter()
            .collect(),
        }),
    };
    let schema = Arc::new(Schema::new(vec![Field::new(
        "small",
        DataType::Int32,
        true,
    )]));
    let err = ExampleDecoder::new(schema)
        .unwrap()
        .decode(&[e.encode_to_vec()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("small") || err.contains("Int32"), "{err}");
}
