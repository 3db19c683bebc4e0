use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use prost::Message;

use super::drift::{jensen_shannon, l_infinity};
use super::kll::Kll;
use super::tfdv::{DatasetFeatureStatisticsList, feature_name_statistics};
use super::*;
use crate::sample::{mix, training_batch, training_schema};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("b", DataType::Boolean, true),
        Field::new(
            "l",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))),
            true,
        ),
        Field::new("d", DataType::Date32, true),
        Field::new("bin", DataType::Binary, true),
    ]))
}

fn known_batch() -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![
            Some(1),
            Some(2),
            None,
            Some(4),
            Some(0),
            Some(-3),
        ])),
        Arc::new(Float64Array::from(vec![
            Some(0.5),
            Some(f64::NAN),
            None,
            Some(2.5),
            Some(f64::INFINITY),
            Some(1.0),
        ])),
        Arc::new(StringArray::from(vec![
            Some("a"),
            Some("bb"),
            None,
            Some("a"),
            Some("ccc"),
            Some("a"),
        ])),
        Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(true),
            Some(false),
        ])),
        Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            Some(vec![]),
            None,
            Some(vec![Some(3)]),
            Some(vec![Some(4), Some(5), Some(6)]),
            Some(vec![Some(0)]),
        ])),
        Arc::new(Date32Array::from(vec![
            Some(10),
            None,
            None,
            Some(20),
            Some(30),
            Some(40),
        ])),
        Arc::new(BinaryArray::from(vec![
            Some(&b"\xff\x00"[..]),
            Some(&b"ok"[..]),
            None,
            None,
            None,
            Some(&b""[..]),
        ])),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

/// (count, min, max, mean, population std, zeros) computed naively.
fn moments(v: &[f64]) -> (u64, f64, f64, f64, f64, u64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let zeros = v.iter().filter(|&&x| x == 0.0).count() as u64;
    (v.len() as u64, min, max, mean, var.sqrt(), zeros)
}

fn assert_numeric(c: &ColumnStats, values: &[f64]) {
    let n = c.numeric.as_ref().unwrap();
    let (count, min, max, mean, std, zeros) = moments(values);
    assert_eq!(n.count, count, "{}", c.name);
    assert_eq!(n.min, Some(min), "{}", c.name);
    assert_eq!(n.max, Some(max), "{}", c.name);
    assert!((n.mean.unwrap() - mean).abs() < 1e-12, "{}", c.name);
    assert!((n.std_dev.unwrap() - std).abs() < 1e-12, "{}", c.name);
    assert_eq!(n.zeros, zeros, "{}", c.name);
    // Few values: the sketch is exact, so is the histogram.
    assert_eq!(n.rank_error, 0.0);
    let total: f64 = n.histogram.iter().map(|b| b.count).sum();
    assert_eq!(total, count as f64);
    assert_eq!(n.quantiles.first(), Some(&min));
    assert_eq!(n.quantiles.last(), Some(&max));
}

