//! Drift between two [`DatasetStats`] (current vs baseline), as TFDV measures it.
//!
//! * String columns (and list-of-string items): **L-infinity distance** between the
//!   value distributions given by the rank histogram (every value while there are fewer than
//!   768; `top_values` for statistics written before it existed), each normalised by the sum
//!   of its own listed counts (as TFDV's `LInftyDistance` does over the rank histogram it
//!   has): the largest absolute difference of one value's share, over the union of the
//!   values. In [0, 1].
//! * Numeric columns: **Jensen–Shannon divergence** (log base 2, so in [0, 1]) between the
//!   equal-width histograms. Both histograms are rebucketed onto the union of their bucket
//!   boundaries assuming values are uniform inside a bucket (TFDV's rebucketing); a bucket of
//!   zero width (a constant column) falls into the elementary interval starting at its value;
//!   NaN counts form one more bucket on both sides. When exactly one side has no values the
//!   divergence is 1.
//!
//! Binary and `other` columns, and columns missing from either side or summarised as another
//! kind, get no drift entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Bucket, ColumnKind, DatasetStats};

/// Which distance a [`ColumnDrift`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMeasure {
    /// L-infinity distance of normalised top-value counts (categorical columns).
    LInfinity,
    /// Jensen–Shannon divergence (log2) of histograms (numeric columns).
    JensenShannon,
}

/// The drift of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    /// Column name.
    pub column: String,
    /// The measure.
    pub measure: DriftMeasure,
    /// Its value, in [0, 1].
    pub value: f64,
}

/// Drift of each column of `current` that `baseline` also has (same kind), in `current`'s
/// column order.
pub fn drift(current: &DatasetStats, baseline: &DatasetStats) -> Vec<ColumnDrift> {
    let mut out = Vec::new();
    for c in &current.columns {
        let Some(b) = baseline.column(&c.name) else {
            continue;
        };
        if b.kind != c.kind || b.list.is_some() != c.list.is_some() {
            continue;
        }
        match (c.kind, &c.numeric, &b.numeric, &c.string, &b.string) {
            (ColumnKind::Numeric, Some(cn), Some(bn), _, _) => out.push(ColumnDrift {
                column: c.name.clone(),
                measure: DriftMeasure::JensenShannon,
                value: jensen_shannon(&cn.histogram, cn.nan_count, &bn.histogram, bn.nan_count),
            }),
            (ColumnKind::String, _, _, Some(cs), Some(bs)) => {
                let (a, b) = (value_counts(cs), value_counts(bs));
                out.push(ColumnDrift {
                    column: c.name.clone(),
                    measure: DriftMeasure::LInfinity,
                    value: l_infinity(&a, &b),
                });
            }
            _ => {}
        }
    }
    out
}

/// A string column's values with their counts, most frequent first.
fn value_counts(s: &super::StringStats) -> Vec<(&str, u64)> {
    s.ranked()
        .iter()
        .map(|v| (v.value.as_str(), v.count))
        .collect()
}

/// L-infinity distance between two value -> count maps, each normalised by its own total.
pub fn l_infinity(a: &[(&str, u64)], b: &[(&str, u64)]) -> f64 {
    let ta: u64 = a.iter().map(|x| x.1).sum();
    let tb: u64 = b.iter().map(|x| x.1).sum();
    if ta == 0 && tb == 0 {
        return 0.0;
    }
    let mut shares: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for &(v, n) in a {
        shares.entry(v).or_default().0 += n as f64 / ta.max(1) as f64;
    }
    for &(v, n) in b {
        shares.entry(v).or_default().1 += n as f64 / tb.max(1) as f64;
    }
    shares
        .values()
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
}

/// Spreads `buckets` over the elementary intervals between `bounds` (uniform within a bucket).
fn rebucket(buckets: &[Bucket], bounds: &[f64]) -> Vec<f64> {
    let cells = bounds.len().saturating_sub(1).max(1);
    let mut out = vec![0.0; cells];
    for bk in buckets {
        if bk.count == 0.0 {
            continue;
        }
        let width = bk.high - bk.low;
        if width <= 0.0 {
            let i = bounds.partition_point(|&x| x < bk.low).min(cells - 1);
            out[i] += bk.count;
            continue;
        }
        for i in 0..bounds.len().saturating_sub(1) {
            let lo = bounds[i].max(bk.low);
            let hi = bounds[i + 1].min(bk.high);
            if hi > lo {
                out[i] += bk.count * (hi - lo) / width;
            }
        }
    }
    out
}

/// Jensen–Shannon divergence (log2) between two histograms (plus NaN counts), rebucketed onto
/// common boundaries.
pub fn jensen_shannon(a: &[Bucket], a_nan: u64, b: &[Bucket], b_nan: u64) -> f64 {
    let mut bounds: Vec<f64> = a
        .iter()
        .chain(b)
        .flat_map(|bk| [bk.low, bk.high])
        .filter(|x| x.is_finite())
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let mut p = rebucket(a, &bounds);
    let mut q = rebucket(b, &bounds);
    p.push(a_nan as f64);
    q.push(b_nan as f64);
    let (tp, tq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    match (tp > 0.0, tq > 0.0) {
        (false, false) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        _ => {}
    }
    let mut js = 0.0;
    for (x, y) in p.iter().zip(&q) {
        let (x, y) = (x / tp, y / tq);
        let m = 0.5 * (x + y);
        if x > 0.0 {
            js += 0.5 * x * (x / m).log2();
        }
        if y > 0.0 {
            js += 0.5 * y * (y / m).log2();
        }
    }
    js.clamp(0.0, 1.0)
}
