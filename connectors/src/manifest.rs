//! `_manifest.json`: the only commit point of a dataset.
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "created_by": "kiln-connectors 0.1.0",
//!   "run_id": "...",
//!   "schema": {"fields": [{"name": "event_id", "type": "Int64", "nullable": false}, ...]},
//!   "options": {"num_shards": 16, "formats": ["tfrecord", "parquet"], ...},
//!   "total_rows": 123,
//!   "shards": [{"index": 0, "format": "tfrecord", "path": "run-<id>/part-00000-of-00016.tfrecord.gz",
//!               "compression": "gzip", "rows": 7, "bytes": 456, "sha256": "...",
//!               "key_min": 1, "key_max": 99}, ...],
//!   "lineage": { ... free-form, filled in by the caller ... }
//! }
//! ```
//! Types are Arrow `DataType` display strings (which `DataType::from_str` parses back exactly).
//! Shards are sorted by (index, format). Serialization is deterministic: for identical inputs
//! and options the manifest differs only in `run_id`, shard path prefixes and `lineage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::DefaultValue;
use crate::error::{Error, Result};
use crate::tfrecord::Compression;

/// The manifest format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Manifest object name inside a dataset location.
pub const MANIFEST_FILE: &str = "_manifest.json";
/// Marker written after the manifest (Hadoop / Spark convention).
pub const SUCCESS_FILE: &str = "_SUCCESS";

/// File format of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardFormat {
    /// TFRecord of tf.train.Example.
    TfRecord,
    /// Apache Parquet.
    Parquet,
}

impl ShardFormat {
    /// `"tfrecord"` / `"parquet"`.
    pub fn name(self) -> &'static str {
        match self {
            ShardFormat::TfRecord => "tfrecord",
            ShardFormat::Parquet => "parquet",
        }
    }
}

/// Parquet compression codec of Parquet shards. Default: Snappy (readable by every Spark,
/// Hive, pandas/pyarrow, DuckDB and Polars version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCompression {
    /// Uncompressed.
    None,
    /// Snappy (default).
    #[default]
    Snappy,
    /// Zstandard at the given level (1..=22).
    Zstd(i32),
    /// Gzip at the given level (0..=9).
    Gzip(u32),
    /// LZ4 (raw).
    Lz4,
}

impl ParquetCompression {
    /// The parquet crate's codec.
    pub fn to_parquet(self) -> Result<parquet::basic::Compression> {
        use parquet::basic::{Compression as C, GzipLevel, ZstdLevel};
        Ok(match self {
            ParquetCompression::None => C::UNCOMPRESSED,
            ParquetCompression::Snappy => C::SNAPPY,
            ParquetCompression::Zstd(l) => C::ZSTD(
                ZstdLevel::try_new(l).map_err(|e| Error::Options(format!("zstd level: {e}")))?,
            ),
            ParquetCompression::Gzip(l) => C::GZIP(
                GzipLevel::try_new(l).map_err(|e| Error::Options(format!("gzip level: {e}")))?,
            ),
            ParquetCompression::Lz4 => C::LZ4_RAW,
        })
    }

    /// Short name for the manifest (`snappy`, `zstd(3)`, ...).
    pub fn name(self) -> String {
        match self {
            ParquetCompression::None => "none".into(),
            ParquetCompression::Snappy => "snappy".into(),
            ParquetCompression::Zstd(l) => format!("zstd({l})"),
            ParquetCompression::Gzip(l) => format!("gzip({l})"),
            ParquetCompression::Lz4 => "lz4_raw".into(),
        }
    }
}

/// One Arrow field in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldJson {
    /// Column name.
    pub name: String,
    /// Arrow `DataType` display string, e.g. `Int64`, `Timestamp(µs, "UTC")`, `List(Int64)`.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Nullability.
    pub nullable: bool,
    /// Field metadata (omitted when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The Arrow schema in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaJson {
    /// Top-level fields in order.
    pub fields: Vec<FieldJson>,
}

