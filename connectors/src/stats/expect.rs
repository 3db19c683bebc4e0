//! Expectations over a dataset's statistics (TFDV's schema and anomalies, checked on the
//! statistics computed in the write pass, so no second read of the data).
//!
//! An [`Expectation`] is one `[[outputs.expect]]` entry of a job spec, or one `[[expect]]`
//! entry of an expectations file (`kiln schema infer` writes one). Entries with a `column`
//! constrain that column; entries without one constrain the table (row counts). [`validate`]
//! checks a [`DatasetStats`] against them, and against a baseline's statistics (the previous
//! day of the same output) for the relative checks and drift, and returns a [`Validation`]: the
//! committed manifest records it, `kiln run`'s `validate` task fails on its anomalies.
//!
//! | key | checks | exactness |
//! |---|---|---|
//! | `column` + `type` | the column exists, with this Arrow type (display form, e.g. `Utf8`) | exact |
//! | `max_null_fraction` | nulls / rows ≤ value | exact |
//! | `min`, `max` | every finite value (list items) within [min, max] | exact |
//! | `values` + `max_unexpected_fraction` (default 0) | share of values not in `values` ≤ fraction | from the top values: exact while the column has ≤ 20 distinct values; beyond that only listed values are counted (a lower bound) |
//! | `min_mean`, `max_mean` | the mean of the finite values (a 0/1 label: the label rate) | exact |
//! | `max_drift` | drift against the baseline ≤ value: L-infinity (strings), Jensen–Shannon (numbers) | as [`super::drift`] |
//! | `min_rows`, `max_rows` (no `column`) | row count bounds | exact |
//! | `min_rows_ratio`, `max_rows_ratio` (no `column`) | rows / baseline rows bounds | exact |
//!
//! Checks that need a baseline are listed in [`Validation::skipped`] when there is none (the
//! first day of a job): they are not anomalies.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::drift::{ColumnDrift, drift};
use super::{ColumnKind, ColumnStats, DatasetStats};

/// One expectation: a column's constraints (with `column`) or the table's (without).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The column constrained; absent for table-level expectations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The column's Arrow type, in its display form (`Int64`, `Utf8`, `Float64`, ...).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// Largest allowed share of null rows, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_null_fraction: Option<f64>,
    /// Smallest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The allowed values of a string column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// Largest allowed share of values outside `values` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unexpected_fraction: Option<f64>,
    /// Smallest allowed mean (a 0/1 label: the label rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_mean: Option<f64>,
    /// Largest allowed mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mean: Option<f64>,
    /// Largest allowed drift against the baseline (L-infinity for strings, Jensen–Shannon
    /// for numbers), in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drift: Option<f64>,
    /// Fewest rows (table-level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rows: Option<u64>,
    /// Most rows (table-level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    /// Smallest allowed rows / baseline rows (table-level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rows_ratio: Option<f64>,
    /// Largest allowed rows / baseline rows (table-level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_ratio: Option<f64>,
}

/// An expectations file (`[[expect]]` entries), as `kiln schema infer` writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectationsFile {
    /// The entries.
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

