//! The feature transform: categorical columns -> row ids of the embedding table, numeric
//! columns -> normalised floats (plus is-null indicators), the label -> 0/1, and the held-out
//! split. Statistics are fitted on the training rows only and saved as `transform.json`.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use kiln_connectors::codec::cast_strict as cast;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{EvalSplit, TrainConfig};
use crate::{Error, Result};

/// Most rows an embedding table may have: row ids are `u32`, so 2^32 rows (ids
/// `0..=u32::MAX`). [`TrainConfig::validate`] and [`Stats::finish`] refuse more, rather than
/// let ids wrap around and alias other columns' rows.
pub const MAX_TABLE_ROWS: u128 = 1 << 32;

/// Slots of the hash split: a row is held out if `xxh3(key) % SPLIT_SLOTS < fraction * SPLIT_SLOTS`.
pub const SPLIT_SLOTS: u64 = 1_000_000;

/// How one categorical column maps to ids (local to the column, `0..size`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CategoricalMap {
    /// `xxh3_64(canonical bytes) % buckets`; null -> `buckets`. Canonical bytes: i64
    /// little-endian for integers, UTF-8 for strings (Kiln's shard hash convention).
    Hash {
        /// Number of buckets.
        buckets: u64,
    },
    /// `values[i]` -> `i + 1`; unseen values and null -> 0. Integers are written in decimal.
    Vocabulary {
        /// Kept values, most frequent first.
        values: Vec<String>,
    },
}

/// One categorical column of the transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalTransform {
    /// Column name.
    pub column: String,
    /// Value -> id.
    pub map: CategoricalMap,
    /// First row of this column in the shared embedding table.
    pub offset: u64,
    /// Rows of this column in the table.
    pub size: u64,
}

/// One numeric column of the transform: `(x - mean) / std`, null -> 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericTransform {
    /// Column name.
    pub column: String,
    /// Training mean.
    pub mean: f64,
    /// Training standard deviation (1 when the column is constant).
    pub std: f64,
    /// Whether an is-null input follows the numeric inputs for this column.
    pub null_indicator: bool,
}

/// The fitted transform, saved as `transform.json` next to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Label column.
    pub label: String,
    /// Categorical columns in input order.
    pub categorical: Vec<CategoricalTransform>,
    /// Numeric columns in input order.
    pub numeric: Vec<NumericTransform>,
    /// The held-out split the trainer used.
    pub eval: EvalSplit,
    /// Training rows the statistics were computed on.
    pub train_rows: u64,
    /// Held-out rows seen while fitting.
    pub eval_rows: u64,
    /// Mean label of the training rows.
    pub train_label_mean: f64,
}

impl Transform {
    /// Total rows of the embedding table.
    pub fn table_rows(&self) -> u64 {
        self.categorical.iter().map(|c| c.size).sum()
    }

    /// Width of the dense (numeric) input: one per column plus one per null indicator.
    pub fn dense_width(&self) -> usize {
        self.numeric.len() + self.numeric.iter().filter(|n| n.null_indicator).count()
    }

    /// Which rows to take from a batch.
    pub fn rows(&self, batch: &RecordBatch, which: RowFilter) -> Result<Vec<u32>> {
        select_rows(&self.eval, batch, which)
    }

