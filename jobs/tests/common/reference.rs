//! A plain-Rust reference implementation of the example job (`shared/specs/daily_ctr.md`),
//! written from the spec independently of the SQL, to check Kiln's output value for value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use arrow::array::{
    Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;

/// One input event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: i64,
    pub user_id: i64,
    pub item_id: i64,
    pub ts: i64,
    pub event_type: String,
    pub price: Option<f64>,
    pub city: Option<String>,
    pub device: String,
    pub dwell_ms: i32,
}

/// A value of one example column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Text(String),
    Null,
}

/// Reads every `*.parquet` under `root` (recursively).
pub fn read_events(root: &Path) -> Vec<Event> {
    let mut files = Vec::new();
    collect_parquet(root, &mut files);
    files.sort();
    let mut events = Vec::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let i64s = |name: &str| b[name].as_primitive::<Int64Type>().clone();
            let (id, user, item) = (i64s("event_id"), i64s("user_id"), i64s("item_id"));
            let ts = b["ts"]
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .expect("ts is timestamp(us)")
                .clone();
            let et = b["event_type"].as_string::<i32>().clone();
            let price = b["price"].as_primitive::<Float64Type>().clone();
            let city = b["city"].as_string::<i32>().clone();
            let device = b["device"].as_string::<i32>().clone();
            let dwell = b["dwell_ms"].as_primitive::<Int32Type>().clone();
            for r in 0..b.num_rows() {
                events.push(Event {
                    event_id: id.value(r),
                    user_id: user.value(r),
                    item_id: item.value(r),
                    ts: ts.value(r),
                    event_type: et.value(r).to_string(),
                    price: price.is_valid(r).then(|| price.value(r)),
                    city: city.is_valid(r).then(|| city.value(r).to_string()),
                    device: device.value(r).to_string(),
                    dwell_ms: dwell.value(r),
                });
            }
        }
    }
    events
}

fn collect_parquet(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect_parquet(&p, out);
        } else if p.extension().is_some_and(|e| e == "parquet") {
            out.push(p);
        }
    }
}

#[derive(Default)]
struct Window {
    views: i64,
    clicks: i64,
    carts: i64,
    purchases: i64,
    spend: f64,
    items: HashSet<i64>,
    dwell_sum: i64,
    events: i64,
}

impl Window {
    fn add(&mut self, e: &Event) {
        match e.event_type.as_str() {
            "view" => self.views += 1,
            "click" => self.clicks += 1,
            "cart" => self.carts += 1,
            "purchase" => {
                self.purchases += 1;
                self.spend += e.price.unwrap_or(0.0);
            }
            other => panic!("unexpected event_type {other}"),
        }
        self.items.insert(e.item_id);
        self.dwell_sum += e.dwell_ms as i64;
        self.events += 1;
    }

    fn columns(&self, out: &mut Vec<Value>) {
        out.push(Value::Int(self.views));
        out.push(Value::Int(self.clicks));
        out.push(Value::Int(self.carts));
        out.push(Value::Int(self.purchases));
        out.push(if self.views == 0 {
            Value::Null
        } else {
            Value::Float(self.clicks as f64 / self.views as f64)
        });
        out.push(Value::Float(self.spend));
        out.push(Value::Int(self.items.len() as i64));
        out.push(if self.events == 0 {
            Value::Null
        } else {
            Value::Float(self.dwell_sum as f64 / self.events as f64)
        });
    }
}

/// The example table's column names, in order.
pub const COLUMNS: [&str; 29] = [
    "event_id",
    "user_id",
    "item_id",
    "ts",
    "hour",
    "device",
    "city",
    "price",
    "dwell_ms",
    "u_views_1d",
    "u_clicks_1d",
    "u_carts_1d",
    "u_purchases_1d",
    "u_ctr_1d",
    "u_spend_1d",
    "u_distinct_items_1d",
    "u_avg_dwell_1d",
    "u_views_7d",
    "u_clicks_7d",
    "u_carts_7d",
    "u_purchases_7d",
    "u_ctr_7d",
    "u_spend_7d",
    "u_distinct_items_7d",
    "u_avg_dwell_7d",
    "i_views_7d",
    "i_clicks_7d",
    "i_ctr_7d",
    "label",
];

