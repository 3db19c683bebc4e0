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
//!
//! Formats and compressions are closed sets ([`ShardFormat`], [`Compression`],
//! [`ParquetCompression`], [`ShardCompression`]): a value outside them is an error naming the
//! value and the allowed ones, never a fallback.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::DefaultValue;
use crate::error::{Error, Result};
use crate::tfrecord::Compression;

/// Writer identification recorded in manifests and Parquet footers.
pub const CREATED_BY: &str = concat!("kiln-connectors ", env!("CARGO_PKG_VERSION"));

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
    /// Every format, in manifest order.
    pub const ALL: [ShardFormat; 2] = [ShardFormat::TfRecord, ShardFormat::Parquet];

    /// `"tfrecord"` / `"parquet"` (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            ShardFormat::TfRecord => "tfrecord",
            ShardFormat::Parquet => "parquet",
        }
    }
}

impl fmt::Display for ShardFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ShardFormat {
    type Err = Error;
    /// `tfrecord` or `parquet`; anything else is [`Error::UnknownValue`].
    fn from_str(s: &str) -> Result<Self> {
        ShardFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| Error::unknown("shard format", s, "tfrecord, parquet"))
    }
}

/// Parquet compression codec of Parquet shards. Default: Snappy (readable by every Spark,
/// Hive, pandas/pyarrow, DuckDB and Polars version).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
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

    /// Short name for the manifest's `shards[].compression` (`snappy`, `zstd(3)`, ...);
    /// [`FromStr`] parses it back.
    pub fn name(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ParquetCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParquetCompression::None => f.write_str("none"),
            ParquetCompression::Snappy => f.write_str("snappy"),
            ParquetCompression::Zstd(l) => write!(f, "zstd({l})"),
            ParquetCompression::Gzip(l) => write!(f, "gzip({l})"),
            ParquetCompression::Lz4 => f.write_str("lz4_raw"),
        }
    }
}

impl FromStr for ParquetCompression {
    type Err = Error;
    /// The [`name`](ParquetCompression::name) form: `none`, `snappy`, `lz4_raw`, `zstd(L)`,
    /// `gzip(L)`; anything else is [`Error::UnknownValue`].
    fn from_str(s: &str) -> Result<Self> {
        let level = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'))
        };
        let parsed = match s {
            "none" => Some(ParquetCompression::None),
            "snappy" => Some(ParquetCompression::Snappy),
            "lz4_raw" => Some(ParquetCompression::Lz4),
            _ => {
                if let Some(l) = level("zstd") {
                    l.parse().ok().map(ParquetCompression::Zstd)
                } else if let Some(l) = level("gzip") {
                    l.parse().ok().map(ParquetCompression::Gzip)
                } else {
                    None
                }
            }
        };
        parsed.ok_or_else(|| {
            Error::unknown(
                "Parquet compression",
                s,
                "none, snappy, lz4_raw, zstd(LEVEL), gzip(LEVEL)",
            )
        })
    }
}

/// The compression of one shard file (`shards[].compression` in the manifest): the TFRecord
/// stream compression of a TFRecord shard, the codec of a Parquet shard. Serialized as
/// [`Compression::name`] (`none`, `gzip`, `zlib`) or [`ParquetCompression::name`] (`snappy`,
/// `zstd(3)`, ...); which of the two a string means depends on the shard's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardCompression {
    /// A TFRecord shard.
    TfRecord(Compression),
    /// A Parquet shard.
    Parquet(ParquetCompression),
}

impl ShardCompression {
    /// The format this compression belongs to.
    pub fn format(self) -> ShardFormat {
        match self {
            ShardCompression::TfRecord(_) => ShardFormat::TfRecord,
            ShardCompression::Parquet(_) => ShardFormat::Parquet,
        }
    }

    /// Parse the manifest string of a shard of `format`.
    pub fn parse(format: ShardFormat, s: &str) -> Result<Self> {
        Ok(match format {
            ShardFormat::TfRecord => ShardCompression::TfRecord(s.parse()?),
            ShardFormat::Parquet => ShardCompression::Parquet(s.parse()?),
        })
    }
}

