//! Per-column accumulators: exact counters, Chan et al. mean/variance, the KLL quantiles sketch,
//! HLL distinct counts and the frequent-items sketch; Arrow arrays -> values.

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array};
use arrow::compute::{cast, filter, is_not_null};
use arrow::datatypes::DataType;
use datasketches::frequencies::{ErrorType, FrequentItemsSketch};
use datasketches::hash::value::raw_bytes;
use datasketches::hll::{HllSketch, HllType, HllUnion};

use super::kll::Kll;
use super::state::{Reader, put_blob, put_f64, put_u64};
use super::{
    Bucket, ColumnKind, ColumnStats, HISTOGRAM_BUCKETS, HLL_LG_K, ListStats, MAX_TOP_VALUE_BYTES,
    NON_UTF8_VALUE, NumericStats, QUANTILES, RANK_HISTOGRAM_VALUES, StringStats, TOP_K,
    TOP_VALUES_MAP_SIZE, ValueCount,
};
use crate::error::{Error, Result};

fn bad_state(what: &str) -> Error {
    Error::Options(format!("statistics state: {what}"))
}

/// How the values of a column (or the items of a list column) are summarised.
pub(crate) fn value_kind(dt: &DataType) -> ColumnKind {
    use DataType::*;
    match dt {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float16
        | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..)
        | Date32 | Date64 | Time32(_) | Time64(_) | Timestamp(..) | Duration(_) => {
            ColumnKind::Numeric
        }
        Utf8 | LargeUtf8 | Utf8View => ColumnKind::String,
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => ColumnKind::Bytes,
        Dictionary(_, v) => value_kind(v),
        _ => ColumnKind::Other,
    }
}

