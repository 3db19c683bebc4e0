//! The commit protocol: [`commit_dataset`] checks that every shard of every format is present
//! exactly once and, in the store, with its recorded size; writes `_manifest.json`, then
//! `_SUCCESS`; then deletes `run-*` prefixes older than the run it replaced.
//!
//! Concurrent commits of one dataset (a retry racing a manual rerun, two hosts) are safe:
//!
//! - The manifest replaces the previous one only if that is still the current one: on
//!   `file://` under an exclusive lock on `_kiln_commit.lock` (`File::lock`, released if the
//!   process dies); on `hdfs://` (which has no conditional put) under a lock file
//!   `_kiln_commit.lock` created by HDFS's atomic rename-if-absent (see [`CommitLockTiming`]
//!   for when a lock is waited for and when it is stale); on object stores by a conditional
//!   put (`PutMode::Update` with the previous manifest's ETag/version, `PutMode::Create` when
//!   there is none). A lost race re-reads the manifest, re-checks the shards and tries again.
//! - A run never replaces a manifest written by a newer run (run ids start with their UTC start
//!   time): it fails, naming the newer run, instead of rolling the dataset back.
//! - Deletion keeps the committed run and the run it replaced (a reader streaming the previous
//!   manifest keeps its shards until the next commit) and removes only runs older than the
//!   replaced one: leftovers of killed writers and superseded runs, never a concurrent run that
//!   may still commit. Filesystems keep empty directories: a deleted run's directory is removed
//!   too (locally with `remove_dir_all`, on HDFS by non-recursive deletes of the emptied
//!   directories, so a directory that gained a file meanwhile stays).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
use crate::stats::ValidationPlan;
use crate::store::Location;

/// Commit a run: check that every shard 0..N of every format is present exactly once (with
/// `fill_missing_empty_shards`, write empty shards for absent indices first), write
/// `_manifest.json`, then `_SUCCESS`, then delete older `run-*` prefixes. On HDFS the commit
/// lock is timed by [`CommitLockTiming::from_env`].
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
    let timing = CommitLockTiming::from_env(&location.url)?;
    commit_dataset_with(
        location,
        run_id,
        schema,
        options,
        shard_files,
        lineage,
        fill_missing_empty_shards,
        &timing,
    )
    .await
}

/// [`commit_dataset`] with an explicit HDFS commit-lock timing.
#[allow(clippy::too_many_arguments)]
pub async fn commit_dataset_with(
    location: &Location,
    run_id: &str,
    schema: SchemaRef,
    options: &ShardOptions,
    shard_files: Vec<ShardFile>,
    lineage: Value,
    fill_missing_empty_shards: bool,
    lock_timing: &CommitLockTiming,
) -> Result<Manifest> {
    commit_inner(
        location,
        run_id,
        schema,
        options,
        shard_files,
        lineage,
        fill_missing_empty_shards,
        lock_timing,
        None,
    )
    .await
}

