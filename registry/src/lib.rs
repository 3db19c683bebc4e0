//! The model repository, TF Serving layout: `<models_dir>/<name>/<version>/` with integer
//! versions, plus `labels.json` (`stable`, `canary`, rejected candidates, stable history).
//!
//! A version is assembled in `.tmp-*` inside the model's directory, checksummed
//! (`SHA256SUMS`, `sha256sum -c` format), verified, fsynced, and published by an atomic
//! rename that never replaces an existing version (`renameat2(RENAME_NOREPLACE)`), so a
//! reader never sees a half-written version. `labels.json` is replaced by writing a temporary
//! file, fsyncing and renaming it. Version allocation and label changes hold an exclusive
//! lock (`std::fs::File::lock`, an `flock`) on `<name>/.lock`. Pruned versions are renamed away
//! before being deleted.
//!
//! Scratch directories (`.tmp-*` staging, `.trash-*` retired versions) are named
//! `.<kind>-<host>-<pid>-<suffix>`: the repository may live on storage shared by several hosts,
//! where a PID means nothing to another host. [`Repo::clean_stale_tmp`] removes one only when
//! it belongs to this host and its process is dead, or (any host, or an unnamed legacy one)
//! when it is older than [`STALE_TMP_AGE`].
//!
//! The repository may also live on an object store, `s3://bucket/prefix` or
//! `hdfs://namenode:port/path` ([`Repo::open`]); publication there uploads the version with
//! `SHA256SUMS` last, claims version numbers with conditional puts, and locks label changes
//! on HDFS with the dataset commit's rename lock: see [`remote`]. Readers that need a
//! version's files (serving, verification by loading) download a verified copy with
//! [`Repo::fetch_version`].

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

mod error;
mod process;
pub mod remote;
use error::io;
pub use error::{Label, RegistryError, Result};
pub use process::process_alive;

/// A scratch directory (`.tmp-*`, `.trash-*`) older than this is removed whoever wrote it:
/// no publish or prune takes a day, so its writer (on any host) is gone.
pub const STALE_TMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// This host's name as it appears in scratch directory names: the characters of a host
/// name (`[A-Za-z0-9._-]`), anything else replaced by `_`; `localhost` when unknown.
pub fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // (the last byte stays 0 whatever it writes).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = if r == 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// `.<kind>-<host>-<pid>-<suffix>`: a scratch directory name of this process.
fn scratch_name(kind: &str, suffix: &str) -> String {
    format!(".{kind}-{}-{}-{suffix}", this_host(), std::process::id())
}

/// The writer of a scratch directory, from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScratchWriter {
    /// Its host; `None` for a legacy `.<kind>-<pid>-<suffix>` name (host unknown).
    host: Option<String>,
    /// Its process id on that host.
    pid: i64,
}

/// Parses `.tmp-<host>-<pid>-<suffix>` / `.trash-...` (and the legacy host-less form); host
/// names may contain `-`, so the name is read from the right.
fn scratch_writer(name: &str) -> Option<ScratchWriter> {
    let rest = name
        .strip_prefix(".tmp-")
        .or_else(|| name.strip_prefix(".trash-"))?;
    let parts: Vec<&str> = rest.rsplitn(3, '-').collect();
    match parts[..] {
        [_suffix, pid, host] if !host.is_empty() => Some(ScratchWriter {
            host: Some(host.to_string()),
            pid: pid.parse().ok()?,
        }),
        [_suffix, pid] => Some(ScratchWriter {
            host: None,
            pid: pid.parse().ok()?,
        }),
        _ => None,
    }
}

