//! A committed dataset's statistics (`_stats.json`), read through its manifest and checked
//! against the size and SHA-256 the manifest records.

use object_store::ObjectStoreExt;
use sha2::Digest;

use super::DatasetStats;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::{Dataset, OpenOptions};

/// The manifest and the checked statistics of the committed dataset at `url` (a path,
/// `file://`, `s3://` or `hdfs://` URL). A dataset that is not committed is
/// [`Error::NotCommitted`]; one whose manifest lists no statistics, or whose statistics file
/// does not match the manifest, is an error naming the file.
pub async fn load_committed(url: &str) -> Result<(Manifest, DatasetStats)> {
    let ds = Dataset::open(url, OpenOptions::default()).await?;
    let manifest = ds.manifest().clone();
    let Some(file) = manifest.stats.clone() else {
        return Err(Error::dataset(
            url,
            "the manifest lists no statistics (written with statistics = false, or by a Kiln before statistics)",
        ));
    };
    let location = crate::store::resolve(url)?.child(&file.path);
    let bytes = async { location.store.get(&location.path).await?.bytes().await }
        .await
        .map_err(|e| Error::store(format!("reading {}", location.url), e))?;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    if bytes.len() as u64 != file.bytes || sha != file.sha256 {
        return Err(Error::dataset(
            &location.url,
            format!(
                "{} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                bytes.len(),
                file.bytes,
                file.sha256
            ),
        ));
    }
    let stats = DatasetStats::from_json(&bytes)
        .map_err(|e| Error::dataset(&location.url, format!("parsing: {e}")))?;
    Ok((manifest, stats))
}
