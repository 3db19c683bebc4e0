//! Every TensorFlow-written golden file in ../shared/testdata/tfrecord/.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use kiln_connectors::example::{
    Example, SequenceExample, example_to_json, sequence_example_to_json,
};
use kiln_connectors::tfrecord::{SkipReason, SkippedRecord};
use kiln_connectors::{Compression, Error, ExampleDecoder, TfRecordReader, infer_schema};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/tfrecord")
}

fn reader(name: &str, c: Compression) -> TfRecordReader<File> {
    let p = dir().join(name);
    TfRecordReader::new(File::open(&p).unwrap(), c, p.display().to_string())
}

fn records(name: &str, c: Compression) -> Vec<Vec<u8>> {
    reader(name, c).collect::<Result<Vec<_>, _>>().unwrap()
}

fn expected(name: &str, key: &str) -> Vec<Value> {
    let v: Value = serde_json::from_reader(File::open(dir().join(name)).unwrap()).unwrap();
    v[key].as_array().unwrap().clone()
}

#[test]
fn examples_in_all_compressions_match_tensorflow() {
    let want = expected("examples.expected.json", "examples");
    assert_eq!(want.len(), 50);
    for (name, c) in [
        ("examples.tfrecord", Compression::None),
        ("examples.tfrecord.gz", Compression::Gzip),
        ("examples_zlib.tfrecord", Compression::Zlib),
    ] {
        let recs = records(name, c);
        assert_eq!(recs.len(), 50, "{name}");
        for (i, r) in recs.iter().enumerate() {
            let e = Example::parse(r, &format!("{name} record {i}")).unwrap();
            assert_eq!(example_to_json(&e, true), want[i], "{name} record {i}");
        }
    }
    assert_eq!(
        Compression::from_path("examples.tfrecord.gz"),
        Compression::Gzip
    );
}

#[test]
fn compression_is_sniffed() {
    for (name, c) in [
        ("examples.tfrecord", Compression::None),
        ("examples.tfrecord.gz", Compression::Gzip),
        ("examples_zlib.tfrecord", Compression::Zlib),
    ] {
        let bytes = std::fs::read(dir().join(name)).unwrap();
        assert_eq!(Compression::sniff(&bytes[..16]), Some(c), "{name}");
    }
}