    /// Transforms the selected rows (indices into `batch`) and appends them to `out`.
    pub fn prepare(&self, batch: &RecordBatch, rows: &[u32], out: &mut Prepared) -> Result<()> {
        let nf = self.categorical.len();
        let nd = self.dense_width();
        debug_assert_eq!(out.nf, nf);
        debug_assert_eq!(out.nd, nd);
        let base = out.len();
        let n = rows.len();
        out.ids.resize((base + n) * nf, 0);
        out.dense.resize((base + n) * nd, 0.0);
        out.labels.reserve(n);
        out.source_rows.extend_from_slice(rows);
        for (f, c) in self.categorical.iter().enumerate() {
            let keys = Keys::of(batch, &c.column)?;
            match &c.map {
                CategoricalMap::Hash { buckets } => {
                    for (i, &r) in rows.iter().enumerate() {
                        let local = keys.hash(r as usize).map_or(*buckets, |h| h % buckets);
                        out.ids[(base + i) * nf + f] = (c.offset + local) as u32;
                    }
                }
                CategoricalMap::Vocabulary { values } => {
                    let index: HashMap<&str, u64> = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.as_str(), i as u64 + 1))
                        .collect();
                    let mut s = String::new();
                    for (i, &r) in rows.iter().enumerate() {
                        let local = if keys.text(r as usize, &mut s) {
                            index.get(s.as_str()).copied().unwrap_or(0)
                        } else {
                            0
                        };
                        out.ids[(base + i) * nf + f] = (c.offset + local) as u32;
                    }
                }
            }
        }
        let mut ind = self.numeric.len();
        for (j, nt) in self.numeric.iter().enumerate() {
            let col = numeric_column(batch, &nt.column)?;
            let vals = col.as_primitive::<Float64Type>();
            for (i, &r) in rows.iter().enumerate() {
                let r = r as usize;
                let v = if vals.is_null(r) {
                    f64::NAN
                } else {
                    vals.value(r)
                };
                let row = &mut out.dense[(base + i) * nd..(base + i + 1) * nd];
                if v.is_nan() {
                    row[j] = 0.0;
                    if nt.null_indicator {
                        row[ind] = 1.0;
                    }
                } else if v.is_infinite() {
                    return Err(Error::value(
                        &nt.column,
                        r,
                        format!("value {v} is not a finite number"),
                    ));
                } else {
                    row[j] = ((v - nt.mean) / nt.std) as f32;
                }
            }
            if nt.null_indicator {
                ind += 1;
            }
        }
        if batch.column_by_name(&self.label).is_some() {
            out.labels.extend(label_values(batch, &self.label, rows)?);
        } else {
            // Scoring unlabeled data: labels are unknown.
            out.labels.extend(std::iter::repeat_n(f32::NAN, rows.len()));
        }
        Ok(())
    }
}

/// Rows of a batch to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFilter {
    /// Training rows (not held out).
    Train,
    /// Held-out rows.
    Eval,
    /// Every row.
    All,
}

fn select_rows(split: &EvalSplit, batch: &RecordBatch, which: RowFilter) -> Result<Vec<u32>> {
    let n = batch.num_rows();
    if which == RowFilter::All {
        return Ok((0..n as u32).collect());
    }
    let held = held_out(split, batch)?;
    let want = which == RowFilter::Eval;
    Ok((0..n as u32)
        .filter(|&i| held.as_ref().is_some_and(|h| h[i as usize]) == want)
        .collect())
}

/// Held-out flags of a batch (`None`: no split, nothing held out).
fn held_out(split: &EvalSplit, batch: &RecordBatch) -> Result<Option<Vec<bool>>> {
    match split {
        EvalSplit::None => Ok(None),
        EvalSplit::Hash { key, fraction } => {
            let keys = Keys::of(batch, key)?;
            let limit = (fraction * SPLIT_SLOTS as f64).round() as u64;
            Ok(Some(
                (0..batch.num_rows())
                    .map(|r| keys.hash(r).is_some_and(|h| h % SPLIT_SLOTS < limit))
                    .collect(),
            ))
        }
        EvalSplit::Time { column, cutoff } => {
            let arr = batch.column_by_name(column).ok_or_else(|| {
                Error::column(
                    column,
                    format!("not in the dataset (columns: {})", names(batch)),
                )
            })?;
            let limit = cutoff_value(column, arr.data_type(), cutoff)?;
            let ints = cast(arr, &DataType::Int64)
                .map_err(|e| Error::column_arrow(column, "reading as Int64", e))?;
            let ints = ints.as_primitive::<Int64Type>();
            Ok(Some(
                (0..batch.num_rows())
                    .map(|r| ints.is_valid(r) && ints.value(r) >= limit)
                    .collect(),
            ))
        }
    }
}

