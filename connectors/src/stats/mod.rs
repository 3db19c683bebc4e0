//! Dataset statistics in the write pass (TFDV-style), mergeable across shards and tasks, in
//! memory bounded independently of the number of rows and of distinct values.
//!
//! * [`DatasetStatsBuilder`]: the accumulator. `new(schema)`, `update(batch)` for each batch a
//!   task writes, `to_bytes()` to ship the state (e.g. base64 in a Ballista result),
//!   `from_bytes(schema, bytes)` / `merge(other)` / `merge_bytes(bytes)` at commit, and
//!   `finish()` -> [`DatasetStats`].
//! * [`DatasetStats`]: the finished statistics; its serde JSON is the content of `_stats.json`
//!   ([`STATS_FILE`]); [`DatasetStats::to_tfdv_proto`] exports TFDV's
//!   `DatasetFeatureStatisticsList` (see [`tfdv`]).
//! * [`drift()`]: L-infinity (strings) and Jensen–Shannon (numbers) between two statistics.
//! * [`expect`]: expectations (`[[outputs.expect]]`) checked on the statistics, and
//!   [`validate`] -> [`Validation`] (anomalies, drift), recorded in the manifest.
//! * [`load_committed`]: a committed dataset's statistics, checked against its manifest.
//!
//! ## What is computed (per column, in schema order)
//!
//! | field | meaning | exactness |
//! |---|---|---|
//! | `count`, `null_count` | non-null / null rows | exact |
//! | `list` | lists only: min / max / mean length of the non-null lists, total items | exact |
//! | `numeric.count`, `nan_count`, `inf_count` | finite / NaN / ±infinite values (items for lists) | exact |
//! | `numeric.min`, `max`, `mean`, `std_dev`, `zeros` | over the finite values; `std_dev` is the population standard deviation (as TFDV), merged with Chan et al.'s parallel formula | exact up to f64 rounding |
//! | `numeric.quantiles` | 11 values at ranks 0, 0.1, …, 1 (0 and 1: exact min and max) | KLL sketch, k = 200: normalized rank error ≤ `rank_error` (1.33%, 99% confidence); 0 while exact |
//! | `numeric.histogram` | 10 equal-width buckets over [min, max] (TFDV "standard"), counts read from the sketch's CDF | counts within `rank_error * count` |
//! | `numeric.quantiles_histogram` | 10 buckets between consecutive quantiles, `count / 10` each (TFDV "quantiles") | as quantiles |
//! | `string.count`, `avg_length`, `min_length`, `max_length` | values (items for lists) and their byte lengths | exact |
//! | `string.distinct` | distinct values | HLL (lg k = 12, 8-bit): ~1.6% relative standard error, exact for small counts |
//! | `string.top_values` | up to 20 most frequent values, most frequent first (ties by value) | frequent-items sketch (map 1024): each `count` overestimates the true count by at most `top_values_max_error` (≤ 3.5/1024 of all values); exact while < 768 distinct values |
//! | `string.rank_histogram` | the same list up to 1000 values (TFDV's rank histogram) | as `top_values` |
//!
//! Numbers are all integer, float, decimal (value / 10^scale), date, time, timestamp and
//! duration types (the integer in the column's unit) and booleans (0 / 1); strings are the
//! Utf8 types; bytes the binary types (top values keyed by their UTF-8 text, or
//! `__BYTES_VALUE__` like TFDV when not UTF-8; keys are cut to 128 bytes). Dictionaries count as
//! their value type. Struct, map and other columns get counts only (`kind: "other"`).
//!
//! ## Memory
//!
//! Per numeric column ≤ about 5.5 KB (KLL, ≤ ~680 retained f64), per string column 4 KB (HLL)
//! plus ≤ 768 top-value keys of ≤ 128 bytes (≤ ~110 KB worst case, typically a few KB). The
//! serialized state has the same size order. Nothing grows with rows or distinct values.
//!
//! ## Determinism
//!
//! The KLL sketch here ([`kll`]) carries its own SplitMix64 coin from a fixed seed (DataSketches'
//! Rust KLL flips a thread-local, randomly seeded coin, so it cannot be made reproducible);
//! HLL and frequent items hash with fixed-seed MurmurHash3. Hence the same batches in the same
//! order, merged in the same order (commit merges per-shard states in shard-index order), give
//! the same `to_bytes()` and the same `_stats.json`, in any process.
//!
//! ## `_stats.json`
//!
//! ```json
//! {
//!   "version": 1,
//!   "num_rows": 1000,
//!   "columns": [
//!     { "name": "price", "type": "Float64", "kind": "numeric", "count": 990, "null_count": 10,
//!       "list": null,
//!       "numeric": { "count": 990, "nan_count": 0, "inf_count": 0, "min": 0.5, "max": 99.0,
//!                    "mean": 20.1, "std_dev": 3.2, "zeros": 0, "rank_error": 0.0,
//!                    "quantiles": [0.5, "… 11 numbers …", 99.0],
//!                    "histogram": [{ "low": 0.5, "high": 10.35, "count": 120.0 }, "…"],
//!                    "quantiles_histogram": [{ "low": 0.5, "high": 2.0, "count": 99.0 }, "…"] },
//!       "string": null },
//!     { "name": "device", "type": "Utf8", "kind": "string", "count": 1000, "null_count": 0,
//!       "list": null, "numeric": null,
//!       "string": { "count": 1000, "distinct": 3, "top_values_max_error": 0,
//!                   "top_values": [{ "value": "ios", "count": 600 }, "…"],
//!                   "avg_length": 5.2, "min_length": 3, "max_length": 7 } },
//!     { "name": "tags", "type": "List(Utf8)", "kind": "string", "count": 1000, "null_count": 0,
//!       "list": { "min_length": 0, "max_length": 5, "mean_length": 1.5, "total_values": 1500 },
//!       "numeric": null, "string": { "…": "stats of the items" } }
//!   ]
//! }
//! ```
//!
//! `kind` is `numeric`, `string`, `bytes` or `other`; `min`, `max`, `mean`, `std_dev` are `null`
//! when there is no finite value; `type` is Arrow's display of the column type.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod accum;
pub mod drift;
pub mod expect;
pub mod kll;
mod load;
mod state;
#[cfg(test)]
mod tests;
pub mod tfdv;

