//! Object stores by URL: bare paths, `file://`, `s3://`, `hdfs://` and `memory://`.
//!
//! * A bare path (absolute or relative to the current directory, `..` resolved lexically) and
//!   `file:///abs/path` use the local filesystem. Parent directories are created on write.
//! * `s3://bucket/prefix` uses `AmazonS3Builder::from_env()`: the standard `AWS_*` variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
//!   `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` for S3-compatible servers,
//!   `AWS_ALLOW_HTTP=true` for plain-HTTP endpoints, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, ...).
//!   If an endpoint is set and path style was not chosen, path-style requests are used.
//! * `hdfs://namenode:port/path` (or `hdfs://nameservice/path` for an HA name service defined
//!   in the Hadoop configuration) uses the native HDFS client (`hdfs-native`, no JVM): the
//!   store path is the URL's absolute path. The client reads `core-site.xml` and
//!   `hdfs-site.xml` from `$HADOOP_CONF_DIR` (else `$HADOOP_HOME/etc/hadoop`), acts as the
//!   user `$HADOOP_USER_NAME` (else the login user; `$HADOOP_PROXY_USER` to impersonate) with
//!   simple authentication, or with Kerberos when a ticket cache is present. Its I/O runs on
//!   this crate's [`runtime`], so the cached store outlives any caller's runtime. Puts write a
//!   hidden `.<name>.tmp.<n>` file next to the target and rename it into place; HDFS keeps
//!   empty directories, which is why the dataset commit removes emptied run directories itself.
//! * `memory://name/prefix`: a process-wide in-memory store per `name` (tests).
//!
//! Stores are cached per (scheme, bucket or `host:port`) for the life of the process;
//! environment changes after the first use of a bucket or name node are not seen.
//!
//! Local-file helpers shared by every crate: [`normalize`] (lexical path normalization) and
//! [`write_atomic`] (a file replaced durably and atomically).

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::{Component, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};

/// A resolved location: a store, a path inside it, and the URL for messages.
#[derive(Clone, Debug)]
pub struct Location {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix / object path inside the store.
    pub path: Path,
    /// Human-readable URL (used in errors and manifests).
    pub url: String,
}

impl Location {
    /// A location from parts.
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, url: impl Into<String>) -> Self {
        Location {
            store,
            path,
            url: url.into(),
        }
    }

    /// `self/rel` (rel may contain `/`).
    pub fn child(&self, rel: &str) -> Location {
        let mut p = self.path.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        Location {
            store: self.store.clone(),
            path: p,
            url: format!("{}/{}", self.url.trim_end_matches('/'), rel),
        }
    }
}

fn cache() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static C: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn cached(
    key: String,
    make: impl FnOnce() -> Result<Arc<dyn ObjectStore>>,
) -> Result<Arc<dyn ObjectStore>> {
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = c.get(&key) {
        return Ok(s.clone());
    }
    let s = make()?;
    c.insert(key, s.clone());
    Ok(s)
}