fn cutoff_value(column: &str, dt: &DataType, cutoff: &str) -> Result<i64> {
    let bad = |m: String| Error::column(column, m);
    match dt {
        DataType::Timestamp(unit, _) => {
            let micros = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(cutoff) {
                t.timestamp_micros()
            } else if let Ok(d) = chrono::NaiveDate::parse_from_str(cutoff, "%Y-%m-%d") {
                d.and_hms_opt(0, 0, 0)
                    .expect("midnight")
                    .and_utc()
                    .timestamp_micros()
            } else {
                return Err(bad(format!(
                    "eval cutoff `{cutoff}` is not an RFC 3339 time or YYYY-MM-DD date"
                )));
            };
            Ok(match unit {
                TimeUnit::Second => micros.div_euclid(1_000_000),
                TimeUnit::Millisecond => micros.div_euclid(1_000),
                TimeUnit::Microsecond => micros,
                TimeUnit::Nanosecond => micros.saturating_mul(1_000),
            })
        }
        DataType::Date32 => chrono::NaiveDate::parse_from_str(cutoff, "%Y-%m-%d")
            .map(|d| (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days())
            .map_err(|_| bad(format!("eval cutoff `{cutoff}` is not a YYYY-MM-DD date"))),
        t if t.is_integer() => cutoff.parse::<i64>().map_err(|_| {
            bad(format!(
                "eval cutoff `{cutoff}` is not an integer (column type {t})"
            ))
        }),
        t => Err(bad(format!(
            "time split needs a timestamp, date or integer column, found {t}"
        ))),
    }
}

fn names(batch: &RecordBatch) -> String {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keys of a categorical column: integers or strings.
enum Keys {
    Int(ArrayRef),
    Str(ArrayRef),
}

impl Keys {
    fn of(batch: &RecordBatch, column: &str) -> Result<Keys> {
        let arr = batch.column_by_name(column).ok_or_else(|| {
            Error::column(
                column,
                format!("not in the dataset (columns: {})", names(batch)),
            )
        })?;
        let dt = arr.data_type();
        let err = |to: &str| {
            let message = format!("reading as {to}");
            move |e| Error::column_arrow(column, message, e)
        };
        if dt.is_integer()
            || matches!(
                dt,
                DataType::Boolean | DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
            )
        {
            Ok(Keys::Int(
                cast(arr, &DataType::Int64).map_err(err("Int64"))?,
            ))
        } else if matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..)
        ) {
            Ok(Keys::Str(cast(arr, &DataType::Utf8).map_err(err("Utf8"))?))
        } else {
            Err(Error::column(
                column,
                format!("categorical column must be integer or string, found {dt}"),
            ))
        }
    }

    fn hash(&self, r: usize) -> Option<u64> {
        match self {
            Keys::Int(a) => {
                let a = a.as_primitive::<Int64Type>();
                a.is_valid(r).then(|| xxh3_64(&a.value(r).to_le_bytes()))
            }
            Keys::Str(a) => {
                let a = a.as_string::<i32>();
                a.is_valid(r).then(|| xxh3_64(a.value(r).as_bytes()))
            }
        }
    }

    /// Writes the value's text into `s`; false for null.
    fn text(&self, r: usize, s: &mut String) -> bool {
        use std::fmt::Write;
        s.clear();
        match self {
            Keys::Int(a) => {
                let a = a.as_primitive::<Int64Type>();
                if a.is_null(r) {
                    return false;
                }
                let _ = write!(s, "{}", a.value(r));
            }
            Keys::Str(a) => {
                let a = a.as_string::<i32>();
                if a.is_null(r) {
                    return false;
                }
                s.push_str(a.value(r));
            }
        }
        true
    }
}

fn numeric_column(batch: &RecordBatch, column: &str) -> Result<ArrayRef> {
    let arr = batch.column_by_name(column).ok_or_else(|| {
        Error::column(
            column,
            format!("not in the dataset (columns: {})", names(batch)),
        )
    })?;
    let dt = arr.data_type();
    if !(dt.is_numeric() || matches!(dt, DataType::Boolean)) {
        return Err(Error::column(
            column,
            format!("numeric column must be a number, found {dt}"),
        ));
    }
    cast(arr, &DataType::Float64).map_err(|e| Error::column_arrow(column, "reading as Float64", e))
}

fn label_values(batch: &RecordBatch, label: &str, rows: &[u32]) -> Result<Vec<f32>> {
    let col = numeric_column(batch, label)?;
    let vals = col.as_primitive::<Float64Type>();
    rows.iter()
        .map(|&r| {
            let r = r as usize;
            if vals.is_null(r) {
                return Err(Error::value(
                    label,
                    r,
                    "the label is null; it must be 0 or 1",
                ));
            }
            // Exactly 0 or 1: a fraction (0.5) or another class (3) is an error, never
            // thresholded or clamped into a class.
            match vals.value(r) {
                0.0 => Ok(0.0),
                1.0 => Ok(1.0),
                v => Err(Error::value(
                    label,
                    r,
                    format!("the label is {v}; it must be 0 or 1"),
                )),
            }
        })
        .collect()
}

/// Transformed rows, struct of arrays.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prepared {
    /// Categorical columns per row.
    pub nf: usize,
    /// Dense inputs per row.
    pub nd: usize,
    /// `len * nf` global table row ids.
    pub ids: Vec<u32>,
    /// `len * nd` dense inputs.
    pub dense: Vec<f32>,
    /// Labels (0/1).
    pub labels: Vec<f32>,
    /// Row index of each row in the batch it came from.
    pub source_rows: Vec<u32>,
}

