//! Model directories by URL: a local path / `file://` URL is used in place; an object-store
//! URL (`s3://bucket/prefix`, `hdfs://namenode:port/path`) is trained into a local staging directory that rank 0 fills from
//! the store on `--resume` and uploads when training ends, and is downloaded before
//! `kiln predict` reads it.
//!
//! The upload removes the store's `model.json` first and writes it last, so a reader that
//! finds it finds every other file of the same model (never half old, half new). Checkpoints
//! are uploaded as they are written and pruned in the store like on disk (the newest
//! [`KEEP_CHECKPOINTS`]); a fresh (not `--resume`) run removes the store's
//! `checkpoints/latest`, so that a later `--resume` cannot continue an older run.

use std::path::PathBuf;

use anyhow::Context;
use futures::TryStreamExt;
use kiln_connectors::store::{self, Location};
use kiln_trainer::checkpoint::KEEP_CHECKPOINTS;
use kiln_trainer::export::MODEL_FILES;
use object_store::{ObjectStore, ObjectStoreExt};

/// A resolved model directory.
pub struct ModelDir {
    /// The directory the trainer reads and writes.
    pub local: PathBuf,
    /// The object-store location it mirrors, if the URL was not local.
    pub remote: Option<Location>,
    /// `local` is this process's download ([`ModelDir::fetch`]), removed on drop.
    downloaded: bool,
}

/// Files uploaded last, in this order: `model.json` marks a complete model.
const UPLOAD_LAST: [&str; 2] = ["metrics.json", "model.json"];

impl ModelDir {
    /// Resolves `url`: local paths as they are, object-store URLs to a staging directory under
    /// the system temp dir named after the URL (stable, so a rerun on this host finds it).
    pub fn resolve(url: &str) -> anyhow::Result<ModelDir> {
        if let Some(p) = url.strip_prefix("file://") {
            return Ok(ModelDir {
                local: PathBuf::from(p),
                remote: None,
                downloaded: false,
            });
        }
        if !url.contains("://") {
            return Ok(ModelDir {
                local: std::path::absolute(url)?,
                remote: None,
                downloaded: false,
            });
        }
        let remote = store::resolve(url).with_context(|| format!("model directory {url}"))?;
        let name: String = url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Ok(ModelDir {
            local: std::env::temp_dir().join("kiln-models").join(name),
            remote: Some(remote),
            downloaded: false,
        })
    }

