//! Options of a sharded write and run ids.

use arrow::datatypes::Schema;

use crate::codec::EncodeOptions;
use crate::error::{Error, Result};
use crate::manifest::{ManifestOptions, ParquetCompression, ShardFormat};
use crate::shard;
use crate::tfrecord::Compression;

/// Options of a sharded write.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardOptions {
    /// Number of shards per format (>= 1).
    pub num_shards: u32,
    /// Formats written side by side (non-empty, no duplicates).
    pub formats: Vec<ShardFormat>,
    /// Stream compression of TFRecord shards (default GZIP, file suffix `.tfrecord.gz`).
    pub tfrecord_compression: Compression,
    /// DEFLATE level 0..=9 of GZIP/ZLIB TFRecord shards (default 6, TensorFlow's).
    pub tfrecord_compression_level: u32,
    /// Parquet codec (default Snappy).
    pub parquet_compression: ParquetCompression,
    /// Column whose hash assigns rows to shards; None = round-robin by row number.
    pub key_column: Option<String>,
    /// Example encoding options (values for nulls).
    pub encode: EncodeOptions,
    /// Maximum rows per Parquet row group (default 1,048,576).
    pub parquet_row_group_rows: usize,
    /// Compute column statistics of the written rows for `_stats.json` (default true).
    pub statistics: bool,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            num_shards: 1,
            formats: vec![ShardFormat::TfRecord],
            tfrecord_compression: Compression::Gzip,
            tfrecord_compression_level: crate::tfrecord::DEFAULT_COMPRESSION_LEVEL,
            parquet_compression: ParquetCompression::Snappy,
            key_column: None,
            encode: EncodeOptions::default(),
            parquet_row_group_rows: 1 << 20,
            statistics: true,
        }
    }
}

impl ShardOptions {
    /// Checks the options against the dataset schema.
    pub(crate) fn validate(&self, schema: &Schema) -> Result<()> {
        if self.num_shards == 0 || self.num_shards > 99_999 {
            return Err(Error::Options(format!(
                "num_shards must be in 1..=99999, got {}",
                self.num_shards
            )));
        }
        if self.formats.is_empty() {
            return Err(Error::Options(
                "at least one shard format is required".into(),
            ));
        }
        let mut f = self.formats.clone();
        f.sort();
        f.dedup();
        if f.len() != self.formats.len() {
            return Err(Error::Options(format!(
                "duplicate formats in {:?}",
                self.formats
            )));
        }
        if let Some(k) = &self.key_column {
            let field = schema.field_with_name(k).map_err(|_| {
                Error::Options(format!(
                    "key column '{k}' is not in the schema ({})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if !shard::is_supported_key_type(field.data_type()) {
                return Err(Error::Options(format!(
                    "key column '{k}' has type {}, not an integer, temporal, string or binary type",
                    field.data_type()
                )));
            }
        }
        Ok(())
    }

    /// What the manifest records of these options.
    pub(crate) fn manifest_options(&self) -> ManifestOptions {
        ManifestOptions {
            num_shards: self.num_shards,
            formats: self.formats.clone(),
            tfrecord_compression: self.tfrecord_compression,
            tfrecord_compression_level: (self.tfrecord_compression != Compression::None
                && self.tfrecord_compression_level != crate::tfrecord::DEFAULT_COMPRESSION_LEVEL)
                .then_some(self.tfrecord_compression_level),
            parquet_compression: self.parquet_compression,
            key_column: self.key_column.clone(),
            null_defaults: self.encode.null_defaults.clone(),
        }
    }
}

/// A run id is 1..128 characters of `[A-Za-z0-9._-]` (it names the `run-<id>/` prefix).
pub(crate) fn validate_run_id(run_id: &str) -> Result<()> {
    if run_id.is_empty()
        || run_id.len() > 128
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Options(format!(
            "run id '{run_id}' must be 1..128 characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// A fresh run id: UTC time plus process id and a counter, e.g. `20261121T060102Z-1234-0`.
pub fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
    .replace('.', "")
}
