//! The commit protocol: [`commit_dataset`] checks that every shard of every format is present
//! exactly once and, in the store, with its recorded size; writes `_manifest.json`, then
//! `_SUCCESS`; then deletes `run-*` prefixes older than the run it replaced.
//!
//! Concurrent commits of one dataset (a retry racing a manual rerun, two hosts) are safe:
//!
//! - The manifest replaces the previous one only if that is still the current one: on
//!   `file://` under an exclusive lock on `_kiln_commit.lock` (`File::lock`, released if the
//!   process dies), on object stores by a conditional put (`PutMode::Update` with the previous
//!   manifest's ETag/version, `PutMode::Create` when there is none). A lost race re-reads the
//!   manifest, re-checks the shards and tries again.
//! - A run never replaces a manifest written by a newer run (run ids start with their UTC start
//!   time): it fails, naming the newer run, instead of rolling the dataset back.
//! - Deletion keeps the committed run and the run it replaced (a reader streaming the previous
//!   manifest keeps its shards until the next commit) and removes only runs older than the
//!   replaced one: leftovers of killed writers and superseded runs, never a concurrent run that
//!   may still commit.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde_json::Value;

use super::options::{ShardOptions, validate_run_id};
use super::shard_writer::write_empty_shard;
use crate::error::{Error, Result};
use crate::manifest::{
    CREATED_BY, FORMAT_VERSION, MANIFEST_FILE, Manifest, SUCCESS_FILE, SchemaJson, ShardFile,
    ShardFormat,
};
use crate::store::Location;

/// Commit a run: check that every shard 0..N of every format is present exactly once (with
/// `fill_missing_empty_shards`, write empty shards for absent indices first), write
/// `_manifest.json`, then `_SUCCESS`, then delete older `run-*` prefixes.
#[allow(clippy::too_many_arguments)]
pub async fn commit_dataset(
    location: &Location,
    run_id: &str,
    schema: SchemaRef,
    options: &ShardOptions,
    shard_files: Vec<ShardFile>,
    lineage: Value,
    fill_missing_empty_shards: bool,
) -> Result<Manifest> {
    validate_run_id(run_id)?;
    options.validate(&schema)?;
    let loc_url = location.url.clone();
    let n = options.num_shards;
    let mut files: BTreeMap<(u32, ShardFormat), ShardFile> = BTreeMap::new();
    let prefix = format!("run-{run_id}/");
    for f in shard_files {
        if f.index >= n {
            return Err(Error::dataset(
                &loc_url,
                format!("shard {} has index {} >= num_shards {n}", f.path, f.index),
            ));
        }
        if !options.formats.contains(&f.format) {
            return Err(Error::dataset(
                &loc_url,
                format!(
                    "shard {} has format {:?}, not one of {:?}",
                    f.path, f.format, options.formats
                ),
            ));
        }
        if !f.path.starts_with(&prefix) {
            return Err(Error::dataset(
                &loc_url,
                format!("shard {} is not under {prefix}", f.path),
            ));
        }
        let key = (f.index, f.format);
        if let Some(prev) = files.insert(key, f) {
            return Err(Error::dataset(
                &loc_url,
                format!(
                    "shard {} of format {} given twice ({})",
                    prev.index,
                    prev.format.name(),
                    prev.path
                ),
            ));
        }
    }
    let missing: Vec<u32> = (0..n)
        .filter(|i| {
            options
                .formats
                .iter()
                .any(|f| !files.contains_key(&(*i, *f)))
        })
        .collect();
    if !missing.is_empty() {
        if !fill_missing_empty_shards {
            return Err(Error::dataset(
                &loc_url,
                format!(
                    "cannot commit: shards {missing:?} are missing (pass fill_missing_empty_shards to write empty ones)"
                ),
            ));
        }
        for i in missing {
            let present: Vec<ShardFormat> = options
                .formats
                .iter()
                .copied()
                .filter(|f| files.contains_key(&(i, *f)))
                .collect();
            if !present.is_empty() {
                return Err(Error::dataset(
                    &loc_url,
                    format!(
                        "shard {i} exists in {present:?} but not in every format; refusing to fill it with an empty shard"
                    ),
                ));
            }
            for f in write_empty_shard(location, run_id, i, schema.clone(), options).await? {
                files.insert((f.index, f.format), f);
            }
        }
    }
    // Formats of the same shard must agree on row counts.
    let mut total_rows = 0u64;
    for i in 0..n {
        let rows: Vec<u64> = options
            .formats
            .iter()
            .map(|f| files[&(i, *f)].rows)
            .collect();
        if rows.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::dataset(
                &loc_url,
                format!("shard {i}: formats disagree on row counts {rows:?}"),
            ));
        }
        total_rows += rows[0];
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_by: CREATED_BY.to_string(),
        run_id: run_id.to_string(),
        schema: SchemaJson::from_schema(&schema),
        options: options.manifest_options(),
        total_rows,
        shards: files.into_values().collect(),
        lineage,
    };
    if location.url.starts_with("file://") {
        remove_stray_local_files(location, run_id, &manifest);
    } else {
        remove_stray_objects(location, run_id, &manifest).await;
    }
    let replaced = put_manifest(location, &manifest).await?;
    let s = location.child(SUCCESS_FILE);
    s.store
        .put(&s.path, Bytes::new().into())
        .await
        .map_err(|e| Error::store(format!("writing {}", s.url), e))?;
    if let Some(previous) = replaced
        && let Err(e) = delete_runs_older_than(location, &previous, run_id).await
    {
        tracing::warn!("committed {loc_url}, but deleting older runs failed: {e}");
    }
    Ok(manifest)
}