#[test]
fn known_batch_exact_counts_nulls_moments() {
    let mut b = DatasetStatsBuilder::new(&schema());
    b.update(&known_batch()).unwrap();
    let s = b.finish();
    assert_eq!(s.num_rows, 6);
    assert_eq!(s.columns.len(), 7);

    let i = s.column("i").unwrap();
    assert_eq!((i.count, i.null_count, i.kind), (5, 1, ColumnKind::Numeric));
    assert_numeric(i, &[1.0, 2.0, 4.0, 0.0, -3.0]);
    // Equal-width buckets over [-3, 4] (width 0.7): -3 | 0 | 1 | 2 | 4 (last bucket closed).
    let h = &i.numeric.as_ref().unwrap().histogram;
    assert_eq!(h.len(), 10);
    assert_eq!(h[0].count, 1.0);
    assert_eq!(h[4].count, 1.0); // [-0.2, 0.5) holds 0
    assert_eq!(h[9].count, 1.0); // [3.3, 4] holds 4

    let f = s.column("f").unwrap();
    assert_eq!((f.count, f.null_count), (5, 1));
    let fnum = f.numeric.as_ref().unwrap();
    assert_eq!((fnum.nan_count, fnum.inf_count), (1, 1));
    assert_numeric(f, &[0.5, 2.5, 1.0]);

    let st = s.column("s").unwrap();
    assert_eq!(
        (st.count, st.null_count, st.kind),
        (5, 1, ColumnKind::String)
    );
    let ss = st.string.as_ref().unwrap();
    assert_eq!(ss.count, 5);
    assert_eq!(ss.distinct, 3);
    assert_eq!(
        ss.top_values,
        vec![
            ValueCount {
                value: "a".into(),
                count: 3
            },
            ValueCount {
                value: "bb".into(),
                count: 1
            },
            ValueCount {
                value: "ccc".into(),
                count: 1
            },
        ]
    );
    assert_eq!((ss.min_length, ss.max_length), (1, 3));
    assert!((ss.avg_length - 8.0 / 5.0).abs() < 1e-12);

    let bo = s.column("b").unwrap();
    assert_eq!((bo.count, bo.null_count), (5, 1));
    assert_numeric(bo, &[1.0, 0.0, 1.0, 1.0, 0.0]);

    let l = s.column("l").unwrap();
    assert_eq!((l.count, l.null_count), (5, 1));
    let ls = l.list.as_ref().unwrap();
    assert_eq!((ls.min_length, ls.max_length, ls.total_values), (0, 3, 7));
    assert!((ls.mean_length - 7.0 / 5.0).abs() < 1e-12);
    assert_numeric(l, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]);

    let d = s.column("d").unwrap();
    assert_eq!((d.count, d.null_count), (4, 2));
    assert_numeric(d, &[10.0, 20.0, 30.0, 40.0]);

    let bin = s.column("bin").unwrap();
    assert_eq!(
        (bin.count, bin.null_count, bin.kind),
        (3, 3, ColumnKind::Bytes)
    );
    let bs = bin.string.as_ref().unwrap();
    assert_eq!((bs.min_length, bs.max_length, bs.distinct), (0, 2, 3));
    assert!(bs.top_values.iter().any(|v| v.value == NON_UTF8_VALUE));
}

/// `rows` rows of a numeric column (normal-ish), a skewed 50-value string column, and a list.
fn big_batch(first: u64, rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, true),
        Field::new("cat", DataType::Utf8, false),
        Field::new("n", DataType::Int32, false),
    ]));
    let mut x = Vec::with_capacity(rows);
    let mut cat = Vec::with_capacity(rows);
    let mut n = Vec::with_capacity(rows);
    for r in first..first + rows as u64 {
        let h = mix(r);
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        let v = (mix(h) >> 11) as f64 / (1u64 << 53) as f64;
        x.push((!h.is_multiple_of(17)).then_some(1000.0 * (u + v - 1.0) + 5.0));
        // A skewed distribution over v1..v49 (v1 about half), for the top-k to order.
        let j = ((1.0 / (u * 0.98 + 0.02)) as u64).min(49);
        cat.push(format!("v{j}"));
        n.push((h % 1000) as i32);
    }
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(x)),
            Arc::new(StringArray::from(cat)),
            Arc::new(Int32Array::from(n)),
        ],
    )
    .unwrap()
}

fn build(batches: &[RecordBatch]) -> DatasetStatsBuilder {
    let mut b = DatasetStatsBuilder::new(&batches[0].schema());
    for batch in batches {
        b.update(batch).unwrap();
    }
    b
}

