//! The model repository on an object store (`s3://`, `hdfs://`, `memory://`), through the
//! stores `kiln_connectors::store` resolves: same layout as on a local disk
//! (`<name>/<version>/...`, `SHA256SUMS`, `labels.json`), but object stores have no atomic
//! directory rename, so publication and locking work differently.
//!
//! - **Publish**: the version is assembled, checksummed and verified in a local scratch
//!   directory; its number is then claimed by creating `<name>/.claims/<version>` with a
//!   conditional put that fails if the object exists (`PutMode::Create`: S3's
//!   `If-None-Match: *`, HDFS's rename without overwrite), so two publishers never get the
//!   same number, whatever their hosts. Its files are uploaded under `<name>/<version>/` and
//!   `SHA256SUMS` **last**: a version exists for readers only once its `SHA256SUMS` does, and
//!   then every file it lists is in place. Claims are kept, so a number is never reused (a
//!   server's cached copy of version N is always of the same files).
//! - **`labels.json`** is read, changed and written back with a conditional put
//!   (`PutMode::Update` with the ETag read, `PutMode::Create` when there was none); a lost
//!   race re-reads and retries. HDFS has no conditional update: there, label changes and
//!   version allocation hold the repository lock `<name>/.lock`, the rename-if-absent lock of
//!   the dataset commit ([`kiln_connectors::dataset::commit::DirLock`]), and `labels.json` is
//!   replaced by a rename, so readers see the old file or the new one.
//! - **Prune** deletes a version's `SHA256SUMS` first (the version disappears for readers at
//!   once), then its other files.
//! - A publisher killed mid-upload leaves a claimed prefix without `SHA256SUMS`; it is never
//!   listed as a version, and is deleted by the next publish once its claim is older than
//!   [`crate::STALE_TMP_AGE`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use kiln_connectors::dataset::commit::{CommitLockTiming, DirLock};
use kiln_connectors::store::{Location, block_on};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};

use crate::{LABELS, Labels, RegistryError, Result, SUMS};

/// The directory of version claims, in a model's directory.
pub const CLAIMS: &str = ".claims";
/// The repository lock on HDFS, in a model's directory.
pub const LOCK: &str = ".lock";
/// Conditional-put attempts before giving up on a contended `labels.json` or version number.
const ATTEMPTS: usize = 64;

/// A store error naming the operation and the URL.
pub(crate) fn store_err(op: &str, url: &str) -> impl FnOnce(object_store::Error) -> RegistryError {
    let (op, url) = (op.to_string(), url.to_string());
    move |e| RegistryError::Store {
        op,
        url,
        source: Box::new(e),
    }
}

/// A connectors error (lock, upload, download) naming the operation and the URL.
pub(crate) fn conn_err(
    op: &str,
    url: &str,
) -> impl FnOnce(kiln_connectors::Error) -> RegistryError {
    let (op, url) = (op.to_string(), url.to_string());
    move |e| RegistryError::Store {
        op,
        url,
        source: Box::new(e),
    }
}

/// What a recursive listing of a model's directory found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Published versions (their `SHA256SUMS` exists).
    pub versions: BTreeSet<u64>,
    /// Claimed version numbers, with the claim's modification time.
    pub claims: BTreeMap<u64, chrono::DateTime<chrono::Utc>>,
    /// Version prefixes with objects but no `SHA256SUMS` (an upload in progress or killed).
    pub partial: BTreeSet<u64>,
}

impl Listing {
    /// The highest number any version, claim or partial upload uses.
    pub fn highest(&self) -> u64 {
        let v = self.versions.iter().next_back().copied().unwrap_or(0);
        let c = self.claims.keys().next_back().copied().unwrap_or(0);
        let p = self.partial.iter().next_back().copied().unwrap_or(0);
        v.max(c).max(p)
    }
}

fn version_number(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().filter(|n| *n > 0)
}

