//! # kiln-trainer — multi-worker training on Kiln's committed shards, on Burn
//!
//! * [`config`]: the job spec's `[train]` table ([`TrainConfig`]).
//! * [`device`]: where training runs (CPU `flex`; CUDA / wgpu behind cargo features).
//! * [`source`]: where rows come from ([`ShardSource`]: a committed dataset or in-memory
//!   batches for tests).
//! * [`transform`]: the feature transform (hash buckets, vocabularies, normalisation) fitted on
//!   the training rows and saved with the model.
//! * [`loader`]: balanced shard assignment, seeded shuffling, background decoding with
//!   read-ahead, a savable position.
//! * [`model`]: logistic / MLP / wide & deep. Embedding tables are plain f32 rows owned by
//!   Kiln (lazy, sparse updates); the dense MLP runs on Burn with autodiff.
//! * [`optim`]: Adam / SGD with momentum on flat buffers, lazy Adam on embedding rows.
//! * [`resident`]: the device-resident step (parameters, table and optimizer state on a GPU).
//! * [`comm`]: rendezvous through rank 0 and a ring all-reduce over TCP.
//! * [`checkpoint`], [`eval`], [`export`], [`train`]: the training job end to end.
//! * [`bench`]: throughput and all-reduce bandwidth benchmarks.
//! * `fixtures` (with the `test-support` feature only): synthetic click data, its config and
//!   a process group of threads, for tests (the benchmarks run on them too).
//!
//! Errors are one [`Error`] enum; each variant that wraps an underlying error keeps it as
//! its `source()`.

pub mod bench;
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod device;
pub mod eval;
pub mod events;
pub mod export;
#[cfg(feature = "test-support")]
pub mod fixtures;
// Without `test-support` the benchmarks use part of the fixtures; the rest serves tests.
#[cfg(not(feature = "test-support"))]
#[allow(dead_code)]
mod fixtures;
pub mod loader;
pub mod model;
pub mod optim;
pub mod predictions;
pub mod resident;
pub mod source;
pub mod tensorfile;
pub mod train;
pub mod transform;

pub use config::TrainConfig;
pub use source::ShardSource;
pub use train::{StderrProgress, StepLog, TrainOptions, TrainProgress, TrainReport, train};

use std::path::{Path, PathBuf};