/// Why a scratch directory may be removed (`Ok`), or why it must stay (`Err`).
fn scratch_verdict(
    w: &ScratchWriter,
    age: Option<std::time::Duration>,
    host: &str,
) -> std::result::Result<String, String> {
    let hours = STALE_TMP_AGE.as_secs() / 3600;
    if let Some(a) = age
        && a >= STALE_TMP_AGE
    {
        return Ok(format!("older than {hours} h"));
    }
    match &w.host {
        Some(h) if h == host && !process_alive(w.pid) => {
            Ok(format!("its writer, pid {} on this host, is dead", w.pid))
        }
        Some(h) if h == host => Err(format!("its writer, pid {} on this host, is alive", w.pid)),
        Some(h) => Err(format!(
            "written by pid {} on host {h}, which this host cannot check; removed once older than {hours} h",
            w.pid
        )),
        None => Err(format!(
            "written by pid {} on an unknown host (legacy name); removed once older than {hours} h",
            w.pid
        )),
    }
}

/// The checksum file of a version.
pub const SUMS: &str = "SHA256SUMS";
/// The labels file of a model.
pub const LABELS: &str = "labels.json";
/// Provenance of a version.
pub const LINEAGE: &str = "lineage.json";

/// `labels.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Labels {
    /// The version serving should use.
    pub stable: Option<u64>,
    /// A version under trial.
    pub canary: Option<u64>,
    /// Versions the gate rejected (kept, never labelled stable by the pipeline).
    #[serde(default)]
    pub rejected: Vec<u64>,
    /// Versions that were stable, oldest first (the last is the current one); rollback
    /// steps back through it.
    #[serde(default)]
    pub stable_history: Vec<u64>,
    /// When the file was last written.
    #[serde(default)]
    pub updated_at: String,
}

impl Labels {
    /// Versions carrying a label.
    pub fn labelled(&self) -> BTreeSet<u64> {
        self.stable.into_iter().chain(self.canary).collect()
    }

    /// Sets `label` to `version`.
    pub fn set(&mut self, label: Label, version: u64) {
        match label {
            Label::Stable => {
                self.stable = Some(version);
                self.stable_history.retain(|v| *v != version);
                self.stable_history.push(version);
            }
            Label::Canary => self.canary = Some(version),
        }
    }
}

/// Where a model's directory lives.
#[derive(Debug, Clone)]
pub enum RepoStore {
    /// A local (or mounted) filesystem: atomic renames and `flock`.
    Local(PathBuf),
    /// An object store (`s3://`, `hdfs://`, `memory://`): see [`remote`].
    Remote(kiln_connectors::Location),
}

/// One model's directory in the repository.
#[derive(Debug, Clone)]
pub struct Repo {
    /// `<models_dir>/<name>` on a local filesystem; for a repository in an object store,
    /// its URL as a path (for messages only: its files are reached through [`Repo::store`]).
    pub dir: PathBuf,
    store: RepoStore,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location())
    }
}

/// A version as listed.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// Labels on it.
    pub labels: Vec<String>,
    /// Whether the gate rejected it.
    pub rejected: bool,
    /// Its directory.
    pub path: String,
    /// `lineage.json` (job, date, run, metrics, gate, ...).
    pub lineage: Option<Json>,
}

/// Serializes a repository JSON file (`path` names it in the error).
fn to_json(value: &impl Serialize, path: &Path) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|source| RegistryError::Json {
        op: "serializing",
        path: path.to_path_buf(),
        source,
    })
}

/// fsyncs a file or directory.
fn fsync(path: &Path) -> Result<()> {
    kiln_connectors::store::fsync(path).map_err(io("fsync", path))
}

/// Renames `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`; on filesystems
/// without it, a plain rename, which fails on a non-empty target directory).
/// Returns false when `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> Result<bool> {
    let renaming = format!("renaming {} to", from.display());
    let nul = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| {
            io(&renaming, to)(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })
    };
    let (a, b) = (nul(from)?, nul(to)?);
    // SAFETY: valid NUL-terminated paths; the syscall does not retain them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => Ok(false),
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if to.exists() {
                return Ok(false);
            }
            match std::fs::rename(from, to) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(false),
                Err(e) => Err(io(&renaming, to)(e)),
            }
        }
        _ => Err(io(&renaming, to)(e)),
    }
}