/// The item type when `dt` is a list type.
pub(crate) fn list_item(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

fn arrow_err(column: &str, e: arrow::error::ArrowError) -> Error {
    Error::arrow(format!("statistics of column '{column}'"), e)
}

/// Non-null values of a numeric (or boolean) array as f64, appended to `out`.
fn numeric_values(column: &str, arr: &dyn Array, out: &mut Vec<f64>) -> Result<()> {
    use DataType::*;
    match arr.data_type() {
        Boolean => {
            let b = arr.as_boolean();
            out.extend(b.iter().flatten().map(|v| if v { 1.0 } else { 0.0 }));
        }
        Float64 => out.extend(
            arr.as_primitive::<arrow::datatypes::Float64Type>()
                .iter()
                .flatten(),
        ),
        Dictionary(_, v) => {
            let unpacked = cast(arr, v).map_err(|e| arrow_err(column, e))?;
            numeric_values(column, &unpacked, out)?;
        }
        // Temporal types: the integer in the column's own unit (reinterpreted, not converted).
        Date32 | Time32(_) => {
            let data = arr.to_data().into_builder().data_type(Int32);
            let ints = Int32Array::from(data.build().map_err(|e| arrow_err(column, e))?);
            out.extend(ints.iter().flatten().map(f64::from));
        }
        Date64 | Time64(_) | Timestamp(..) | Duration(_) => {
            let data = arr.to_data().into_builder().data_type(Int64);
            let ints = Int64Array::from(data.build().map_err(|e| arrow_err(column, e))?);
            out.extend(ints.iter().flatten().map(|v| v as f64));
        }
        _ => {
            let f = cast(arr, &Float64).map_err(|e| arrow_err(column, e))?;
            let f: &Float64Array = f.as_primitive();
            out.extend(f.iter().flatten());
        }
    }
    Ok(())
}

/// Calls `f` with each non-null value of a string/binary array.
fn for_each_bytes(column: &str, arr: &dyn Array, f: &mut dyn FnMut(&[u8])) -> Result<()> {
    use DataType::*;
    match arr.data_type() {
        Utf8 => arr
            .as_string::<i32>()
            .iter()
            .flatten()
            .for_each(|s| f(s.as_bytes())),
        LargeUtf8 => arr
            .as_string::<i64>()
            .iter()
            .flatten()
            .for_each(|s| f(s.as_bytes())),
        Utf8View => arr
            .as_string_view()
            .iter()
            .flatten()
            .for_each(|s| f(s.as_bytes())),
        Binary => arr.as_binary::<i32>().iter().flatten().for_each(f),
        LargeBinary => arr.as_binary::<i64>().iter().flatten().for_each(f),
        BinaryView => arr.as_binary_view().iter().flatten().for_each(f),
        FixedSizeBinary(_) => arr.as_fixed_size_binary().iter().flatten().for_each(f),
        Dictionary(_, v) => {
            let unpacked = cast(arr, v).map_err(|e| arrow_err(column, e))?;
            for_each_bytes(column, &unpacked, f)?;
        }
        other => {
            return Err(Error::Schema(format!(
                "statistics of column '{column}': {other} is not a string type"
            )));
        }
    }
    Ok(())
}

/// Exact moments (Chan et al.) plus the KLL sketch of the finite values.
#[derive(Debug, Clone)]
pub(crate) struct NumericAcc {
    count: u64,
    nan: u64,
    inf: u64,
    zeros: u64,
    min: f64,
    max: f64,
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
    kll: Kll,
}

impl Default for NumericAcc {
    fn default() -> Self {
        NumericAcc {
            count: 0,
            nan: 0,
            inf: 0,
            zeros: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            kll: Kll::default(),
        }
    }
}

impl NumericAcc {
    /// Adds the values (non-null) of one batch: NaN and infinities are counted apart.
    fn update(&mut self, values: &mut Vec<f64>) {
        values.retain(|v| {
            if v.is_nan() {
                self.nan += 1;
                false
            } else if v.is_infinite() {
                self.inf += 1;
                false
            } else {
                true
            }
        });
        if values.is_empty() {
            return;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let mut m2 = 0.0;
        let mut batch = NumericAcc {
            count: values.len() as u64,
            mean,
            ..Default::default()
        };
        for &v in values.iter() {
            m2 += (v - mean) * (v - mean);
            if v == 0.0 {
                self.zeros += 1;
            }
            if v < self.min {
                self.min = v;
            }
            if v > self.max {
                self.max = v;
            }
            self.kll.update(v);
        }
        batch.m2 = m2;
        self.combine_moments(batch.count, batch.mean, batch.m2);
        self.count += batch.count;
    }

    /// Chan, Golub, LeVeque: pooled mean and sum of squared deviations (count not updated).
    fn combine_moments(&mut self, nb: u64, mean_b: f64, m2_b: f64) {
        if nb == 0 {
            return;
        }
        if self.count == 0 {
            self.mean = mean_b;
            self.m2 = m2_b;
            return;
        }
        let na = self.count as f64;
        let nbf = nb as f64;
        let n = na + nbf;
        let delta = mean_b - self.mean;
        self.mean += delta * nbf / n;
        self.m2 += m2_b + delta * delta * na * nbf / n;
    }

    fn merge(&mut self, o: &NumericAcc) {
        self.combine_moments(o.count, o.mean, o.m2);
        self.count += o.count;
        self.nan += o.nan;
        self.inf += o.inf;
        self.zeros += o.zeros;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.kll.merge(&o.kll);
    }

    fn finish(&self) -> NumericStats {
        let has = self.count > 0;
        let ranks: Vec<f64> = (0..=QUANTILES)
            .map(|i| i as f64 / QUANTILES as f64)
            .collect();
        let quantiles = self.kll.quantiles(&ranks).unwrap_or_default();
        let histogram = if has {
            equi_width_histogram(&self.kll, self.min, self.max)
        } else {
            Vec::new()
        };
        let quantiles_histogram = quantiles
            .windows(2)
            .map(|w| Bucket {
                low: w[0],
                high: w[1],
                count: self.count as f64 / QUANTILES as f64,
            })
            .collect();
        NumericStats {
            count: self.count,
            nan_count: self.nan,
            inf_count: self.inf,
            min: has.then_some(self.min),
            max: has.then_some(self.max),
            mean: has.then_some(self.mean),
            std_dev: has.then(|| (self.m2 / self.count as f64).max(0.0).sqrt()),
            zeros: self.zeros,
            quantiles,
            histogram,
            quantiles_histogram,
            rank_error: self.kll_rank_error(),
        }
    }

    fn kll_rank_error(&self) -> f64 {
        if self.kll.num_retained() as u64 == self.kll.n() {
            0.0
        } else {
            super::KLL_RANK_ERROR
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for v in [self.count, self.nan, self.inf, self.zeros] {
            put_u64(out, v);
        }
        for v in [self.min, self.max, self.mean, self.m2] {
            put_f64(out, v);
        }
        self.kll.to_bytes(out);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        Ok(NumericAcc {
            count: r.u64()?,
            nan: r.u64()?,
            inf: r.u64()?,
            zeros: r.u64()?,
            min: r.f64()?,
            max: r.f64()?,
            mean: r.f64()?,
            m2: r.f64()?,
            kll: Kll::from_bytes(r)?,
        })
    }
}

/// TFDV's "standard" histogram: `HISTOGRAM_BUCKETS` equal-width buckets over [min, max], the
/// counts read off the sketch's CDF (exact while the sketch is exact); the last bucket is closed.
fn equi_width_histogram(kll: &Kll, min: f64, max: f64) -> Vec<Bucket> {
    let n = kll.n() as f64;
    if min == max {
        return vec![Bucket {
            low: min,
            high: max,
            count: n,
        }];
    }
    let width = (max - min) / HISTOGRAM_BUCKETS as f64;
    let mut bounds: Vec<f64> = (0..=HISTOGRAM_BUCKETS)
        .map(|i| min + width * i as f64)
        .collect();
    bounds[HISTOGRAM_BUCKETS] = max;
    let inner = &bounds[1..HISTOGRAM_BUCKETS];
    let below = kll.counts_below(inner).unwrap_or_default();
    let mut prev = 0.0;
    let mut out = Vec::with_capacity(HISTOGRAM_BUCKETS);
    for i in 0..HISTOGRAM_BUCKETS {
        let cum = if i + 1 < HISTOGRAM_BUCKETS {
            below[i]
        } else {
            n
        };
        out.push(Bucket {
            low: bounds[i],
            high: bounds[i + 1],
            count: cum - prev,
        });
        prev = cum;
    }
    out
}

/// Strings / binary: lengths (exact), HLL distinct count, frequent items.
#[derive(Debug, Clone)]
pub(crate) struct BytesAcc {
    count: u64,
    total_len: u64,
    min_len: u64,
    max_len: u64,
    hll: HllSketch,
    freq: FrequentItemsSketch<String>,
}

impl Default for BytesAcc {
    fn default() -> Self {
        BytesAcc {
            count: 0,
            total_len: 0,
            min_len: u64::MAX,
            max_len: 0,
            hll: HllSketch::new(HLL_LG_K, HllType::Hll8).expect("valid HLL parameters"),
            freq: FrequentItemsSketch::new(TOP_VALUES_MAP_SIZE).expect("valid map size"),
        }
    }
}

/// The top-k key of a value: the UTF-8 text cut to `MAX_TOP_VALUE_BYTES` at a char boundary, or
/// TFDV's `__BYTES_VALUE__` for non-UTF-8 bytes.
fn top_key(b: &[u8]) -> &str {
    match std::str::from_utf8(b) {
        Ok(s) if s.len() <= MAX_TOP_VALUE_BYTES => s,
        Ok(s) => {
            let mut end = MAX_TOP_VALUE_BYTES;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        Err(_) => NON_UTF8_VALUE,
    }
}

/// DataSketches writes an HLL sketch in list or set mode as its coupons in hash-table slot
/// order, and reading them back re-inserts them, so slots (and the next bytes) can move. Sorting
/// the coupons gives one image per coupon set, stable through any number of round trips.
fn canonical_hll(mut bytes: Vec<u8>) -> Vec<u8> {
    const LIST_MODE: u8 = 0;
    const SET_MODE: u8 = 1;
    if bytes.len() < 8 || !matches!(bytes[7] & 0x3, LIST_MODE | SET_MODE) {
        return bytes;
    }
    let start = bytes[0] as usize * 4;
    if start > bytes.len() || !(bytes.len() - start).is_multiple_of(4) {
        return bytes;
    }
    let mut coupons: Vec<u32> = bytes[start..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    coupons.sort_unstable();
    for (dst, c) in bytes[start..].chunks_exact_mut(4).zip(coupons) {
        dst.copy_from_slice(&c.to_le_bytes());
    }
    bytes
}

impl BytesAcc {
    fn update(&mut self, b: &[u8]) {
        let len = b.len() as u64;
        self.count += 1;
        self.total_len += len;
        self.min_len = self.min_len.min(len);
        self.max_len = self.max_len.max(len);
        self.hll.update(raw_bytes::from_slice(b));
        self.freq.update_ref(top_key(b));
    }

    fn merge(&mut self, o: &BytesAcc) {
        self.count += o.count;
        self.total_len += o.total_len;
        self.min_len = self.min_len.min(o.min_len);
        self.max_len = self.max_len.max(o.max_len);
        let mut union = HllUnion::new(HLL_LG_K).expect("valid HLL parameters");
        union.update(&self.hll);
        union.update(&o.hll);
        self.hll = union.to_sketch(HllType::Hll8);
        self.freq.merge(&o.freq);
    }

    fn finish(&self) -> StringStats {
        let mut rows = self.freq.frequent_items(ErrorType::NoFalsePositives);
        rows.sort_by(|a, b| {
            b.estimate()
                .cmp(&a.estimate())
                .then_with(|| a.item().cmp(b.item()))
        });
        let rank_histogram: Vec<ValueCount> = rows
            .into_iter()
            .take(RANK_HISTOGRAM_VALUES)
            .map(|r| ValueCount {
                value: r.item().clone(),
                count: r.estimate(),
            })
            .collect();
        let top_values = rank_histogram.iter().take(TOP_K).cloned().collect();
        let has = self.count > 0;
        StringStats {
            count: self.count,
            distinct: if has {
                (self.hll.estimate().round() as u64).clamp(1, self.count)
            } else {
                0
            },
            top_values,
            top_values_max_error: self.freq.maximum_error(),
            rank_histogram,
            avg_length: if has {
                self.total_len as f64 / self.count as f64
            } else {
                0.0
            },
            min_length: if has { self.min_len } else { 0 },
            max_length: self.max_len,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for v in [self.count, self.total_len, self.min_len, self.max_len] {
            put_u64(out, v);
        }
        put_blob(out, &canonical_hll(self.hll.serialize()));
        put_blob(out, &self.freq.serialize());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        let count = r.u64()?;
        let total_len = r.u64()?;
        let min_len = r.u64()?;
        let max_len = r.u64()?;
        let hll = HllSketch::deserialize(r.blob()?)
            .map_err(|e| bad_state(&format!("HLL sketch: {e}")))?;
        let freq = FrequentItemsSketch::<String>::deserialize(r.blob()?)
            .map_err(|e| bad_state(&format!("frequent items sketch: {e}")))?;
        Ok(BytesAcc {
            count,
            total_len,
            min_len,
            max_len,
            hll,
            freq,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ValuesAcc {
    Numeric(Box<NumericAcc>),
    Bytes(Box<BytesAcc>),
    None,
}

impl ValuesAcc {
    fn new(kind: ColumnKind) -> Self {
        match kind {
            ColumnKind::Numeric => ValuesAcc::Numeric(Box::default()),
            ColumnKind::String | ColumnKind::Bytes => ValuesAcc::Bytes(Box::default()),
            ColumnKind::Other => ValuesAcc::None,
        }
    }

    fn update(&mut self, column: &str, arr: &dyn Array, scratch: &mut Vec<f64>) -> Result<()> {
        match self {
            ValuesAcc::Numeric(acc) => {
                scratch.clear();
                numeric_values(column, arr, scratch)?;
                acc.update(scratch);
            }
            ValuesAcc::Bytes(acc) => for_each_bytes(column, arr, &mut |b| acc.update(b))?,
            ValuesAcc::None => {}
        }
        Ok(())
    }

    fn merge(&mut self, other: &ValuesAcc) {
        match (self, other) {
            (ValuesAcc::Numeric(a), ValuesAcc::Numeric(b)) => a.merge(b),
            (ValuesAcc::Bytes(a), ValuesAcc::Bytes(b)) => a.merge(b),
            _ => {}
        }
    }
}

/// Lengths of the non-null lists.
#[derive(Debug, Clone)]
pub(crate) struct ListAcc {
    count: u64,
    total: u64,
    min: u64,
    max: u64,
}

impl Default for ListAcc {
    fn default() -> Self {
        ListAcc {
            count: 0,
            total: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl ListAcc {
    fn add(&mut self, len: u64) {
        self.count += 1;
        self.total += len;
        self.min = self.min.min(len);
        self.max = self.max.max(len);
    }
    fn merge(&mut self, o: &ListAcc) {
        self.count += o.count;
        self.total += o.total;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Everything kept for one column.
#[derive(Debug, Clone)]
pub(crate) struct ColumnAcc {
    pub(crate) name: String,
    data_type: DataType,
    kind: ColumnKind,
    count: u64,
    null_count: u64,
    list: Option<ListAcc>,
    values: ValuesAcc,
}

impl ColumnAcc {
    pub(crate) fn new(name: &str, data_type: &DataType) -> Self {
        let item = list_item(data_type);
        let kind = value_kind(item.unwrap_or(data_type));
        ColumnAcc {
            name: name.to_string(),
            data_type: data_type.clone(),
            kind,
            count: 0,
            null_count: 0,
            list: item.map(|_| ListAcc::default()),
            values: ValuesAcc::new(kind),
        }
    }

    pub(crate) fn update(&mut self, arr: &ArrayRef, scratch: &mut Vec<f64>) -> Result<()> {
        let nulls = arr.logical_null_count();
        self.null_count += nulls as u64;
        self.count += (arr.len() - nulls) as u64;
        if self.list.is_none() {
            return self.values.update(&self.name, arr.as_ref(), scratch);
        }
        let non_null: ArrayRef = if nulls > 0 {
            let mask = is_not_null(arr).map_err(|e| arrow_err(&self.name, e))?;
            filter(arr, &mask).map_err(|e| arrow_err(&self.name, e))?
        } else {
            arr.clone()
        };
        let list = self.list.as_mut().expect("list column");
        let items: ArrayRef = match non_null.data_type() {
            DataType::List(_) => {
                let l = non_null.as_list::<i32>();
                let offs = l.value_offsets();
                offs.windows(2).for_each(|w| list.add((w[1] - w[0]) as u64));
                let (first, last) = (offs[0] as usize, offs[offs.len() - 1] as usize);
                l.values().slice(first, last - first)
            }
            DataType::LargeList(_) => {
                let l = non_null.as_list::<i64>();
                let offs = l.value_offsets();
                offs.windows(2).for_each(|w| list.add((w[1] - w[0]) as u64));
                let (first, last) = (offs[0] as usize, offs[offs.len() - 1] as usize);
                l.values().slice(first, last - first)
            }
            DataType::FixedSizeList(_, size) => {
                let l = non_null.as_fixed_size_list();
                let size = *size as usize;
                (0..l.len()).for_each(|_| list.add(size as u64));
                let start = if l.is_empty() {
                    0
                } else {
                    l.value_offset(0) as usize
                };
                l.values().slice(start, l.len() * size)
            }
            other => {
                return Err(Error::Schema(format!(
                    "statistics of column '{}': expected a list, got {other}",
                    self.name
                )));
            }
        };
        self.values.update(&self.name, items.as_ref(), scratch)
    }

    pub(crate) fn merge(&mut self, other: &ColumnAcc) {
        self.count += other.count;
        self.null_count += other.null_count;
        if let (Some(a), Some(b)) = (self.list.as_mut(), other.list.as_ref()) {
            a.merge(b);
        }
        self.values.merge(&other.values);
    }

    pub(crate) fn finish(&self) -> ColumnStats {
        let (numeric, string) = match &self.values {
            ValuesAcc::Numeric(a) => (Some(a.finish()), None),
            ValuesAcc::Bytes(a) => (None, Some(a.finish())),
            ValuesAcc::None => (None, None),
        };
        ColumnStats {
            name: self.name.clone(),
            data_type: self.data_type.to_string(),
            kind: self.kind,
            count: self.count,
            null_count: self.null_count,
            list: self.list.as_ref().map(|l| ListStats {
                min_length: if l.count > 0 { l.min } else { 0 },
                max_length: l.max,
                mean_length: if l.count > 0 {
                    l.total as f64 / l.count as f64
                } else {
                    0.0
                },
                total_values: l.total,
            }),
            numeric,
            string,
        }
    }

    fn tag(&self) -> u8 {
        let kind = match self.kind {
            ColumnKind::Numeric => 1,
            ColumnKind::String => 2,
            ColumnKind::Bytes => 3,
            ColumnKind::Other => 4,
        };
        kind | if self.list.is_some() { 0x10 } else { 0 }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        put_blob(out, self.name.as_bytes());
        out.push(self.tag());
        put_u64(out, self.count);
        put_u64(out, self.null_count);
        if let Some(l) = &self.list {
            for v in [l.count, l.total, l.min, l.max] {
                put_u64(out, v);
            }
        }
        match &self.values {
            ValuesAcc::Numeric(a) => a.write(out),
            ValuesAcc::Bytes(a) => a.write(out),
            ValuesAcc::None => {}
        }
    }

    /// Reads a column written by [`ColumnAcc::write`] into `self` (a fresh accumulator for the
    /// same schema field), checking name and kind.
    pub(crate) fn read_into(&mut self, r: &mut Reader<'_>) -> Result<()> {
        let name = r.blob()?;
        if name != self.name.as_bytes() {
            return Err(bad_state(&format!(
                "column '{}' found where '{}' was expected",
                String::from_utf8_lossy(name),
                self.name
            )));
        }
        if r.u8()? != self.tag() {
            return Err(bad_state(&format!(
                "column '{}' was summarised as another type",
                self.name
            )));
        }
        self.count = r.u64()?;
        self.null_count = r.u64()?;
        if let Some(l) = self.list.as_mut() {
            l.count = r.u64()?;
            l.total = r.u64()?;
            l.min = r.u64()?;
            l.max = r.u64()?;
        }
        self.values = match &self.values {
            ValuesAcc::Numeric(_) => ValuesAcc::Numeric(Box::new(NumericAcc::read(r)?)),
            ValuesAcc::Bytes(_) => ValuesAcc::Bytes(Box::new(BytesAcc::read(r)?)),
            ValuesAcc::None => ValuesAcc::None,
        };
        Ok(())
    }
}