/// A boxed underlying error (kept as the [`source`](std::error::Error::source) of an [`Error`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the trainer. Messages name the file, column, rank or row involved; a variant that
/// wraps an underlying error keeps it as its [`source`](std::error::Error::source) and does
/// not repeat it in its own message (print the chain, e.g. with anyhow's `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid `[train]` configuration.
    #[error("invalid training config: {0}")]
    Config(String),
    /// A column is missing or has the wrong type or value.
    #[error("column `{column}`: {message}")]
    Column {
        /// Column name.
        column: String,
        /// What was wrong (or what was attempted, when there is a `source`).
        message: String,
        /// Arrow's error, e.g. of a cast.
        #[source]
        source: Option<Box<arrow::error::ArrowError>>,
    },
    /// A value of one row is invalid (a label that is not 0 or 1, an infinite number, ...).
    #[error("column `{column}`, {at}: {message}")]
    Value {
        /// Column name.
        column: String,
        /// Where the row is.
        at: RowAt,
        /// What was wrong with the value.
        message: String,
    },
    /// A checkpoint cannot continue this run (`--resume` with another dataset, seed or
    /// config, or a checkpoint whose content is out of range).
    #[error("{}: {message}", checkpoint.display())]
    Resume {
        /// The checkpoint file.
        checkpoint: PathBuf,
        /// What does not match, and what to do.
        message: String,
    },
    /// The rows read do not allow training (no rows, no shards for a rank, ...).
    #[error("reading dataset: {0}")]
    Data(String),
    /// Opening or reading a committed dataset failed.
    #[error("reading dataset: {url}{}", shard.map(|s| format!(": shard {s}")).unwrap_or_default())]
    Dataset {
        /// The dataset's URL.
        url: String,
        /// The shard being read, if any.
        shard: Option<usize>,
        /// The connectors' error.
        #[source]
        source: Box<kiln_connectors::Error>,
    },
    /// A peer process was lost (died, closed its socket or timed out).
    #[error("lost rank {rank}: {message}")]
    LostRank {
        /// The rank that is gone.
        rank: usize,
        /// What was observed (or attempted, when there is a `source`).
        message: String,
        /// The socket error, if one was seen.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Rendezvous or protocol failure.
    #[error("distributed setup: {0}")]
    Comm(String),
    /// A socket operation of the rendezvous or the ring failed.
    #[error("distributed setup: {context}")]
    CommIo {
        /// What was attempted.
        context: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A peer's message could not be decoded, or the ranks' processes failed.
    #[error("distributed setup: {context}")]
    CommFailed {
        /// What was attempted.
        context: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// Ranks disagree on the parameters.
    #[error("parameter divergence at step {step}: {message}")]
    Divergence {
        /// Step at which the checksums differed.
        step: u64,
        /// Which ranks and checksums.
        message: String,
    },
    /// A file could not be read, written or parsed.
    #[error("{}", path.display())]
    File {
        /// The file (or store URL).
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A file's content is not what was expected.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file (or what was parsed, e.g. a peer's message).
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A metadata entry of a tensor file (a checkpoint) does not parse.
    #[error("{}: metadata `{key}`", path.display())]
    Metadata {
        /// The file (or what was parsed, e.g. a peer's message).
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A file is not in the safetensors layout.
    #[error("{}: not a safetensors file", path.display())]
    Safetensors {
        /// The file (or what was parsed, e.g. a peer's message).
        path: PathBuf,
        /// The safetensors crate's error.
        #[source]
        source: Box<safetensors::SafeTensorError>,
    },
    /// A tensor file lacks a tensor or holds it with another element type.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        /// The file (or what was parsed, e.g. a peer's message).
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What was wrong.
        message: String,
    },
    /// Burn failed.
    #[error("burn: {0}")]
    Burn(String),
    /// Reading a tensor's values back from Burn failed.
    #[error("burn: reading tensor data")]
    BurnData(#[source] Box<burn::tensor::DataError>),
    /// Writing a file atomically failed (`kiln_connectors::store::write_atomic`, whose error
    /// names the file).
    #[error(transparent)]
    Write(Box<kiln_connectors::Error>),
    /// A background thread could not be started.
    #[error("starting thread `{name}`")]
    Thread {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An error of reading, writing or parsing `path`, caused by `source`.
    pub fn file(
        path: impl AsRef<Path>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            source: Box::new(source),
        }
    }

    /// A failed atomic write (of `kiln_connectors::store::write_atomic`).
    pub fn write(source: kiln_connectors::Error) -> Self {
        Error::Write(Box::new(source))
    }

    /// Unexpected content in `path` (no underlying error).
    pub fn invalid(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// A column error.
    pub fn column(column: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Column {
            column: column.into(),
            message: message.into(),
            source: None,
        }
    }

    /// A column error caused by Arrow (`message` says what was attempted).
    pub fn column_arrow(
        column: impl Into<String>,
        message: impl Into<String>,
        source: arrow::error::ArrowError,
    ) -> Self {
        Error::Column {
            column: column.into(),
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A failed socket operation of the process group (`context` says what was attempted).
    pub fn comm_io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::CommIo { context, source }
    }

    /// A failure of the process group caused by `source` (e.g. a peer's message that does not
    /// decode); `context` says what was attempted.
    pub fn comm_failed<E: std::error::Error + Send + Sync + 'static>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let context = context.into();
        move |source| Error::CommFailed {
            context,
            source: Box::new(source),
        }
    }

    /// A lost peer, seen through a socket error (`message` says what was attempted).
    pub fn lost_rank(rank: usize, message: impl Into<String>, source: std::io::Error) -> Self {
        Error::LostRank {
            rank,
            message: message.into(),
            source: Some(source),
        }
    }
}

/// Where a row is: its shard and row number in the shard when known, else its row in the
/// record batch being read (callers that know the shard rebase it with [`Error::in_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowAt {
    /// The shard (index in the dataset), when known.
    pub shard: Option<usize>,
    /// Row number: in the shard when `shard` is set, else in the record batch.
    pub row: u64,
}

impl std::fmt::Display for RowAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.shard {
            Some(s) => write!(f, "shard {s}, row {}", self.row),
            None => write!(f, "row {} of a record batch", self.row),
        }
    }
}

impl Error {
    /// Places a row-level error of a record batch whose first row is row `first_row` of
    /// shard `shard` (a [`Error::Value`] gets its shard and row in the shard; a
    /// [`Error::Column`] names the shard and the batch's first row). Other errors are
    /// returned unchanged.
    pub fn in_shard(self, shard: usize, first_row: u64) -> Self {
        match self {
            Error::Value {
                column,
                at: RowAt { shard: None, row },
                message,
            } => Error::Value {
                column,
                at: RowAt {
                    shard: Some(shard),
                    row: first_row + row,
                },
                message,
            },
            Error::Column {
                column,
                message,
                source,
            } => Error::Column {
                column,
                message: format!("{message} (shard {shard}, rows from {first_row})"),
                source,
            },
            e => e,
        }
    }

    /// An invalid value at row `row` of a record batch.
    pub fn value(column: impl Into<String>, row: usize, message: impl Into<String>) -> Self {
        Error::Value {
            column: column.into(),
            at: RowAt {
                shard: None,
                row: row as u64,
            },
            message: message.into(),
        }
    }
}

/// Result with the trainer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
