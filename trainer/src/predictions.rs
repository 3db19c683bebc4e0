//! The predictions file of `kiln predict --output` (and the pipeline's evaluate step):
//! CSV `shard,row,label,logit,prediction`, written and read with Arrow's CSV writer and
//! reader. Floats are written in their shortest round-trip form, so a logit read back is
//! bit-identical to the one written (the pipeline's publish step relies on it).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt32Type, UInt64Type};

use crate::{Error, Result};

/// The file's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::UInt32, false),
        Field::new("row", DataType::UInt64, false),
        Field::new("label", DataType::Float32, false),
        Field::new("logit", DataType::Float32, false),
        Field::new("prediction", DataType::Float32, false),
    ]))
}

/// CSV bytes (with a header) of scored rows: `rows[i] = (shard, row)` of `logits[i]`.
pub fn to_csv(logits: &[f32], labels: &[f32], rows: &[(u32, u64)]) -> Result<Vec<u8>> {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float32Array::from(labels.to_vec())),
            Arc::new(Float32Array::from(logits.to_vec())),
            Arc::new(Float32Array::from_iter_values(
                logits.iter().map(|&z| crate::model::sigmoid(z)),
            )),
        ],
    )
    .map_err(|e| Error::invalid("predictions", format!("building the batch: {e}")))?;
    let mut out = Vec::with_capacity(logits.len() * 32);
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        w.write(&batch)
            .map_err(|e| Error::invalid("predictions", format!("writing CSV: {e}")))?;
    }
    Ok(out)
}

/// The logits of a predictions file by `(shard, row)`; `what` names the file in errors.
pub fn logits_by_row(csv: &[u8], what: &str) -> Result<HashMap<(u32, u64), f32>> {
    let reader = arrow::csv::ReaderBuilder::new(schema())
        .with_header(true)
        .build(std::io::Cursor::new(csv))
        .map_err(|e| Error::invalid(what, format!("not a predictions CSV: {e}")))?;
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::invalid(what, format!("bad predictions CSV: {e}")))?;
        let shards = batch.column(0).as_primitive::<UInt32Type>();
        let rows = batch.column(1).as_primitive::<UInt64Type>();
        let logits = batch.column(3).as_primitive::<Float32Type>();
        for i in 0..batch.num_rows() {
            out.insert((shards.value(i), rows.value(i)), logits.value(i));
        }
        debug_assert_eq!(logits.null_count(), 0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_round_trip_bit_for_bit() {
        let logits = [0.1f32, -3.4028235e38, 1e-45, 2.5, f32::MIN_POSITIVE];
        let labels = [0.0f32, 1.0, 0.0, 1.0, 0.0];
        let rows: Vec<(u32, u64)> = (0..5).map(|i| (i % 2, u64::from(i) * 7)).collect();
        let csv = to_csv(&logits, &labels, &rows).unwrap();
        assert!(csv.starts_with(b"shard,row,label,logit,prediction\n"));
        let back = logits_by_row(&csv, "p.csv").unwrap();
        for (z, r) in logits.iter().zip(&rows) {
            assert_eq!(back[r].to_bits(), z.to_bits(), "{r:?}");
        }
        let e = logits_by_row(b"shard,row,label,logit,prediction\n1,x,0,1,1\n", "p.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.csv"), "{e}");
    }
}