impl Expectation {
    /// Checks that the entry makes sense on its own: column keys only with `column`, table
    /// keys only without, bounds ordered, fractions in [0, 1]. The error names the key.
    pub fn check(&self) -> Result<(), String> {
        let fraction = |name: &str, v: Option<f64>| match v {
            Some(x) if !(0.0..=1.0).contains(&x) => {
                Err(format!("{name} = {x} is not a fraction in [0, 1]"))
            }
            _ => Ok(()),
        };
        let ordered = |lo: &str, a: Option<f64>, hi: &str, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if a > b => Err(format!("{lo} = {a} is above {hi} = {b}")),
            (Some(x), _) | (_, Some(x)) if x.is_nan() => Err(format!("NaN bound in {lo}/{hi}")),
            _ => Ok(()),
        };
        fraction("max_null_fraction", self.max_null_fraction)?;
        fraction("max_unexpected_fraction", self.max_unexpected_fraction)?;
        fraction("max_drift", self.max_drift)?;
        ordered("min", self.min, "max", self.max)?;
        ordered("min_mean", self.min_mean, "max_mean", self.max_mean)?;
        ordered(
            "min_rows",
            self.min_rows.map(|x| x as f64),
            "max_rows",
            self.max_rows.map(|x| x as f64),
        )?;
        ordered(
            "min_rows_ratio",
            self.min_rows_ratio,
            "max_rows_ratio",
            self.max_rows_ratio,
        )?;
        let column_keys = [
            ("type", self.data_type.is_some()),
            ("max_null_fraction", self.max_null_fraction.is_some()),
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("values", self.values.is_some()),
            (
                "max_unexpected_fraction",
                self.max_unexpected_fraction.is_some(),
            ),
            ("min_mean", self.min_mean.is_some()),
            ("max_mean", self.max_mean.is_some()),
            ("max_drift", self.max_drift.is_some()),
        ];
        let table_keys = [
            ("min_rows", self.min_rows.is_some()),
            ("max_rows", self.max_rows.is_some()),
            ("min_rows_ratio", self.min_rows_ratio.is_some()),
            ("max_rows_ratio", self.max_rows_ratio.is_some()),
        ];
        match &self.column {
            Some(c) => {
                if let Some((k, _)) = table_keys.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "`{k}` is a table-level key: put it in an entry without `column` (this one is for `{c}`)"
                    ));
                }
            }
            None => {
                if let Some((k, _)) = column_keys.iter().find(|(_, set)| *set) {
                    return Err(format!("`{k}` needs a `column`"));
                }
                if !table_keys.iter().any(|(_, set)| *set) {
                    return Err(
                        "an entry without `column` must set min_rows, max_rows, min_rows_ratio or max_rows_ratio"
                            .into(),
                    );
                }
            }
        }
        if self.max_unexpected_fraction.is_some() && self.values.is_none() {
            return Err("max_unexpected_fraction needs `values`".into());
        }
        Ok(())
    }
}

/// The checks an anomaly can come from (closed set; the names are stored in manifests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The column is absent.
    MissingColumn,
    /// The column has another type.
    Type,
    /// Too many nulls.
    NullFraction,
    /// A value below `min`.
    Min,
    /// A value above `max`.
    Max,
    /// Too many values outside `values`.
    UnexpectedValues,
    /// The mean is outside [min_mean, max_mean].
    Mean,
    /// Drift against the baseline above `max_drift`.
    Drift,
    /// Row count outside [min_rows, max_rows].
    Rows,
    /// Row count relative to the baseline outside [min_rows_ratio, max_rows_ratio].
    RowsRatio,
    /// The expectation cannot apply to this column (e.g. `values` on a number).
    NotApplicable,
}

impl CheckKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::MissingColumn => "missing_column",
            CheckKind::Type => "type",
            CheckKind::NullFraction => "null_fraction",
            CheckKind::Min => "min",
            CheckKind::Max => "max",
            CheckKind::UnexpectedValues => "unexpected_values",
            CheckKind::Mean => "mean",
            CheckKind::Drift => "drift",
            CheckKind::Rows => "rows",
            CheckKind::RowsRatio => "rows_ratio",
            CheckKind::NotApplicable => "not_applicable",
        }
    }
}

/// What `--accept` names to accept the table-level (row count) anomalies.
pub const ACCEPT_ROWS: &str = "@rows";

/// One failed check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The column; `None` for table-level checks.
    pub column: Option<String>,
    /// The check.
    pub check: CheckKind,
    /// What was expected, e.g. `<= 0.05`.
    pub expected: String,
    /// What was found, e.g. `0.3012 (15060 of 50000 rows)`.
    pub actual: String,
}

impl Anomaly {
    /// The name `kiln run --accept` takes for it: the column, or [`ACCEPT_ROWS`].
    pub fn subject(&self) -> &str {
        self.column.as_deref().unwrap_or(ACCEPT_ROWS)
    }