#[test]
fn decoder_reads_golden_examples_into_arrow() {
    let recs = records("examples.tfrecord", Compression::None);
    let schema = infer_schema(&recs, 100).unwrap();
    // Columns come in the order TensorFlow serialized the map entries (its hash order).
    let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "city",
            "event_id",
            "extremes",
            "item_history",
            "label",
            "note",
            "price",
            "scores"
        ]
    );
    let t = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(t("event_id"), DataType::Int64);
    assert_eq!(t("price"), DataType::Float32);
    assert_eq!(t("city"), DataType::Utf8);
    assert!(matches!(t("item_history"), DataType::List(_)));
    // Decode into a schema in the order we want.
    let order = [
        "event_id",
        "label",
        "price",
        "city",
        "item_history",
        "scores",
        "note",
        "extremes",
    ];
    let schema = Schema::new(
        order
            .iter()
            .map(|n| schema.field_with_name(n).unwrap().clone())
            .collect::<Vec<_>>(),
    );
    let want = expected("examples.expected.json", "examples");
    let mut dec = ExampleDecoder::new(Arc::new(schema)).unwrap();
    let b = dec.decode(&recs).unwrap();
    assert_eq!(b.num_rows(), 50);
    let ids = b.column(0).as_primitive::<Int64Type>();
    let price = b.column(2).as_primitive::<Float32Type>();
    let city = b.column(3).as_string::<i32>();
    let hist = b.column(4).as_list::<i32>();
    let note = b.column(6).as_string::<i32>();
    let extremes = b.column(7).as_list::<i32>();
    #[allow(clippy::needless_range_loop)]
    for i in 0..50 {
        let w = &want[i];
        assert_eq!(ids.value(i), w["event_id"]["value"][0].as_i64().unwrap());
        assert_eq!(
            price.value(i) as f64,
            w["price"]["value"][0].as_f64().unwrap()
        );
        assert_eq!(city.value(i), w["city"]["value"][0].as_str().unwrap());
        let h = hist.value(i);
        let h = h.as_primitive::<Int64Type>();
        let wh: Vec<i64> = w["item_history"]["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(h.values().to_vec(), wh, "record {i}");
        assert_eq!(note.is_null(i), w.get("note").is_none(), "record {i}");
        if let Some(n) = w.get("note") {
            assert_eq!(note.value(i), n["value"][0].as_str().unwrap());
        }
        if let Some(x) = w.get("extremes") {
            let e = extremes.value(i);
            let got: Vec<i64> = e.as_primitive::<Int64Type>().values().to_vec();
            let wx: Vec<i64> = x["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(got, wx);
        } else {
            assert!(extremes.is_null(i));
        }
    }
}

#[test]
fn decoder_reports_records_that_do_not_fit() {
    let recs = records("examples.tfrecord", Compression::None);
    // `note` is absent in 3 of 4 records: non-nullable -> error naming record 1 and the feature.
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("note", DataType::Utf8, false),
    ]));
    let mut dec = ExampleDecoder::new(schema)
        .unwrap()
        .with_source("examples.tfrecord");
    dec.append(&recs[0]).unwrap();
    let e = dec.append(&recs[1]).unwrap_err();
    match &e {
        Error::Decode {
            record,
            feature,
            message,
            ..
        } => {
            assert_eq!(*record, 1);
            assert_eq!(feature, "note");
            assert!(message.contains("missing required feature"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("examples.tfrecord"));
    // The bad record left nothing behind; decoding continues.
    dec.append(&recs[4]).unwrap();
    let b = dec.finish_batch().unwrap();
    assert_eq!(b.num_rows(), 2);
    assert_eq!(
        b.column(0).as_primitive::<Int64Type>().value(1),
        1000000000004
    );

    // Wrong kind: price is a float_list.
    let schema = Arc::new(Schema::new(vec![Field::new(
        "price",
        DataType::Int64,
        true,
    )]));
    let e = ExampleDecoder::new(schema)
        .unwrap()
        .append(&recs[0])
        .unwrap_err();
    assert!(e.to_string().contains("expected int64_list"), "{e}");
    assert!(e.to_string().contains("found float_list"), "{e}");
    // List where a scalar is expected.
    let schema = Arc::new(Schema::new(vec![Field::new(
        "scores",
        DataType::Float32,
        true,
    )]));
    let e = ExampleDecoder::new(schema)
        .unwrap()
        .append(&recs[3])
        .unwrap_err();
    assert!(e.to_string().contains("record 0, feature 'scores'"), "{e}");
    assert!(e.to_string().contains("found 2"), "{e}");
    // Out of range for the target type.
    let schema = Arc::new(Schema::new(vec![Field::new(
        "event_id",
        DataType::Int32,
        true,
    )]));
    let e = ExampleDecoder::new(schema)
        .unwrap()
        .append(&recs[0])
        .unwrap_err();
    assert!(e.to_string().contains("out of range for Int32"), "{e}");
}

#[test]
fn edge_sizes() {
    let recs = records("edge_sizes.tfrecord", Compression::None);
    assert_eq!(recs.len(), 3);
    assert!(recs[0].is_empty());
    assert_eq!(recs[1].len(), 1 << 20);
    assert!(
        recs[1]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 256) as u8)
    );
    assert_eq!(recs[2], b"x");
}

