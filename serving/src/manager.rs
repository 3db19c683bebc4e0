//! The served models: which versions a [`VersionPolicy`] selects, loading (after
//! `SHA256SUMS` verification) in the background, and the atomic swap of a model's state.
//!
//! Each model's state is an immutable [`Snapshot`] behind `RwLock<Arc<Snapshot>>`: a request
//! clones the `Arc` of the version it resolved and finishes on it, whatever the poller swaps
//! in meanwhile. A poll reads `labels.json` and the version directories, loads what the policy
//! wants and is not loaded yet (verify, then `kiln_trainer::export::load`), and only then
//! swaps in a new snapshot: labels move to a new version once it is loaded, never before. A
//! version that fails to verify or load is never served; it is reported in the version status
//! (state `END`, the error) and not retried until the server restarts.
//!
//! A repository on an object store (`s3://`, `hdfs://`) is polled the same way (a version
//! exists once its `SHA256SUMS` is uploaded, which happens last); a wanted version is first
//! downloaded into the model's cache directory and verified against its `SHA256SUMS` there
//! ([`Repo::fetch_version`]), then loaded from that copy. A download that fails for a reason
//! other than the version's content (the store unreachable) is retried at the next poll; a
//! version whose files do not match its `SHA256SUMS` is refused like a local one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kiln_registry::{Label, Labels, Repo};
use kiln_trainer::export::Model;

use crate::batch::{Batcher, Batching};
use crate::input::{InputSpec, inputs};
use crate::metrics::{Metrics, VersionEvent};
use crate::{Result, ServeError};

/// Which versions of a model are loaded (TF Serving's `model_version_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The newest N versions that the gate did not reject (`latest:N`; `latest` is 1).
    Latest(usize),
    /// Exactly these versions (`specific:1,3`).
    Specific(BTreeSet<u64>),
    /// Every version a label (`stable`, `canary`) points at (`labelled`, the default).
    Labelled,
}

impl FromStr for VersionPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "version policy `{s}`: expected `labelled`, `latest[:N]` or `specific:V[,V...]`"
            )
        };
        match s.split_once(':') {
            None if s == "labelled" || s == "labeled" => Ok(VersionPolicy::Labelled),
            None if s == "latest" => Ok(VersionPolicy::Latest(1)),
            Some(("latest", n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(VersionPolicy::Latest(n)),
                _ => Err(bad()),
            },
            Some(("specific", vs)) => vs
                .split(',')
                .map(|v| v.trim().parse::<u64>().map_err(|_| bad()))
                .collect::<std::result::Result<BTreeSet<_>, _>>()
                .and_then(|set| {
                    if set.is_empty() {
                        Err(bad())
                    } else {
                        Ok(VersionPolicy::Specific(set))
                    }
                }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionPolicy::Latest(n) => write!(f, "latest:{n}"),
            VersionPolicy::Specific(s) => {
                let v: Vec<String> = s.iter().map(u64::to_string).collect();
                write!(f, "specific:{}", v.join(","))
            }
            VersionPolicy::Labelled => f.write_str("labelled"),
        }
    }
}

impl VersionPolicy {
    /// The versions to serve, of those present.
    pub fn select(&self, versions: &[u64], labels: &Labels) -> BTreeSet<u64> {
        let present: BTreeSet<u64> = versions.iter().copied().collect();
        match self {
            VersionPolicy::Latest(n) => present
                .iter()
                .rev()
                .filter(|v| !labels.rejected.contains(v))
                .take(*n)
                .copied()
                .collect(),
            VersionPolicy::Specific(s) => s.intersection(&present).copied().collect(),
            VersionPolicy::Labelled => labels.labelled().intersection(&present).copied().collect(),
        }
    }
}

/// A version's state (TF Serving's `ModelVersionStatus.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Being verified and loaded.
    Loading,
    /// Serving.
    Available,
    /// Unloaded, or failed to verify or load (then with an error).
    End,
}

