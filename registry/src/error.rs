//! The registry's errors: each names the file or version it is about.

use std::path::{Path, PathBuf};

/// A registry result.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The labels a version can carry: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// The version serving uses.
    Stable,
    /// A version under trial.
    Canary,
}

impl Label {
    /// The label's name in `labels.json` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Stable => "stable",
            Label::Canary => "canary",
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Label {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stable" => Ok(Label::Stable),
            "canary" => Ok(Label::Canary),
            other => Err(RegistryError::UnknownLabel(other.to_string())),
        }
    }
}

/// What went wrong in the model repository.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A filesystem operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`reading`, `renaming ... to`, ...).
        op: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the repository could not be parsed or written.
    #[error("{op} {}", path.display())]
    Json {
        /// `parsing` or `serializing`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A `SHA256SUMS` line is not `<hex>  <path>`.
    #[error("{}:{line}: malformed line `{text}`", path.display())]
    MalformedSums {
        /// The `SHA256SUMS` file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A file listed in `SHA256SUMS` is missing.
    #[error("{}: listed in SHA256SUMS but missing", .0.display())]
    MissingFile(PathBuf),
    /// A file's SHA-256 differs from `SHA256SUMS`.
    #[error("{}: SHA-256 mismatch: SHA256SUMS says {want}, the file has {got}", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// What `SHA256SUMS` says.
        want: String,
        /// What the file hashes to.
        got: String,
    },
    /// A file is in the version but not in `SHA256SUMS`.
    #[error("{}: not listed in SHA256SUMS", .0.display())]
    UnlistedFile(PathBuf),
    /// A label name other than `stable` or `canary`.
    #[error("unknown label `{0}` (labels: stable, canary)")]
    UnknownLabel(String),
    /// The version does not exist.
    #[error("{}: no version {version} (versions: {versions:?})", dir.display())]
    NoSuchVersion {
        /// The model's directory.
        dir: PathBuf,
        /// The version asked for.
        version: u64,
        /// The versions that exist.
        versions: Vec<u64>,
    },
    /// Labelling a version the gate rejected, without `force`.
    #[error("version {version} was rejected by the gate; pass --force to label it {label} anyway")]
    RejectedVersion {
        /// The version.
        version: u64,
        /// The label asked for.
        label: Label,
    },
    /// Rollback found no earlier stable version that still exists.
    #[error("{}: no earlier stable version to roll back to (stable {stable:?}, history {history:?})", dir.display())]
    NothingToRollBack {
        /// The model's directory.
        dir: PathBuf,
        /// The current stable version.
        stable: Option<u64>,
        /// The stable history.
        history: Vec<u64>,
    },
    /// An atomic write (temp file, fsync, rename, directory fsync) failed.
    #[error(transparent)]
    Write(Box<kiln_connectors::Error>),
    /// An operation on a repository in an object store (`s3://`, `hdfs://`) failed.
    #[error("{op} {url}")]
    Store {
        /// What was being done (`reading`, `listing`, `uploading`, ...).
        op: String,
        /// The object or prefix.
        url: String,
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A conditional write kept losing to other writers.
    #[error("{url}: gave up after {attempts} attempts: other writers changed it each time")]
    Contended {
        /// The object (`labels.json`, the claims directory).
        url: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A version changed while it was being downloaded.
    #[error("{url}: changed while it was being downloaded; try again")]
    Changed {
        /// The version's `SHA256SUMS` or directory.
        url: String,
    },
    /// A downloaded version does not match its `SHA256SUMS`: it is not used.
    #[error("the downloaded copy of version {url} failed verification")]
    Fetched {
        /// The version's URL.
        url: String,
        /// The mismatch.
        #[source]
        source: Box<RegistryError>,
    },
    /// The caller's verification of an assembled version failed.
    #[error("verifying {}", path.display())]
    Verify {
        /// The assembled (unpublished) version directory.
        path: PathBuf,
        /// The caller's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Maps an I/O error to [`RegistryError::Io`] naming `op` and `path`.
pub(crate) fn io(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let (op, path) = (op.to_string(), path.to_path_buf());
    move |source| RegistryError::Io { op, path, source }
}
