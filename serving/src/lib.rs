//! `kiln serve`: the model repository (`<name>/<version>/`, `labels.json`, `SHA256SUMS`)
//! served with TF Serving's REST API (`docs/serving.md`).
//!
//! - [`input`] turns request JSON (rows or columns of raw feature values) into an Arrow
//!   `RecordBatch` and scores it with the trainer's own transform and forward pass, so a
//!   served prediction equals `kiln predict`'s bit for bit.
//! - [`manager`] loads the versions a [`manager::VersionPolicy`] selects, verifies them
//!   (`SHA256SUMS`), polls the repository and swaps new states in atomically.
//! - [`http`] is the axum server: `/v1/models/...`, `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`] renders Prometheus text.
//! - [`batch`] batches concurrent requests server-side (off by default).
//! - [`bench`] is `kiln bench serve`: a loopback load test, with a version swap.
//!
//! No DataFusion here: the crate depends on the trainer (Burn) and the registry only.

pub mod batch;
pub mod bench;
pub mod http;
pub mod input;
pub mod manager;
pub mod metrics;

/// Errors of the server, each mapped to a TF Serving error code and HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed (bad JSON, missing or mistyped feature): HTTP 400.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such model, version or label: HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// The model exists but no version can answer now: HTTP 503.
    #[error("{0}")]
    Unavailable(String),
    /// Scoring failed inside the model: HTTP 500.
    #[error("{0}")]
    Internal(String),
    /// A version failed to verify or load.
    #[error("version {version} of model {model}: {message}")]
    Load {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// What went wrong.
        message: String,
    },
    /// The repository could not be read.
    #[error("model repository {}", dir.display())]
    Repository {
        /// The model's directory.
        dir: std::path::PathBuf,
        /// The registry's error.
        #[source]
        source: kiln_registry::RegistryError,
    },
    /// Binding or serving the socket failed.
    #[error("serving on {addr}")]
    Io {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// HTTP status of the error (TF Serving's `ToHTTPStatusCode`).
    pub fn http_status(&self) -> u16 {
        match self {
            ServeError::InvalidArgument(_) => 400,
            ServeError::NotFound(_) => 404,
            ServeError::Unavailable(_) => 503,
            _ => 500,
        }
    }
}

/// Result with [`ServeError`].
pub type Result<T, E = ServeError> = std::result::Result<T, E>;