pub use drift::{ColumnDrift, DriftMeasure, drift};
pub use expect::{
    Anomaly, CheckKind, Expectation, ExpectationsFile, Validation, ValidationPlan, validate,
};
pub use load::load_committed;

use accum::ColumnAcc;

/// File name of the statistics stored with a dataset.
pub const STATS_FILE: &str = "_stats.json";
/// Version of the `_stats.json` layout.
pub const STATS_VERSION: u32 = 1;
/// Buckets of the equal-width histogram.
pub const HISTOGRAM_BUCKETS: usize = 10;
/// Quantile intervals (`QUANTILES + 1` quantiles, `QUANTILES` quantile-histogram buckets).
pub const QUANTILES: usize = 10;
/// Number of top values kept per string column.
pub const TOP_K: usize = 20;
/// Most values listed in a string column's `rank_histogram` (TFDV's default
/// `num_rank_histogram_buckets`).
pub const RANK_HISTOGRAM_VALUES: usize = 1000;
/// Maximum map size of the frequent-items sketch (power of two).
pub const TOP_VALUES_MAP_SIZE: usize = 1024;
/// log2 of the number of HLL registers.
pub const HLL_LG_K: u8 = 12;
/// Top-value keys longer than this many bytes are cut (at a char boundary).
pub const MAX_TOP_VALUE_BYTES: usize = 128;
/// The top-value key of binary values that are not UTF-8 (TFDV's placeholder).
pub const NON_UTF8_VALUE: &str = "__BYTES_VALUE__";
/// Normalized rank error of the KLL sketch (k = 200, 99% confidence).
pub const KLL_RANK_ERROR: f64 = 0.0133;

const MAGIC: &[u8; 4] = b"KSTS";
const STATE_VERSION: u8 = 1;

/// How a column's values (a list column's items) are summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// Numbers (ints, floats, decimals, temporal types, booleans as 0/1).
    Numeric,
    /// UTF-8 strings.
    String,
    /// Binary values.
    Bytes,
    /// Anything else: counts only.
    Other,
}

/// One histogram bucket: `[low, high)` (the last one closed), `count` values (estimated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Lower bound, inclusive.
    pub low: f64,
    /// Upper bound (exclusive except for the last bucket).
    pub high: f64,
    /// Number of values (estimated from the sketch).
    pub count: f64,
}