#[test]
fn merge_of_halves_equals_whole() {
    let rows = 200_000;
    let halves = [
        big_batch(0, rows / 2),
        big_batch((rows / 2) as u64, rows / 2),
    ];
    let whole = build(&[big_batch(0, rows)]).finish();
    let mut left = build(&halves[..1]);
    let right = build(&halves[1..]);
    // Through the serialized form, as the commit does.
    left.merge_bytes(&right.to_bytes()).unwrap();
    let merged = left.finish();

    assert_eq!(merged.num_rows, whole.num_rows);
    for (m, w) in merged.columns.iter().zip(&whole.columns) {
        assert_eq!(
            (m.count, m.null_count),
            (w.count, w.null_count),
            "{}",
            m.name
        );
        if let (Some(mn), Some(wn)) = (&m.numeric, &w.numeric) {
            assert_eq!((mn.count, mn.zeros), (wn.count, wn.zeros));
            assert_eq!((mn.min, mn.max), (wn.min, wn.max));
            let (a, b) = (mn.mean.unwrap(), wn.mean.unwrap());
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
            let (a, b) = (mn.std_dev.unwrap(), wn.std_dev.unwrap());
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
            assert!(mn.rank_error > 0.0, "200k values must compact");
        }
        if let (Some(ms), Some(ws)) = (&m.string, &w.string) {
            // < 768 distinct values: the frequent-items sketch is exact.
            assert_eq!(ms.top_values, ws.top_values);
            assert_eq!(ms.top_values.len(), TOP_K);
            assert_eq!(ms.distinct, ws.distinct);
            assert_eq!(ms.distinct, 49);
        }
    }

    // Quantiles of the merged sketch against the true ones, within the KLL error (checked at 2%).
    let batch = big_batch(0, rows);
    let mut xs: Vec<f64> = batch
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    xs.sort_by(f64::total_cmp);
    let q = &merged
        .column("x")
        .unwrap()
        .numeric
        .as_ref()
        .unwrap()
        .quantiles;
    for (i, &qv) in q.iter().enumerate() {
        let rank = xs.partition_point(|&v| v <= qv) as f64 / xs.len() as f64;
        let want = i as f64 / QUANTILES as f64;
        assert!((rank - want).abs() <= 0.02, "q{i}: rank {rank} vs {want}");
    }
    // Top values match a hand count.
    let cat = batch
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let v0 = cat.iter().flatten().filter(|s| *s == "v1").count() as u64;
    let top = &merged
        .column("cat")
        .unwrap()
        .string
        .as_ref()
        .unwrap()
        .top_values;
    assert_eq!(top.iter().find(|t| t.value == "v1").unwrap().count, v0);
}

#[test]
fn kll_rank_error_within_bound_on_1m_values() {
    let mut k = Kll::default();
    let n = 1_000_000u64;
    // A permutation of 0..n, so the true rank of v is v / n.
    for i in 0..n {
        k.update(((i * 7_919) % n) as f64);
    }
    assert_eq!(k.n(), n);
    assert!(k.num_retained() < 700, "retained {}", k.num_retained());
    let ranks: Vec<f64> = (1..100).map(|i| i as f64 / 100.0).collect();
    let q = k.quantiles(&ranks).unwrap();
    for (r, v) in ranks.iter().zip(q) {
        assert!((v / n as f64 - r).abs() < 0.02, "rank {r}: {v}");
    }
    let below = k.counts_below(&[250_000.0]).unwrap()[0] / n as f64;
    assert!((below - 0.25).abs() < 0.02);
    assert_eq!((k.min(), k.max()), (Some(0.0), Some((n - 1) as f64)));
}

#[test]
fn same_inputs_same_order_same_bytes() {
    let batches: Vec<RecordBatch> = (0..4).map(|i| big_batch(i * 50_000, 50_000)).collect();
    let run = |batches: Vec<RecordBatch>| {
        // Per-"shard" states merged in shard order, as at commit.
        let mut acc = build(&batches[..1]);
        for b in &batches[1..] {
            acc.merge(&build(std::slice::from_ref(b))).unwrap();
        }
        (acc.to_bytes(), acc.finish().to_json().unwrap())
    };
    let a = run(batches.clone());
    // Another thread: no thread-local randomness.
    let b = std::thread::spawn({
        let batches = batches.clone();
        move || run(batches)
    })
    .join()
    .unwrap();
    let c = run(batches.clone());
    assert!(a == b, "another thread gave other bytes");
    assert!(a == c, "a second run gave other bytes");
    // The bytes round trip.
    let state = DatasetStatsBuilder::from_bytes(&batches[0].schema(), &a.0).unwrap();
    // Serialization is canonical: reading and writing again gives the same bytes.
    assert!(state.to_bytes() == a.0, "round trip changed the bytes");
    assert_eq!(state.finish().to_json().unwrap(), a.1);
    let text = state.to_base64();
    let back = DatasetStatsBuilder::from_base64(&batches[0].schema(), &text).unwrap();
    assert!(
        back.to_bytes() == a.0,
        "base64 round trip changed the bytes"
    );
    // A different merge order is allowed to differ, but still gives the same exact counts.
    let mut reversed = build(&batches[3..]);
    for b in batches[..3].iter().rev() {
        reversed.merge(&build(std::slice::from_ref(b))).unwrap();
    }
    assert_eq!(reversed.finish().num_rows, 200_000);
}

