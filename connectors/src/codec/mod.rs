//! Arrow <-> `tf.train.Example`, both directions, without intermediate per-row messages.
//!
//! * [`encode`]: [`ExampleEncoder`] writes the protobuf bytes of each row straight from the
//!   Arrow columns (precomputed key prefixes, exact lengths, varints into one reused buffer)
//!   and can frame them as TFRecords in the same pass.
//! * [`decode`]: [`ExampleDecoder`] scans serialized Examples with a hand-written protobuf field
//!   scanner and appends values into per-column buffers, then builds Arrow arrays of the target
//!   schema. Records that do not fit are reported with their index and the feature name and
//!   leave the decoder's buffers untouched (the caller may skip them and continue).
//! * [`infer`]: [`infer_schema`] derives a schema from sample records.
//! * [`mapping`]: what the three share: feature kinds, null defaults, column shapes.
//!
//! The type mapping is documented in the crate docs (`lib.rs`).

pub mod decode;
pub mod encode;
pub mod infer;
pub mod mapping;

use arrow::record_batch::RecordBatch;

pub use decode::ExampleDecoder;
pub use encode::ExampleEncoder;
pub use infer::infer_schema;
pub use mapping::{DefaultValue, EncodeOptions, FeatureKind, leaf_kind};

use crate::error::Result;

/// Encode `batch` into Examples and decode them back with the same schema: the values a
/// TFRecord copy of the batch yields (Float64 and decimals rounded through f32). Useful to
/// compare TFRecord output with Parquet output, which keeps full precision.
pub fn example_round_trip(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut enc = ExampleEncoder::new(batch.schema(), &EncodeOptions::default())?;
    let mut dec = ExampleDecoder::new(batch.schema())?;
    enc.encode_batch_with(batch, |r| dec.append(r))?;
    dec.finish_batch()
}

/// Arrow's `cast` that fails instead of turning a value into null: an integer out of the
/// target's range, a string that does not parse, a decimal overflow. Every cast Kiln makes on
/// user data goes through it (no silent nulls).
pub fn cast_strict(
    array: &dyn arrow::array::Array,
    to: &arrow::datatypes::DataType,
) -> std::result::Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow::compute::cast_with_options(array, to, &options)
}