    /// Whether `accept` (subjects, or `@all`) covers this anomaly.
    pub fn accepted_by(&self, accept: &[String]) -> bool {
        accept.iter().any(|x| x == "@all" || x == self.subject())
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "column `{c}`")?,
            None => write!(f, "row count")?,
        }
        write!(
            f,
            ": {} expected {}, found {}",
            self.check.as_str(),
            self.expected,
            self.actual
        )
    }
}

/// The outcome of [`validate`]: recorded in the committed manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// The baseline dataset compared with (URL), if any.
    pub baseline: Option<String>,
    /// Why there is no baseline, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_missing: Option<String>,
    /// Number of checks evaluated.
    pub checks: u64,
    /// Checks not evaluated for lack of a baseline (`column: check`).
    pub skipped: Vec<String>,
    /// The failed checks.
    pub anomalies: Vec<Anomaly>,
    /// Drift of every column against the baseline (empty without one).
    pub drift: Vec<ColumnDrift>,
}

impl Validation {
    /// The anomalies whose subject (column, or [`ACCEPT_ROWS`]) is not in `accepted`
    /// (`@all` accepts everything).
    pub fn unaccepted<'a>(&'a self, accepted: &[String]) -> Vec<&'a Anomaly> {
        self.anomalies
            .iter()
            .filter(|a| !a.accepted_by(accepted))
            .collect()
    }
}

fn fmt_num(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else if x.abs() >= 1e6 || (x != 0.0 && x.abs() < 1e-3) {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}

/// What a commit checks ([`crate::commit_dataset_validated`]): the output's expectations and
/// its baseline (or why there is none).
#[derive(Debug, Clone)]
pub struct ValidationPlan {
    /// The expectations (already [`Expectation::check`]ed).
    pub expectations: Vec<Expectation>,
    /// The baseline's URL and statistics, or why there is none.
    pub baseline: Result<(String, DatasetStats), String>,
}

impl ValidationPlan {
    /// [`validate`]s `stats` with this plan.
    pub fn validate(&self, stats: &DatasetStats) -> Validation {
        let baseline = match &self.baseline {
            Ok((url, stats)) => Ok(Baseline { url, stats }),
            Err(why) => Err(why.clone()),
        };
        validate(stats, &self.expectations, baseline)
    }
}

/// The baseline of [`validate`]: its URL and statistics.
pub struct Baseline<'a> {
    /// Where it is (reported in the validation).
    pub url: &'a str,
    /// Its statistics.
    pub stats: &'a DatasetStats,
}

