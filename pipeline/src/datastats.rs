//! A committed dataset's statistics (`_stats.json`, written with its shards), read through its
//! manifest and checked against the size and SHA-256 the manifest records: what `kiln stats`
//! prints and `kiln ui`'s dataset page draws.

use anyhow::{Context, bail};
use kiln_connectors::stats::DatasetStats;
use kiln_connectors::{Dataset, OpenOptions};
use object_store::ObjectStoreExt;
use sha2::Digest;

/// Reads and checks (size, SHA-256) the statistics of the committed dataset at `url` (a path,
/// `file://`, `s3://` or `hdfs://` URL). Blocking: call it off an async runtime's threads.
pub fn load(url: &str) -> anyhow::Result<DatasetStats> {
    let ds = Dataset::open_blocking(url, OpenOptions::default())
        .with_context(|| format!("opening {url}"))?;
    let Some(file) = ds.manifest().stats.clone() else {
        bail!("{url}: the manifest lists no statistics (written by a Kiln before statistics)");
    };
    let location = kiln_connectors::store::resolve(url)?.child(&file.path);
    let bytes = kiln_connectors::store::block_on(async {
        location.store.get(&location.path).await?.bytes().await
    })
    .with_context(|| format!("reading {}", location.url))?;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    if bytes.len() as u64 != file.bytes || sha != file.sha256 {
        bail!(
            "{}: {} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
            location.url,
            bytes.len(),
            file.bytes,
            file.sha256
        );
    }
    DatasetStats::from_json(&bytes).with_context(|| format!("parsing {}", location.url))
}
