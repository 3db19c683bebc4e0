//! Parquet written by real Apache Spark (shared/testdata/spark) reads as Spark shows it:
//! default, legacy INT96 + gzip, and `writeLegacyFormat` files, with Hive `dt=` partitions.

use std::path::Path;

use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use kiln_engine::job::plan_job;
use kiln_engine::{JobSpec, Overrides};

const COLUMNS: [&str; 11] = [
    "event_id",
    "user_id",
    "event_type",
    "price",
    "amount",
    "clicked",
    "ts",
    "day",
    "tags",
    "dt",
    "ts_type",
];

/// `ts` as microseconds since the epoch and its Arrow type, so every file kind is compared
/// exactly (Spark's INT96 is read as UTC microseconds).
const SELECT: &str = "event_id, user_id, event_type, price, amount, clicked, \
    CAST(ts AS BIGINT) AS ts, day, tags, dt, arrow_typeof(ts) AS ts_type";

fn spark_dir(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/spark")
        .join(name);
    std::path::absolute(p).unwrap().display().to_string()
}

/// How `events.expected.json` spells a value, in Arrow's display format.
fn expected_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_micros().to_string())
                .unwrap_or_else(|_| s.clone()),
        ),
        serde_json::Value::Array(items) => Some(format!(
            "[{}]",
            items
                .iter()
                .map(|i| expected_text(i).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        other => Some(other.to_string()),
    }
}

fn rows_as_text(batches: &[RecordBatch]) -> Vec<Vec<Option<String>>> {
    let opts = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                (0..b.num_columns())
                    .map(|c| (!b.column(c).is_null(r)).then(|| fmts[c].value(r).to_string()))
                    .collect(),
            );
        }
    }
    rows
}

async fn read_spark_table(dir: &str) -> Vec<Vec<Option<String>>> {
    let tmp = tempfile::tempdir().unwrap();
    let spec_path = tmp.path().join("job.toml");
    std::fs::write(
        &spec_path,
        format!(
            r#"
name = "spark"
[[sources]]
name = "spark_events"
url = "{dir}"
format = "parquet"
partition_column = "dt"
days = [-1, 0]
[[features]]
name = "t"
sql = "SELECT {cols} FROM spark_events ORDER BY event_id"
[[outputs]]
statement = "t"
location = "out/"
key = "event_id"
shards = 1
formats = ["parquet"]
"#,
            cols = SELECT
        ),
    )
    .unwrap();
    let spec = JobSpec::load(&spec_path).unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let planned = plan_job(&spec, date, &Overrides::default()).await.unwrap();
    let df = planned.ctx.table("t").await.unwrap();
    rows_as_text(&df.collect().await.unwrap())
}

async fn check(dir_name: &str) {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/../events.expected.json", spark_dir(dir_name)))
            .unwrap(),
    )
    .unwrap();
    let rows = read_spark_table(&spark_dir(dir_name)).await;
    let want = expected["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{dir_name}: row count");
    for (got, w) in rows.iter().zip(want) {
        assert_eq!(
            got[10].as_deref(),
            Some("Timestamp(µs, \"UTC\")"),
            "{dir_name}: ts type"
        );
        for (c, name) in COLUMNS[..10].iter().enumerate() {
            assert_eq!(
                got[c],
                expected_text(&w[name]),
                "{dir_name}: event_id {} column {name}",
                w["event_id"]
            );
        }
    }
}

#[tokio::test]
async fn spark_default_parquet() {
    check("events_partitioned").await;
}

#[tokio::test]
async fn spark_int96_gzip_parquet() {
    check("events_int96_gzip").await;
}

#[tokio::test]
async fn spark_legacy_format_parquet() {
    check("events_legacy_format").await;
}