/// Checks `stats` against `expectations` (and `baseline`, when there is one). Expectations
/// are assumed [`Expectation::check`]ed.
pub fn validate(
    stats: &DatasetStats,
    expectations: &[Expectation],
    baseline: Result<Baseline<'_>, String>,
) -> Validation {
    let mut v = Validation::default();
    let drifts = match &baseline {
        Ok(b) => {
            v.baseline = Some(b.url.to_string());
            drift(stats, b.stats)
        }
        Err(why) => {
            v.baseline_missing = Some(why.clone());
            Vec::new()
        }
    };
    let base = baseline.as_ref().ok();
    for e in expectations {
        match &e.column {
            None => check_table(stats, e, base, &mut v),
            Some(name) => match stats.column(name) {
                None => {
                    v.checks += 1;
                    v.anomalies.push(Anomaly {
                        column: Some(name.clone()),
                        check: CheckKind::MissingColumn,
                        expected: "present".into(),
                        actual: format!(
                            "absent (columns: {})",
                            stats
                                .columns
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
                Some(c) => check_column(stats.num_rows, c, e, base.is_some(), &drifts, &mut v),
            },
        }
    }
    v.drift = drifts;
    v
}

fn check_table(
    stats: &DatasetStats,
    e: &Expectation,
    base: Option<&Baseline<'_>>,
    v: &mut Validation,
) {
    let rows = stats.num_rows;
    if e.min_rows.is_some() || e.max_rows.is_some() {
        v.checks += 1;
        let lo = e.min_rows.unwrap_or(0);
        let hi = e.max_rows.unwrap_or(u64::MAX);
        if rows < lo || rows > hi {
            v.anomalies.push(Anomaly {
                column: None,
                check: CheckKind::Rows,
                expected: bounds(e.min_rows.map(|x| x as f64), e.max_rows.map(|x| x as f64)),
                actual: rows.to_string(),
            });
        }
    }
    if e.min_rows_ratio.is_some() || e.max_rows_ratio.is_some() {
        let Some(b) = base else {
            v.skipped.push(format!("{ACCEPT_ROWS}: rows_ratio"));
            return;
        };
        v.checks += 1;
        let ratio = rows as f64 / b.stats.num_rows.max(1) as f64;
        let ok = e.min_rows_ratio.is_none_or(|lo| ratio >= lo)
            && e.max_rows_ratio.is_none_or(|hi| ratio <= hi);
        if !ok {
            v.anomalies.push(Anomaly {
                column: None,
                check: CheckKind::RowsRatio,
                expected: bounds(e.min_rows_ratio, e.max_rows_ratio),
                actual: format!(
                    "{} ({rows} rows, baseline {})",
                    fmt_num(ratio),
                    b.stats.num_rows
                ),
            });
        }
    }
}

fn bounds(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo, hi) {
        (Some(a), Some(b)) => format!("in [{}, {}]", fmt_num(a), fmt_num(b)),
        (Some(a), None) => format!(">= {}", fmt_num(a)),
        (None, Some(b)) => format!("<= {}", fmt_num(b)),
        (None, None) => "anything".into(),
    }
}

fn check_column(
    num_rows: u64,
    c: &ColumnStats,
    e: &Expectation,
    has_baseline: bool,
    drifts: &[ColumnDrift],
    v: &mut Validation,
) {
    let mut fail = |check: CheckKind, expected: String, actual: String| {
        v.anomalies.push(Anomaly {
            column: Some(c.name.clone()),
            check,
            expected,
            actual,
        });
    };
    let mut checks = 0u64;
    if let Some(t) = &e.data_type {
        checks += 1;
        if *t != c.data_type {
            fail(CheckKind::Type, t.clone(), c.data_type.clone());
        }
    }
    if let Some(max) = e.max_null_fraction {
        checks += 1;
        let f = c.null_count as f64 / num_rows.max(1) as f64;
        if f > max {
            fail(
                CheckKind::NullFraction,
                format!("<= {}", fmt_num(max)),
                format!("{} ({} of {num_rows} rows)", fmt_num(f), c.null_count),
            );
        }
    }
    let numeric = c.numeric.as_ref().filter(|_| c.kind == ColumnKind::Numeric);
    let wants_numbers =
        e.min.is_some() || e.max.is_some() || e.min_mean.is_some() || e.max_mean.is_some();
    if wants_numbers {
        checks += 1;
        match numeric {
            None => fail(
                CheckKind::NotApplicable,
                "a numeric column (min/max/min_mean/max_mean)".into(),
                c.data_type.clone(),
            ),
            Some(n) => {
                if let (Some(lo), Some(min)) = (e.min, n.min)
                    && min < lo
                {
                    fail(CheckKind::Min, format!(">= {}", fmt_num(lo)), fmt_num(min));
                }
                if let (Some(hi), Some(max)) = (e.max, n.max)
                    && max > hi
                {
                    fail(CheckKind::Max, format!("<= {}", fmt_num(hi)), fmt_num(max));
                }
                if e.min_mean.is_some() || e.max_mean.is_some() {
                    match n.mean {
                        Some(m)
                            if e.min_mean.is_some_and(|lo| m < lo)
                                || e.max_mean.is_some_and(|hi| m > hi) =>
                        {
                            fail(CheckKind::Mean, bounds(e.min_mean, e.max_mean), fmt_num(m))
                        }
                        None => fail(
                            CheckKind::Mean,
                            bounds(e.min_mean, e.max_mean),
                            "no finite value".into(),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    if let Some(allowed) = &e.values {
        checks += 1;
        match c.string.as_ref().filter(|_| c.kind == ColumnKind::String) {
            None => fail(
                CheckKind::NotApplicable,
                "a string column (values)".into(),
                c.data_type.clone(),
            ),
            Some(s) => {
                let allowed: BTreeSet<&str> = allowed.iter().map(String::as_str).collect();
                let unexpected: Vec<_> = s
                    .ranked()
                    .iter()
                    .filter(|t| !allowed.contains(t.value.as_str()))
                    .collect();
                // Counts are upper bounds by at most `top_values_max_error`: take the lower
                // bound, so an anomaly is certain.
                let n: u64 = unexpected
                    .iter()
                    .map(|t| t.count.saturating_sub(s.top_values_max_error))
                    .sum();
                let f = n as f64 / s.count.max(1) as f64;
                let max = e.max_unexpected_fraction.unwrap_or(0.0);
                if f > max {
                    let listed: Vec<String> = unexpected
                        .iter()
                        .take(5)
                        .map(|t| format!("{:?} x{}", t.value, t.count))
                        .collect();
                    fail(
                        CheckKind::UnexpectedValues,
                        format!(
                            "<= {} outside {} allowed values",
                            fmt_num(max),
                            allowed.len()
                        ),
                        format!(
                            "{} ({n} of {} values: {})",
                            fmt_num(f),
                            s.count,
                            listed.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(max) = e.max_drift {
        if !has_baseline {
            v.skipped.push(format!("{}: drift", c.name));
        } else {
            checks += 1;
            match drifts.iter().find(|d| d.column == c.name) {
                None => fail(
                    CheckKind::NotApplicable,
                    "a column with a drift measure in both datasets".into(),
                    format!("{} (no comparable baseline column)", c.data_type),
                ),
                Some(d) if d.value > max => fail(
                    CheckKind::Drift,
                    format!("{:?} <= {}", d.measure, fmt_num(max)),
                    fmt_num(d.value),
                ),
                Some(_) => {}
            }
        }
    }
    v.checks += checks;
}

/// A starting set of expectations from one day's statistics (`kiln schema infer`): per
/// column its type; `max_null_fraction` 0 when it has no nulls, else the observed fraction
/// plus half of it and 0.02, rounded up to 0.01; for string columns with at most 20 distinct
/// values (all of them listed exactly) those `values` and `max_drift = 0.1`; for `label`
/// (if given) `min_mean`/`max_mean` at half and twice the observed rate; and a table entry
/// allowing half to twice the baseline's rows.
pub fn infer(stats: &DatasetStats, label: Option<&str>) -> ExpectationsFile {
    let mut out = vec![Expectation {
        min_rows: Some(1),
        min_rows_ratio: Some(0.5),
        max_rows_ratio: Some(2.0),
        ..Default::default()
    }];
    let rows = stats.num_rows.max(1) as f64;
    for c in &stats.columns {
        let mut e = Expectation {
            column: Some(c.name.clone()),
            data_type: Some(c.data_type.clone()),
            ..Default::default()
        };
        let nulls = c.null_count as f64 / rows;
        e.max_null_fraction = Some(if c.null_count == 0 {
            0.0
        } else {
            ((nulls * 1.5 + 0.02) * 100.0).ceil().min(100.0) / 100.0
        });
        if let Some(s) = &c.string
            && c.kind == ColumnKind::String
            && c.list.is_none()
            && s.top_values_max_error == 0
            && s.top_values.len() < super::TOP_K
            && !s.top_values.is_empty()
        {
            let mut values: Vec<String> = s.top_values.iter().map(|t| t.value.clone()).collect();
            values.sort();
            e.values = Some(values);
            e.max_drift = Some(0.1);
        }
        if Some(c.name.as_str()) == label
            && let Some(m) = c.numeric.as_ref().and_then(|n| n.mean)
        {
            e.min_mean = Some(m / 2.0);
            e.max_mean = Some((m * 2.0).min(1.0));
        }
        out.push(e);
    }
    ExpectationsFile { expect: out }
}