/// The examples for run date `d0_us` (micros of D 00:00 UTC), by event_id.
pub fn examples(events: &[Event], d0_us: i64) -> BTreeMap<i64, Vec<Value>> {
    let h7 = (d0_us - 7 * DAY_US)..d0_us;
    let h1 = (d0_us - DAY_US)..d0_us;
    let mut users: HashMap<i64, (Window, Window)> = HashMap::new();
    let mut items: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut clicks: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
    for e in events {
        if h7.contains(&e.ts) {
            let u = users.entry(e.user_id).or_default();
            u.1.add(e);
            if h1.contains(&e.ts) {
                u.0.add(e);
            }
            let i = items.entry(e.item_id).or_default();
            match e.event_type.as_str() {
                "view" => i.0 += 1,
                "click" => i.1 += 1,
                _ => {}
            }
        }
        if e.event_type == "click" {
            clicks.entry((e.user_id, e.item_id)).or_default().push(e.ts);
        }
    }
    let empty = (Window::default(), Window::default());
    let mut out = BTreeMap::new();
    for e in events {
        if e.event_type != "view" || !(d0_us..d0_us + DAY_US).contains(&e.ts) {
            continue;
        }
        let mut row = vec![
            Value::Int(e.event_id),
            Value::Int(e.user_id),
            Value::Int(e.item_id),
            Value::Int(e.ts),
            Value::Int(e.ts.rem_euclid(DAY_US) / HOUR_US),
            Value::Text(e.device.clone()),
            e.city.clone().map_or(Value::Null, Value::Text),
            e.price.map_or(Value::Null, Value::Float),
            Value::Int(e.dwell_ms as i64),
        ];
        let u = users.get(&e.user_id).unwrap_or(&empty);
        u.0.columns(&mut row);
        u.1.columns(&mut row);
        let (iv, ic) = items.get(&e.item_id).copied().unwrap_or((0, 0));
        row.push(Value::Int(iv));
        row.push(Value::Int(ic));
        row.push(if iv == 0 {
            Value::Null
        } else {
            Value::Float(ic as f64 / iv as f64)
        });
        let clicked = clicks.get(&(e.user_id, e.item_id)).is_some_and(|ts| {
            ts.iter()
                .any(|&c| c > e.ts && c <= e.ts + 30 * 60 * 1_000_000)
        });
        row.push(Value::Int(clicked as i64));
        out.insert(e.event_id, row);
    }
    out
}

/// Reads the examples table back from batches into the same shape, by event_id.
pub fn rows_from_batches(batches: &[RecordBatch]) -> BTreeMap<i64, Vec<Value>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS, "examples columns and order");
        for r in 0..b.num_rows() {
            let row: Vec<Value> = (0..b.num_columns())
                .map(|c| value_at(b.column(c), r))
                .collect();
            let Value::Int(id) = row[0] else {
                panic!("event_id not int")
            };
            assert!(out.insert(id, row).is_none(), "duplicate event_id {id}");
        }
    }
    out
}

fn value_at(a: &dyn Array, r: usize) -> Value {
    if a.is_null(r) {
        return Value::Null;
    }
    let any = a.as_any();
    if let Some(x) = any.downcast_ref::<Int64Array>() {
        Value::Int(x.value(r))
    } else if let Some(x) = any.downcast_ref::<Int32Array>() {
        Value::Int(x.value(r) as i64)
    } else if let Some(x) = any.downcast_ref::<Float64Array>() {
        Value::Float(x.value(r))
    } else if let Some(x) = any.downcast_ref::<StringArray>() {
        Value::Text(x.value(r).to_string())
    } else if let Some(x) = any.downcast_ref::<TimestampMicrosecondArray>() {
        Value::Int(x.value(r))
    } else {
        panic!("unexpected column type {}", a.data_type())
    }
}

/// Asserts both tables are equal: same keys, ints/text exact, floats to 1e-9 relative.
pub fn assert_same(expected: &BTreeMap<i64, Vec<Value>>, actual: &BTreeMap<i64, Vec<Value>>) {
    assert_eq!(expected.len(), actual.len(), "number of examples");
    for (id, want) in expected {
        let got = actual
            .get(id)
            .unwrap_or_else(|| panic!("event_id {id} missing from output"));
        for (c, (w, g)) in want.iter().zip(got).enumerate() {
            let same = match (w, g) {
                (Value::Float(a), Value::Float(b)) => {
                    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
                }
                _ => w == g,
            };
            assert!(
                same,
                "event_id {id} column {}: want {w:?}, got {g:?}",
                COLUMNS[c]
            );
        }
    }
}