/// A value and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCount {
    /// The value (UTF-8 text, cut to 128 bytes).
    pub value: String,
    /// Its count (an upper bound: at most `top_values_max_error` above the true count).
    pub count: u64,
}

/// Statistics of numeric values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Finite values.
    pub count: u64,
    /// NaN values (not in any other statistic).
    pub nan_count: u64,
    /// Infinite values (not in any other statistic).
    pub inf_count: u64,
    /// Smallest finite value.
    pub min: Option<f64>,
    /// Largest finite value.
    pub max: Option<f64>,
    /// Mean of the finite values.
    pub mean: Option<f64>,
    /// Population standard deviation of the finite values.
    pub std_dev: Option<f64>,
    /// Values equal to 0.
    pub zeros: u64,
    /// Normalized rank error bound of `quantiles` and the histograms (0 = exact).
    pub rank_error: f64,
    /// `QUANTILES + 1` quantiles at ranks 0, 1/QUANTILES, …, 1 (empty without values).
    pub quantiles: Vec<f64>,
    /// Equal-width histogram over [min, max].
    pub histogram: Vec<Bucket>,
    /// Equal-count histogram between consecutive quantiles.
    pub quantiles_histogram: Vec<Bucket>,
}

/// Statistics of string (or binary) values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StringStats {
    /// Non-null values.
    pub count: u64,
    /// Distinct values (HLL estimate, at most `count`).
    pub distinct: u64,
    /// The most frequent values, most frequent first.
    pub top_values: Vec<ValueCount>,
    /// Largest possible overestimate of a `top_values` count.
    pub top_values_max_error: u64,
    /// Every value the frequent-items sketch vouches for (no false positives), most frequent
    /// first, up to [`RANK_HISTOGRAM_VALUES`]: all values while there are fewer than 768. The
    /// TFDV export's rank histogram, from which TFDV infers a string column's domain.
    #[serde(default)]
    pub rank_histogram: Vec<ValueCount>,
    /// Mean length in bytes.
    pub avg_length: f64,
    /// Shortest length in bytes.
    pub min_length: u64,
    /// Longest length in bytes.
    pub max_length: u64,
}

impl StringStats {
    /// The values with their counts, most frequent first: the rank histogram, or
    /// `top_values` for statistics written before the rank histogram existed.
    pub fn ranked(&self) -> &[ValueCount] {
        if self.rank_histogram.is_empty() {
            &self.top_values
        } else {
            &self.rank_histogram
        }
    }
}

/// Lengths of the non-null lists of a list column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListStats {
    /// Shortest list.
    pub min_length: u64,
    /// Longest list.
    pub max_length: u64,
    /// Mean list length.
    pub mean_length: f64,
    /// Total number of items.
    pub total_values: u64,
}

/// Statistics of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// Column name.
    pub name: String,
    /// Arrow type (display form).
    #[serde(rename = "type")]
    pub data_type: String,
    /// How the values (items) are summarised.
    pub kind: ColumnKind,
    /// Non-null rows.
    pub count: u64,
    /// Null rows.
    pub null_count: u64,
    /// List lengths (list columns only).
    pub list: Option<ListStats>,
    /// Numeric values (the items of a list column).
    pub numeric: Option<NumericStats>,
    /// String / binary values (the items of a list column).
    pub string: Option<StringStats>,
}

/// Statistics of one dataset (one output of a feature job): the content of `_stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Layout version ([`STATS_VERSION`]).
    pub version: u32,
    /// Rows.
    pub num_rows: u64,
    /// One entry per column, in schema order.
    pub columns: Vec<ColumnStats>,
}

impl DatasetStats {
    /// The statistics of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnStats> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Pretty JSON (the `_stats.json` bytes).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| Error::Options(format!("statistics: {e}")))
    }

    /// Parses `_stats.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Options(format!("malformed {STATS_FILE}: {e}")))
    }

    /// TFDV's `DatasetFeatureStatisticsList` (one dataset named `name`), protobuf-encoded.
    pub fn to_tfdv_proto(&self, name: &str) -> Vec<u8> {
        tfdv::to_proto(self, name)
    }
}