#[test]
fn memory_bounded_for_1m_distinct_strings() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let mut b = DatasetStatsBuilder::new(&schema);
    let mut sizes = Vec::new();
    for chunk in 0..10u64 {
        let ids: Vec<String> = (chunk * 100_000..(chunk + 1) * 100_000)
            .map(|i| format!("user-{:016x}", mix(i)))
            .collect();
        let xs: Vec<f64> = (chunk * 100_000..(chunk + 1) * 100_000)
            .map(|i| i as f64)
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Float64Array::from(xs)),
            ],
        )
        .unwrap();
        b.update(&batch).unwrap();
        sizes.push(b.to_bytes().len());
    }
    let size = *sizes.last().unwrap();
    eprintln!("1M distinct strings + 1M floats: state {size} bytes, after each 100k: {sizes:?}");
    // The HLL is in its register-array mode here: the bytes survive a round trip too.
    let bytes = b.to_bytes();
    assert!(
        DatasetStatsBuilder::from_bytes(&schema, &bytes)
            .unwrap()
            .to_bytes()
            == bytes
    );
    // Bound: HLL 4 KiB + KLL <= ~5.6 KiB + the frequent-items map, which holds at most 768
    // keys (21 bytes + 12 bytes of length and count each): ~36 KB. It fills and purges as it
    // goes, so the size oscillates below that bound instead of growing with rows.
    assert!(sizes.iter().all(|&s| s < 40_000), "{sizes:?}");
    let s = b.finish();
    let st = s.column("id").unwrap().string.as_ref().unwrap();
    let err = (st.distinct as f64 - 1e6).abs() / 1e6;
    assert!(err < 0.05, "distinct {}", st.distinct);
}

#[test]
fn example_job_state_size() {
    let schema = training_schema();
    let mut b = DatasetStatsBuilder::new(&schema);
    for i in 0..20 {
        b.update(&training_batch(i * 10_000, 10_000, 7)).unwrap();
    }
    let bytes = b.to_bytes();
    eprintln!(
        "example job: {} columns, 200000 rows -> state {} bytes, _stats.json {} bytes",
        schema.fields().len(),
        bytes.len(),
        b.finish().to_json().unwrap().len()
    );
    assert!(bytes.len() < 29 * 16 * 1024, "{} bytes", bytes.len());
}

#[test]
fn json_round_trip_and_field_names() {
    let mut b = DatasetStatsBuilder::new(&schema());
    b.update(&known_batch()).unwrap();
    let s = b.finish();
    let json = s.to_json().unwrap();
    assert_eq!(DatasetStats::from_json(&json).unwrap(), s);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["num_rows"], 6);
    let i = &v["columns"][0];
    assert_eq!(i["name"], "i");
    assert_eq!(i["type"], "Int64");
    assert_eq!(i["kind"], "numeric");
    assert_eq!(i["null_count"], 1);
    assert_eq!(i["numeric"]["min"], -3.0);
    assert_eq!(i["numeric"]["quantiles"].as_array().unwrap().len(), 11);
    assert_eq!(v["columns"][2]["string"]["top_values"][0]["value"], "a");
    assert_eq!(v["columns"][4]["list"]["total_values"], 7);
}

#[test]
fn state_of_another_schema_is_rejected() {
    let mut b = DatasetStatsBuilder::new(&schema());
    b.update(&known_batch()).unwrap();
    let bytes = b.to_bytes();
    let other = Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, true)]));
    assert!(DatasetStatsBuilder::from_bytes(&other, &bytes).is_err());
    assert!(DatasetStatsBuilder::from_bytes(&schema(), &bytes[..bytes.len() - 1]).is_err());
    assert!(b.update(&big_batch(0, 10)).is_err());
}

fn bucket(low: f64, high: f64, count: f64) -> Bucket {
    Bucket { low, high, count }
}

