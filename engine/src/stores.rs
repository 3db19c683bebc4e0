//! Object stores for URLs, shared between Kiln's connectors and DataFusion's runtime.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use kiln_connectors::Location;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use url::Url;

use crate::{EngineError, Result};

/// Resolves `url` to its object store (registering it with `ctx` so DataFusion scans use
/// the same store and credentials) and the path inside the store.
pub fn store_for(ctx: &SessionContext, url: &str) -> Result<(Arc<dyn ObjectStore>, StorePath)> {
    let location = location_for(ctx, url)?;
    Ok((location.store, location.path))
}

/// Like [`store_for`], returning the connectors' [`Location`].
pub fn location_for(ctx: &SessionContext, url: &str) -> Result<Location> {
    let location = kiln_connectors::store::resolve(url).map_err(|e| EngineError::Url {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let parsed = Url::parse(url).map_err(|e| EngineError::Url {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    if parsed.scheme() != "file" {
        let base = Url::parse(&format!("{}://{}", parsed.scheme(), parsed.authority()))
            .expect("scheme://authority is a URL");
        ctx.register_object_store(&base, Arc::clone(&location.store));
    }
    Ok(location)
}

/// The store path of a full URL (`file:///a/b` -> `a/b`, `s3://bucket/a/b` -> `a/b`).
pub fn store_path(url: &str) -> std::result::Result<StorePath, DataFusionError> {
    kiln_connectors::store::resolve_url(url)
        .map(|(_, p)| p)
        .map_err(|e| DataFusionError::Execution(format!("{url}: {e}")))
}