impl fmt::Display for ShardCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardCompression::TfRecord(c) => c.fmt(f),
            ShardCompression::Parquet(c) => c.fmt(f),
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
    /// Its DEFLATE level when not the default 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tfrecord_compression_level: Option<u32>,
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
#[serde(try_from = "ShardFileJson", into = "ShardFileJson")]
pub struct ShardFile {
    /// Shard index 0..num_shards.
    pub index: u32,
    /// File format.
    pub format: ShardFormat,
    /// Path relative to the dataset location (`run-<id>/part-....`).
    pub path: String,
    /// Compression of this file, of the kind its `format` allows (`none` / `gzip` / `zlib` for
    /// TFRecord, the codec name for Parquet in JSON).
    pub compression: ShardCompression,
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
    /// The mergeable statistics of the shard's rows ([`crate::stats::DatasetStatsBuilder`],
    /// base64), on one format's file per shard: carried from the shard writer (a Ballista
    /// executor, maybe) to the commit, which merges them into `_stats.json`. Never written
    /// to the manifest.
    pub stats_state: Option<String>,
}

/// The dataset's statistics file (`run-<id>/_stats.json`), as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    /// Path relative to the dataset location.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// [`ShardFile`] as JSON: `compression` is a string whose meaning depends on `format`, so it
/// is checked against the format when the shard is read.
#[derive(Serialize, Deserialize)]
struct ShardFileJson {
    index: u32,
    format: ShardFormat,
    path: String,
    compression: String,
    rows: u64,
    bytes: u64,
    sha256: String,
    key_min: Option<Value>,
    key_max: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats_state: Option<String>,
}

impl TryFrom<ShardFileJson> for ShardFile {
    type Error = String;
    fn try_from(j: ShardFileJson) -> std::result::Result<Self, String> {
        let compression = ShardCompression::parse(j.format, &j.compression)
            .map_err(|e| format!("shard {}: {e}", j.path))?;
        Ok(ShardFile {
            index: j.index,
            format: j.format,
            path: j.path,
            compression,
            rows: j.rows,
            bytes: j.bytes,
            sha256: j.sha256,
            key_min: j.key_min,
            key_max: j.key_max,
            stats_state: j.stats_state,
        })
    }
}

impl From<ShardFile> for ShardFileJson {
    fn from(s: ShardFile) -> Self {
        ShardFileJson {
            index: s.index,
            format: s.format,
            path: s.path,
            compression: s.compression.to_string(),
            rows: s.rows,
            bytes: s.bytes,
            sha256: s.sha256,
            key_min: s.key_min,
            key_max: s.key_max,
            stats_state: s.stats_state,
        }
    }
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
    /// Statistics of every column over all shards (`run-<id>/_stats.json`), when the shard
    /// writers computed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsFile>,
    /// The statistics checked against the output's expectations and its baseline
    /// ([`crate::stats::validate`]): anomalies are recorded here, and the dataset still
    /// commits. Absent when the commit was not asked to validate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<crate::stats::Validation>,
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