/// Every regular file under `dir` (relative paths, sorted), skipping `skip` names at the top.
fn files(dir: &Path, skip: &[&str]) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let d = root.join(rel);
        for e in std::fs::read_dir(&d).map_err(io("listing", &d))? {
            let e = e.map_err(io("listing", &d))?;
            let r = rel.join(e.file_name());
            let t = e.file_type().map_err(io("listing", &d))?;
            if t.is_dir() {
                walk(root, &r, out)?;
            } else if t.is_file() {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.retain(|p| !skip.iter().any(|s| p.starts_with(s)));
    out.sort();
    Ok(out)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io("reading", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io("reading", path))?;
    Ok(hex::encode(h.finalize()))
}

/// `SHA256SUMS` text of every file under `dir` except `skip` (`<hex>  <path>` lines).
pub fn checksums(dir: &Path, skip: &[&str]) -> Result<String> {
    let mut text = String::new();
    for rel in files(dir, skip)? {
        text.push_str(&format!(
            "{}  {}\n",
            sha256_file(&dir.join(&rel))?,
            rel.display()
        ));
    }
    Ok(text)
}

/// Recomputes a version directory's `SHA256SUMS`; errors name the first mismatching,
/// missing or unlisted file. Returns the number of files checked.
pub fn verify_checksums(dir: &Path) -> Result<usize> {
    let sums_path = dir.join(SUMS);
    let text = std::fs::read_to_string(&sums_path).map_err(io("reading", &sums_path))?;
    let mut listed = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let Some((want, rel)) = line.split_once("  ") else {
            return Err(RegistryError::MalformedSums {
                path: sums_path,
                line: i + 1,
                text: line.to_string(),
            });
        };
        let p = dir.join(rel);
        if !p.is_file() {
            return Err(RegistryError::MissingFile(p));
        }
        let got = sha256_file(&p)?;
        if got != want {
            return Err(RegistryError::ChecksumMismatch {
                path: p,
                want: want.to_string(),
                got,
            });
        }
        listed.insert(PathBuf::from(rel));
    }
    for rel in files(dir, &[SUMS])? {
        if !listed.contains(&rel) {
            return Err(RegistryError::UnlistedFile(dir.join(rel)));
        }
    }
    Ok(listed.len())
}

/// Copies a directory tree, skipping `skip` names at the top, fsyncing each file.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    for rel in files(from, skip)? {
        let dst = to.join(&rel);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(io("creating", p))?;
        }
        std::fs::copy(from.join(&rel), &dst).map_err(io(
            &format!("copying {} to", from.join(&rel).display()),
            &dst,
        ))?;
        fsync(&dst)?;
    }
    Ok(())
}

/// Assembles a version in the new directory `tmp`: the model's files (without
/// `checkpoints/`), `lineage.json` and `SHA256SUMS`, checked, then `verify`, fsynced.
fn assemble(
    model_dir: &Path,
    lineage: &Json,
    tmp: &Path,
    verify: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
) -> Result<()> {
    std::fs::create_dir(tmp).map_err(io("creating", tmp))?;
    copy_tree(model_dir, tmp, &["checkpoints", SUMS, LINEAGE])?;
    let mut l = to_json(lineage, &tmp.join(LINEAGE))?;
    l.push(b'\n');
    std::fs::write(tmp.join(LINEAGE), &l).map_err(io("writing", &tmp.join(LINEAGE)))?;
    fsync(&tmp.join(LINEAGE))?;
    let sums = checksums(tmp, &[SUMS])?;
    std::fs::write(tmp.join(SUMS), sums).map_err(io("writing", &tmp.join(SUMS)))?;
    fsync(&tmp.join(SUMS))?;
    verify_checksums(tmp)?;
    verify(tmp).map_err(|source| RegistryError::Verify {
        path: tmp.to_path_buf(),
        source,
    })?;
    for sub in files(tmp, &[])?.iter().filter_map(|p| p.parent()) {
        if !sub.as_os_str().is_empty() {
            fsync(&tmp.join(sub))?;
        }
    }
    fsync(tmp)
}