/// [`commit_dataset`] that also checks the merged statistics against `plan` (expectations,
/// baseline) and records the [`Validation`](crate::stats::Validation) in the manifest. The
/// dataset commits whatever the anomalies: they are recorded, not enforced here. Without
/// statistics on the shards (`statistics = false`) this is an error: there is nothing to
/// check.
#[allow(clippy::too_many_arguments)]
pub async fn commit_dataset_validated(
    location: &Location,
    run_id: &str,
    schema: SchemaRef,
    options: &ShardOptions,
    shard_files: Vec<ShardFile>,
    lineage: Value,
    fill_missing_empty_shards: bool,
    plan: &ValidationPlan,
) -> Result<Manifest> {
    let timing = CommitLockTiming::from_env(&location.url)?;
    commit_inner(
        location,
        run_id,
        schema,
        options,
        shard_files,
        lineage,
        fill_missing_empty_shards,
        &timing,
        Some(plan),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn commit_inner(
    location: &Location,
    run_id: &str,
    schema: SchemaRef,
    options: &ShardOptions,
    shard_files: Vec<ShardFile>,
    lineage: Value,
    fill_missing_empty_shards: bool,
    lock_timing: &CommitLockTiming,
    plan: Option<&ValidationPlan>,
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
    let stats = write_stats(location, run_id, &schema, &mut files).await?;
    let validation = match (plan, &stats) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::dataset(
                &loc_url,
                "cannot validate: the shards carry no statistics (statistics = false?)",
            ));
        }
        (Some(plan), Some((_, merged))) => Some(plan.validate(merged)),
    };
    let stats = stats.map(|(file, _)| file);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_by: CREATED_BY.to_string(),
        run_id: run_id.to_string(),
        schema: SchemaJson::from_schema(&schema),
        options: options.manifest_options(),
        total_rows,
        shards: files.into_values().collect(),
        lineage,
        stats,
        validation,
    };
    if location.url.starts_with("file://") {
        remove_stray_local_files(location, run_id, &manifest);
    } else {
        remove_stray_objects(location, run_id, &manifest).await;
    }
    let replaced = put_manifest(location, &manifest, lock_timing).await?;
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