/// How often a commit re-reads the manifest after losing a race before giving up.
const COMMIT_ATTEMPTS: usize = 20;

/// The current manifest's run id and version, if there is a manifest.
async fn current_manifest(location: &Location) -> Result<Option<(String, UpdateVersion)>> {
    let m = location.child(MANIFEST_FILE);
    let got = match m.store.get(&m.path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::store(format!("reading {}", m.url), e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| Error::store(format!("reading {}", m.url), e))?;
    let previous = Manifest::from_json_bytes(&bytes, &m.url)?;
    Ok(Some((previous.run_id, version)))
}

/// Every listed shard is in the store with its recorded size (a HEAD per shard).
async fn verify_shards_in_store(location: &Location, manifest: &Manifest) -> Result<()> {
    let checks: Vec<_> = manifest
        .shards
        .iter()
        .map(|s| {
            let f = location.child(&s.path);
            let (dataset, want) = (location.url.clone(), s.bytes);
            async move {
                match f.store.head(&f.path).await {
                    Ok(meta) if meta.size == want => Ok(()),
                    Ok(meta) => Err(Error::dataset(
                        &dataset,
                        format!(
                            "cannot commit: shard {} has {} bytes in the store, {want} when written",
                            f.url, meta.size
                        ),
                    )),
                    Err(object_store::Error::NotFound { .. }) => Err(Error::dataset(
                        &dataset,
                        format!("cannot commit: shard {} is not in the store", f.url),
                    )),
                    Err(e) => Err(Error::store(format!("checking {}", f.url), e)),
                }
            }
            .boxed()
        })
        .collect();
    futures::future::try_join_all(checks).await.map(|_| ())
}

/// Writes `_manifest.json` if no newer run committed meanwhile; returns the run id of the
/// manifest it replaced.
async fn put_manifest(location: &Location, manifest: &Manifest) -> Result<Option<String>> {
    let _lock = match location.url.starts_with("file://") {
        true => Some(LocalCommitLock::acquire(location).await?),
        false => None,
    };
    let m = location.child(MANIFEST_FILE);
    let bytes = manifest.to_json_bytes();
    for _ in 0..COMMIT_ATTEMPTS {
        let previous = current_manifest(location).await?;
        if let Some((prev_run, _)) = &previous
            && prev_run.as_str() > manifest.run_id.as_str()
        {
            return Err(Error::dataset(
                &location.url,
                format!(
                    "cannot commit run {}: run {prev_run}, which started later, committed this \
                     dataset while this run was writing; not replacing it with older output",
                    manifest.run_id
                ),
            ));
        }
        verify_shards_in_store(location, manifest).await?;
        let mode = match (&previous, &_lock) {
            // Under the local lock nobody else can replace the manifest.
            (_, Some(_)) => PutMode::Overwrite,
            (Some((_, version)), None) => PutMode::Update(version.clone()),
            (None, None) => PutMode::Create,
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match m
            .store
            .put_opts(&m.path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => return Ok(previous.map(|(run, _)| run)),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => {
                tracing::info!(
                    "{}: another run committed meanwhile; re-reading the manifest",
                    m.url
                );
            }
            Err(e) => return Err(Error::store(format!("writing {}", m.url), e)),
        }
    }
    Err(Error::dataset(
        &location.url,
        format!("cannot commit: the manifest changed under {COMMIT_ATTEMPTS} attempts in a row"),
    ))
}

/// An exclusive lock on `<dataset>/_kiln_commit.lock` for commits to a local directory
/// (`PutMode::Update` is not available there); released when dropped or the process dies.
struct LocalCommitLock(#[allow(dead_code)] std::fs::File);

impl LocalCommitLock {
    async fn acquire(location: &Location) -> Result<LocalCommitLock> {
        let dir = std::path::PathBuf::from(format!("/{}", location.path.as_ref()));
        let path = dir.join("_kiln_commit.lock");
        let url = location.url.clone();
        tokio::task::spawn_blocking(move || {
            let io = |e: std::io::Error| {
                Error::dataset(&url, format!("locking {}: {e}", path.display()))
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            f.lock().map_err(io)?;
            Ok(LocalCommitLock(f))
        })
        .await
        .map_err(|e| Error::dataset(&location.url, format!("commit lock task: {e}")))?
    }
}

/// Removes files of this run that the manifest does not list: staging files of a shard
/// writer that was killed mid-write (a distributed task attempt on a lost executor). Readers
/// never trust them, but they should not linger next to the committed shards.
fn remove_stray_local_files(location: &Location, run_id: &str, manifest: &Manifest) {
    let dir = std::path::PathBuf::from(format!("/{}", location.path.as_ref()))
        .join(format!("run-{run_id}"));
    let listed: std::collections::HashSet<&str> =
        manifest.shards.iter().map(|s| s.path.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !listed.contains(format!("run-{run_id}/{name}").as_str()) {
            tracing::warn!(
                "removing {}/{name}: not a committed shard (left by an interrupted writer)",
                dir.display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Object stores: deletes objects under this run's prefix that the manifest does not list
/// (a shard a killed task attempt completed under a name no attempt committed). Incomplete
/// multipart uploads of a killed process are not listable through `object_store`; see
/// `docs/datasets.md` for the bucket lifecycle rule that removes them.
async fn remove_stray_objects(location: &Location, run_id: &str, manifest: &Manifest) {
    let run = location.child(&format!("run-{run_id}"));
    let listed: std::collections::HashSet<String> = manifest
        .shards
        .iter()
        .map(|s| location.child(&s.path).path.to_string())
        .collect();
    let objects: Vec<_> = run.store.list(Some(&run.path)).collect().await;
    for o in objects {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("listing {} for stray shard files: {e}", run.url);
                return;
            }
        };
        if listed.contains(o.location.as_ref()) {
            continue;
        }
        tracing::warn!(
            "removing {}: not a committed shard (left by an interrupted writer)",
            o.location
        );
        if let Err(e) = run.store.delete(&o.location).await {
            tracing::warn!("deleting stray {}: {e}", o.location);
        }
    }
}

/// Deletes `run-*` prefixes older than `replaced` (the run whose manifest this commit
/// replaced), except `committed`.
async fn delete_runs_older_than(
    location: &Location,
    replaced: &str,
    committed: &str,
) -> Result<()> {
    let keep = format!("run-{committed}");
    let oldest_kept = format!("run-{replaced}");
    let listing = location
        .store
        .list_with_delimiter(Some(&location.path))
        .await
        .map_err(|e| Error::store(format!("listing {}", location.url), e))?;
    for p in listing.common_prefixes {
        let name = p.filename().unwrap_or_default().to_string();
        if !name.starts_with("run-") || name == keep || name.as_str() >= oldest_kept.as_str() {
            continue;
        }
        let objs: Vec<Path> = location
            .store
            .list(Some(&p))
            .map(|r| r.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::store(format!("listing {}/{name}", location.url), e))?;
        for o in objs {
            location
                .store
                .delete(&o)
                .await
                .map_err(|e| Error::store(format!("deleting {o}"), e))?;
        }
        // Local filesystems keep empty directories; remove the run directory if we can.
        if location.url.starts_with("file://") {
            let dir = std::path::PathBuf::from(format!("/{}", p.as_ref()));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}