#[test]
fn corrupt_payload_reports_index_and_offset_377() {
    let mut r = reader("corrupt_payload_record2.tfrecord", Compression::None);
    assert!(r.next_record().unwrap().is_some());
    assert!(r.next_record().unwrap().is_some());
    let e = r.next_record().unwrap_err();
    assert!(
        matches!(
            e,
            Error::DataCrcMismatch {
                index: 2,
                offset: 377,
                record_start: 365,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("corrupt_payload_record2.tfrecord"), "{msg}");
    assert!(
        msg.contains("record 2") && msg.contains("offset 377"),
        "{msg}"
    );
    // Never a wrong record afterwards.
    assert!(r.next_record().unwrap().is_none());

    let mut r =
        reader("corrupt_payload_record2.tfrecord", Compression::None).with_skip_corrupt(true);
    let mut n = 0;
    while r.next_record().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 49);
    assert_eq!(
        r.skipped(),
        &[SkippedRecord {
            index: 2,
            offset: 377,
            record_start: 365,
            reason: SkipReason::DataCrcMismatch
        }]
    );
}

#[test]
fn corrupt_length_reports_index_and_offset() {
    let mut r = reader("corrupt_length_record2.tfrecord", Compression::None);
    r.next_record().unwrap().unwrap();
    r.next_record().unwrap().unwrap();
    let e = r.next_record().unwrap_err();
    assert!(
        // TensorFlow reports header problems at the record start (365 = 2 framed records).
        matches!(
            e,
            Error::LengthCrcMismatch {
                index: 2,
                offset: 365,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt_length_record2.tfrecord"));
    let r = reader("corrupt_length_record2.tfrecord", Compression::None).with_skip_corrupt(true);
    let mut r = r;
    let mut n = 0;
    while r.next_record().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(
        n, 2,
        "reading stops at a corrupt length (no reliable resync)"
    );
    assert_eq!(
        r.skipped(),
        &[SkippedRecord {
            index: 2,
            offset: 365,
            record_start: 365,
            reason: SkipReason::LengthCrcMismatch
        }]
    );
}

#[test]
fn truncated_reports_index_and_offset() {
    let recs: Vec<_> = reader("truncated_record2.tfrecord", Compression::None).collect();
    assert_eq!(recs.len(), 3);
    assert!(recs[0].is_ok() && recs[1].is_ok());
    let e = recs[2].as_ref().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                index: 2,
                offset: 377,
                record_start: 365,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("truncated_record2.tfrecord"));
    let mut r = reader("truncated_record2.tfrecord", Compression::None).with_skip_corrupt(true);
    let mut n = 0;
    while r.next_record().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 2);
    assert_eq!(r.skipped()[0].reason, SkipReason::Truncated);
    assert_eq!(r.skipped()[0].offset, 377);
}

#[test]
fn sequence_examples_match_tensorflow() {
    let want = expected("sequence_examples.expected.json", "sequence_examples");
    let recs = records("sequence_examples.tfrecord", Compression::None);
    assert_eq!(recs.len(), want.len());
    for (i, r) in recs.iter().enumerate() {
        let s = SequenceExample::parse(r, "seq").unwrap();
        assert_eq!(sequence_example_to_json(&s), want[i], "record {i}");
    }
}

#[test]
fn inspect_prints_features_per_line() {
    let want = expected("examples.expected.json", "examples");
    for name in [
        "examples.tfrecord",
        "examples_zlib.tfrecord",
        "examples.tfrecord.gz",
    ] {
        let mut out = Vec::new();
        kiln_connectors::inspect::inspect(dir().join(name).to_str().unwrap(), 3, &mut out).unwrap();
        let lines: Vec<Value> = std::str::from_utf8(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{name}");
        for (i, l) in lines.iter().enumerate() {
            for (k, v) in want[i].as_object().unwrap() {
                assert_eq!(l[k], v["value"], "{name} record {i} feature {k}");
            }
        }
    }
    // Full float precision, f32 widened like TensorFlow's JSON.
    let mut out = Vec::new();
    kiln_connectors::inspect::inspect(
        dir().join("examples.tfrecord").to_str().unwrap(),
        2,
        &mut out,
    )
    .unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("0.10000000149011612")
    );
}

/// `kiln inspect --skip-corrupt`: TensorFlow's corrupt-payload file prints its good records
/// and names the skipped one; without the flag it fails naming the offset.
#[test]
fn inspect_skip_corrupt_reports_what_it_skipped() {
    let path = dir().join("corrupt_payload_record2.tfrecord");
    let path = path.to_str().unwrap();
    let e = kiln_connectors::inspect::inspect(path, 100, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("data CRC mismatch"), "{e}");
    let mut out = Vec::new();
    kiln_connectors::inspect::inspect_with(path, 100, true, &mut out).unwrap();
    let lines: Vec<Value> = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["skipped"][0]["index"], 2, "{last}");
    assert_eq!(last["skipped"][0]["reason"], "data_crc_mismatch", "{last}");
    assert!(lines.len() > 2, "the good records print too: {lines:?}");
}