impl Prepared {
    /// Empty rows of the given widths.
    pub fn new(nf: usize, nd: usize) -> Self {
        Self {
            nf,
            nd,
            ..Default::default()
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Checks that these rows fit `transform` (e.g. rows read back from a checkpoint): the
    /// widths, the lengths of every array, table ids inside each column's range, labels 0 or
    /// 1. The message says what is out of range.
    pub fn check(&self, transform: &Transform) -> std::result::Result<(), String> {
        let (nf, nd) = (transform.categorical.len(), transform.dense_width());
        if (self.nf, self.nd) != (nf, nd) {
            return Err(format!(
                "rows of {} categorical and {} dense inputs, the transform has {nf} and {nd}",
                self.nf, self.nd
            ));
        }
        let n = self.labels.len();
        if self.ids.len() != n * nf || self.dense.len() != n * nd || self.source_rows.len() != n {
            return Err(format!(
                "{n} labels but {} ids, {} dense values and {} row numbers (expected {}, {} and {n})",
                self.ids.len(),
                self.dense.len(),
                self.source_rows.len(),
                n * nf,
                n * nd
            ));
        }
        for (i, ids) in self.ids.chunks_exact(nf.max(1)).enumerate().take(n) {
            for (c, &id) in transform.categorical.iter().zip(ids) {
                if !(c.offset..c.offset + c.size).contains(&u64::from(id)) {
                    return Err(format!(
                        "row {i}: table id {id} is outside column `{}`'s rows {}..{}",
                        c.column,
                        c.offset,
                        c.offset + c.size
                    ));
                }
            }
        }
        if let Some((i, y)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, y)| **y != 0.0 && **y != 1.0)
        {
            return Err(format!("row {i}: label {y} is not 0 or 1"));
        }
        if let Some(i) = self.dense.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "row {}: a dense input is not finite",
                i / nd.max(1)
            ));
        }
        Ok(())
    }

    /// Removes every row.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.dense.clear();
        self.labels.clear();
        self.source_rows.clear();
    }

    /// Appends row `i` of `other`.
    pub fn push_row(&mut self, other: &Prepared, i: usize) {
        self.ids
            .extend_from_slice(&other.ids[i * other.nf..(i + 1) * other.nf]);
        self.dense
            .extend_from_slice(&other.dense[i * other.nd..(i + 1) * other.nd]);
        self.labels.push(other.labels[i]);
        self.source_rows.push(other.source_rows[i]);
    }

    /// Removes row `i`, moving the last row into its place.
    pub fn swap_remove_row(&mut self, i: usize) {
        let last = self.len() - 1;
        let (nf, nd) = (self.nf, self.nd);
        self.ids.copy_within(last * nf..(last + 1) * nf, i * nf);
        self.dense.copy_within(last * nd..(last + 1) * nd, i * nd);
        self.ids.truncate(last * nf);
        self.dense.truncate(last * nd);
        self.labels.swap_remove(i);
        self.source_rows.swap_remove(i);
    }

    /// Overwrites row `dst` with row `i` of `other`.
    pub fn set_row(&mut self, dst: usize, other: &Prepared, i: usize) {
        self.ids[dst * self.nf..(dst + 1) * self.nf]
            .copy_from_slice(&other.ids[i * other.nf..(i + 1) * other.nf]);
        self.dense[dst * self.nd..(dst + 1) * self.nd]
            .copy_from_slice(&other.dense[i * other.nd..(i + 1) * other.nd]);
        self.labels[dst] = other.labels[i];
        self.source_rows[dst] = other.source_rows[i];
    }
}

/// Statistics gathered over training rows, mergeable across workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Per numeric column: (non-null count, sum, sum of squares, null count).
    pub numeric: Vec<(u64, f64, f64, u64)>,
    /// Per vocabulary column: value -> count (empty for hashed columns).
    pub vocab: Vec<HashMap<String, u64>>,
    /// Training rows.
    pub train_rows: u64,
    /// Held-out rows.
    pub eval_rows: u64,
    /// Sum of training labels.
    pub label_sum: f64,
}

impl Stats {
    /// Empty statistics for `config`.
    pub fn new(config: &TrainConfig) -> Self {
        Self {
            numeric: vec![(0, 0.0, 0.0, 0); config.numeric.len()],
            vocab: vec![HashMap::new(); config.categorical.len()],
            ..Default::default()
        }
    }