impl SchemaJson {
    /// From an Arrow schema.
    pub fn from_schema(schema: &Schema) -> Self {
        SchemaJson {
            fields: schema
                .fields()
                .iter()
                .map(|f| FieldJson {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                    metadata: f
                        .metadata()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Back to an Arrow schema.
    pub fn to_schema(&self) -> Result<Schema> {
        let mut fields = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let dt: DataType = f.data_type.parse().map_err(|e| {
                Error::Schema(format!(
                    "column '{}': cannot parse type '{}': {e}",
                    f.name, f.data_type
                ))
            })?;
            fields.push(
                Field::new(&f.name, dt, f.nullable)
                    .with_metadata(f.metadata.clone().into_iter().collect()),
            );
        }
        Ok(Schema::new(fields))
    }
}

/// Writer options recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestOptions {
    /// Number of shards per format.
    pub num_shards: u32,
    /// Formats written side by side.
    pub formats: Vec<ShardFormat>,
    /// Stream compression of TFRecord shards.
    pub tfrecord_compression: Compression,
    /// Codec of Parquet shards.
    pub parquet_compression: ParquetCompression,
    /// Column hashed to assign rows to shards (None: round-robin by row number).
    pub key_column: Option<String>,
    /// Values written into Examples for nulls.
    #[serde(default)]
    pub null_defaults: BTreeMap<String, DefaultValue>,
}

/// One shard file (also what [`crate::ShardWriter::finish`] returns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    /// Shard index 0..num_shards.
    pub index: u32,
    /// File format.
    pub format: ShardFormat,
    /// Path relative to the dataset location (`run-<id>/part-....`).
    pub path: String,
    /// `none` / `gzip` / `zlib` for TFRecord, the codec name for Parquet.
    pub compression: String,
    /// Number of rows (records).
    pub rows: u64,
    /// Size of the object in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the object's bytes.
    pub sha256: String,
    /// Smallest key in the shard (JSON number or string), if a key column is configured.
    pub key_min: Option<Value>,
    /// Largest key in the shard.
    pub key_max: Option<Value>,
}

/// The parsed `_manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Writer identification, e.g. `kiln-connectors 0.1.0`.
    pub created_by: String,
    /// Id of the run that wrote the shards (`run-<run_id>/`).
    pub run_id: String,
    /// The Arrow schema of every shard.
    pub schema: SchemaJson,
    /// Writer options.
    pub options: ManifestOptions,
    /// Sum of rows over the shards of one format.
    pub total_rows: u64,
    /// Every shard file, sorted by (index, format).
    pub shards: Vec<ShardFile>,
    /// Free-form provenance supplied by the caller (sources, offsets, spec hash, times, ...).
    pub lineage: Value,
}

impl Manifest {
    /// Deterministic JSON bytes (pretty, trailing newline).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parse manifest bytes; `location` names the dataset in errors.
    pub fn from_json_bytes(bytes: &[u8], location: &str) -> Result<Manifest> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::dataset(location, format!("_manifest.json is not valid JSON: {e}"))
        })?;
        let version = v.get("format_version").and_then(Value::as_u64);
        if version != Some(FORMAT_VERSION as u64) {
            return Err(Error::dataset(
                location,
                format!(
                    "unsupported manifest format_version {} (this reader supports {FORMAT_VERSION})",
                    v.get("format_version")
                        .map_or("<missing>".to_string(), |x| x.to_string())
                ),
            ));
        }
        serde_json::from_value(v)
            .map_err(|e| Error::dataset(location, format!("invalid _manifest.json: {e}")))
    }

    /// The Arrow schema.
    pub fn arrow_schema(&self) -> Result<Arc<Schema>> {
        Ok(Arc::new(self.schema.to_schema()?))
    }

    /// Shard files of one format, by index.
    pub fn shards_of(&self, format: ShardFormat) -> Vec<&ShardFile> {
        let mut v: Vec<&ShardFile> = self.shards.iter().filter(|s| s.format == format).collect();
        v.sort_by_key(|s| s.index);
        v
    }

    /// A one-line JSON summary (for `kiln inspect`).
    pub fn summary_json(&self, location: &str) -> Value {
        serde_json::json!({
            "dataset": location,
            "format_version": self.format_version,
            "created_by": self.created_by,
            "run_id": self.run_id,
            "total_rows": self.total_rows,
            "num_shards": self.options.num_shards,
            "formats": self.options.formats,
            "tfrecord_compression": self.options.tfrecord_compression,
            "parquet_compression": self.options.parquet_compression.name(),
            "key_column": self.options.key_column,
            "schema": self.schema.fields,
            "shard_rows": self.shards_of(self.options.formats.first().copied().unwrap_or(ShardFormat::TfRecord))
                .iter().map(|s| s.rows).collect::<Vec<_>>(),
            "lineage": self.lineage,
        })
    }
}

/// `part-00003-of-00016.tfrecord.gz` / `part-00003-of-00016.parquet`.
pub fn shard_file_name(
    index: u32,
    num_shards: u32,
    format: ShardFormat,
    tf: Compression,
) -> String {
    match format {
        ShardFormat::TfRecord => {
            format!(
                "part-{index:05}-of-{num_shards:05}.tfrecord{}",
                tf.extension()
            )
        }
        ShardFormat::Parquet => format!("part-{index:05}-of-{num_shards:05}.parquet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{IntervalUnit, TimeUnit};

    #[test]
    fn type_strings_round_trip() {
        let item = Arc::new(Field::new_list_field(DataType::Int64, true));
        let item_nn = Arc::new(Field::new("element", DataType::Utf8, false));
        let types = vec![
            DataType::Int8,
            DataType::UInt64,
            DataType::Float16,
            DataType::Decimal128(12, 2),
            DataType::Decimal256(40, 5),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Date32,
            DataType::Date64,
            DataType::Duration(TimeUnit::Millisecond),
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Utf8View,
            DataType::FixedSizeBinary(16),
            DataType::List(item.clone()),
            DataType::LargeList(item_nn.clone()),
            DataType::FixedSizeList(item, 3),
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            DataType::Interval(IntervalUnit::DayTime),
        ];
        let schema = Schema::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), i % 2 == 0))
                .collect::<Vec<_>>(),
        );
        let back = SchemaJson::from_schema(&schema).to_schema().unwrap();
        assert_eq!(back, schema);
    }
}
