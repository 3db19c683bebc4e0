//! A committed dataset's statistics (`_stats.json`, written with its shards), read through its
//! manifest and checked against the size and SHA-256 the manifest records: what `kiln stats`
//! prints and `kiln ui`'s dataset page draws.

use anyhow::Context;
use kiln_connectors::manifest::Manifest;
use kiln_connectors::stats::DatasetStats;

/// Reads and checks (size, SHA-256) the statistics of the committed dataset at `url` (a path,
/// `file://`, `s3://` or `hdfs://` URL). Blocking: call it off an async runtime's threads.
pub fn load(url: &str) -> anyhow::Result<DatasetStats> {
    Ok(load_with_manifest(url)?.1)
}

/// [`load`], with the dataset's manifest (its recorded validation, lineage).
pub fn load_with_manifest(url: &str) -> anyhow::Result<(Manifest, DatasetStats)> {
    kiln_connectors::store::block_on(kiln_connectors::stats::load_committed(url))
        .with_context(|| format!("reading the statistics of {url}"))
}