impl VersionState {
    /// TF Serving's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Available => "AVAILABLE",
            VersionState::End => "END",
        }
    }
}

/// A version's status as reported by `GET /v1/models/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    /// State.
    pub state: VersionState,
    /// Why the version failed to verify or load (`None`: no error).
    pub error: Option<String>,
}

/// A loaded version.
#[derive(Debug)]
pub struct Loaded {
    /// Version number.
    pub version: u64,
    /// The model (weights and transform).
    pub model: Arc<Model>,
    /// Its batching thread, when batching is on.
    pub batcher: Option<crate::batch::Batcher>,
    /// Its input features.
    pub inputs: Vec<InputSpec>,
    /// Its directory.
    pub dir: PathBuf,
}

/// One model's state at one moment; replaced as a whole, never mutated.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Loaded versions.
    pub loaded: BTreeMap<u64, Arc<Loaded>>,
    /// Label name (`stable`, `canary`) -> version, only for labels whose version is loaded.
    pub labels: BTreeMap<&'static str, u64>,
    /// Status of every version the server has handled.
    pub status: BTreeMap<u64, VersionStatus>,
}

/// How a request names a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    /// No version: the `stable` label's version, else the newest loaded.
    Default,
    /// `/versions/N`.
    Number(u64),
    /// `/labels/L`.
    Label(String),
}

/// One served model.
#[derive(Debug)]
pub struct ServedModel {
    /// Model name (the directory's name).
    pub name: String,
    /// Its repository directory.
    pub repo: Repo,
    /// Where versions of a repository on an object store are downloaded.
    pub cache: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    failed: Mutex<BTreeMap<u64, String>>,
}

impl ServedModel {
    /// The current state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn swap(&self, s: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// The loaded version a request names, and the label it came through.
    pub fn resolve(&self, which: &VersionRef) -> Result<(Arc<Loaded>, Option<Label>)> {
        let s = self.snapshot();
        let name = &self.name;
        let get = |v: u64| {
            s.loaded.get(&v).cloned().ok_or_else(|| {
                let why = s.status.get(&v).and_then(|st| st.error.clone());
                ServeError::NotFound(match why {
                    Some(e) => format!(
                        "Servable not found for request: Specific({name}, {v}): the version failed to load: {e}"
                    ),
                    None => format!("Servable not found for request: Specific({name}, {v})"),
                })
            })
        };
        match which {
            VersionRef::Number(v) => Ok((get(*v)?, None)),
            VersionRef::Label(l) => {
                let label = Label::from_str(l).map_err(|_| {
                    ServeError::NotFound(format!(
                        "Unrecognized servable version label: {l} (labels: stable, canary)"
                    ))
                })?;
                let v = s.labels.get(label.as_str()).ok_or_else(|| {
                    ServeError::NotFound(format!(
                        "Unrecognized servable version label: {l} (model {name} has no loaded `{l}` version)"
                    ))
                })?;
                Ok((get(*v)?, Some(label)))
            }
            VersionRef::Default => {
                if let Some(v) = s.labels.get(Label::Stable.as_str()) {
                    return Ok((get(*v)?, Some(Label::Stable)));
                }
                s.loaded
                    .values()
                    .next_back()
                    .cloned()
                    .map(|l| (l, None))
                    .ok_or_else(|| {
                        ServeError::NotFound(format!(
                            "Servable not found for request: Latest({name})"
                        ))
                    })
            }
        }
    }

    /// The labels of a version (for metrics).
    pub fn labels_of(&self, version: u64) -> Vec<Label> {
        self.snapshot()
            .labels
            .iter()
            .filter(|(_, v)| **v == version)
            .filter_map(|(l, _)| Label::from_str(l).ok())
            .collect()
    }
}

