//! Progress of a feature job's writes, for a terminal's progress bar or a log line.

use std::sync::Arc;
use std::time::Duration;

/// How far one output's write has got. Reported about ten times a second while a local
/// write runs, from the shard sink's live counters; a cluster's sink runs in the executors,
/// so a cluster write reports only its end.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteProgress {
    /// The output's statement.
    pub statement: String,
    /// Shards the output has.
    pub shards: u32,
    /// Rows handed to the shard writers so far.
    pub rows: u64,
    /// Shards finished (every format's file written).
    pub shards_written: u64,
    /// Bytes of the finished shard files.
    pub bytes: u64,
    /// Every shard is written (not yet committed).
    pub done: bool,
    /// Time since the write's plan started running.
    pub elapsed: Duration,
}

/// Receives [`WriteProgress`] reports ([`crate::Overrides::progress`]).
#[derive(Clone)]
pub struct ProgressHook(pub Arc<dyn Fn(&WriteProgress) + Send + Sync>);

impl ProgressHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(&WriteProgress) + Send + Sync + 'static) -> ProgressHook {
        ProgressHook(Arc::new(f))
    }

    /// Reports `p`.
    pub fn report(&self, p: &WriteProgress) {
        (self.0)(p)
    }
}

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}