/// An exclusive lock on `<name>/.lock`, released when the file is closed (dropped).
struct RepoLock(#[allow(dead_code)] std::fs::File);

impl Repo {
    /// The repository directory of one model on a local filesystem (need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Repo {
            store: RepoStore::Local(dir.clone()),
            dir,
        }
    }

    /// The model directory at a path or URL: a plain path or `file://` is local; `s3://`,
    /// `hdfs://` and `memory://` are object stores (resolved by
    /// [`kiln_connectors::store::resolve`], credentials from the environment).
    pub fn open(url_or_path: &str) -> Result<Self> {
        let s = url_or_path.trim();
        if !s.contains("://") {
            return Ok(Repo::new(s));
        }
        let loc = kiln_connectors::store::resolve(s).map_err(|e| RegistryError::Store {
            op: "resolving".into(),
            url: s.to_string(),
            source: Box::new(e),
        })?;
        if let Some(p) = loc.url.strip_prefix("file://") {
            return Ok(Repo::new(p));
        }
        Ok(Repo {
            dir: PathBuf::from(&loc.url),
            store: RepoStore::Remote(loc),
        })
    }

    /// Where the model's directory lives.
    pub fn store(&self) -> &RepoStore {
        &self.store
    }

    /// Whether the repository is on an object store (not a local filesystem).
    pub fn is_remote(&self) -> bool {
        matches!(self.store, RepoStore::Remote(_))
    }

    /// The directory for messages: the local path, or the URL.
    pub fn location(&self) -> String {
        match &self.store {
            RepoStore::Local(d) => d.display().to_string(),
            RepoStore::Remote(l) => l.url.clone(),
        }
    }

    /// A version's directory for messages: the local path, or the URL.
    pub fn version_location(&self, v: u64) -> String {
        match &self.store {
            RepoStore::Local(_) => self.version_dir(v).display().to_string(),
            RepoStore::Remote(l) => l.child(&v.to_string()).url,
        }
    }

    /// Whether version `v` is published.
    pub fn has_version(&self, v: u64) -> Result<bool> {
        match &self.store {
            RepoStore::Local(_) => Ok(self.version_dir(v).is_dir()),
            RepoStore::Remote(_) => Ok(self.versions()?.contains(&v)),
        }
    }

    /// Recomputes version `v`'s `SHA256SUMS` where it is stored (see [`verify_checksums`]);
    /// returns the number of files checked.
    pub fn verify_version(&self, v: u64) -> Result<usize> {
        match &self.store {
            RepoStore::Local(_) => {
                let d = self.version_dir(v);
                if !d.is_dir() {
                    return Err(RegistryError::NoSuchVersion {
                        dir: self.dir.clone(),
                        version: v,
                        versions: self.versions()?,
                    });
                }
                verify_checksums(&d)
            }
            RepoStore::Remote(l) => remote::verify(l, v),
        }
    }

    /// A local directory with version `v`'s files: the version's own directory for a local
    /// repository (not verified here); for an object store, `cache/<v>`, downloaded unless a
    /// copy with the same `SHA256SUMS` is there, and verified against it (a tampered version
    /// is an error, and its copy is not kept).
    pub fn fetch_version(&self, v: u64, cache: &Path) -> Result<PathBuf> {
        match &self.store {
            RepoStore::Local(_) => Ok(self.version_dir(v)),
            RepoStore::Remote(l) => remote::fetch(l, v, cache),
        }
    }

    /// The text of version `v`'s `SHA256SUMS`.
    pub fn read_sums(&self, v: u64) -> Result<String> {
        match &self.store {
            RepoStore::Local(_) => {
                let p = self.version_dir(v).join(SUMS);
                std::fs::read_to_string(&p).map_err(io("reading", &p))
            }
            RepoStore::Remote(l) => remote::read_sums(l, v),
        }
    }

    fn lock(&self) -> Result<RepoLock> {
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let p = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io("opening", &p))?;
        f.lock().map_err(io("locking", &p))?;
        Ok(RepoLock(f))
    }

    /// Published versions, ascending (directories named by an integer; on an object store,
    /// those whose `SHA256SUMS` is uploaded).
    pub fn versions(&self) -> Result<Vec<u64>> {
        if let RepoStore::Remote(l) = &self.store {
            return Ok(remote::listing(l)?.versions.into_iter().collect());
        }
        let mut v = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io("listing", &self.dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io("listing", &self.dir))?;
            if e.file_type().map_err(io("listing", &self.dir))?.is_dir()
                && let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok())
                && n > 0
            {
                v.push(n);
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    /// A version's directory (for a repository on an object store, its URL as a path; use
    /// [`Repo::fetch_version`] for its files).
    pub fn version_dir(&self, v: u64) -> PathBuf {
        self.dir.join(v.to_string())
    }

    /// `labels.json` (empty when absent).
    pub fn labels(&self) -> Result<Labels> {
        if let RepoStore::Remote(l) = &self.store {
            return Ok(remote::labels(l)?.0);
        }
        let p = self.dir.join(LABELS);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| RegistryError::Json {
                op: "parsing",
                path: p,
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Labels::default()),
            Err(e) => Err(io("reading", &p)(e)),
        }
    }

    fn write_labels(&self, labels: &mut Labels) -> Result<()> {
        labels.updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut bytes = to_json(labels, &self.dir.join(LABELS))?;
        bytes.push(b'\n');
        kiln_connectors::store::write_atomic(self.dir.join(LABELS), &bytes)
            .map_err(|e| RegistryError::Write(Box::new(e)))
    }

    /// Reads, changes and atomically rewrites `labels.json` under the repository lock (on
    /// S3, by a conditional put: `f` is called again when another writer changed the file
    /// meanwhile).
    pub fn update_labels<T, E: From<RegistryError>>(
        &self,
        mut f: impl FnMut(&mut Labels, &[u64]) -> Result<T, E>,
    ) -> Result<T, E> {
        if let RepoStore::Remote(l) = &self.store {
            return remote::update_labels(l, f);
        }
        let _g = self.lock()?;
        let mut labels = self.labels()?;
        let versions = self.versions()?;
        let out = f(&mut labels, &versions)?;
        self.write_labels(&mut labels)?;
        Ok(out)
    }

    /// A version's `lineage.json`.
    pub fn lineage(&self, v: u64) -> Option<Json> {
        if let RepoStore::Remote(l) = &self.store {
            return remote::get_opt(&l.child(&format!("{v}/{LINEAGE}")))
                .ok()
                .flatten()
                .and_then(|(b, _)| serde_json::from_slice(&b).ok());
        }
        std::fs::read(self.version_dir(v).join(LINEAGE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Every version with its labels and lineage.
    pub fn list(&self) -> Result<Vec<VersionInfo>> {
        let labels = self.labels()?;
        Ok(self
            .versions()?
            .into_iter()
            .map(|v| {
                let mut l = Vec::new();
                if labels.stable == Some(v) {
                    l.push(Label::Stable.to_string());
                }
                if labels.canary == Some(v) {
                    l.push(Label::Canary.to_string());
                }
                VersionInfo {
                    version: v,
                    labels: l,
                    rejected: labels.rejected.contains(&v),
                    path: self.version_location(v),
                    lineage: self.lineage(v),
                }
            })
            .collect())
    }

    /// The version whose `lineage.json` has `key == value` (e.g. a model hash), if any.
    pub fn find_by_lineage(&self, key: &str, value: &str) -> Result<Option<u64>> {
        Ok(self.versions()?.into_iter().rev().find(|v| {
            self.lineage(*v)
                .is_some_and(|l| l.get(key).and_then(Json::as_str) == Some(value))
        }))
    }

    /// Removes scratch directories (`.tmp-*`, `.trash-*`) left by dead writers (a killed
    /// `kiln run`): those of this host whose process is dead, and any older than
    /// [`STALE_TMP_AGE`]. Others (a live writer here, or a writer on another host sharing the
    /// storage) are left, with a line on stderr. Returns the removed directories.
    pub fn clean_stale_tmp(&self) -> Result<Vec<PathBuf>> {
        if let RepoStore::Remote(l) = &self.store {
            return Ok(remote::clean_stale(l)?
                .into_iter()
                .map(|v| PathBuf::from(l.child(&v.to_string()).url))
                .collect());
        }
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(removed);
        };
        let host = this_host();
        let own_pid = std::process::id() as i64;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(w) = scratch_writer(&name) else {
                continue;
            };
            if w.host.as_deref() == Some(host.as_str()) && w.pid == own_pid {
                continue; // this process's own work in progress
            }
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            match scratch_verdict(&w, age, &host) {
                Ok(_why) => match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => removed.push(e.path()),
                    // Another cleaner got there first.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io("removing", &e.path())(err)),
                },
                Err(why) => eprintln!(
                    "note: model repository {}: leaving {name}: {why}",
                    self.dir.display()
                ),
            }
        }
        Ok(removed)
    }

    /// Publishes the model in `model_dir` (without its `checkpoints/`) plus `lineage` as a new
    /// version: assemble in a temporary directory, write `SHA256SUMS`, check it, run
    /// `verify` on the assembled directory, then rename it to the next free integer.
    pub fn publish(
        &self,
        model_dir: &Path,
        lineage: &Json,
        verify: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<u64> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        if let RepoStore::Remote(l) = &self.store {
            self.clean_stale_tmp()?;
            // Assembled and verified on local disk, then uploaded under a claimed number.
            let tmp = std::env::temp_dir().join(scratch_name("kiln-publish", &nanos.to_string()));
            let result = assemble(model_dir, lineage, &tmp, verify).and_then(|()| {
                let v = remote::claim_version(l)?;
                remote::upload_version(l, v, &tmp)?;
                Ok(v)
            });
            if tmp.exists() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            return result;
        }
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        self.clean_stale_tmp()?;
        let tmp = self.dir.join(scratch_name("tmp", &nanos.to_string()));
        let result = (|| -> Result<u64> {
            assemble(model_dir, lineage, &tmp, verify)?;
            let _g = self.lock()?;
            let labels = self.labels()?;
            let mut v = self
                .versions()?
                .into_iter()
                .chain(labels.stable_history.iter().copied())
                .chain(labels.rejected.iter().copied())
                .max()
                .unwrap_or(0)
                + 1;
            while !rename_noreplace(&tmp, &self.version_dir(v))? {
                v += 1;
            }
            fsync(&self.dir)?;
            Ok(v)
        })();
        if result.is_err() && tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Retention: removes versions that are neither among the newest `keep` nor labelled.
    /// Each is renamed away first, so it disappears atomically.
    /// On an object store each version's `SHA256SUMS` is deleted first (it stops being a
    /// version at once), then its other files; on HDFS under the repository lock.
    pub fn prune(&self, keep: usize) -> Result<Vec<u64>> {
        if let RepoStore::Remote(l) = &self.store {
            return remote::locked(l, "prune", |_| {
                let versions = self.versions()?;
                let keep_from = versions.len().saturating_sub(keep);
                let mut removed = Vec::new();
                for (i, v) in versions.iter().enumerate() {
                    // Labels re-read before each deletion: a version labelled meanwhile stays.
                    if i >= keep_from || self.labels()?.labelled().contains(v) {
                        continue;
                    }
                    remote::delete_prefix(&l.child(&v.to_string()), &[SUMS])?;
                    removed.push(*v);
                }
                Ok(removed)
            });
        }
        let _g = self.lock()?;
        let labels = self.labels()?;
        let versions = self.versions()?;
        let keep_from = versions.len().saturating_sub(keep);
        let labelled = labels.labelled();
        let mut removed = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            if i >= keep_from || labelled.contains(v) {
                continue;
            }
            let trash = self.dir.join(scratch_name("trash", &v.to_string()));
            std::fs::rename(self.version_dir(*v), &trash)
                .map_err(io(&format!("retiring version {v}: renaming it to"), &trash))?;
            std::fs::remove_dir_all(&trash).map_err(io("removing", &trash))?;
            removed.push(*v);
        }
        if !removed.is_empty() {
            fsync(&self.dir)?;
        }
        Ok(removed)
    }

    /// Points `label` at `version` (which must exist). A rejected version needs `force`.
    pub fn promote(&self, version: u64, label: Label, force: bool) -> Result<Labels> {
        self.update_labels(|l, versions| {
            if !versions.contains(&version) {
                return Err(RegistryError::NoSuchVersion {
                    dir: self.dir.clone(),
                    version,
                    versions: versions.to_vec(),
                });
            }
            if l.rejected.contains(&version) && !force {
                return Err(RegistryError::RejectedVersion { version, label });
            }
            l.set(label, version);
            Ok(l.clone())
        })
    }

    /// Moves `stable` back to the previous stable version that still exists.
    pub fn rollback(&self) -> Result<(Option<u64>, u64)> {
        self.update_labels(|l, versions| {
            let current = l.stable;
            let mut history = l.stable_history.clone();
            if history.last().copied() == current {
                history.pop();
            }
            while let Some(prev) = history.last().copied() {
                if versions.contains(&prev) && Some(prev) != current {
                    l.stable = Some(prev);
                    l.stable_history = history;
                    return Ok((current, prev));
                }
                history.pop();
            }
            Err(RegistryError::NothingToRollBack {
                dir: self.dir.clone(),
                stable: current,
                history: l.stable_history.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dir: &Path, content: &str) -> PathBuf {
        let m = dir.join(format!("m-{content}"));
        std::fs::create_dir_all(m.join("checkpoints")).unwrap();
        std::fs::write(m.join("model.json"), content).unwrap();
        std::fs::write(m.join("checkpoints/ckpt"), "big").unwrap();
        m
    }

    #[test]
    fn publishes_verifies_labels_prunes_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(dir.path().join("models/ctr"));
        let lin = serde_json::json!({"model_sha256": "a"});
        let v1 = repo
            .publish(&model(dir.path(), "one"), &lin, |_| Ok(()))
            .unwrap();
        assert_eq!(v1, 1);
        let d = repo.version_dir(1);
        assert!(!d.join("checkpoints").exists());
        assert_eq!(verify_checksums(&d).unwrap(), 2);
        assert_eq!(repo.find_by_lineage("model_sha256", "a").unwrap(), Some(1));
        repo.promote(1, Label::Stable, false).unwrap();

        // A failing verification leaves nothing behind.
        let e = repo
            .publish(&model(dir.path(), "bad"), &lin, |_| Err("nope".into()))
            .unwrap_err();
        assert!(
            std::error::Error::source(&e).is_some_and(|s| s.to_string() == "nope"),
            "{e}"
        );
        assert_eq!(repo.versions().unwrap(), [1]);
        assert!(
            std::fs::read_dir(&repo.dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp"))
        );

        for c in ["two", "three", "four"] {
            repo.publish(&model(dir.path(), c), &lin, |_| Ok(()))
                .unwrap();
        }
        repo.promote(2, Label::Stable, false).unwrap();
        repo.update_labels(|l, _| {
            l.rejected.push(4);
            Ok::<_, RegistryError>(())
        })
        .unwrap();
        let e = repo.promote(4, Label::Stable, false).unwrap_err();
        assert!(e.to_string().contains("rejected by the gate"), "{e}");
        // keep 1: version 4 (newest) + stable 2 stay; 1 and 3 go.
        assert_eq!(repo.prune(1).unwrap(), [1, 3]);
        assert_eq!(repo.versions().unwrap(), [2, 4]);
        // Rollback skips the pruned version 1: nothing earlier exists.
        assert!(repo.rollback().is_err());
        let v5 = repo
            .publish(&model(dir.path(), "five"), &lin, |_| Ok(()))
            .unwrap();
        assert_eq!(v5, 5);
        repo.promote(5, Label::Stable, false).unwrap();
        assert_eq!(repo.rollback().unwrap(), (Some(5), 2));
        assert_eq!(repo.labels().unwrap().stable, Some(2));

        // Tampering is detected.
        std::fs::write(repo.version_dir(5).join("model.json"), "evil").unwrap();
        let e = verify_checksums(&repo.version_dir(5)).unwrap_err();
        assert!(e.to_string().contains("SHA-256 mismatch"), "{e}");
        std::fs::write(repo.version_dir(2).join("extra"), "x").unwrap();
        let e = verify_checksums(&repo.version_dir(2)).unwrap_err();
        assert!(e.to_string().contains("not listed"), "{e}");
    }

    /// A PID that is certainly dead on this host (a child that has been reaped).
    fn dead_pid() -> i64 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i64;
        c.wait().unwrap();
        assert!(!process_alive(pid));
        pid
    }

    #[test]
    fn stale_scratch_is_judged_by_host_pid_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(dir.path().join("models/ctr"));
        std::fs::create_dir_all(&repo.dir).unwrap();
        let host = this_host();
        let dead = dead_pid();
        let mk = |name: &str| {
            let p = repo.dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("model.json"), "x").unwrap();
            p
        };
        // Another host's publish in progress, whatever its PID means here: kept. The
        // legacy host-less name of a PID dead here (the old bug): kept too.
        let other = mk(&format!(".tmp-other-host-{dead}-1"));
        let legacy = mk(&format!(".tmp-{dead}-2"));
        let other_trash = mk(&format!(".trash-other-host-{dead}-7"));
        // This host: a dead writer's directory goes, a live one's stays.
        let mine_dead = mk(&format!(".tmp-{host}-{dead}-3"));
        let mine_alive = mk(&format!(".tmp-{host}-1-4"));
        // Another host's, but older than a day: goes.
        let old = mk(&format!(".tmp-other-host-{dead}-5"));
        let day_ago =
            std::time::SystemTime::now() - STALE_TMP_AGE - std::time::Duration::from_secs(60);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        let mut removed = repo.clean_stale_tmp().unwrap();
        removed.sort();
        let mut want = vec![mine_dead, old];
        want.sort();
        assert_eq!(removed, want);
        for p in [&other, &legacy, &other_trash, &mine_alive] {
            assert!(p.join("model.json").exists(), "{}", p.display());
        }
        // A publish leaves another host's staging directory alone, and stages under a
        // name carrying this host and PID.
        let v = repo
            .publish(&model(dir.path(), "one"), &serde_json::json!({}), |tmp| {
                let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
                let w = scratch_writer(&name).unwrap();
                assert_eq!(w.host.as_deref(), Some(host.as_str()), "{name}");
                assert_eq!(w.pid, std::process::id() as i64);
                Ok(())
            })
            .unwrap();
        assert_eq!(v, 1);
        assert!(other.join("model.json").exists());
        assert_eq!(
            scratch_writer(".tmp-a-b-c-42-99"),
            Some(ScratchWriter {
                host: Some("a-b-c".into()),
                pid: 42
            })
        );
        assert_eq!(scratch_writer(".tmp-x"), None);
        assert_eq!(scratch_writer("1"), None);
    }

    #[test]
    fn never_replaces_an_existing_version() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        assert!(!rename_noreplace(&a, &b).unwrap());
        assert!(rename_noreplace(&a, &dir.path().join("c")).unwrap());
    }
}
