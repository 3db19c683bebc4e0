//! # kiln-trainer — multi-worker training on Kiln's committed shards, on Burn
//!
//! * [`config`]: the job spec's `[train]` table ([`TrainConfig`]).
//! * [`device`]: where the dense network runs (CPU `flex`; CUDA / wgpu behind cargo features).
//! * [`source`]: where rows come from ([`ShardSource`]: a committed dataset or in-memory
//!   batches for tests).
//! * [`transform`]: the feature transform (hash buckets, vocabularies, normalisation) fitted on
//!   the training rows and saved with the model.
//! * [`loader`]: balanced shard assignment, seeded shuffling, background decoding with
//!   read-ahead, a savable position.
//! * [`model`]: logistic / MLP / wide & deep. Embedding tables are plain f32 rows owned by
//!   Kiln (lazy, sparse updates); the dense MLP runs on Burn with autodiff.
//! * [`optim`]: Adam / SGD with momentum on flat buffers, lazy Adam on embedding rows.
//! * [`comm`]: rendezvous through rank 0 and a ring all-reduce over TCP.
//! * [`checkpoint`], [`eval`], [`export`], [`train`]: the training job end to end.
//! * [`bench`]: throughput and all-reduce bandwidth benchmarks.

pub mod bench;
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod device;
pub mod eval;
pub mod export;
pub mod loader;
pub mod model;
pub mod optim;
pub mod source;
pub mod tensorfile;
pub mod train;
pub mod transform;

pub use config::TrainConfig;
pub use source::ShardSource;
pub use train::{TrainOptions, TrainReport, train};

/// Errors of the trainer. Messages name the file, column, rank or row involved.
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
        /// What was wrong.
        message: String,
    },
    /// Reading the dataset failed.
    #[error("reading dataset: {0}")]
    Data(String),
    /// A peer process was lost (died, closed its socket or timed out).
    #[error("lost rank {rank}: {message}")]
    LostRank {
        /// The rank that is gone.
        rank: usize,
        /// What was observed.
        message: String,
    },
    /// Rendezvous or protocol failure.
    #[error("distributed setup: {0}")]
    Comm(String),
    /// Ranks disagree on the parameters.
    #[error("parameter divergence at step {step}: {message}")]
    Divergence {
        /// Step at which the checksums differed.
        step: u64,
        /// Which ranks and checksums.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Burn failed.
    #[error("burn: {0}")]
    Burn(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn file(path: impl AsRef<std::path::Path>, e: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().display().to_string(),
            message: e.to_string(),
        }
    }

    /// A column error.
    pub fn column(column: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Column {
            column: column.into(),
            message: message.into(),
        }
    }
}

/// Result with the trainer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