    /// Before training (rank 0): a fresh run starts from an empty staging directory and
    /// removes the store's `checkpoints/latest` (a later `--resume` must not find an older
    /// run's checkpoint); a resumed run keeps a local checkpoint left by an earlier run on
    /// this host, else downloads the store's checkpoints.
    pub fn prepare_for_training(&self, resume: bool) -> anyhow::Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let local_ckpt = self.local.join("checkpoints");
        if !resume {
            if self.local.exists() {
                std::fs::remove_dir_all(&self.local)
                    .with_context(|| format!("clearing {}", self.local.display()))?;
            }
            let latest = remote.child("checkpoints/latest");
            store::block_on(delete_if_present(&latest))?;
            // An earlier run's TensorBoard event files (`logs/`) go too, as they do locally.
            store::block_on(delete_under(&remote.child(kiln_trainer::events::LOGS_DIR)))?;
        } else if !local_ckpt.join("latest").exists() {
            let from = remote.child("checkpoints");
            let progress = crate::progress::transfer(format!("downloading {}", from.url));
            let n = store::download_dir_with(&from, &local_ckpt, &*progress)?;
            tracing::info!(files = n, from = %remote.url, "downloaded checkpoints");
        }
        std::fs::create_dir_all(&self.local)
            .with_context(|| format!("creating {}", self.local.display()))?;
        Ok(())
    }

    /// For rank 0 of a remote model directory: uploads each checkpoint as soon as it is
    /// written (the file, then `checkpoints/latest`), so a run whose host dies can resume
    /// from the store on another host, then removes the store's older checkpoints (the
    /// newest [`KEEP_CHECKPOINTS`] stay, as on disk). The trainer runs it on a background
    /// thread: a slow store does not hold up training.
    pub fn checkpoint_uploader(&self) -> Option<kiln_trainer::train::CheckpointHook> {
        let remote = self.remote.clone()?;
        Some(std::sync::Arc::new(move |path: &std::path::Path| {
            let upload = |file: &std::path::Path| -> anyhow::Result<()> {
                let name = file.file_name().expect("a file").to_string_lossy();
                let to = remote.child(&format!("checkpoints/{name}"));
                let bytes = std::fs::read(file)?;
                store::block_on(to.store.put(&to.path, bytes.into()))?;
                Ok(())
            };
            upload(path)
                .and_then(|()| upload(&path.with_file_name("latest")))
                .and_then(|()| store::block_on(prune_checkpoints(&remote)).map(drop))
                .map_err(|e| kiln_trainer::Error::File {
                    path: remote.child("checkpoints").url.into(),
                    source: e
                        .context(format!("uploading checkpoint {}", path.display()))
                        .into(),
                })?;
            tracing::info!(checkpoint = %path.display(), to = %remote.url, "uploaded checkpoint");
            Ok(())
        }))
    }

    /// After training (rank 0): uploads the model and its checkpoints to the store. The
    /// store's `model.json` is removed first (and so are model files this model lacks, such
    /// as `metrics.json` of an older model), and written last: a reader never pairs one
    /// model's `model.json` with another's weights, even if the upload stops half-way.
    pub fn publish(&self) -> anyhow::Result<()> {
        if let Some(remote) = &self.remote {
            store::block_on(async {
                delete_if_present(&remote.child("model.json")).await?;
                for f in MODEL_FILES {
                    if !self.local.join(f).exists() {
                        delete_if_present(&remote.child(f)).await?;
                    }
                }
                anyhow::Ok(())
            })?;
            let progress =
                crate::progress::transfer(format!("uploading the model to {}", remote.url));
            let n = store::upload_dir_with(&self.local, remote, &UPLOAD_LAST, &*progress)?;
            let pruned = store::block_on(prune_checkpoints(remote))?;
            tracing::info!(files = n, pruned, to = %remote.url, "uploaded the model directory");
        }
        Ok(())
    }

    /// Before reading a model: downloads a remote model directory (it must hold `model.json`)
    /// into a directory of this process (not the training staging directory), removed when
    /// this `ModelDir` is dropped.
    pub fn fetch(&mut self) -> anyhow::Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let name = self
            .local
            .file_name()
            .expect("staging name")
            .to_string_lossy();
        self.local = self
            .local
            .with_file_name(format!("read-{}-{name}", std::process::id()));
        if self.local.exists() {
            std::fs::remove_dir_all(&self.local)
                .with_context(|| format!("clearing {}", self.local.display()))?;
        }
        self.downloaded = true;
        let progress = crate::progress::transfer(format!("downloading {}", remote.url));
        let n = store::download_dir_with(remote, &self.local, &*progress)?;
        if n == 0 || !self.local.join("model.json").exists() {
            anyhow::bail!(
                "{}: no model.json (not a complete model directory)",
                remote.url
            );
        }
        Ok(())
    }

    /// The URL or path for messages and reports.
    pub fn display(&self) -> String {
        match &self.remote {
            Some(r) => r.url.clone(),
            None => self.local.display().to_string(),
        }
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        if self.downloaded {
            let _ = std::fs::remove_dir_all(&self.local);
        }
    }
}

/// Deletes an object; one that is not there is fine.
async fn delete_if_present(loc: &Location) -> anyhow::Result<()> {
    match loc.store.delete(&loc.path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting {}", loc.url)),
    }
}

/// Deletes every object under `dir`.
async fn delete_under(dir: &Location) -> anyhow::Result<()> {
    let objects: Vec<_> = dir
        .store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .with_context(|| format!("listing {}", dir.url))?;
    for m in objects {
        match dir.store.delete(&m.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("deleting {} from {}", m.location, dir.url));
            }
        }
    }
    Ok(())
}

/// Removes all but the newest [`KEEP_CHECKPOINTS`] checkpoint files under
/// `remote/checkpoints/` (names sort by step); returns how many were removed.
async fn prune_checkpoints(remote: &Location) -> anyhow::Result<usize> {
    let dir = remote.child("checkpoints");
    let objects: Vec<_> = dir
        .store
        .list(Some(&dir.path))
        .try_collect()
        .await
        .with_context(|| format!("listing {}", dir.url))?;
    let mut ckpts: Vec<_> = objects
        .into_iter()
        .filter(|m| {
            m.location
                .filename()
                .is_some_and(kiln_trainer::checkpoint::is_checkpoint_name)
        })
        .map(|m| m.location)
        .collect();
    ckpts.sort_by(|a, b| a.filename().cmp(&b.filename()));
    let old = ckpts.len().saturating_sub(KEEP_CHECKPOINTS);
    for p in &ckpts[..old] {
        match dir.store.delete(p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {p} from {}", dir.url)),
        }
    }
    Ok(old)
}

/// Writes `bytes` to a local path, `file://` URL or object-store URL.
pub fn write_output(url: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let loc = store::resolve(url).with_context(|| format!("output {url}"))?;
    store::block_on(async { loc.store.put(&loc.path, bytes.into()).await })
        .with_context(|| format!("writing {}", loc.url))?;
    Ok(())
}