/// Lexically normalizes a path, without touching the filesystem (symlinks are not resolved):
/// drops `.` components and resolves `..` against the preceding normal component.
///
/// * `..` directly under the root is dropped: `/a/../../b` -> `/b`;
/// * leading `..` of a relative path are kept: `../a/./b/..` -> `../a`;
/// * a relative path that normalizes to nothing is `.`: `a/..` -> `.`.
///
/// Absolute paths stay absolute and relative paths relative (join a relative path to the
/// current or a base directory first to get an absolute one).
pub fn normalize(path: impl AsRef<std::path::Path>) -> PathBuf {
    let mut out = PathBuf::new();
    // Normal components in `out` that a `..` may remove.
    let mut depth = 0usize;
    for c in path.as_ref().components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if depth > 0 {
                    out.pop();
                    depth -= 1;
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Component::Normal(p) => {
                out.push(p);
                depth += 1;
            }
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Replaces the file at `path` with `bytes`, atomically and durably: the bytes go to a new
/// temporary file in the same directory, which is fsynced, renamed over `path`, and the
/// directory is fsynced so that the rename survives a crash. Readers see the old file or the
/// new one, never a partial one. On failure the temporary file is removed and `path` is left
/// as it was. The parent directory must exist. The file gets the permissions of a newly
/// created file (as with `std::fs::write`).
///
/// Hand-written rather than `tempfile::NamedTempFile::persist`, which creates files readable
/// by the owner only and does not fsync the directory.
pub fn write_atomic(path: impl AsRef<std::path::Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    let path = path.as_ref();
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            format!("writing {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    fn write_then_rename(
        tmp: &std::path::Path,
        path: &std::path::Path,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let mut f = File::options().write(true).create_new(true).open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp, path)
    }
    if let Err(e) = write_then_rename(&tmp, path, bytes.as_ref()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    fsync(dir).map_err(|e| {
        Error::io(
            format!(
                "syncing directory {} after writing {}",
                dir.display(),
                path.display()
            ),
            e,
        )
    })
}

/// fsync a file or a directory (a directory's fsync makes a rename inside it durable). Not
/// possible on Windows for directories, where renames are made durable by the filesystem's
/// journal.
pub fn fsync(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn local(url: &str, p: PathBuf) -> Result<Location> {
    let abs = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("current directory", e))?
            .join(p)
    };
    let abs = normalize(abs);
    let path = Path::from_absolute_path(&abs).map_err(|e| Error::InvalidUrl {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let store = cached("file://".into(), || Ok(Arc::new(LocalFileSystem::new())))?;
    Ok(Location {
        store,
        path,
        url: format!("file://{}", abs.display()),
    })
}

/// Resolve a URL or path to a [`Location`].
pub fn resolve(url_or_path: &str) -> Result<Location> {
    let s = url_or_path.trim();
    if s.is_empty() {
        return Err(Error::InvalidUrl {
            url: s.into(),
            message: "empty location".into(),
        });
    }
    if !s.contains("://") {
        return local(s, PathBuf::from(s));
    }
    let url = url::Url::parse(s).map_err(|e| Error::InvalidUrl {
        url: s.into(),
        message: e.to_string(),
    })?;
    let bad = |m: String| Error::InvalidUrl {
        url: s.into(),
        message: m,
    };
    match url.scheme() {
        "file" => {
            let p = url
                .to_file_path()
                .map_err(|_| bad("not an absolute local file URL".into()))?;
            local(s, p)
        }
        "s3" | "s3a" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("missing bucket name (s3://bucket/prefix)".into()))?
                .to_string();
            let store = cached(format!("s3://{bucket}"), || {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                let has_endpoint = std::env::var_os("AWS_ENDPOINT_URL").is_some()
                    || std::env::var_os("AWS_ENDPOINT").is_some()
                    || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
                if has_endpoint && std::env::var_os("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_none() {
                    b = b.with_virtual_hosted_style_request(false);
                }
                Ok(Arc::new(
                    b.build()
                        .map_err(|e| Error::store(format!("configuring S3 for {s}"), e))?,
                ) as Arc<dyn ObjectStore>)
            })?;
            let path = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
            Ok(Location {
                store,
                path,
                url: s.trim_end_matches('/').to_string(),
            })
        }
        "hdfs" => {
            if !url.username().is_empty() || url.password().is_some() {
                return Err(bad(
                    "user information is not supported in hdfs:// URLs (set HADOOP_USER_NAME)"
                        .into(),
                ));
            }
            let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                bad(
                    "missing name node (hdfs://namenode:port/path or hdfs://nameservice/path)"
                        .into(),
                )
            })?;
            let authority = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            };
            let base = format!("hdfs://{authority}");
            let store = cached(base.clone(), || {
                let store = HdfsObjectStoreBuilder::new()
                    .with_url(&base)
                    .with_io_runtime(runtime().handle().clone())
                    .build()
                    .map_err(|e| Error::store(format!("configuring HDFS for {s}"), e))?;
                Ok(Arc::new(store) as Arc<dyn ObjectStore>)
            })?;
            let path = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
            Ok(Location {
                store,
                path,
                url: s.trim_end_matches('/').to_string(),
            })
        }
        "memory" => {
            let name = url.host_str().unwrap_or("").to_string();
            let store = cached(format!("memory://{name}"), || Ok(Arc::new(InMemory::new())))?;
            let path = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
            Ok(Location {
                store,
                path,
                url: s.trim_end_matches('/').to_string(),
            })
        }
        other => Err(bad(format!(
            "unsupported scheme '{other}' (supported: file://, s3://, hdfs://, memory://, or a plain path)"
        ))),
    }
}

/// Resolve a URL or path to (store, path).
pub fn resolve_url(url_or_path: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let l = resolve(url_or_path)?;
    Ok((l.store, l.path))
}