#[test]
fn drift_matches_hand_computed_values() {
    // L-infinity: {a: .6, b: .4} vs {a: .3, b: .5, c: .2} -> max(.3, .1, .2) = .3
    let d = l_infinity(&[("a", 6), ("b", 4)], &[("a", 3), ("b", 5), ("c", 2)]);
    assert!((d - 0.3).abs() < 1e-12, "{d}");
    assert_eq!(l_infinity(&[("a", 1)], &[("a", 7)]), 0.0);

    // JS: p = (.5, .5), q = (.25, .75), m = (.375, .625)
    let js = jensen_shannon(
        &[bucket(0.0, 1.0, 1.0), bucket(1.0, 2.0, 1.0)],
        0,
        &[bucket(0.0, 1.0, 1.0), bucket(1.0, 2.0, 3.0)],
        0,
    );
    let want = 0.5 * (0.5 * (0.5f64 / 0.375).log2() + 0.5 * (0.5f64 / 0.625).log2())
        + 0.5 * (0.25 * (0.25f64 / 0.375).log2() + 0.75 * (0.75f64 / 0.625).log2());
    assert!((js - want).abs() < 1e-12, "{js} vs {want}");
    // Rebucketing: one bucket [0, 2) of 2 equals two buckets of 1 -> 0.
    let js = jensen_shannon(
        &[bucket(0.0, 2.0, 2.0)],
        0,
        &[bucket(0.0, 1.0, 1.0), bucket(1.0, 2.0, 1.0)],
        0,
    );
    assert!(js.abs() < 1e-12, "{js}");
    // Disjoint supports -> 1; rebucketed halves: [0,2) vs [1,3) -> p=(.5,.5,0), q=(0,.5,.5).
    let js = jensen_shannon(&[bucket(0.0, 1.0, 5.0)], 0, &[bucket(2.0, 3.0, 5.0)], 0);
    assert!((js - 1.0).abs() < 1e-12);
    let js = jensen_shannon(&[bucket(0.0, 2.0, 4.0)], 0, &[bucket(1.0, 3.0, 4.0)], 0);
    assert!((js - 0.5).abs() < 1e-12, "{js}");
}

#[test]
fn drift_of_statistics() {
    let a = build(&[big_batch(0, 20_000)]).finish();
    let same = build(&[big_batch(0, 20_000)]).finish();
    let d = drift(&a, &same);
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|c| c.value == 0.0), "{d:?}");
    assert_eq!(d[0].measure, DriftMeasure::JensenShannon);
    assert_eq!(d[1].measure, DriftMeasure::LInfinity);

    // Another sample of the same distribution drifts little; a shifted one a lot.
    let other = build(&[big_batch(1_000_000, 20_000)]).finish();
    let d = drift(&other, &a);
    assert!(d.iter().all(|c| c.value < 0.02), "{d:?}");

    let shifted_schema = big_batch(0, 1).schema();
    let x: Vec<f64> = (0..20_000).map(|i| 2000.0 + (i % 100) as f64).collect();
    let cat: Vec<&str> = (0..20_000)
        .map(|i| if i % 2 == 0 { "v1" } else { "new" })
        .collect();
    let n: Vec<i32> = (0..20_000).map(|i| i % 1000).collect();
    let shifted = RecordBatch::try_new(
        shifted_schema,
        vec![
            Arc::new(Float64Array::from(x)),
            Arc::new(StringArray::from(cat)),
            Arc::new(Int32Array::from(n)),
        ],
    )
    .unwrap();
    let b = build(&[shifted]).finish();
    let d = drift(&b, &a);
    assert!((d[0].value - 1.0).abs() < 1e-9, "{d:?}"); // disjoint ranges
    // Shares in a (normalised over its top 20): v1 about .5, the rest less; in b v1 = new = .5.
    let top = &a.column("cat").unwrap().string.as_ref().unwrap().top_values;
    let total: u64 = top.iter().map(|v| v.count).sum();
    let share = |v: &str| {
        top.iter()
            .find(|t| t.value == v)
            .map_or(0.0, |t| t.count as f64 / total as f64)
    };
    let mut want = f64::max(0.5, (0.5 - share("v1")).abs());
    for t in top.iter().filter(|t| t.value != "v1") {
        want = want.max(share(&t.value));
    }
    assert!((d[1].value - want).abs() < 1e-12, "{d:?} vs {want}");
    assert!(d[2].value < 0.02, "{d:?}"); // n did not change
}

