//! Deterministic sample data shaped like the example job's training table (29 scalar columns:
//! ids, timestamp, hour, device, city, price, dwell, 16 user features, 3 item features, label;
//! some nulls; about 600-650 bytes per serialized Example). Used by tests and benchmarks; only
//! built with the `test-support` feature (test fixtures are not library API).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// splitmix64 step.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The training table's schema.
pub fn training_schema() -> SchemaRef {
    let mut f = vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("hour", DataType::Int32, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("dwell_ms", DataType::Int32, false),
    ];
    for w in ["1d", "7d"] {
        for c in ["views", "clicks", "carts", "purchases"] {
            f.push(Field::new(format!("u_{c}_{w}"), DataType::Int64, false));
        }
        f.push(Field::new(format!("u_ctr_{w}"), DataType::Float64, true));
        f.push(Field::new(format!("u_spend_{w}"), DataType::Float64, false));
        f.push(Field::new(
            format!("u_distinct_items_{w}"),
            DataType::Int64,
            false,
        ));
        f.push(Field::new(
            format!("u_avg_dwell_{w}"),
            DataType::Float64,
            true,
        ));
    }
    f.push(Field::new("i_views_7d", DataType::Int64, false));
    f.push(Field::new("i_clicks_7d", DataType::Int64, false));
    f.push(Field::new("i_ctr_7d", DataType::Float64, true));
    f.push(Field::new("label", DataType::Int32, false));
    Arc::new(Schema::new(f))
}

/// `rows` rows with event ids `first_event_id..`, deterministic in (`first_event_id`, `seed`).
pub fn training_batch(first_event_id: i64, rows: usize, seed: u64) -> RecordBatch {
    const DEVICES: [&str; 3] = ["android", "ios", "web"];
    const CITIES: [&str; 8] = [
        "Berlin",
        "Paris",
        "Shanghai",
        "São Paulo",
        "Lagos",
        "Mumbai",
        "Toronto",
        "Sydney",
    ];
    let r = |i: usize, k: u64| mix(seed ^ mix((first_event_id as u64).wrapping_add(i as u64)) ^ k);
    let ids: Vec<i64> = (0..rows).map(|i| first_event_id + i as i64).collect();
    let base_ts = 1_795_392_000_000_000i64; // 2026-11-21T00:00:00Z in µs
    let ts: Vec<i64> = (0..rows)
        .map(|i| base_ts + (r(i, 3) % 86_400_000_000) as i64)
        .collect();
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|i| (r(i, 1) % 100_000) as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|i| (r(i, 2) % 50_000) as i64),
        )),
        Arc::new(TimestampMicrosecondArray::from(ts.clone()).with_timezone("UTC")),
        Arc::new(Int32Array::from_iter_values(
            ts.iter().map(|t| ((t / 3_600_000_000) % 24) as i32),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| DEVICES[(r(i, 4) % 3) as usize]),
        )),
        Arc::new(StringArray::from_iter((0..rows).map(|i| {
            let v = r(i, 5);
            (v % 10 != 0).then(|| CITIES[(v % 8) as usize])
        }))),
        Arc::new(Float64Array::from_iter((0..rows).map(|i| {
            let v = r(i, 6);
            (v % 7 != 0).then(|| (v % 100_000) as f64 / 100.0)
        }))),
        Arc::new(Int32Array::from_iter_values(
            (0..rows).map(|i| (r(i, 7) % 60_000) as i32),
        )),
    ];
    for w in 0..2u64 {
        let scale = if w == 0 { 5 } else { 35 };
        let views: Vec<i64> = (0..rows).map(|i| (r(i, 10 + w) % scale) as i64).collect();
        let clicks: Vec<i64> = (0..rows)
            .map(|i| (r(i, 20 + w) % (views[i] as u64 + 1)) as i64)
            .collect();
        cols.push(Arc::new(Int64Array::from(views.clone())));
        cols.push(Arc::new(Int64Array::from(clicks.clone())));
        cols.push(Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|i| (r(i, 30 + w) % 4) as i64),
        )));
        cols.push(Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|i| (r(i, 40 + w) % 3) as i64),
        )));
        cols.push(Arc::new(Float64Array::from_iter((0..rows).map(|i| {
            (views[i] > 0).then(|| clicks[i] as f64 / views[i] as f64)
        }))));
        cols.push(Arc::new(Float64Array::from_iter_values(
            (0..rows).map(|i| (r(i, 50 + w) % 50_000) as f64 / 100.0),
        )));
        cols.push(Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|i| (r(i, 60 + w) % scale) as i64),
        )));
        cols.push(Arc::new(Float64Array::from_iter((0..rows).map(|i| {
            let v = r(i, 70 + w);
            (v % 9 != 0).then(|| (v % 6_000_000) as f64 / 97.0)
        }))));
    }
    let iv: Vec<i64> = (0..rows).map(|i| (r(i, 80) % 5_000) as i64).collect();
    let ic: Vec<i64> = (0..rows)
        .map(|i| (r(i, 81) % (iv[i] as u64 + 1)) as i64)
        .collect();
    cols.push(Arc::new(Int64Array::from(iv.clone())));
    cols.push(Arc::new(Int64Array::from(ic.clone())));
    cols.push(Arc::new(Float64Array::from_iter(
        (0..rows).map(|i| (iv[i] > 0).then(|| ic[i] as f64 / iv[i] as f64)),
    )));
    cols.push(Arc::new(Int32Array::from_iter_values(
        (0..rows).map(|i| (r(i, 90) % 10 == 0) as i32),
    )));
    RecordBatch::try_new(training_schema(), cols).expect("sample batch matches its schema")
}