    /// A manifest exactly as `kiln-connectors` wrote it before formats and compressions were
    /// typed: it must still parse, and serialize back to the same bytes.
    const TODAYS_MANIFEST: &str = r#"{
  "format_version": 1,
  "created_by": "kiln-connectors 0.1.0",
  "run_id": "r1",
  "schema": {
    "fields": [
      {
        "name": "event_id",
        "type": "Int64",
        "nullable": false
      }
    ]
  },
  "options": {
    "num_shards": 1,
    "formats": [
      "tfrecord",
      "parquet"
    ],
    "tfrecord_compression": "gzip",
    "parquet_compression": {
      "zstd": 3
    },
    "key_column": "event_id",
    "null_defaults": {}
  },
  "total_rows": 2,
  "shards": [
    {
      "index": 0,
      "format": "tfrecord",
      "path": "run-r1/part-00000-of-00001.tfrecord.gz",
      "compression": "gzip",
      "rows": 2,
      "bytes": 10,
      "sha256": "ab",
      "key_min": 1,
      "key_max": 2
    },
    {
      "index": 0,
      "format": "parquet",
      "path": "run-r1/part-00000-of-00001.parquet",
      "compression": "zstd(3)",
      "rows": 2,
      "bytes": 20,
      "sha256": "cd",
      "key_min": null,
      "key_max": null
    }
  ],
  "lineage": {}
}
"#;

    #[test]
    fn todays_manifest_parses_and_round_trips_byte_for_byte() {
        let m = Manifest::from_json_bytes(TODAYS_MANIFEST.as_bytes(), "ds").unwrap();
        assert_eq!(
            m.shards[0].compression,
            ShardCompression::TfRecord(Compression::Gzip)
        );
        assert_eq!(
            m.shards[1].compression,
            ShardCompression::Parquet(ParquetCompression::Zstd(3))
        );
        assert_eq!(
            String::from_utf8(m.to_json_bytes()).unwrap(),
            TODAYS_MANIFEST
        );
    }

    fn rejected(from: &str, to: &str) -> String {
        assert!(TODAYS_MANIFEST.contains(from), "{from}");
        let bad = TODAYS_MANIFEST.replacen(from, to, 1);
        Manifest::from_json_bytes(bad.as_bytes(), "ds")
            .expect_err(to)
            .to_string()
    }

    #[test]
    fn unknown_compression_in_manifest_is_rejected() {
        // A TFRecord shard's compression: no silent fallback to uncompressed.
        let e = rejected(r#""compression": "gzip""#, r#""compression": "brotli""#);
        assert!(e.contains("'brotli'"), "{e}");
        assert!(e.contains("none, gzip, zlib"), "{e}");
        assert!(e.contains("run-r1/part-00000-of-00001.tfrecord.gz"), "{e}");
        // Case matters, as in every manifest written so far.
        let e = rejected(r#""compression": "gzip""#, r#""compression": "GZIP""#);
        assert!(e.contains("'GZIP'"), "{e}");
        // A Parquet codec on a TFRecord shard.
        let e = rejected(r#""compression": "gzip""#, r#""compression": "snappy""#);
        assert!(
            e.contains("'snappy'") && e.contains("none, gzip, zlib"),
            "{e}"
        );
        // A Parquet shard's codec.
        let e = rejected(r#""compression": "zstd(3)""#, r#""compression": "zstd""#);
        assert!(e.contains("'zstd'"), "{e}");
        assert!(e.contains("zstd(LEVEL)"), "{e}");
        let e = rejected(
            r#""compression": "zstd(3)""#,
            r#""compression": "brotli(1)""#,
        );
        assert!(e.contains("'brotli(1)'"), "{e}");
        // The writer options.
        let e = rejected(
            r#""tfrecord_compression": "gzip""#,
            r#""tfrecord_compression": "brotli""#,
        );
        assert!(e.contains("brotli") && e.contains("zlib"), "{e}");
        let e = rejected(r#""zstd": 3"#, r#""brotli": 3"#);
        assert!(e.contains("brotli") && e.contains("snappy"), "{e}");
    }

    #[test]
    fn unknown_format_in_manifest_is_rejected() {
        let e = rejected(r#""format": "parquet""#, r#""format": "orc""#);
        assert!(e.contains("orc") && e.contains("parquet"), "{e}");
        let e = rejected(
            r#""tfrecord",
      "parquet""#,
            r#""tfrecord",
      "csv""#,
        );
        assert!(e.contains("csv") && e.contains("tfrecord"), "{e}");
    }

    #[test]
    fn names_parse_back_and_match_serde() {
        for c in Compression::ALL {
            assert_eq!(c.name().parse::<Compression>().unwrap(), c);
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
            assert_eq!(ShardCompression::TfRecord(c).to_string(), c.name(), "{c:?}");
        }
        for f in ShardFormat::ALL {
            assert_eq!(f.name().parse::<ShardFormat>().unwrap(), f);
            assert_eq!(serde_json::to_value(f).unwrap(), f.name());
        }
        for (c, name) in [
            (ParquetCompression::None, "none"),
            (ParquetCompression::Snappy, "snappy"),
            (ParquetCompression::Zstd(3), "zstd(3)"),
            (ParquetCompression::Gzip(6), "gzip(6)"),
            (ParquetCompression::Lz4, "lz4_raw"),
        ] {
            assert_eq!(c.name(), name);
            assert_eq!(name.parse::<ParquetCompression>().unwrap(), c);
            assert_eq!(ShardCompression::Parquet(c).to_string(), name);
        }
        let e = "lz4".parse::<Compression>().unwrap_err();
        assert!(matches!(e, Error::UnknownValue { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "unknown TFRecord compression 'lz4' (expected one of: none, gzip, zlib)"
        );
        assert!("orc".parse::<ShardFormat>().is_err());
        for bad in ["", "zstd()", "zstd(x)", "gzip(-1)", "gzip(6", "Snappy"] {
            assert!(bad.parse::<ParquetCompression>().is_err(), "{bad}");
        }
    }

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