/// How far a directory transfer ([`upload_dir_with`], [`download_dir_with`]) has got:
/// reported before the first file and after each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Files transferred so far.
    pub files_done: usize,
    /// Files to transfer.
    pub files: usize,
    /// Bytes transferred so far.
    pub bytes_done: u64,
    /// Bytes to transfer.
    pub bytes: u64,
}

/// Uploads every file under the local directory `dir` to `dest` (same relative paths).
/// Files named in `last` are uploaded after all others, in that order, so a reader that waits
/// for them sees everything else first. Returns the number of files.
pub fn upload_dir(dir: &std::path::Path, dest: &Location, last: &[&str]) -> Result<usize> {
    upload_dir_with(dir, dest, last, &|_| {})
}

/// [`upload_dir`], reporting its progress to `progress`.
pub fn upload_dir_with(
    dir: &std::path::Path,
    dest: &Location,
    last: &[&str],
    progress: &(dyn Fn(&Transfer) + Sync),
) -> Result<usize> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort_by_key(|rel| (last.iter().position(|l| l == rel), rel.clone()));
    let mut sizes = Vec::with_capacity(files.len());
    for rel in &files {
        let local = dir.join(rel);
        let meta =
            std::fs::metadata(&local).map_err(|e| Error::io(local.display().to_string(), e))?;
        sizes.push(meta.len());
    }
    let mut t = Transfer {
        files_done: 0,
        files: files.len(),
        bytes_done: 0,
        bytes: sizes.iter().sum(),
    };
    progress(&t);
    block_on(async {
        for rel in &files {
            let local = dir.join(rel);
            let bytes =
                std::fs::read(&local).map_err(|e| Error::io(local.display().to_string(), e))?;
            let len = bytes.len() as u64;
            let to = dest.child(rel);
            to.store
                .put(&to.path, bytes.into())
                .await
                .map_err(|e| Error::store(&to.url, e))?;
            t.files_done += 1;
            t.bytes_done += len;
            progress(&t);
        }
        Ok(files.len())
    })
}

/// Deletes every object under `dir` (a "directory" of an object store, or a local one).
/// Returns the number of objects deleted; a missing directory deletes none.
pub fn remove_dir(dir: &Location) -> Result<usize> {
    use futures::TryStreamExt;
    block_on(async {
        let objects: Vec<_> = dir
            .store
            .list(Some(&dir.path))
            .try_collect()
            .await
            .map_err(|e| Error::store(&dir.url, e))?;
        for meta in &objects {
            dir.store
                .delete(&meta.location)
                .await
                .map_err(|e| Error::store(format!("{}: {}", dir.url, meta.location), e))?;
        }
        Ok(objects.len())
    })
}

/// Downloads every object under `src` into the local directory `dir` (created if needed),
/// replacing files of the same name. Returns the number of files.
pub fn download_dir(src: &Location, dir: &std::path::Path) -> Result<usize> {
    download_dir_with(src, dir, &|_| {})
}

/// [`download_dir`], reporting its progress to `progress` (sizes from the listing).
pub fn download_dir_with(
    src: &Location,
    dir: &std::path::Path,
    progress: &(dyn Fn(&Transfer) + Sync),
) -> Result<usize> {
    use futures::TryStreamExt;
    block_on(async {
        let objects: Vec<_> = src
            .store
            .list(Some(&src.path))
            .try_collect()
            .await
            .map_err(|e| Error::store(&src.url, e))?;
        let mut t = Transfer {
            files_done: 0,
            files: objects.len(),
            bytes_done: 0,
            bytes: objects.iter().map(|m| m.size).sum(),
        };
        progress(&t);
        for meta in &objects {
            let rel: Vec<_> = meta
                .location
                .prefix_match(&src.path)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            let local = rel.iter().fold(dir.to_path_buf(), |p, part| p.join(part));
            let got = src.store.get(&meta.location).await;
            let bytes = match got {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            }
            .map_err(|e| Error::store(format!("{}/{}", src.url, rel.join("/")), e))?;
            if let Some(parent) = local.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(parent.display().to_string(), e))?;
            }
            std::fs::write(&local, &bytes)
                .map_err(|e| Error::io(local.display().to_string(), e))?;
            t.files_done += 1;
            t.bytes_done += bytes.len() as u64;
            progress(&t);
        }
        Ok(objects.len())
    })
}