#[test]
fn tfdv_proto_round_trip() {
    let mut b = DatasetStatsBuilder::new(&schema());
    b.update(&known_batch()).unwrap();
    let s = b.finish();
    let bytes = s.to_tfdv_proto("train");
    let list = DatasetFeatureStatisticsList::decode(bytes.as_slice()).unwrap();
    assert_eq!(list.datasets.len(), 1);
    let ds = &list.datasets[0];
    assert_eq!((ds.name.as_str(), ds.num_examples), ("train", 6));
    assert_eq!(ds.features.len(), 7);
    use feature_name_statistics::{FieldId, Stats, r#type};
    let name = |i: usize| match &ds.features[i].field_id {
        Some(FieldId::Name(n)) => n.clone(),
        _ => panic!("no name"),
    };
    assert_eq!(name(0), "i");
    assert_eq!(ds.features[0].r#type, r#type::INT);
    assert_eq!(ds.features[1].r#type, r#type::FLOAT);
    assert_eq!(ds.features[2].r#type, r#type::STRING);
    assert_eq!(ds.features[6].r#type, r#type::BYTES);
    let Some(Stats::NumStats(n)) = &ds.features[0].stats else {
        panic!("num_stats")
    };
    assert_eq!((n.min, n.max, n.num_zeros), (-3.0, 4.0, 1));
    assert!((n.mean - 0.8).abs() < 1e-12);
    assert_eq!(n.median, 1.0);
    let c = n.common_stats.as_ref().unwrap();
    assert_eq!((c.num_non_missing, c.num_missing), (5, 1));
    assert_eq!(
        (c.min_num_values, c.max_num_values, c.tot_num_values),
        (1, 1, 5)
    );
    assert_eq!(n.histograms.len(), 2);
    assert_eq!(n.histograms[1].r#type, tfdv::HISTOGRAM_QUANTILES);
    let Some(Stats::NumStats(f)) = &ds.features[1].stats else {
        panic!("num_stats")
    };
    assert_eq!(f.histograms[0].num_nan, 1);
    let Some(Stats::StringStats(st)) = &ds.features[2].stats else {
        panic!("string_stats")
    };
    assert_eq!(st.unique, 3);
    assert_eq!(st.top_values[0].value, "a");
    assert_eq!(st.top_values[0].frequency, 3.0);
    assert!((st.avg_length - 1.6).abs() < 1e-6);
    let Some(Stats::NumStats(l)) = &ds.features[4].stats else {
        panic!("list num_stats")
    };
    let c = l.common_stats.as_ref().unwrap();
    assert_eq!(
        (c.min_num_values, c.max_num_values, c.tot_num_values),
        (0, 3, 7)
    );
    // Field numbers: `num_examples` is field 2 (varint): tag byte 0x10 follows the name.
    let mut ds_bytes = Vec::new();
    prost::Message::encode(ds, &mut ds_bytes).unwrap();
    assert_eq!(&ds_bytes[..9], b"\x0a\x05train\x10\x06");
}

#[test]
fn rank_histogram_lists_every_value_top_values_the_first_twenty() {
    // 24 cities, city k occurring k + 1 times: TFDV infers a string domain from the rank
    // histogram, so the export must list all 24, while `top_values` keeps the 20 most frequent.
    let schema = Arc::new(Schema::new(vec![Field::new("city", DataType::Utf8, true)]));
    let values: Vec<String> = (0..24)
        .flat_map(|k| std::iter::repeat_n(format!("city-{k:02}"), k + 1))
        .collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from_iter_values(&values)) as ArrayRef],
    )
    .unwrap();
    let mut b = DatasetStatsBuilder::new(&schema);
    b.update(&batch).unwrap();
    let s = b.finish();
    let st = s.columns[0].string.as_ref().unwrap();
    assert_eq!(st.top_values.len(), TOP_K);
    assert_eq!(st.rank_histogram.len(), 24);
    assert_eq!(st.rank_histogram[..TOP_K], st.top_values[..]);
    assert_eq!(
        (
            st.rank_histogram[0].value.as_str(),
            st.rank_histogram[0].count
        ),
        ("city-23", 24)
    );
    assert_eq!(
        (
            st.rank_histogram[23].value.as_str(),
            st.rank_histogram[23].count
        ),
        ("city-00", 1)
    );
    let list = DatasetFeatureStatisticsList::decode(s.to_tfdv_proto("d").as_slice()).unwrap();
    let Some(feature_name_statistics::Stats::StringStats(p)) = &list.datasets[0].features[0].stats
    else {
        panic!("string_stats")
    };
    assert_eq!(p.top_values.len(), TOP_K);
    let buckets = &p.rank_histogram.as_ref().unwrap().buckets;
    assert_eq!(buckets.len(), 24);
    assert_eq!(
        (
            buckets[23].label.as_str(),
            buckets[23].low_rank,
            buckets[23].sample_count
        ),
        ("city-00", 23, 1.0)
    );
    // Statistics written before the field existed still load.
    let mut v: serde_json::Value = serde_json::from_slice(&s.to_json().unwrap()).unwrap();
    v["columns"][0]["string"]
        .as_object_mut()
        .unwrap()
        .remove("rank_histogram");
    let old = DatasetStats::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(
        old.columns[0]
            .string
            .as_ref()
            .unwrap()
            .rank_histogram
            .is_empty()
    );
}

#[test]
fn states_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<DatasetStatsBuilder>();
    assert_send_sync::<DatasetStats>();
}

/// Statistics of a small table: `device` (strings), `price` (floats, some null), `label`.
fn validation_stats(devices: &[&str], prices: &[Option<f64>], labels: &[i32]) -> DatasetStats {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("price", DataType::Float64, true),
        Field::new("label", DataType::Int32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(devices.to_vec())),
            Arc::new(Float64Array::from(prices.to_vec())),
            Arc::new(Int32Array::from(labels.to_vec())),
        ],
    )
    .unwrap();
    let mut b = DatasetStatsBuilder::new(&schema);
    b.update(&batch).unwrap();
    b.finish()
}