/// Merges the shards' statistics states in shard order (so the same shards give the same
/// bytes) into `run-<id>/_stats.json`, takes the states off the shard files (they are not part
/// of the manifest) and returns the file's entry and the statistics. `None` when no shard carried a state (shards
/// written by an older writer), and an error when only some did: statistics that silently
/// covered part of the rows would look complete.
async fn write_stats(
    location: &Location,
    run_id: &str,
    schema: &SchemaRef,
    files: &mut BTreeMap<(u32, ShardFormat), ShardFile>,
) -> Result<Option<(crate::manifest::StatsFile, crate::stats::DatasetStats)>> {
    let mut states: BTreeMap<u32, String> = BTreeMap::new();
    let mut without: Vec<u32> = Vec::new();
    let mut indices = std::collections::BTreeSet::new();
    for ((index, _), f) in files.iter_mut() {
        indices.insert(*index);
        if let Some(state) = f.stats_state.take() {
            states.insert(*index, state);
        }
    }
    for i in indices {
        if !states.contains_key(&i) {
            without.push(i);
        }
    }
    if states.is_empty() {
        return Ok(None);
    }
    if !without.is_empty() {
        return Err(Error::dataset(
            &location.url,
            format!("cannot commit: shards {without:?} carry no statistics while the others do"),
        ));
    }
    let mut merged = crate::stats::DatasetStatsBuilder::new(schema);
    for (i, state) in &states {
        let other = crate::stats::DatasetStatsBuilder::from_base64(schema, state)
            .map_err(|e| Error::dataset(&location.url, format!("statistics of shard {i}: {e}")))?;
        merged
            .merge(&other)
            .map_err(|e| Error::dataset(&location.url, format!("statistics of shard {i}: {e}")))?;
    }
    let finished = merged.finish();
    let bytes = finished
        .to_json()
        .map_err(|e| Error::dataset(&location.url, format!("statistics: {e}")))?;
    let path = format!("run-{run_id}/{}", crate::stats::STATS_FILE);
    let target = location.child(&path);
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let size = bytes.len() as u64;
    target
        .store
        .put(&target.path, PutPayload::from(bytes))
        .await
        .map_err(|e| Error::store(format!("writing {}", target.url), e))?;
    Ok(Some((
        crate::manifest::StatsFile {
            path,
            bytes: size,
            sha256,
        },
        finished,
    )))
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
async fn put_manifest(
    location: &Location,
    manifest: &Manifest,
    timing: &CommitLockTiming,
) -> Result<Option<String>> {
    let lock = CommitLock::acquire(location, COMMIT_LOCK_FILE, &manifest.run_id, timing).await?;
    let result = put_manifest_attempts(location, manifest, lock.as_ref()).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

async fn put_manifest_attempts(
    location: &Location,
    manifest: &Manifest,
    lock: Option<&CommitLock>,
) -> Result<Option<String>> {
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
        if let Some(lock) = lock {
            // A lock held past the stale limit may have been broken by another run.
            lock.check_held().await?;
        }
        let mode = match (&previous, lock) {
            // Under a commit lock nobody else can replace the manifest (on HDFS the put is a
            // temporary file renamed over the manifest: readers see the old or the new one).
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

/// The commit lock's file name, in the dataset directory.
pub const COMMIT_LOCK_FILE: &str = "_kiln_commit.lock";

/// How a commit to HDFS waits for the commit lock `<dataset>/_kiln_commit.lock` and when it
/// treats the lock as left by a dead writer.
///
/// A commit holds the lock for the seconds it takes to check the shards and write the
/// manifest. A lock older than [`stale_after`](Self::stale_after) (measured by the name node's
/// clock: the lock file's modification time against that of a file the waiter just wrote, so
/// clocks of the hosts do not matter) was left by a writer that died while committing: it is
/// removed with a warning naming its content, and the lock taken again. A younger lock is
/// waited for (100 ms doubling to 2 s) for at most [`wait`](Self::wait); then the commit fails,
/// naming the lock and its holder. The default wait outlasts the stale limit, so a commit
/// retried after its writer was killed proceeds on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitLockTiming {
    /// Age after which a lock is stale. Default 10 minutes; environment
    /// `KILN_COMMIT_LOCK_STALE_SECONDS`.
    pub stale_after: Duration,
    /// Longest wait for a live lock. Default 11 minutes; environment
    /// `KILN_COMMIT_LOCK_WAIT_SECONDS`.
    pub wait: Duration,
}

impl Default for CommitLockTiming {
    fn default() -> Self {
        CommitLockTiming {
            stale_after: Duration::from_secs(600),
            wait: Duration::from_secs(660),
        }
    }
}

impl CommitLockTiming {
    /// The defaults, overridden by `KILN_COMMIT_LOCK_STALE_SECONDS` and
    /// `KILN_COMMIT_LOCK_WAIT_SECONDS` (whole seconds); `dataset` is named in errors.
    pub fn from_env(dataset: &str) -> Result<Self> {
        let mut t = CommitLockTiming::default();
        for (var, field) in [
            ("KILN_COMMIT_LOCK_STALE_SECONDS", &mut t.stale_after),
            ("KILN_COMMIT_LOCK_WAIT_SECONDS", &mut t.wait),
        ] {
            if let Ok(v) = std::env::var(var) {
                let secs: u64 = v.trim().parse().map_err(|_| {
                    Error::dataset(
                        dataset,
                        format!("{var}={v:?} is not a whole number of seconds"),
                    )
                })?;
                *field = Duration::from_secs(secs);
            }
        }
        Ok(t)
    }
}

/// The lock a commit holds while it replaces the manifest, by the store's kind; none for
/// object stores with conditional puts.
enum CommitLock {
    /// `file://`: an exclusive `File::lock` on `<dataset>/_kiln_commit.lock`
    /// (`PutMode::Update` is not available there); released when dropped or the process dies.
    Local(#[allow(dead_code)] std::fs::File),
    /// `hdfs://`: the file `<dataset>/_kiln_commit.lock` itself, created by an atomic
    /// rename-if-absent and deleted on release.
    Hdfs(RenameLock),
}

impl CommitLock {
    async fn acquire(
        location: &Location,
        file: &str,
        run_id: &str,
        timing: &CommitLockTiming,
    ) -> Result<Option<CommitLock>> {
        if location.url.starts_with("file://") {
            Ok(Some(CommitLock::Local(
                Self::acquire_local(location, file).await?,
            )))
        } else if location.url.starts_with("hdfs://") {
            Ok(Some(CommitLock::Hdfs(
                RenameLock::acquire(location, file, run_id, timing).await?,
            )))
        } else {
            Ok(None)
        }
    }

    async fn acquire_local(location: &Location, file: &str) -> Result<std::fs::File> {
        let dir = std::path::PathBuf::from(format!("/{}", location.path.as_ref()));
        let path = dir.join(file);
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
            Ok(f)
        })
        .await
        .map_err(|e| Error::dataset(&location.url, format!("commit lock task: {e}")))?
    }

    /// Fails if this commit no longer holds the lock (an HDFS lock broken as stale).
    async fn check_held(&self) -> Result<()> {
        match self {
            CommitLock::Local(_) => Ok(()),
            CommitLock::Hdfs(l) => l.check_held().await,
        }
    }

    async fn release(self) {
        match self {
            CommitLock::Local(f) => drop(f),
            CommitLock::Hdfs(l) => l.release().await,
        }
    }
}

/// A lock serializing read-modify-writes of the files of one directory of a store, as the
/// dataset commit serializes manifest replacements (the model repository's `labels.json` and
/// version numbers use it): on `file://` an exclusive `File::lock` on `<dir>/<file>`
/// (released when dropped or the process dies); on `hdfs://`, which has no conditional put,
/// the file `<dir>/<file>` itself, created by an atomic rename-if-absent, waited for and
/// broken when stale as [`CommitLockTiming`] says, deleted on [`release`](Self::release).
/// Other object stores get no lock ([`acquire`](Self::acquire) returns `None`): writers there
/// use conditional puts (`PutMode::Create`, `PutMode::Update`) instead.
pub struct DirLock(CommitLock);

impl DirLock {
    /// Takes the lock `<dir>/<file>` for `holder` (written into an HDFS lock file, named when
    /// another process waits for it); `None` on stores with conditional puts.
    pub async fn acquire(
        dir: &Location,
        file: &str,
        holder: &str,
        timing: &CommitLockTiming,
    ) -> Result<Option<DirLock>> {
        Ok(CommitLock::acquire(dir, file, holder, timing)
            .await?
            .map(DirLock))
    }

    /// Fails if this process no longer holds the lock (an HDFS lock broken as stale).
    pub async fn check_held(&self) -> Result<()> {
        self.0.check_held().await
    }

    /// Releases the lock (an HDFS lock file is deleted if it is still this holder's).
    pub async fn release(self) {
        self.0.release().await
    }
}

/// A lock file read back: its content and its modification time (name node clock).
struct HeldLock {
    content: String,
    token: Option<String>,
    modified: chrono::DateTime<chrono::Utc>,
}

impl HeldLock {
    /// The holder for messages: the lock's JSON, shortened.
    fn holder(&self) -> String {
        let c = self.content.trim();
        match c.char_indices().nth(400) {
            Some((i, _)) => format!("{}...", &c[..i]),
            None => c.to_string(),
        }
    }
}

/// The HDFS commit lock held by this process.
struct RenameLock {
    lock: Location,
    token: String,
}

impl RenameLock {
    async fn acquire(
        location: &Location,
        file: &str,
        run_id: &str,
        timing: &CommitLockTiming,
    ) -> Result<RenameLock> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        let now = chrono::Utc::now();
        let token = format!(
            "{host}-{}-{}-{}",
            std::process::id(),
            now.timestamp_nanos_opt().unwrap_or_default(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let body = serde_json::json!({
            "run_id": run_id,
            "host": host,
            "pid": std::process::id(),
            "acquired_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "token": token,
        });
        let lock = location.child(file);
        let tmp = location.child(&format!(
            "{file}.{}.tmp",
            token.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        ));
        tmp.store
            .put(
                &tmp.path,
                serde_json::to_vec_pretty(&body).expect("json").into(),
            )
            .await
            .map_err(|e| Error::store(format!("writing {}", tmp.url), e))?;
        let written = Instant::now();
        let result = Self::take(&lock, &tmp, written, timing).await;
        if result.is_err() {
            // The rename did not happen: our candidate lock file is still there.
            let _ = tmp.store.delete(&tmp.path).await;
        }
        result.map(|()| RenameLock { lock, token })
    }

    /// Renames `tmp` to the lock, waiting for or breaking a lock held by another commit.
    async fn take(
        lock: &Location,
        tmp: &Location,
        written: Instant,
        timing: &CommitLockTiming,
    ) -> Result<()> {
        // The name node's clock when `tmp` was written: ages are measured on its clock.
        let tmp_modified = tmp
            .store
            .head(&tmp.path)
            .await
            .map_err(|e| Error::store(format!("reading {}", tmp.url), e))?
            .last_modified;
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match lock.store.rename_if_not_exists(&tmp.path, &lock.path).await {
                Ok(()) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => {
                    return Err(Error::store(
                        format!("taking the commit lock {}", lock.url),
                        e,
                    ));
                }
            }
            let Some(held) = read_lock(lock).await? else {
                continue; // released meanwhile
            };
            let name_node_now =
                tmp_modified + chrono::Duration::from_std(written.elapsed()).unwrap_or_default();
            let age = (name_node_now - held.modified)
                .to_std()
                .unwrap_or(Duration::ZERO);
            if age >= timing.stale_after {
                break_stale(lock, &held, age, timing).await?;
                continue;
            }
            let waited = start.elapsed();
            if waited >= timing.wait {
                return Err(Error::dataset(
                    lock.url.rsplit_once('/').map_or(&*lock.url, |(d, _)| d),
                    format!(
                        "cannot commit: the commit lock {} is held by {} (taken {}s ago); gave up \
                         after waiting {}s. A lock older than {}s is treated as left by a dead \
                         writer and removed; if its writer is gone, delete {} by hand",
                        lock.url,
                        held.holder(),
                        age.as_secs(),
                        waited.as_secs(),
                        timing.stale_after.as_secs(),
                        lock.url,
                    ),
                ));
            }
            tracing::info!(
                "{}: held by {}; waiting for it to be released",
                lock.url,
                held.holder()
            );
            tokio::time::sleep(delay.min(timing.wait - waited)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn check_held(&self) -> Result<()> {
        let held = read_lock(&self.lock).await?;
        if held.as_ref().and_then(|h| h.token.as_deref()) == Some(self.token.as_str()) {
            return Ok(());
        }
        Err(Error::dataset(
            &self.lock.url,
            format!(
                "cannot commit: this run's commit lock was removed (held past the stale limit?); \
                 the lock is now {}",
                held.map_or("absent".to_string(), |h| format!("held by {}", h.holder()))
            ),
        ))
    }

    /// Deletes the lock if it is still this commit's (a failure is logged: the lock then goes
    /// stale and is broken by the next commit).
    async fn release(self) {
        match read_lock(&self.lock).await {
            Ok(Some(h)) if h.token.as_deref() == Some(self.token.as_str()) => {
                if let Err(e) = self.lock.store.delete(&self.lock.path).await {
                    tracing::warn!("releasing the commit lock {}: {e}", self.lock.url);
                }
            }
            Ok(other) => tracing::warn!(
                "{}: not releasing the commit lock, it is no longer this run's (now {})",
                self.lock.url,
                other.map_or("absent".to_string(), |h| format!("held by {}", h.holder()))
            ),
            Err(e) => tracing::warn!("releasing the commit lock {}: {e}", self.lock.url),
        }
    }
}

/// Reads a lock file; `None` if there is none.
async fn read_lock(lock: &Location) -> Result<Option<HeldLock>> {
    let got = match lock.store.get(&lock.path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::store(format!("reading {}", lock.url), e)),
    };
    let modified = got.meta.last_modified;
    let bytes = match got.bytes().await {
        Ok(b) => b,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::store(format!("reading {}", lock.url), e)),
    };
    let content = String::from_utf8_lossy(&bytes).into_owned();
    let token = serde_json::from_str::<Value>(&content)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string));
    Ok(Some(HeldLock {
        content,
        token,
        modified,
    }))
}

/// Removes a stale lock. It is first renamed to a name of its own (only one of several
/// waiters can), then checked to be the lock judged stale (not a fresh lock taken meanwhile,
/// which is put back), then deleted.
async fn break_stale(
    lock: &Location,
    held: &HeldLock,
    age: Duration,
    timing: &CommitLockTiming,
) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let aside = lock.store.clone();
    let aside_loc = Location::new(
        aside,
        Path::from(format!(
            "{}.stale-{}-{}",
            lock.path.as_ref(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )),
        format!("{}.stale", lock.url),
    );
    match lock
        .store
        .rename_if_not_exists(&lock.path, &aside_loc.path)
        .await
    {
        Ok(()) => {}
        // Released or broken by another waiter meanwhile.
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => {
            return Err(Error::store(
                format!("removing the stale lock {}", lock.url),
                e,
            ));
        }
    }
    let moved = read_lock(&aside_loc).await?;
    let same = moved
        .as_ref()
        .is_some_and(|m| m.content == held.content && m.modified == held.modified);
    if !same {
        // A commit took the lock between our read and our rename: give it back.
        if let Err(e) = lock
            .store
            .rename_if_not_exists(&aside_loc.path, &lock.path)
            .await
        {
            tracing::warn!(
                "{}: moved a live commit lock aside by mistake and could not put it back ({e}); \
                 its commit will fail its lock check and retry",
                lock.url
            );
            let _ = lock.store.delete(&aside_loc.path).await;
        }
        return Ok(());
    }
    tracing::warn!(
        "{}: removing a stale commit lock held by {} ({}s old, stale after {}s): its writer \
         presumably died while committing",
        lock.url,
        held.holder(),
        age.as_secs(),
        timing.stale_after.as_secs()
    );
    lock.store
        .delete(&aside_loc.path)
        .await
        .map_err(|e| Error::store(format!("removing the stale lock {}", lock.url), e))
}

/// Removes files of this run that the manifest does not list: staging files of a shard
/// writer that was killed mid-write (a distributed task attempt on a lost executor). Readers
/// never trust them, but they should not linger next to the committed shards.
fn remove_stray_local_files(location: &Location, run_id: &str, manifest: &Manifest) {
    let dir = std::path::PathBuf::from(format!("/{}", location.path.as_ref()))
        .join(format!("run-{run_id}"));
    let listed: std::collections::HashSet<&str> = manifest
        .shards
        .iter()
        .map(|s| s.path.as_str())
        .chain(manifest.stats.iter().map(|s| s.path.as_str()))
        .collect();
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
        .map(|s| s.path.as_str())
        .chain(manifest.stats.iter().map(|s| s.path.as_str()))
        .map(|p| location.child(p).path.to_string())
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
        let mut dirs = std::collections::BTreeSet::from([p.clone()]);
        for o in objs {
            location
                .store
                .delete(&o)
                .await
                .map_err(|e| Error::store(format!("deleting {o}"), e))?;
            let mut parts: Vec<_> = o.parts().collect();
            while parts.len() > p.parts().count() + 1 {
                parts.pop();
                dirs.insert(parts.iter().cloned().collect());
            }
        }
        // Filesystems keep empty directories; remove the run directory if we can.
        if location.url.starts_with("file://") {
            let dir = std::path::PathBuf::from(format!("/{}", p.as_ref()));
            let _ = std::fs::remove_dir_all(dir);
        } else if location.url.starts_with("hdfs://") {
            // A delete of a directory on HDFS is non-recursive: it removes it only if empty.
            // Deepest first, so the run directory goes last.
            let mut dirs: Vec<Path> = dirs.into_iter().collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.parts().count()));
            for d in dirs {
                if let Err(e) = location.store.delete(&d).await {
                    tracing::warn!(
                        "removing the emptied directory {d} of {}: {e}",
                        location.url
                    );
                }
            }
        }
    }
    Ok(())
}
