//! Kiln's feature ETL on DataFusion.
//!
//! A [`spec::JobSpec`] names sources, SQL statements and outputs. [`job::run_features`]
//! renders it for a run date, registers the sources ([`sources`]; CSV/JSON lines through
//! [`text`], which names or rejects bad rows), plans every statement before reading data,
//! then writes each output with a DataFusion plan that ends in [`sink::ShardSinkExec`] (one
//! shard writer per partition) and commits the dataset's manifest once every shard is done.
//!
//! The same plan runs on a Ballista cluster ([`job::Mode::Cluster`]): the write is a logical
//! node ([`write::ShardWriteNode`]) carried by Kiln's codecs ([`codec`]) and planned by the
//! scheduler with Kiln's planner ([`cluster`]).

pub mod cluster;
pub mod codec;
pub mod job;
pub mod kafka;
pub mod progress;
pub mod retry;
pub mod schema;
pub mod sink;
pub mod sources;
pub mod spark;
pub mod spec;
pub mod stores;
pub mod template;
pub mod text;
mod ties;
pub mod write;

pub use job::{FeaturesReport, Mode, run_features, run_features_on};
pub use spec::{JobSpec, Overrides};

/// Errors of the feature engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A mistake in the spec (names the spec file and the item).
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// A source could not be registered or read.
    #[error("source `{source_name}`: {message}")]
    Source {
        /// Source name.
        source_name: String,
        /// What went wrong (or what was being done when `cause` happened).
        message: String,
        /// The underlying error.
        #[source]
        cause: Option<BoxError>,
    },
    /// A Spark Connect call or result failed (the message names the URL, without its token,
    /// and carries Spark's own message).
    #[error("{0}")]
    Spark(String),
    /// A malformed input row under `on_bad_rows = "fail"`.
    #[error("{file}:{line}: {message}")]
    BadRow {
        /// File URL.
        file: String,
        /// 1-based line.
        line: u64,
        /// Reason.
        message: String,
    },
    /// A Kafka record whose value does not fit the source under `on_bad_rows = "fail"`.
    #[error("kafka {bootstrap} topic `{topic}` partition {partition} offset {offset}: {message}")]
    BadMessage {
        /// Bootstrap servers.
        bootstrap: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// Reason.
        message: String,
    },
    /// A CSV file whose header does not name the declared columns in order.
    #[error(
        "{file}: CSV header [{}] does not match the schema [{}] (columns are matched by name, in order)",
        found.join(", "),
        expected.join(", ")
    )]
    CsvHeader {
        /// File URL.
        file: String,
        /// The header's column names.
        found: Vec<String>,
        /// The declared schema's column names.
        expected: Vec<String>,
    },
    /// A bad URL or an object store failure.
    #[error("{url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What went wrong (or what was being done when `cause` happened).
        message: String,
        /// The underlying error.
        #[source]
        cause: Option<BoxError>,
    },
    /// Writing or committing an output failed.
    #[error("output `{statement}`: {message}")]
    Output {
        /// Statement being written.
        statement: String,
        /// What went wrong (or what was being done when `cause` happened).
        message: String,
        /// The underlying error.
        #[source]
        cause: Option<BoxError>,
    },
    /// The cluster cancelled the job (Kiln's scheduler does so when an executor is lost);
    /// [`run_features_on`] resubmits it.
    #[error("output `{statement}`: the cluster cancelled the job ({message})")]
    ClusterJobCancelled {
        /// Statement being written.
        statement: String,
        /// Ballista's message.
        message: String,
    },
    /// Row counts do not reconcile.
    #[error("row accounting failed: {0}")]
    Accounting(String),
    /// A DataFusion error (planning or execution).
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// An underlying error kept as the `source()` of an [`EngineError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl EngineError {
    /// A source failed because of `cause`, while doing `message`.
    pub fn source_failed(
        name: &str,
        message: impl Into<String>,
        cause: impl Into<BoxError>,
    ) -> Self {
        EngineError::Source {
            source_name: name.to_string(),
            message: message.into(),
            cause: Some(cause.into()),
        }
    }

    /// A source is wrong in a way `message` says in full.
    pub fn source_invalid(name: &str, message: impl Into<String>) -> Self {
        EngineError::Source {
            source_name: name.to_string(),
            message: message.into(),
            cause: None,
        }
    }

    /// A URL could not be used because of `cause`, while doing `message`.
    pub fn url_failed(url: &str, message: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        EngineError::Url {
            url: url.to_string(),
            message: message.into(),
            cause: Some(cause.into()),
        }
    }

    /// Writing output `statement` failed because of `cause`, while doing `message`.
    pub fn output_failed(
        statement: &str,
        message: impl Into<String>,
        cause: impl Into<BoxError>,
    ) -> Self {
        EngineError::Output {
            statement: statement.to_string(),
            message: message.into(),
            cause: Some(cause.into()),
        }
    }
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