/// The mergeable accumulator of [`DatasetStats`] (see the module docs).
#[derive(Debug, Clone)]
pub struct DatasetStatsBuilder {
    schema: SchemaRef,
    num_rows: u64,
    columns: Vec<ColumnAcc>,
    scratch: Vec<f64>,
}

impl DatasetStatsBuilder {
    /// An empty accumulator for batches of `schema`.
    pub fn new(schema: &SchemaRef) -> Self {
        DatasetStatsBuilder {
            schema: Arc::clone(schema),
            num_rows: 0,
            columns: schema
                .fields()
                .iter()
                .map(|f| ColumnAcc::new(f.name(), f.data_type()))
                .collect(),
            scratch: Vec::new(),
        }
    }

    /// The schema the statistics describe.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows seen so far.
    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }

    /// Adds one batch (columns matched by position; names must agree).
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let fields = batch.schema_ref().fields();
        if fields.len() != self.columns.len()
            || fields
                .iter()
                .zip(&self.columns)
                .any(|(f, c)| f.name() != &c.name)
        {
            return Err(Error::Schema(format!(
                "statistics: batch columns [{}] differ from [{}]",
                fields
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for (acc, arr) in self.columns.iter_mut().zip(batch.columns()) {
            acc.update(arr, &mut self.scratch)?;
        }
        self.num_rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Merges `other` (same schema) into `self`. Deterministic: the result depends only on
    /// both states and on the order of merges.
    pub fn merge(&mut self, other: &DatasetStatsBuilder) -> Result<()> {
        if other.columns.len() != self.columns.len()
            || other
                .columns
                .iter()
                .zip(&self.columns)
                .any(|(a, b)| a.name != b.name)
        {
            return Err(Error::Schema(
                "statistics: cannot merge states of different schemas".into(),
            ));
        }
        for (a, b) in self.columns.iter_mut().zip(&other.columns) {
            a.merge(b);
        }
        self.num_rows += other.num_rows;
        Ok(())
    }

    /// Merges a state serialized by [`DatasetStatsBuilder::to_bytes`].
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let other = Self::from_bytes(&self.schema, bytes)?;
        self.merge(&other)
    }

    /// The statistics so far.
    pub fn finish(&self) -> DatasetStats {
        DatasetStats {
            version: STATS_VERSION,
            num_rows: self.num_rows,
            columns: self.columns.iter().map(ColumnAcc::finish).collect(),
        }
    }

    /// The mergeable state: `"KSTS"`, version byte, rows (u64 LE), column count (u32 LE), then
    /// per column its name, kind, counters and sketches (KLL: [`kll::Kll::to_bytes`]; HLL and
    /// frequent items: DataSketches' own serialization).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(STATE_VERSION);
        state::put_u64(&mut out, self.num_rows);
        out.extend_from_slice(&(self.columns.len() as u32).to_le_bytes());
        for c in &self.columns {
            c.write(&mut out);
        }
        out
    }

    /// Reads a state written by [`DatasetStatsBuilder::to_bytes`] for batches of `schema`
    /// (column names and kinds are checked).
    pub fn from_bytes(schema: &SchemaRef, bytes: &[u8]) -> Result<Self> {
        let mut b = Self::new(schema);
        let mut r = state::Reader::new(bytes);
        if r.take(4)? != MAGIC || r.u8()? != STATE_VERSION {
            return Err(Error::Options(
                "statistics state: not a Kiln statistics state (or another version)".into(),
            ));
        }
        b.num_rows = r.u64()?;
        let n = r.u32()? as usize;
        if n != b.columns.len() {
            return Err(Error::Options(format!(
                "statistics state: {n} columns, the schema has {}",
                b.columns.len()
            )));
        }
        for c in b.columns.iter_mut() {
            c.read_into(&mut r)?;
        }
        if !r.is_done() {
            return Err(Error::Options(
                "statistics state: trailing bytes after the last column".into(),
            ));
        }
        Ok(b)
    }

    /// [`DatasetStatsBuilder::to_bytes`] as standard base64 (for JSON transport).
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_bytes())
    }

    /// Reads what [`DatasetStatsBuilder::to_base64`] wrote.
    pub fn from_base64(schema: &SchemaRef, text: &str) -> Result<Self> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| Error::Options(format!("statistics state: bad base64: {e}")))?;
        Self::from_bytes(schema, &bytes)
    }
}