/// Verifies (`SHA256SUMS`) and loads one version directory; starts its batching thread
/// when `batching` is set.
pub fn load_version(
    dir: &Path,
    version: u64,
    batching: Option<Batching>,
    name: &str,
) -> std::result::Result<Loaded, String> {
    kiln_registry::verify_checksums(dir).map_err(|e| error_chain(&e))?;
    let model = Arc::new(kiln_trainer::export::load(dir).map_err(|e| error_chain(&e))?);
    let inputs = inputs(&model.transform);
    let batcher = match batching {
        Some(b) => Some(
            Batcher::start(model.clone(), b, format!("{name}-{version}"))
                .map_err(|e| format!("starting the batching thread: {e}"))?,
        ),
        None => None,
    };
    Ok(Loaded {
        version,
        model,
        batcher,
        inputs,
        dir: dir.to_path_buf(),
    })
}

/// `a: b: c` of an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Every served model, the policy, and the metrics.
#[derive(Debug)]
pub struct Manager {
    /// Models by name.
    pub models: BTreeMap<String, Arc<ServedModel>>,
    /// Version policy of every model.
    pub policy: VersionPolicy,
    /// Server-side batching (`None`: off).
    pub batching: Option<Batching>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Model directories behind a target, a local path or an `s3://` / `hdfs://` URL: a model
/// directory (`<repo>/<name>`, which has `labels.json` or numbered version directories) is
/// one model named after it; any other directory is a repository root whose model
/// directories are served.
pub fn discover(target: &str) -> Result<Vec<(String, Repo)>> {
    let repo = Repo::open(target).map_err(|source| ServeError::Repository {
        dir: PathBuf::from(target),
        source,
    })?;
    let kiln_registry::RepoStore::Remote(loc) = repo.store() else {
        return Ok(discover_local(&repo.dir)?
            .into_iter()
            .map(|(name, dir)| (name, Repo::new(dir)))
            .collect());
    };
    let found = kiln_registry::remote::discover(loc).map_err(|source| ServeError::Repository {
        dir: PathBuf::from(&loc.url),
        source,
    })?;
    let open = |url: &str| {
        Repo::open(url).map_err(|source| ServeError::Repository {
            dir: PathBuf::from(url),
            source,
        })
    };
    match found {
        None => {
            let name = loc
                .url
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("model")
                .to_string();
            Ok(vec![(name, repo.clone())])
        }
        Some(names) if names.is_empty() => Err(ServeError::InvalidArgument(format!(
            "{}: no model directories (`<name>/labels.json` or `<name>/<version>/SHA256SUMS`)",
            loc.url
        ))),
        Some(names) => names
            .into_iter()
            .map(|n| Ok((n.clone(), open(&format!("{}/{n}", loc.url))?)))
            .collect(),
    }
}

/// [`discover`] on a local directory.
fn discover_local(target: &Path) -> Result<Vec<(String, PathBuf)>> {
    let is_model = |d: &Path| {
        d.join(kiln_registry::LABELS).is_file()
            || std::fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    e.path().is_dir() && e.file_name().to_string_lossy().parse::<u64>().is_ok()
                })
            })
    };
    let name_of = |d: &Path| {
        d.canonicalize()
            .unwrap_or_else(|_| d.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    };
    if !target.is_dir() {
        return Err(ServeError::InvalidArgument(format!(
            "{}: not a model directory or a model repository (a local directory, or an s3:// or hdfs:// URL)",
            target.display()
        )));
    }
    if is_model(target) {
        return Ok(vec![(name_of(target), target.to_path_buf())]);
    }
    let mut out = Vec::new();
    let rd = std::fs::read_dir(target).map_err(|e| ServeError::Io {
        addr: target.display().to_string(),
        source: e,
    })?;
    for e in rd.flatten() {
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if p.is_dir() && !hidden && is_model(&p) {
            out.push((e.file_name().to_string_lossy().into_owned(), p));
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(ServeError::InvalidArgument(format!(
            "{}: no model directories (`<name>/labels.json` or `<name>/<version>/`)",
            target.display()
        )));
    }
    Ok(out)
}

impl Manager {
    /// A manager of `models` (name, repository); nothing loaded until [`Manager::poll`].
    /// Versions of repositories on object stores are downloaded under `cache`, one
    /// directory per repository.
    pub fn new(
        models: Vec<(String, Repo)>,
        policy: VersionPolicy,
        batching: Option<Batching>,
        metrics: Arc<Metrics>,
        cache: &Path,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, repo) in models {
            if map.contains_key(&name) {
                return Err(ServeError::InvalidArgument(format!(
                    "two models are named `{name}` (the second at {repo})"
                )));
            }
            let key: String = repo
                .location()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            map.insert(
                name.clone(),
                Arc::new(ServedModel {
                    name,
                    cache: cache.join(key),
                    repo,
                    snapshot: RwLock::new(Arc::new(Snapshot::default())),
                    failed: Mutex::new(BTreeMap::new()),
                }),
            );
        }
        Ok(Manager {
            models: map,
            policy,
            batching,
            metrics,
        })
    }

    /// Whether every model has a loaded version.
    pub fn ready(&self) -> bool {
        self.models
            .values()
            .all(|m| !m.snapshot().loaded.is_empty())
    }

    /// One poll of every model (blocking: file reads, verification and loads). Errors of one
    /// model are logged and leave its state as it was.
    pub fn poll(&self) {
        for m in self.models.values() {
            if let Err(e) = self.poll_model(m) {
                tracing::warn!(model = %m.name, error = %error_chain(&e), "polling the model repository");
            }
        }
    }

    fn poll_model(&self, m: &ServedModel) -> Result<()> {
        let repo_err = |source| ServeError::Repository {
            dir: m.repo.dir.clone(),
            source,
        };
        let versions = m.repo.versions().map_err(repo_err)?;
        let labels = m.repo.labels().map_err(repo_err)?;
        let wanted = self.policy.select(&versions, &labels);
        let old = m.snapshot();
        let mut loaded: BTreeMap<u64, Arc<Loaded>> = BTreeMap::new();
        let mut status = old.status.clone();
        let mut changed = false;
        for &v in &wanted {
            if let Some(l) = old.loaded.get(&v) {
                loaded.insert(v, l.clone());
                continue;
            }
            if let Some(e) = m.failed.lock().unwrap_or_else(|e| e.into_inner()).get(&v) {
                status.insert(
                    v,
                    VersionStatus {
                        state: VersionState::End,
                        error: Some(e.clone()),
                    },
                );
                continue;
            }
            let mut loading = status.clone();
            loading.insert(
                v,
                VersionStatus {
                    state: VersionState::Loading,
                    error: None,
                },
            );
            m.swap(Snapshot {
                loaded: old.loaded.clone(),
                labels: old.labels.clone(),
                status: loading,
            });
            let t0 = Instant::now();
            let fetched = match m.repo.fetch_version(v, &m.cache) {
                Ok(dir) => Ok(dir),
                // The version's content is wrong: refused for good, like a local one.
                Err(
                    e @ (kiln_registry::RegistryError::Fetched { .. }
                    | kiln_registry::RegistryError::MalformedSums { .. }),
                ) => Err(error_chain(&e)),
                // The store could not be read: tried again at the next poll.
                Err(e) => {
                    let e = error_chain(&e);
                    tracing::warn!(model = %m.name, version = v, error = %e, "downloading the version failed; retrying at the next poll");
                    status.insert(
                        v,
                        VersionStatus {
                            state: VersionState::End,
                            error: Some(e),
                        },
                    );
                    changed = true;
                    continue;
                }
            };
            match fetched.and_then(|dir| load_version(&dir, v, self.batching, &m.name)) {
                Ok(l) => {
                    tracing::info!(model = %m.name, version = v, ms = t0.elapsed().as_millis() as u64, "loaded");
                    self.metrics.event(&m.name, v, VersionEvent::Load);
                    loaded.insert(v, Arc::new(l));
                    status.insert(
                        v,
                        VersionStatus {
                            state: VersionState::Available,
                            error: None,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(model = %m.name, version = v, error = %e, "refused: the version failed to verify or load");
                    self.metrics.event(&m.name, v, VersionEvent::LoadFailure);
                    m.failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(v, e.clone());
                    status.insert(
                        v,
                        VersionStatus {
                            state: VersionState::End,
                            error: Some(e),
                        },
                    );
                }
            }
            changed = true;
        }
        // A label moves only to a loaded version; one pointing at a version that failed
        // keeps its last good version (reported in the status), one whose version is gone
        // or unselected is dropped.
        let mut new_labels = BTreeMap::new();
        for (label, target) in [
            (Label::Stable, labels.stable),
            (Label::Canary, labels.canary),
        ] {
            match target {
                Some(v) if loaded.contains_key(&v) => {
                    new_labels.insert(label.as_str(), v);
                }
                Some(v) => {
                    let prev = old.labels.get(label.as_str()).copied();
                    if let Some(prev) = prev.and_then(|p| old.loaded.get(&p)) {
                        let prev = loaded
                            .entry(prev.version)
                            .or_insert_with(|| prev.clone())
                            .version;
                        tracing::warn!(model = %m.name, %label, version = v, kept = prev, "label points at a version that is not loaded; keeping the previous one");
                        new_labels.insert(label.as_str(), prev);
                    }
                }
                None => {}
            }
        }
        for v in old.loaded.keys().filter(|v| !loaded.contains_key(v)) {
            tracing::info!(model = %m.name, version = v, "unloaded");
            self.metrics.event(&m.name, *v, VersionEvent::Unload);
            status.insert(
                *v,
                VersionStatus {
                    state: VersionState::End,
                    error: None,
                },
            );
            changed = true;
        }
        if new_labels != old.labels {
            changed = true;
        }
        let unloaded: Vec<u64> = old
            .loaded
            .keys()
            .filter(|v| !loaded.contains_key(v))
            .copied()
            .collect();
        if changed {
            self.metrics.set_current(&m.name, &loaded, &new_labels);
            m.swap(Snapshot {
                loaded,
                labels: new_labels,
                status,
            });
        }
        // A downloaded copy of a version no longer served is deleted (after the swap: no new
        // request reaches it, and the ones in flight score from memory); served again later,
        // it is downloaded and verified again. So the cache holds what is served.
        if m.repo.is_remote() {
            for v in unloaded {
                let dir = m.cache.join(v.to_string());
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {
                        tracing::info!(model = %m.name, version = v, dir = %dir.display(), "deleted the cached copy")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(model = %m.name, version = v, dir = %dir.display(), error = %e, "could not delete the cached copy")
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_select() {
        let labels = Labels {
            stable: Some(2),
            canary: Some(4),
            rejected: vec![5],
            ..Default::default()
        };
        let vs = [1, 2, 3, 4, 5];
        let p: VersionPolicy = "latest:2".parse().unwrap();
        assert_eq!(p.select(&vs, &labels), BTreeSet::from([3, 4]));
        let p: VersionPolicy = "specific:1,5,9".parse().unwrap();
        assert_eq!(p.select(&vs, &labels), BTreeSet::from([1, 5]));
        let p: VersionPolicy = "labelled".parse().unwrap();
        assert_eq!(p.select(&vs, &labels), BTreeSet::from([2, 4]));
        assert_eq!(
            "latest".parse::<VersionPolicy>().unwrap(),
            VersionPolicy::Latest(1)
        );
        assert!("latest:0".parse::<VersionPolicy>().is_err());
        assert!("newest".parse::<VersionPolicy>().is_err());
        assert_eq!(p.to_string(), "labelled");
    }
}