/// Every object under `loc` as (relative parts, metadata); empty when the prefix is absent.
fn list_all(loc: &Location) -> Result<Vec<(Vec<String>, object_store::ObjectMeta)>> {
    let got: std::result::Result<Vec<object_store::ObjectMeta>, _> =
        block_on(loc.store.list(Some(&loc.path)).try_collect());
    let metas = match got {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(store_err("listing", &loc.url)(e)),
    };
    Ok(metas
        .into_iter()
        .filter_map(|m| {
            let rel: Vec<String> = m
                .location
                .prefix_match(&loc.path)?
                .map(|p| p.as_ref().to_string())
                .collect();
            Some((rel, m))
        })
        .collect())
}

/// Lists a model's directory.
pub(crate) fn listing(loc: &Location) -> Result<Listing> {
    let mut out = Listing::default();
    let mut with_objects = BTreeSet::new();
    for (rel, meta) in list_all(loc)? {
        match rel.as_slice() {
            [c, n] if c == CLAIMS => {
                if let Some(v) = version_number(n) {
                    out.claims.insert(v, meta.last_modified);
                }
            }
            [v, f] if f == SUMS => {
                if let Some(v) = version_number(v) {
                    out.versions.insert(v);
                }
            }
            [v, ..] if rel.len() > 1 => {
                if let Some(v) = version_number(v) {
                    with_objects.insert(v);
                }
            }
            _ => {}
        }
    }
    out.partial = with_objects.difference(&out.versions).copied().collect();
    Ok(out)
}