fn collect_files(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<String>,
) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.display().to_string(), e))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(
                rel.to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/"),
            );
        }
    }
    Ok(())
}

/// The crate's shared I/O runtime used by the blocking wrappers (2 worker threads).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-io")
            .enable_all()
            .build()
            .expect("building the kiln-connectors I/O runtime")
    })
}

/// Run a future to completion from synchronous code. Works from plain threads and (by using a
/// helper thread) from inside a tokio runtime.
pub fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        runtime().block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_dir_deletes_everything_under_it_and_nothing_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        std::fs::write(dir.join("model.json"), "{}").unwrap();
        std::fs::write(dir.join("checkpoints/step-10.safetensors"), "x").unwrap();
        std::fs::write(tmp.path().join("run2"), "beside").unwrap();
        let loc = resolve(dir.to_str().unwrap()).unwrap();
        assert_eq!(remove_dir(&loc).unwrap(), 2);
        assert_eq!(download_dir(&loc, &tmp.path().join("copy")).unwrap(), 0);
        assert!(tmp.path().join("run2").is_file());
        assert_eq!(remove_dir(&loc).unwrap(), 0);
    }

    #[test]
    fn resolves_paths() {
        let l = resolve("/tmp/a/../b/c").unwrap();
        assert_eq!(l.path.as_ref(), "tmp/b/c");
        assert_eq!(l.url, "file:///tmp/b/c");
        let l = resolve("file:///tmp/x%20y").unwrap();
        assert_eq!(l.path.as_ref(), "tmp/x y");
        assert!(
            resolve("ftp://x/y")
                .unwrap_err()
                .to_string()
                .contains("ftp://x/y")
        );
        assert!(resolve("s3:///nobucket").is_err());
        // HDFS: one store per name node host:port (no connection until first use), the
        // store path is the URL's path, and errors name the URL.
        let h = resolve("hdfs://127.0.0.1:9/kiln/ds/").unwrap();
        assert_eq!(h.path.as_ref(), "kiln/ds");
        assert_eq!(h.url, "hdfs://127.0.0.1:9/kiln/ds");
        assert_eq!(
            h.child("_manifest.json").path.as_ref(),
            "kiln/ds/_manifest.json"
        );
        let same = resolve("hdfs://127.0.0.1:9/other").unwrap();
        assert!(Arc::ptr_eq(&h.store, &same.store));
        let other_port = resolve("hdfs://127.0.0.1:10/kiln").unwrap();
        assert!(!Arc::ptr_eq(&h.store, &other_port.store));
        for bad in ["hdfs:///no-namenode", "hdfs://me@127.0.0.1:9/x"] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let m = resolve("memory://t1/a/b").unwrap();
        assert_eq!(m.path.as_ref(), "a/b");
        assert_eq!(m.child("c/d").path.as_ref(), "a/b/c/d");
    }

    #[test]
    fn normalizes_lexically() {
        let n = |p: &str| normalize(p).display().to_string();
        assert_eq!(n("/tmp/a/../b/./c"), "/tmp/b/c");
        assert_eq!(n("/a/../../b"), "/b");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("a/./b/../c/"), "a/c");
        assert_eq!(n("../a/./b/.."), "../a");
        assert_eq!(n("a/../../b"), "../b");
        assert_eq!(n("a/.."), ".");
        assert_eq!(n("./"), ".");
        assert_eq!(n(""), ".");
        assert_eq!(normalize(PathBuf::from("/x//y/")), PathBuf::from("/x/y"));
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.json");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_atomic(&p, "two, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two, longer");
        write_atomic(&p, []).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        assert_eq!(names(dir.path()), ["model.json"], "no temporary file left");

        // The rename fails (the target is a non-empty directory): the error names the path,
        // the target is untouched and the temporary file is removed.
        let target = dir.path().join("busy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"x").unwrap();
        let e = write_atomic(&target, b"new").unwrap_err();
        assert!(e.to_string().contains(&target.display().to_string()), "{e}");
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(names(dir.path()), ["busy", "model.json"]);
        assert_eq!(names(&target), ["inside"]);

        // A missing parent directory is an error, not created.
        let e = write_atomic(dir.path().join("no/such/file"), b"x").unwrap_err();
        assert!(e.to_string().contains("no/such/file"), "{e}");
        assert!(!dir.path().join("no").exists());
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_keeps_default_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"x").unwrap();
        write_atomic(&b, b"x").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&b), mode(&a));
    }
}
