//! # kiln-connectors — bytes <-> Arrow for Kiln's training data
//!
//! No DataFusion here: the feature engine and the trainer both build on these pieces.
//!
//! * [`tfrecord`]: TFRecord framing exactly as TensorFlow writes it (u64 length, masked
//!   CRC32C of the length, payload, masked CRC32C of the payload), uncompressed, GZIP and
//!   ZLIB, streaming in constant memory; errors name the file, record index and byte offset.
//! * [`example`]: `tf.train.Example` / `SequenceExample` messages (prost, hand-written).
//! * [`codec`]: Arrow <-> Example without intermediate per-row maps.
//! * [`shard`]: Kiln's row -> shard hash.
//! * [`dataset`] + [`manifest`]: sharded TFRecord/Parquet writers, the commit protocol
//!   (`_manifest.json` written last, then `_SUCCESS`) and the manifest-only reader.
//! * [`store`]: object stores by URL (`file://`, paths, `s3://`), lexical path
//!   [`store::normalize`] and the durable [`store::write_atomic`].
//! * [`inspect`]: what `kiln inspect` prints.
//! * [`stats`]: TFDV-style dataset statistics (KLL, HLL, frequent items), mergeable across
//!   shards in bounded memory; `_stats.json`, TFDV protobuf export and drift.
//! * [`kafka`]: Kafka topics through librdkafka: offset ranges bounded by record timestamps,
//!   range readers and a keyed producer.
//! * `sample` and `testing` (cargo feature `test-support`, for tests and benchmarks only):
//!   deterministic sample batches and the moto (S3) server launcher.
//!
//! ## Arrow <-> tf.train.Example mapping
//!
//! | Arrow type | Feature kind | Encoding | Decoding back |
//! |---|---|---|---|
//! | Boolean | `int64_list` | 0 / 1 | Boolean |
//! | Int8..Int64, UInt8..UInt64 | `int64_list` | the value (UInt64 above i64::MAX is an error naming column and row) | the schema's integer type, range-checked |
//! | Date32 / Date64 | `int64_list` | days / milliseconds since the epoch | Date32 / Date64 |
//! | Time32/64, Timestamp(unit, tz), Duration(unit) | `int64_list` | the integer in the column's own unit | the schema's type (unit and time zone come from the schema) |
//! | Float16 / Float32 / Float64 | `float_list` | as f32: Float64 keeps ~7 significant digits (f64 -> f32 rounding) | Float32, or the schema's float type (widened) |
//! | Decimal128 / Decimal256 | `float_list` | value / 10^scale as f32 (~7 significant digits) | the schema's decimal type (rounded to its scale) |
//! | Utf8 / LargeUtf8 / Utf8View, Binary / LargeBinary / BinaryView / FixedSizeBinary | `bytes_list` | raw bytes | the schema's type (UTF-8 validated) |
//! | Dictionary(_, V) | as V | the dictionary value | V |
//! | List / LargeList / FixedSizeList of the above | multi-valued feature of the item's kind | all items in order; empty list = empty feature | the list type |
//! | null (any type) | feature absent (default), or a configured per-column default value | | null when absent (nullable field); a missing non-nullable feature is an error naming record and feature |
//! | Struct | error naming the column: flatten it first (`SELECT s.a AS "s.a"`) | | |
//! | Map, Union, others | error naming the column | | |
//!
//! Decoding takes a schema (given, or [`codec::infer_schema`] from the first N records:
//! `int64_list` -> Int64, `float_list` -> Float32, `bytes_list` -> Utf8 when every value is
//! valid UTF-8, else Binary; a feature seen with other than one value -> List) and reports
//! records that do not fit (wrong kind, missing required feature, several values where a
//! scalar is expected, out-of-range values) with the record index and feature name.

//!
//! ## Datasets
//!
//! [`DatasetWriter`] (or the engine's per-partition [`ShardWriter`]s plus [`commit_dataset`])
//! writes N shards per format under `<location>/run-<run_id>/` and commits them with
//! `_manifest.json` then `_SUCCESS` (see [`dataset`]). Parquet shards keep every value exactly;
//! TFRecord shards follow the table above, so a Float64 column reads back from TFRecord as the
//! f32-rounded value ([`codec::example_round_trip`] gives exactly what the TFRecord copy of a
//! batch decodes to). All other supported types read back identically from both formats.
//! [`Dataset`] opens a location only through its manifest, verifies sizes (and SHA-256 on
//! request) and streams RecordBatches from any subset of shards on a background thread.

pub mod codec;
pub mod dataset;
pub mod error;
pub mod example;
pub mod inspect;
pub mod kafka;
pub mod manifest;
#[cfg(feature = "test-support")]
pub mod sample;
pub mod shard;
pub mod spark;
pub mod stats;
pub mod store;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tfrecord;
pub mod wire;

pub use codec::{EncodeOptions, ExampleDecoder, ExampleEncoder, infer_schema};
pub use dataset::{
    Dataset, DatasetWriter, OpenOptions, ShardOptions, ShardWriter, commit_dataset,
    commit_dataset_validated, write_empty_shard,
};
pub use error::{Error, Result};
pub use manifest::{
    CREATED_BY, Manifest, ParquetCompression, ShardCompression, ShardFile, ShardFormat,
};
pub use store::Location;
pub use tfrecord::{Compression, TfRecordReader, TfRecordWriter};