/// Reads an object; `None` when it does not exist. Also returns its version for a
/// conditional update.
pub(crate) fn get_opt(loc: &Location) -> Result<Option<(bytes::Bytes, UpdateVersion)>> {
    let got = block_on(async {
        match loc.store.get(&loc.path).await {
            Ok(g) => {
                let version = UpdateVersion {
                    e_tag: g.meta.e_tag.clone(),
                    version: g.meta.version.clone(),
                };
                g.bytes().await.map(|b| Some((b, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    });
    match got {
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        other => other.map_err(store_err("reading", &loc.url)),
    }
}

/// Outcome of a conditional put.
enum Put {
    Done,
    /// The object exists (Create) or changed (Update).
    Lost,
}

fn put(loc: &Location, bytes: Vec<u8>, mode: PutMode) -> Result<Put> {
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    match block_on(loc.store.put_opts(&loc.path, PutPayload::from(bytes), opts)) {
        Ok(_) => Ok(Put::Done),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(Put::Lost),
        Err(e) => Err(store_err("writing", &loc.url)(e)),
    }
}

/// Deletes one object (`url` names it in the error); an absent one is not an error.
fn delete(loc: &Location, path: &object_store::path::Path, url: &str) -> Result<()> {
    match block_on(loc.store.delete(path)) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_err("deleting", url)(e)),
    }
}

/// `labels.json` and its version (for a conditional update); default when absent.
pub(crate) fn labels(loc: &Location) -> Result<(Labels, Option<UpdateVersion>)> {
    let l = loc.child(LABELS);
    match get_opt(&l)? {
        None => Ok((Labels::default(), None)),
        Some((b, v)) => {
            let labels = serde_json::from_slice(&b).map_err(|source| RegistryError::Json {
                op: "parsing",
                path: l.url.clone().into(),
                source,
            })?;
            Ok((labels, Some(v)))
        }
    }
}

/// Whether the store is HDFS (no conditional update: the repository lock is taken).
fn is_hdfs(loc: &Location) -> bool {
    loc.url.starts_with("hdfs://")
}

/// Runs `f` under the repository lock where the store needs one (HDFS).
pub(crate) fn locked<T, E: From<RegistryError>>(
    loc: &Location,
    holder: &str,
    f: impl FnOnce(bool) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let timing =
        CommitLockTiming::from_env(&loc.url).map_err(|e| conn_err("locking", &loc.url)(e))?;
    let lock = if is_hdfs(loc) {
        block_on(DirLock::acquire(loc, LOCK, holder, &timing))
            .map_err(|e| conn_err("taking the repository lock of", &loc.url)(e))?
    } else {
        None
    };
    let held = lock.is_some();
    let out = f(held);
    if let Some(lock) = lock {
        let checked = block_on(lock.check_held());
        block_on(lock.release());
        checked.map_err(|e| conn_err("holding the repository lock of", &loc.url)(e))?;
    }
    out
}

/// Reads, changes and conditionally rewrites `labels.json` (see the module docs).
pub(crate) fn update_labels<T, E: From<RegistryError>>(
    loc: &Location,
    mut f: impl FnMut(&mut Labels, &[u64]) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    locked(loc, "labels", |held| {
        for _ in 0..ATTEMPTS {
            let (mut labels, version) = labels(loc)?;
            let versions: Vec<u64> = listing(loc)?.versions.into_iter().collect();
            let out = f(&mut labels, &versions)?;
            labels.updated_at =
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let l = loc.child(LABELS);
            let bytes = [crate::to_json(&labels, Path::new(&l.url))?, b"\n".to_vec()].concat();
            let mode = match (held, version) {
                (true, _) => PutMode::Overwrite,
                (false, Some(v)) => PutMode::Update(v),
                (false, None) => PutMode::Create,
            };
            match put(&l, bytes, mode)? {
                Put::Done => return Ok(out),
                Put::Lost => eprintln!(
                    "note: {}: changed by another writer meanwhile; re-reading it",
                    l.url
                ),
            }
        }
        Err(RegistryError::Contended {
            url: loc.child(LABELS).url,
            attempts: ATTEMPTS,
        }
        .into())
    })
}

/// A unique token of this process and call (for claims).
fn token() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}-{}",
        crate::this_host(),
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Claims the next free version number (see the module docs).
pub(crate) fn claim_version(loc: &Location) -> Result<u64> {
    locked(loc, "publish", |_held| {
        let mut floor = 0;
        for _ in 0..ATTEMPTS {
            let (labels, _) = labels(loc)?;
            let l = listing(loc)?;
            let v = l
                .highest()
                .max(labels.stable_history.iter().copied().max().unwrap_or(0))
                .max(labels.rejected.iter().copied().max().unwrap_or(0))
                .max(floor)
                + 1;
            let claim = loc.child(&format!("{CLAIMS}/{v}"));
            let tok = token();
            let body = serde_json::json!({
                "version": v,
                "host": crate::this_host(),
                "pid": std::process::id(),
                "token": tok,
                "claimed_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            let bytes = serde_json::to_vec_pretty(&body).expect("json of a claim");
            floor = v;
            if let Put::Done = put(&claim, bytes, PutMode::Create)? {
                // Read back: a store whose create-if-absent is not atomic (a test server)
                // may have let a concurrent claim overwrite ours.
                let ours = get_opt(&claim)?.is_some_and(|(b, _)| {
                    serde_json::from_slice::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|j| j.get("token").and_then(|t| t.as_str()).map(str::to_string))
                        .as_deref()
                        == Some(tok.as_str())
                });
                if ours {
                    return Ok(v);
                }
            }
        }
        Err(RegistryError::Contended {
            url: loc.child(CLAIMS).url,
            attempts: ATTEMPTS,
        })
    })
}

/// Deletes every object under `prefix`, `first` (relative names) before the others; on HDFS
/// also the emptied directories, deepest first.
pub(crate) fn delete_prefix(prefix: &Location, first: &[&str]) -> Result<()> {
    let mut objects = list_all(prefix)?;
    objects.sort_by_key(|(rel, _)| {
        let name = rel.join("/");
        (!first.contains(&name.as_str()), name)
    });
    let mut dirs = BTreeSet::new();
    for (rel, meta) in &objects {
        delete(prefix, &meta.location, &prefix.child(&rel.join("/")).url)?;
        for i in 1..rel.len() {
            dirs.insert(rel[..i].join("/"));
        }
    }
    if is_hdfs(prefix) {
        let mut dirs: Vec<String> = dirs.into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        for d in dirs {
            let _ = block_on(prefix.store.delete(&prefix.child(&d).path));
        }
        let _ = block_on(prefix.store.delete(&prefix.path));
    }
    Ok(())
}

/// Removes partial uploads whose claim is older than [`crate::STALE_TMP_AGE`] (or that have
/// no claim and whose objects are that old). Returns the removed version numbers.
pub(crate) fn clean_stale(loc: &Location) -> Result<Vec<u64>> {
    let l = listing(loc)?;
    let now = chrono::Utc::now();
    let stale = chrono::Duration::from_std(crate::STALE_TMP_AGE).expect("a day");
    let mut removed = Vec::new();
    for v in &l.partial {
        let claimed = l.claims.get(v).copied();
        let old = match claimed {
            Some(t) => now - t >= stale,
            None => list_all(&loc.child(&v.to_string()))?
                .iter()
                .all(|(_, m)| now - m.last_modified >= stale),
        };
        if old {
            eprintln!(
                "note: model repository {}: removing version {v}, an upload that never \
                 finished (no {SUMS}; claimed {})",
                loc.url,
                claimed.map_or("-".into(), |t| t.to_rfc3339())
            );
            delete_prefix(&loc.child(&v.to_string()), &[])?;
            removed.push(*v);
        }
    }
    Ok(removed)
}

/// Uploads the assembled version `tmp` as version `v`, `SHA256SUMS` last; on failure deletes
/// what was uploaded (the claim stays: the number is not reused).
pub(crate) fn upload_version(loc: &Location, v: u64, tmp: &Path) -> Result<()> {
    let dest = loc.child(&v.to_string());
    match kiln_connectors::store::upload_dir(tmp, &dest, &[SUMS]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = delete_prefix(&dest, &[SUMS]);
            Err(conn_err("uploading", &dest.url)(e))
        }
    }
}

/// SHA-256 hex of bytes.
fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Parses `SHA256SUMS` text into (hex, relative path) pairs.
pub(crate) fn parse_sums(text: &str, url: &str) -> Result<Vec<(String, String)>> {
    text.lines()
        .enumerate()
        .map(|(i, line)| match line.split_once("  ") {
            Some((h, rel)) => Ok((h.to_string(), rel.to_string())),
            None => Err(RegistryError::MalformedSums {
                path: url.into(),
                line: i + 1,
                text: line.to_string(),
            }),
        })
        .collect()
}

/// Reads version `v`'s `SHA256SUMS`; [`RegistryError::NoSuchVersion`] when absent.
pub(crate) fn read_sums(loc: &Location, v: u64) -> Result<String> {
    let s = loc.child(&format!("{v}/{SUMS}"));
    match get_opt(&s)? {
        Some((b, _)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        None => Err(RegistryError::NoSuchVersion {
            dir: loc.url.clone().into(),
            version: v,
            versions: listing(loc)?.versions.into_iter().collect(),
        }),
    }
}

/// Recomputes version `v`'s `SHA256SUMS` in the store: every listed file present with its
/// hash, no unlisted file. Returns the number of files checked.
pub(crate) fn verify(loc: &Location, v: u64) -> Result<usize> {
    let dir = loc.child(&v.to_string());
    let sums_url = dir.child(SUMS).url;
    let text = read_sums(loc, v)?;
    let listed = parse_sums(&text, &sums_url)?;
    let present: BTreeSet<String> = list_all(&dir)?
        .into_iter()
        .map(|(rel, _)| rel.join("/"))
        .collect();
    for (want, rel) in &listed {
        let f = dir.child(rel);
        let Some((b, _)) = get_opt(&f)? else {
            return Err(RegistryError::MissingFile(f.url.into()));
        };
        let got = sha256(&b);
        if &got != want {
            return Err(RegistryError::ChecksumMismatch {
                path: f.url.into(),
                want: want.clone(),
                got,
            });
        }
    }
    let names: BTreeSet<&str> = listed.iter().map(|(_, r)| r.as_str()).collect();
    for p in &present {
        if p != SUMS && !names.contains(p.as_str()) {
            return Err(RegistryError::UnlistedFile(dir.child(p).url.into()));
        }
    }
    Ok(listed.len())
}

/// A verification error about a file of the downloaded copy `tmp`, naming the file's URL in
/// the version `src` instead.
fn relocate(e: RegistryError, tmp: &Path, src: &Location) -> RegistryError {
    let url = |p: std::path::PathBuf| -> std::path::PathBuf {
        match p.strip_prefix(tmp) {
            Ok(rel) => src.child(&rel.to_string_lossy()).url.into(),
            Err(_) => p,
        }
    };
    match e {
        RegistryError::MissingFile(p) => RegistryError::MissingFile(url(p)),
        RegistryError::UnlistedFile(p) => RegistryError::UnlistedFile(url(p)),
        RegistryError::ChecksumMismatch { path, want, got } => RegistryError::ChecksumMismatch {
            path: url(path),
            want,
            got,
        },
        RegistryError::MalformedSums { path, line, text } => RegistryError::MalformedSums {
            path: url(path),
            line,
            text,
        },
        other => other,
    }
}

/// Downloads version `v` into `cache/<v>` (verified against its `SHA256SUMS`) unless a
/// verified copy of the same `SHA256SUMS` is already there; returns the local directory.
pub(crate) fn fetch(loc: &Location, v: u64, cache: &Path) -> Result<std::path::PathBuf> {
    let sums = read_sums(loc, v)?;
    let dest = cache.join(v.to_string());
    let same = |d: &Path| {
        std::fs::read_to_string(d.join(SUMS)).is_ok_and(|s| s == sums)
            && crate::verify_checksums(d).is_ok()
    };
    if same(&dest) {
        return Ok(dest);
    }
    std::fs::create_dir_all(cache).map_err(crate::error::io("creating", cache))?;
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let tmp = cache.join(crate::scratch_name("tmp", &format!("{v}-{nanos}")));
    let result = (|| -> Result<()> {
        let src = loc.child(&v.to_string());
        kiln_connectors::store::download_dir(&src, &tmp)
            .map_err(|e| conn_err("downloading", &src.url)(e))?;
        let got = std::fs::read_to_string(tmp.join(SUMS))
            .map_err(crate::error::io("reading", &tmp.join(SUMS)))?;
        if got != sums {
            return Err(RegistryError::Changed {
                url: src.child(SUMS).url,
            });
        }
        crate::verify_checksums(&tmp).map_err(|e| RegistryError::Fetched {
            url: src.url.clone(),
            source: Box::new(relocate(e, &tmp, &src)),
        })?;
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(crate::error::io("removing", &dest))?;
        }
        if !crate::rename_noreplace(&tmp, &dest)? && !same(&dest) {
            return Err(RegistryError::Changed { url: src.url });
        }
        Ok(())
    })();
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

/// Names of the model directories under a repository root: its non-hidden sub-prefixes
/// holding `labels.json` or a published version. When `root` itself is a model directory,
/// `None`.
pub fn discover(root: &Location) -> Result<Option<Vec<String>>> {
    let mut models: BTreeMap<String, bool> = BTreeMap::new();
    let mut root_is_model = false;
    for (rel, _) in list_all(root)? {
        let is_model_file = |r: &[String]| {
            (r.len() == 1 && r[0] == LABELS)
                || (r.len() == 2 && r[1] == SUMS && version_number(&r[0]).is_some())
        };
        if is_model_file(&rel) {
            root_is_model = true;
        } else if rel.len() > 1 && !rel[0].starts_with('.') && is_model_file(&rel[1..]) {
            models.insert(rel[0].clone(), true);
        }
    }
    if root_is_model {
        return Ok(None);
    }
    Ok(Some(models.into_keys().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Label, Repo, RepoStore};

    fn model(dir: &Path, content: &str) -> std::path::PathBuf {
        let m = dir.join(format!("m-{content}"));
        std::fs::create_dir_all(m.join("checkpoints")).unwrap();
        std::fs::create_dir_all(m.join("sub")).unwrap();
        std::fs::write(m.join("model.json"), content).unwrap();
        std::fs::write(m.join("sub/weights"), format!("w-{content}")).unwrap();
        std::fs::write(m.join("checkpoints/ckpt"), "big").unwrap();
        m
    }

    fn put_raw(repo: &Repo, rel: &str, bytes: &str) {
        let RepoStore::Remote(l) = repo.store() else {
            panic!("not remote")
        };
        let o = l.child(rel);
        block_on(o.store.put(&o.path, bytes.to_string().into_bytes().into())).unwrap();
    }

    #[test]
    fn publishes_labels_rolls_back_verifies_fetches_and_prunes_on_an_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open("memory://registry-remote-1/models/ctr").unwrap();
        assert!(repo.is_remote());
        assert_eq!(repo.location(), "memory://registry-remote-1/models/ctr");
        assert_eq!(repo.versions().unwrap(), Vec::<u64>::new());
        let lin = serde_json::json!({"publish_key": "k1"});
        assert_eq!(
            repo.publish(&model(dir.path(), "one"), &lin, |_| Ok(()))
                .unwrap(),
            1
        );
        let lin2 = serde_json::json!({"publish_key": "k2"});
        assert_eq!(
            repo.publish(&model(dir.path(), "two"), &lin2, |_| Ok(()))
                .unwrap(),
            2
        );
        assert_eq!(repo.versions().unwrap(), [1, 2]);
        // model.json, sub/weights, lineage.json; no checkpoints.
        assert_eq!(repo.verify_version(1).unwrap(), 3);
        assert!(repo.read_sums(1).unwrap().contains("  sub/weights\n"));
        assert!(!repo.read_sums(1).unwrap().contains("checkpoints"));
        assert_eq!(repo.find_by_lineage("publish_key", "k2").unwrap(), Some(2));
        assert_eq!(repo.lineage(1).unwrap()["publish_key"], "k1");

        // A failing verification claims nothing and uploads nothing.
        let e = repo
            .publish(&model(dir.path(), "bad"), &lin, |_| Err("nope".into()))
            .unwrap_err();
        assert!(matches!(e, RegistryError::Verify { .. }), "{e}");
        assert_eq!(repo.versions().unwrap(), [1, 2]);

        // Labels and rollback.
        repo.promote(1, Label::Stable, false).unwrap();
        repo.promote(2, Label::Stable, false).unwrap();
        repo.promote(2, Label::Canary, false).unwrap();
        let e = repo.promote(9, Label::Stable, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("memory://registry-remote-1/models/ctr: no version 9"),
            "{e}"
        );
        assert_eq!(repo.rollback().unwrap(), (Some(2), 1));
        let l = repo.labels().unwrap();
        assert_eq!((l.stable, l.canary), (Some(1), Some(2)));
        assert_eq!(l.stable_history, [1]);

        // An upload in progress (files, no SHA256SUMS yet) is not a version, and its number
        // is not handed out again.
        put_raw(&repo, "3/model.json", "half");
        assert_eq!(repo.versions().unwrap(), [1, 2]);
        assert!(!repo.has_version(3).unwrap());
        assert_eq!(
            repo.publish(&model(dir.path(), "four"), &lin, |_| Ok(()))
                .unwrap(),
            4
        );
        assert_eq!(repo.versions().unwrap(), [1, 2, 4]);

        // A verified download, reused while SHA256SUMS is unchanged.
        let cache = dir.path().join("cache");
        let got = repo.fetch_version(1, &cache).unwrap();
        assert_eq!(got, cache.join("1"));
        assert_eq!(
            std::fs::read_to_string(got.join("model.json")).unwrap(),
            "one"
        );
        assert_eq!(crate::verify_checksums(&got).unwrap(), 3);
        assert_eq!(repo.fetch_version(1, &cache).unwrap(), got);

        // Tampering is refused where the version is stored and when it is downloaded.
        put_raw(&repo, "4/model.json", "evil");
        let e = repo.verify_version(4).unwrap_err();
        assert!(
            e.to_string()
                .contains("memory://registry-remote-1/models/ctr/4/model.json: SHA-256 mismatch"),
            "{e}"
        );
        let e = repo.fetch_version(4, &cache).unwrap_err();
        let RegistryError::Fetched { url, source } = &e else {
            panic!("{e}")
        };
        assert_eq!(url, "memory://registry-remote-1/models/ctr/4");
        assert!(
            source.to_string().starts_with(
                "memory://registry-remote-1/models/ctr/4/model.json: SHA-256 mismatch"
            ),
            "{source}"
        );
        assert!(!cache.join("4").exists());
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            1,
            "no scratch left"
        );
        put_raw(&repo, "1/extra", "x");
        let e = repo.verify_version(1).unwrap_err();
        assert!(
            e.to_string()
                .contains("memory://registry-remote-1/models/ctr/1/extra: not listed"),
            "{e}"
        );

        // Retention: keep the newest (4) and the labelled (1 stable, 2 canary).
        assert_eq!(repo.prune(1).unwrap(), Vec::<u64>::new());
        repo.update_labels(|l, _| {
            l.canary = None;
            Ok::<_, RegistryError>(())
        })
        .unwrap();
        assert_eq!(repo.prune(1).unwrap(), [2]);
        assert_eq!(repo.versions().unwrap(), [1, 4]);
        let RepoStore::Remote(loc) = repo.store() else {
            unreachable!()
        };
        assert!(list_all(&loc.child("2")).unwrap().is_empty());
        // Claims outlive pruning: a number is never reused.
        assert_eq!(
            repo.publish(&model(dir.path(), "five"), &lin, |_| Ok(()))
                .unwrap(),
            5
        );
        let list = repo.list().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].labels, ["stable"]);
        assert_eq!(list[2].path, "memory://registry-remote-1/models/ctr/5");
    }

    #[test]
    fn concurrent_publishers_get_distinct_versions() {
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path(), "m");
        let url = "memory://registry-remote-2/models/ctr";
        let mut got: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let m = m.clone();
                    s.spawn(move || {
                        let repo = Repo::open(url).unwrap();
                        (0..3)
                            .map(|j| {
                                let lin = serde_json::json!({"writer": i, "n": j});
                                repo.publish(&m, &lin, |_| Ok(())).unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        got.sort_unstable();
        assert_eq!(got, (1..=18).collect::<Vec<u64>>());
        let repo = Repo::open(url).unwrap();
        assert_eq!(repo.versions().unwrap(), got);
        // Concurrent label changes are all applied (conditional puts, re-read on a lost race).
        std::thread::scope(|s| {
            for v in 1..=6u64 {
                s.spawn(move || {
                    Repo::open(url)
                        .unwrap()
                        .update_labels(|l, _| {
                            l.rejected.push(v);
                            Ok::<_, RegistryError>(())
                        })
                        .unwrap()
                });
            }
        });
        let mut rejected = repo.labels().unwrap().rejected;
        rejected.sort_unstable();
        assert_eq!(rejected, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn discovers_models_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            let repo = Repo::open(&format!("memory://registry-remote-3/root/{name}")).unwrap();
            repo.publish(&model(dir.path(), name), &serde_json::json!({}), |_| Ok(()))
                .unwrap();
        }
        // Only labels, no version yet: a model too.
        Repo::open("memory://registry-remote-3/root/c")
            .unwrap()
            .update_labels(|_, _| Ok::<_, RegistryError>(()))
            .unwrap();
        let root = kiln_connectors::store::resolve("memory://registry-remote-3/root").unwrap();
        assert_eq!(
            discover(&root).unwrap(),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        let a = kiln_connectors::store::resolve("memory://registry-remote-3/root/a").unwrap();
        assert_eq!(discover(&a).unwrap(), None);
        let empty = kiln_connectors::store::resolve("memory://registry-remote-3/none").unwrap();
        assert_eq!(discover(&empty).unwrap(), Some(vec![]));
    }
}