    /// Adds the training rows of `batch`.
    pub fn add(&mut self, config: &TrainConfig, batch: &RecordBatch) -> Result<()> {
        let train = select_rows(&config.eval, batch, RowFilter::Train)?;
        self.eval_rows += (batch.num_rows() - train.len()) as u64;
        self.train_rows += train.len() as u64;
        for (j, name) in config.numeric.iter().enumerate() {
            let col = numeric_column(batch, name)?;
            let vals = col.as_primitive::<Float64Type>();
            let s = &mut self.numeric[j];
            for &r in &train {
                let r = r as usize;
                let v = if vals.is_null(r) {
                    f64::NAN
                } else {
                    vals.value(r)
                };
                if v.is_nan() {
                    s.3 += 1;
                } else if !v.is_finite() {
                    return Err(Error::value(
                        name,
                        r,
                        format!("value {v} is not a finite number"),
                    ));
                } else {
                    s.0 += 1;
                    s.1 += v;
                    s.2 += v * v;
                }
            }
        }
        for (f, c) in config.categorical.iter().enumerate() {
            let keys = Keys::of(batch, &c.column)?;
            if c.vocabulary.is_some() {
                let mut s = String::new();
                for &r in &train {
                    if keys.text(r as usize, &mut s) {
                        *self.vocab[f].entry(s.clone()).or_insert(0) += 1;
                    }
                }
            }
        }
        self.label_sum += label_values(batch, &config.label, &train)?
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>();
        Ok(())
    }

    /// Adds another worker's statistics.
    pub fn merge(&mut self, other: &Stats) {
        for (a, b) in self.numeric.iter_mut().zip(&other.numeric) {
            a.0 += b.0;
            a.1 += b.1;
            a.2 += b.2;
            a.3 += b.3;
        }
        for (a, b) in self.vocab.iter_mut().zip(&other.vocab) {
            for (k, v) in b {
                *a.entry(k.clone()).or_insert(0) += v;
            }
        }
        self.train_rows += other.train_rows;
        self.eval_rows += other.eval_rows;
        self.label_sum += other.label_sum;
    }

    /// The transform these statistics define. Fails if the categorical columns need more
    /// embedding-table rows than a `u32` id addresses (2^32): ids would alias.
    pub fn finish(&self, config: &TrainConfig) -> Result<Transform> {
        let mut offset = 0;
        let categorical = config
            .categorical
            .iter()
            .enumerate()
            .map(|(f, c)| {
                let map = match (&c.hash_buckets, &c.vocabulary) {
                    (Some(b), _) => CategoricalMap::Hash { buckets: *b },
                    (None, Some(v)) => {
                        let mut vals: Vec<(&String, &u64)> = self.vocab[f]
                            .iter()
                            .filter(|(_, n)| **n >= v.min_count)
                            .collect();
                        vals.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                        vals.truncate(v.max_size);
                        CategoricalMap::Vocabulary {
                            values: vals.into_iter().map(|(k, _)| k.clone()).collect(),
                        }
                    }
                    (None, None) => CategoricalMap::Hash { buckets: 1 },
                };
                let size = match &map {
                    CategoricalMap::Hash { buckets } => buckets + 1,
                    CategoricalMap::Vocabulary { values } => values.len() as u64 + 1,
                };
                let t = CategoricalTransform {
                    column: c.column.clone(),
                    map,
                    offset,
                    size,
                };
                offset += size;
                t
            })
            .collect();
        let categorical: Vec<CategoricalTransform> = categorical;
        let total: u128 = categorical.iter().map(|c| u128::from(c.size)).sum();
        if total > MAX_TABLE_ROWS {
            let sizes: Vec<String> = categorical
                .iter()
                .map(|c| format!("`{}`: {}", c.column, c.size))
                .collect();
            return Err(Error::Config(format!(
                "[train] the categorical columns need {total} embedding-table rows ({}), over \
                 the 2^32 ids a table row id addresses; lower hash_buckets or vocabulary.max_size",
                sizes.join(", ")
            )));
        }
        let numeric = config
            .numeric
            .iter()
            .zip(&self.numeric)
            .map(|(name, &(n, sum, sq, nulls))| {
                let mean = if n > 0 { sum / n as f64 } else { 0.0 };
                let var = if n > 0 {
                    (sq / n as f64 - mean * mean).max(0.0)
                } else {
                    0.0
                };
                let std = var.sqrt();
                NumericTransform {
                    column: name.clone(),
                    mean,
                    std: if std > 1e-12 { std } else { 1.0 },
                    null_indicator: nulls > 0,
                }
            })
            .collect();
        Ok(Transform {
            label: config.label.clone(),
            categorical,
            numeric,
            eval: config.eval.clone(),
            train_rows: self.train_rows,
            eval_rows: self.eval_rows,
            train_label_mean: if self.train_rows > 0 {
                self.label_sum / self.train_rows as f64
            } else {
                0.0
            },
        })
    }
}
