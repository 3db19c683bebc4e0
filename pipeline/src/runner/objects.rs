//! Reading what tasks produce and wait for, on any store `kiln_connectors::store` resolves
//! (`file://`, `s3://`, plain paths): objects, prefixes, committed manifests.

use anyhow::Context;
use sha2::{Digest, Sha256};

async fn get_object(
    loc: kiln_connectors::store::Location,
) -> Result<Option<Vec<u8>>, object_store::Error> {
    use object_store::ObjectStoreExt;
    match loc.store.get(&loc.path).await {
        Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn any_object(loc: kiln_connectors::store::Location) -> Result<bool, object_store::Error> {
    use futures::StreamExt;
    match loc.store.list(Some(&loc.path)).next().await {
        Some(Ok(_)) => Ok(true),
        None | Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
        Some(Err(e)) => Err(e),
    }
}

/// Reads an object (`file://`, `s3://`, path); `None` when it does not exist.
fn read_object(url: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let loc = kiln_connectors::store::resolve(url).with_context(|| format!("resolving {url}"))?;
    kiln_connectors::store::block_on(get_object(loc)).with_context(|| format!("reading {url}"))
}

/// Whether anything exists under a prefix.
pub(super) fn prefix_exists(url: &str) -> anyhow::Result<bool> {
    let loc = kiln_connectors::store::resolve(url).with_context(|| format!("resolving {url}"))?;
    kiln_connectors::store::block_on(any_object(loc)).with_context(|| format!("listing {url}"))
}

/// SHA-256 of a dataset's committed `_manifest.json`, `None` when not committed.
pub(super) fn manifest_sha256(location: &str) -> anyhow::Result<Option<String>> {
    let url = format!("{}/_manifest.json", location.trim_end_matches('/'));
    Ok(read_object(&url)?.map(|b| hex::encode(Sha256::digest(&b))))
}
