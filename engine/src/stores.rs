//! Object stores for URLs, shared between Kiln's connectors and DataFusion's runtime.
//!
//! [`KilnObjectStoreRegistry`] builds a store the first time a bucket is used, from the
//! process's own environment (`AWS_*`, see [`kiln_connectors::store`]). Every Kiln process —
//! a local run, the Ballista client, the scheduler, each executor — therefore reaches S3
//! with its own credentials; none travel inside plans or session settings.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
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
    let location = kiln_connectors::store::resolve(url)
        .map_err(|e| EngineError::url_failed(url, "resolving the store", e))?;
    let parsed = Url::parse(url).map_err(|e| EngineError::url_failed(url, "parsing", e))?;
    if parsed.scheme() != "file" {
        let base = Url::parse(&format!("{}://{}", parsed.scheme(), parsed.authority()))
            .expect("scheme://authority is a URL");
        ctx.register_object_store(&base, Arc::clone(&location.store));
    }
    Ok(location)
}

/// The canonical URL of a location (`out/x` -> `file:///abs/out/x`), as every process of a
/// cluster resolves it the same way.
pub fn location_for_url(url: &str) -> Result<String> {
    kiln_connectors::store::resolve(url)
        .map(|l| l.url)
        .map_err(|e| EngineError::url_failed(url, "resolving the store", e))
}

/// The store path of a full URL (`file:///a/b` -> `a/b`, `s3://bucket/a/b` -> `a/b`).
pub fn store_path(url: &str) -> std::result::Result<StorePath, DataFusionError> {
    kiln_connectors::store::resolve_url(url)
        .map(|(_, p)| p)
        .map_err(|e| DataFusionError::Execution(format!("{url}: {e}")))
}

/// An object store registry that creates stores lazily per `scheme://bucket` from this
/// process's environment (via [`kiln_connectors::store::resolve`], which caches them).
#[derive(Debug, Default)]
pub struct KilnObjectStoreRegistry {
    registered: DefaultObjectStoreRegistry,
}

impl KilnObjectStoreRegistry {
    /// A registry knowing `file://` and creating `s3://` / `memory://` stores on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ObjectStoreRegistry for KilnObjectStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.registered.get_store(url) {
            return Ok(store);
        }
        // Scheme and bucket (or HDFS name node host:port) only: never echo user info a URL
        // might carry.
        let host = url.host_str().unwrap_or_default();
        let base = match url.port() {
            Some(port) => format!("{}://{host}:{port}/", url.scheme()),
            None => format!("{}://{host}/", url.scheme()),
        };
        let location = kiln_connectors::store::resolve(&base)
            .map_err(|e| DataFusionError::Execution(format!("object store for {base}: {e}")))?;
        self.registered
            .register_store(url, Arc::clone(&location.store));
        Ok(location.store)
    }
}