fn expectation(toml_text: &str) -> Vec<Expectation> {
    let f: ExpectationsFile = toml::from_str(toml_text).unwrap();
    for e in &f.expect {
        e.check().unwrap();
    }
    f.expect
}

#[test]
fn expectations_report_each_failed_check_with_both_values() {
    let stats = validation_stats(
        &["mobile", "mobile", "desktop", "tv"],
        &[Some(1.0), None, None, Some(250.0)],
        &[0, 1, 0, 0],
    );
    let exp = expectation(
        r#"
[[expect]]
min_rows = 5
[[expect]]
column = "device"
type = "Utf8"
values = ["mobile", "desktop", "tablet"]
max_unexpected_fraction = 0.1
[[expect]]
column = "price"
type = "Int64"
max_null_fraction = 0.25
min = 0.0
max = 100.0
[[expect]]
column = "label"
min_mean = 0.3
[[expect]]
column = "city"
"#,
    );
    let v = validate(&stats, &exp, Err("first day".into()));
    let got: Vec<String> = v.anomalies.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        got,
        [
            "row count: rows expected >= 5, found 4",
            "column `device`: unexpected_values expected <= 0.1000 outside 3 allowed values, found 0.2500 (1 of 4 values: \"tv\" x1)",
            "column `price`: type expected Int64, found Float64",
            "column `price`: null_fraction expected <= 0.2500, found 0.5000 (2 of 4 rows)",
            "column `price`: max expected <= 100, found 250",
            "column `label`: mean expected >= 0.3000, found 0.2500",
            "column `city`: missing_column expected present, found absent (columns: device, price, label)",
        ]
    );
    assert_eq!(v.baseline_missing.as_deref(), Some("first day"));
    assert!(v.skipped.is_empty());
    // The same table within its bounds: no anomaly.
    let ok = expectation(
        r#"
[[expect]]
min_rows = 4
max_rows = 4
[[expect]]
column = "device"
values = ["mobile", "desktop", "tv"]
[[expect]]
column = "price"
max_null_fraction = 0.5
min = 1.0
max = 250.0
"#,
    );
    let v = validate(&stats, &ok, Err("none".into()));
    assert!(v.anomalies.is_empty(), "{:?}", v.anomalies);
    assert_eq!(v.checks, 4);
}

