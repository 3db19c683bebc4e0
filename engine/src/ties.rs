//! A total order for rows whose keys are equal: the sort before the shard writers orders rows
//! by (shard, key) only, so rows sharing a key (a non-unique key, or nulls) would reach the
//! writer in whatever order the plan produced them, which differs between runs, partition
//! counts and local vs cluster execution. [`TieBreaker`] sits between the sort and one shard
//! writer and orders each run of equal keys by all columns (Arrow's row format: a total order
//! over every type, floats by `total_cmp`), so shard bytes depend only on the rows.
//!
//! It costs one key comparison per row when keys are unique: only runs of two or more rows are
//! re-sorted, and only the last run of each batch is held back (it may continue in the next).

use std::ops::Range;

use datafusion::arrow::array::{RecordBatch, UInt32Array, make_comparator};
use datafusion::arrow::compute::{SortOptions, concat_batches, partition, take_record_batch};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::Result as DfResult;

/// Orders runs of equal keys by all columns, for one shard's rows arriving sorted by key.
pub(crate) struct TieBreaker {
    key: usize,
    /// The last run of equal keys seen, held until a different key (or the end) shows it is
    /// complete.
    held: Option<RecordBatch>,
    converter: Option<RowConverter>,
}

impl TieBreaker {
    /// Rows are ordered by column `key` already.
    pub(crate) fn new(key: usize) -> Self {
        TieBreaker {
            key,
            held: None,
            converter: None,
        }
    }

    /// Takes the next rows of the shard (sorted by key, continuing the previous ones) and
    /// returns the rows now ready to write, in their final order.
    pub(crate) fn push(&mut self, batch: RecordBatch) -> DfResult<Vec<RecordBatch>> {
        let mut out = Vec::new();
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        let mut ranges: Vec<Range<usize>> = partition(&[batch.column(self.key).clone()])?.ranges();
        if let Some(held) = self.held.take() {
            let same = make_comparator(
                held.column(self.key).as_ref(),
                batch.column(self.key).as_ref(),
                SortOptions::default(),
            )?(0, 0)
            .is_eq();
            if same {
                let first = ranges.remove(0);
                let run = concat_batches(
                    &batch.schema(),
                    [&held, &batch.slice(first.start, first.len())],
                )?;
                if ranges.is_empty() {
                    self.held = Some(run);
                    return Ok(out);
                }
                out.push(self.ordered(run)?);
            } else {
                out.push(self.ordered(held)?);
            }
        }
        let last = ranges.pop().expect("a non-empty batch has a range");
        // Consecutive single-row runs are written as one slice.
        let mut singles: Option<Range<usize>> = None;
        for r in ranges {
            if r.len() == 1 {
                singles = Some(singles.map_or(r.clone(), |s| s.start..r.end));
                continue;
            }
            if let Some(s) = singles.take() {
                out.push(batch.slice(s.start, s.len()));
            }
            out.push(self.ordered(batch.slice(r.start, r.len()))?);
        }
        if let Some(s) = singles {
            out.push(batch.slice(s.start, s.len()));
        }
        self.held = Some(batch.slice(last.start, last.len()));
        Ok(out)
    }

    /// The end of the shard: the held run, ordered.
    pub(crate) fn finish(&mut self) -> DfResult<Option<RecordBatch>> {
        self.held.take().map(|run| self.ordered(run)).transpose()
    }

    /// One run of equal keys ordered by all its columns.
    fn ordered(&mut self, run: RecordBatch) -> DfResult<RecordBatch> {
        if run.num_rows() < 2 {
            return Ok(run);
        }
        let converter = match &mut self.converter {
            Some(c) => c,
            None => self.converter.insert(RowConverter::new(
                run.schema()
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?),
        };
        let rows = converter.convert_columns(run.columns())?;
        let mut idx: Vec<u32> = (0..run.num_rows() as u32).collect();
        idx.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
        Ok(take_record_batch(&run, &UInt32Array::from(idx))?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};

    use super::*;

    fn batch(keys: &[Option<i64>], values: &[f64], names: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Float64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(Float64Array::from(values.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    /// Every row the breaker emits for `batches`, as (key, value, name).
    fn run(batches: Vec<RecordBatch>) -> Vec<(Option<i64>, f64, String)> {
        let mut t = TieBreaker::new(0);
        let mut out = Vec::new();
        for b in batches {
            out.extend(t.push(b).unwrap());
        }
        out.extend(t.finish().unwrap());
        out.iter()
            .flat_map(|b| {
                let k = b.column(0).as_primitive::<Int64Type>().clone();
                let v = b.column(1).as_primitive::<Float64Type>().clone();
                let s = b.column(2).as_string::<i32>().clone();
                (0..b.num_rows())
                    .map(|i| {
                        (
                            k.is_valid(i).then(|| k.value(i)),
                            v.value(i),
                            s.value(i).to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The same rows, in different orders within equal keys and split into batches at
    /// different places (including inside a run), come out identical and fully ordered.
    #[test]
    fn equal_keys_come_out_in_one_order_whatever_the_arrival() {
        let a = run(vec![batch(
            &[None, None, Some(1), Some(2), Some(2), Some(2), Some(3)],
            &[2.0, 1.0, 5.0, 9.0, f64::NAN, -1.0, 0.0],
            &["b", "a", "x", "p", "q", "r", "z"],
        )]);
        let b = run(vec![
            batch(
                &[None, None, Some(1), Some(2)],
                &[1.0, 2.0, 5.0, -1.0],
                &["a", "b", "x", "r"],
            ),
            batch(&[Some(2)], &[f64::NAN], &["q"]),
            batch(&[Some(2), Some(3)], &[9.0, 0.0], &["p", "z"]),
        ]);
        let fmt = |r: &[(Option<i64>, f64, String)]| format!("{r:?}");
        assert_eq!(fmt(&a), fmt(&b));
        let keys: Vec<_> = a.iter().map(|r| r.0).collect();
        assert_eq!(
            keys,
            [None, None, Some(1), Some(2), Some(2), Some(2), Some(3)]
        );
        // Ties ordered by the next column (total order: -1 < 9 < NaN).
        assert_eq!(a[0].1, 1.0);
        assert_eq!(a[3].1, -1.0);
        assert_eq!(a[4].1, 9.0);
        assert!(a[5].1.is_nan());
    }

    #[test]
    fn unique_keys_pass_through_unchanged() {
        let rows = run(vec![
            batch(&[Some(1), Some(2)], &[3.0, 1.0], &["c", "a"]),
            batch(&[Some(3)], &[2.0], &["b"]),
        ]);
        let names: Vec<_> = rows.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
    }
}
