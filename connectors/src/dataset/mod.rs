//! Sharded datasets: writing shards, committing them with `_manifest.json`, reading them back.
//!
//! Layout and commit protocol (docs/ARCHITECTURE.md, "Dataset layout and commit protocol"):
//! ```text
//! <location>/_manifest.json                         the only commit point
//! <location>/_SUCCESS                               written after the manifest
//! <location>/run-<run_id>/part-00000-of-00016.tfrecord.gz
//! <location>/run-<run_id>/part-00000-of-00016.parquet
//! ```
//! Shards are written under their final names inside a run-specific prefix (object_store puts
//! are atomic: local files are written to a temporary name and renamed, S3 multipart uploads
//! become visible on completion). [`commit_dataset`] checks that every shard of every format is
//! present exactly once, writes the manifest, then `_SUCCESS`, then deletes older `run-*`
//! prefixes. A writer killed before the manifest lands leaves the previous manifest (or none)
//! in place, and [`Dataset::open`] trusts nothing but the manifest.
//!
//! Row -> shard: `shard::shard_ids` of the key column, or, without a key column, round-robin
//! by the row's position in the input stream (`row_number % num_shards`). Inside a shard, rows
//! keep the order in which the writer received them. Shard bytes depend only on the rows and
//! the options: gzip headers carry no timestamp, Parquet files carry no timestamp.
//!
//! Modules: [`options`] (what to write), [`shard_writer`] (one shard index, every format),
//! [`commit`] (the manifest and `_SUCCESS`), [`writer`] ([`DatasetWriter`]: split + commit),
//! [`reader`] ([`Dataset`]: open through the manifest, stream shards).

pub mod commit;
pub mod options;
pub mod reader;
pub mod shard_writer;
pub mod writer;

pub use commit::{commit_dataset, commit_dataset_validated};
pub use options::{ShardOptions, new_run_id};
pub use reader::{Dataset, OpenOptions, ShardBatches, SkippedInShard};
pub use shard_writer::{ShardWriter, write_empty_shard};
pub use writer::{DatasetWriter, write_dataset_blocking};

pub use crate::manifest::{Manifest, ParquetCompression, ShardCompression, ShardFile, ShardFormat};