#[test]
fn drift_and_row_ratio_need_a_baseline_and_accept_covers_subjects() {
    let base = validation_stats(
        &["mobile"; 8]
            .iter()
            .chain(&["desktop"; 2])
            .copied()
            .collect::<Vec<_>>(),
        &[Some(1.0); 10],
        &[0; 10],
    );
    let today = validation_stats(
        &["tablet"; 4]
            .iter()
            .chain(&["mobile"; 2])
            .copied()
            .collect::<Vec<_>>(),
        &[Some(1.0); 6],
        &[0; 6],
    );
    let exp = expectation(
        r#"
[[expect]]
min_rows_ratio = 0.7
[[expect]]
column = "device"
max_drift = 0.1
"#,
    );
    let v = validate(&today, &exp, Err("no committed dataset".into()));
    assert!(v.anomalies.is_empty());
    assert_eq!(v.skipped, ["@rows: rows_ratio", "device: drift"]);
    let v = validate(
        &today,
        &exp,
        Ok(expect::Baseline {
            url: "file:///d/dt=2026-11-19/",
            stats: &base,
        }),
    );
    let got: Vec<String> = v.anomalies.iter().map(|a| a.to_string()).collect();
    // L-infinity: tablet 4/6 vs 0.
    assert_eq!(
        got,
        [
            "row count: rows_ratio expected >= 0.7000, found 0.6000 (6 rows, baseline 10)",
            "column `device`: drift expected LInfinity <= 0.1000, found 0.6667",
        ]
    );
    assert_eq!(v.baseline.as_deref(), Some("file:///d/dt=2026-11-19/"));
    assert_eq!(v.unaccepted(&["device".into()]).len(), 1);
    assert_eq!(v.unaccepted(&["device".into(), "@rows".into()]).len(), 0);
    assert_eq!(v.unaccepted(&["@all".into()]).len(), 0);
    // Round trip through the manifest's JSON.
    let back: Validation = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
    assert_eq!(back, v);
}

#[test]
fn bad_expectations_are_refused_naming_the_key() {
    let err = |t: &str| {
        let f: ExpectationsFile = toml::from_str(t).unwrap();
        f.expect[0].check().unwrap_err()
    };
    assert_eq!(
        err("[[expect]]\nmax_null_fraction = 0.1"),
        "`max_null_fraction` needs a `column`"
    );
    assert_eq!(
        err("[[expect]]\ncolumn = \"a\"\nmin_rows = 1"),
        "`min_rows` is a table-level key: put it in an entry without `column` (this one is for `a`)"
    );
    assert_eq!(
        err("[[expect]]\ncolumn = \"a\"\nmax_null_fraction = 1.5"),
        "max_null_fraction = 1.5 is not a fraction in [0, 1]"
    );
    assert_eq!(
        err("[[expect]]\ncolumn = \"a\"\nmin = 3.0\nmax = 1.0"),
        "min = 3 is above max = 1"
    );
    let unknown = toml::from_str::<ExpectationsFile>("[[expect]]\ncolumn = \"a\"\nmax_nulls = 1");
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `max_nulls`"),
        "typos are errors"
    );
}

#[test]
fn inferred_expectations_pass_on_their_own_day_and_round_trip() {
    let stats = validation_stats(
        &["mobile", "desktop", "mobile", "tablet"],
        &[Some(1.0), None, Some(3.0), Some(4.0)],
        &[0, 1, 0, 0],
    );
    let file = expect::infer(&stats, Some("label"));
    let text = toml::to_string(&file).unwrap();
    let back: ExpectationsFile = toml::from_str(&text).unwrap();
    assert_eq!(back, file);
    for e in &back.expect {
        e.check().unwrap();
    }
    let device = back
        .expect
        .iter()
        .find(|e| e.column.as_deref() == Some("device"))
        .unwrap();
    assert_eq!(
        device.values.as_deref().unwrap(),
        ["desktop", "mobile", "tablet"]
    );
    assert_eq!(device.max_drift, Some(0.1));
    let price = back
        .expect
        .iter()
        .find(|e| e.column.as_deref() == Some("price"))
        .unwrap();
    // 0.25 * 1.5 + 0.02 = 0.395 -> 0.40.
    assert_eq!(price.max_null_fraction, Some(0.4));
    let label = back
        .expect
        .iter()
        .find(|e| e.column.as_deref() == Some("label"))
        .unwrap();
    assert_eq!((label.min_mean, label.max_mean), (Some(0.125), Some(0.5)));
    let v = validate(
        &stats,
        &back.expect,
        Ok(expect::Baseline {
            url: "x",
            stats: &stats,
        }),
    );
    assert!(v.anomalies.is_empty(), "{:?}", v.anomalies);
}
