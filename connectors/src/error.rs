//! The crate's error type. Every variant a user can cause names the file / URL, record index,
//! byte offset, row or feature involved.

use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of `kiln-connectors`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The masked CRC32C stored after a TFRecord length does not match the length bytes.
    #[error(
        "{source_name}: corrupted record {index} at byte offset {offset}: length CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    LengthCrcMismatch {
        /// File or URL being read.
        source_name: String,
        /// 0-based record index.
        index: u64,
        /// Byte offset of the record (its length field) in the uncompressed stream, as
        /// TensorFlow reports it.
        offset: u64,
        /// CRC stored in the file (masked).
        stored: u32,
        /// CRC computed over the bytes read (masked).
        computed: u32,
    },
    /// The masked CRC32C stored after a TFRecord payload does not match the payload.
    #[error(
        "{source_name}: corrupted record {index} at byte offset {offset} (payload; the record starts at {record_start}): data CRC mismatch (stored {stored:#010x}, computed {computed:#010x}, {length} payload bytes)"
    )]
    DataCrcMismatch {
        /// File or URL being read.
        source_name: String,
        /// 0-based record index.
        index: u64,
        /// Byte offset of the record's payload in the uncompressed stream (record start + 12),
        /// the offset TensorFlow reports ("corrupted record at 377").
        offset: u64,
        /// Byte offset of the record start (its length field).
        record_start: u64,
        /// Payload length.
        length: u64,
        /// CRC stored in the file (masked).
        stored: u32,
        /// CRC computed over the bytes read (masked).
        computed: u32,
    },
    /// The stream ended inside a record.
    #[error(
        "{source_name}: truncated record {index} at byte offset {offset} (the record starts at {record_start}): {detail}"
    )]
    Truncated {
        /// File or URL being read.
        source_name: String,
        /// 0-based record index.
        index: u64,
        /// Byte offset TensorFlow reports: the record start for a cut header, the payload
        /// offset (record start + 12) for a cut payload or payload CRC.
        offset: u64,
        /// Byte offset of the record start (its length field).
        record_start: u64,
        /// What was missing.
        detail: String,
    },
    /// An I/O error (including decompression errors), with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// File / URL and operation.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A serialized protobuf message could not be parsed.
    #[error("{context}: malformed protobuf: {message}")]
    Protobuf {
        /// Where (source, record index).
        context: String,
        /// What is wrong.
        message: String,
    },
    /// A tf.train.Example does not fit the target Arrow schema.
    #[error("{source_name}record {record}, feature '{feature}': {message}")]
    Decode {
        /// `"<source>: "` or empty.
        source_name: String,
        /// 0-based record index.
        record: u64,
        /// The feature (column) name.
        feature: String,
        /// What was expected and found.
        message: String,
    },
    /// An Arrow value cannot be encoded into a tf.train.Example.
    #[error("column '{column}', row {row}: {message}")]
    Encode {
        /// Column name.
        column: String,
        /// Row index inside the batch.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// An Arrow type that the Example codec does not support.
    #[error(
        "column '{column}': type {data_type} is not supported by the tf.train.Example mapping{hint}"
    )]
    UnsupportedType {
        /// Column name.
        column: String,
        /// The offending data type.
        data_type: String,
        /// Extra advice (may be empty).
        hint: String,
    },
    /// Schema problems (missing key column, inconsistent inferred kinds, ...).
    #[error("schema: {0}")]
    Schema(String),
    /// An Arrow error with context.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A Parquet error with context.
    #[error("{context}: {source}")]
    Parquet {
        /// File / URL.
        context: String,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An object store error with context.
    #[error("{context}: {source}")]
    ObjectStore {
        /// URL / path and operation.
        context: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// A URL or path that cannot be resolved to an object store.
    #[error("invalid location '{url}': {message}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why.
        message: String,
    },
    /// A location that has no committed manifest.
    #[error(
        "not a committed dataset: {location} has no _manifest.json; an interrupted write? (readers trust only committed manifests)"
    )]
    NotCommitted {
        /// Dataset location.
        location: String,
    },
    /// A manifest that is unreadable or inconsistent with the objects in the store.
    #[error("dataset {location}: {message}")]
    Dataset {
        /// Dataset location.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// Invalid options given by the caller.
    #[error("invalid options: {0}")]
    Options(String),
    /// A value outside a closed set (a format or compression name in a manifest or spec).
    #[error("unknown {what} '{value}' (expected one of: {expected})")]
    UnknownValue {
        /// What the value names, e.g. `TFRecord compression`.
        what: &'static str,
        /// The value given.
        value: String,
        /// The allowed values, comma-separated.
        expected: &'static str,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn parquet(
        context: impl Into<String>,
        source: parquet::errors::ParquetError,
    ) -> Self {
        Error::Parquet {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn store(context: impl Into<String>, source: object_store::Error) -> Self {
        Error::ObjectStore {
            context: context.into(),
            source,
        }
    }
    pub(crate) fn unknown(what: &'static str, value: &str, expected: &'static str) -> Self {
        Error::UnknownValue {
            what,
            value: value.to_string(),
            expected,
        }
    }
    pub(crate) fn dataset(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Dataset {
            location: location.into(),
            message: message.into(),
        }
    }
}
