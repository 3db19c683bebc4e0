//! The HTTP server of `kiln ui`: axum routes that read the metadata store, the model
//! repository, event files and dataset statistics (on blocking threads: SQLite, PostgreSQL
//! and the file reads are synchronous) and answer with the pages of [`crate::pages`].
//!
//! Read-only: no route writes anything. Logs are served only by attempt id, from the path
//! the store recorded for that attempt (never a path taken from the request).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln_pipeline::metastore::{RunDetail, Store};
use kiln_pipeline::task::{TaskId, TaskKind};
use kiln_registry::Repo;

use crate::html::{esc, page};
use crate::pages::{self, GridColumn, ModelView, RunLinks};

/// Largest log tail a log page shows.
pub const LOG_TAIL_BYTES: u64 = 1 << 20;

/// A job the ui shows: what its spec says about where its runs and models are.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's name (`name` of the spec).
    pub name: String,
    /// The spec file.
    pub spec: PathBuf,
    /// The metadata store (SQLite path or `postgres://` URL).
    pub metastore: String,
    /// The model's directory in the repository (`<models_dir>/<model>`: local, `s3://` or
    /// `hdfs://`). Training curves are read from local repositories only.
    pub repo: Repo,
    /// The model's name.
    pub model: String,
}

impl Job {
    /// Reads a job spec's name and `[pipeline]` section.
    pub fn from_spec(spec: &Path) -> anyhow::Result<Job> {
        let (s, p) = kiln_pipeline::config::load(spec)
            .with_context(|| format!("reading job spec {}", spec.display()))?;
        Ok(Job {
            name: s.name,
            spec: spec.to_path_buf(),
            repo: p
                .repo()
                .with_context(|| format!("the model repository of {}", spec.display()))?,
            metastore: p.metastore,
            model: p.model_name,
        })
    }
}

/// What `kiln ui` serves.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Address to listen on (port 0: a free port).
    pub bind: SocketAddr,
    /// The jobs (distinct names).
    pub jobs: Vec<Job>,
    /// Run dates the grid shows by default (`?days=N` changes it per page).
    pub days: usize,
}

/// Requests answered, by page and status code (for `/metrics`).
type Counts = BTreeMap<(&'static str, u16), u64>;

struct AppState {
    jobs: Vec<Job>,
    days: usize,
    requests: Mutex<Counts>,
}

impl AppState {
    fn job(&self, name: &str) -> Result<&Job, PageError> {
        self.jobs
            .iter()
            .find(|j| j.name == name)
            .ok_or_else(|| PageError::NotFound(format!("no job `{name}` in this ui")))
    }

    fn names(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.name.clone()).collect()
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
enum PageError {
    /// Unknown job, run, attempt or version: 404.
    NotFound(String),
    /// The store or a file could not be read: 500, with the error chain.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError::Internal(e)
    }
}

/// Seconds between reloads of a page that shows a run still running.
pub const REFRESH_SECONDS: u32 = 15;

/// What a route answers: an HTML page (title, body, and whether it shows a run still running,
/// so it reloads itself) or plain text.
enum Body {
    Html(String, String, bool),
    Text(String),
}

/// The running server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting connections, lets requests in flight finish, and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.wait().await
    }

    /// Waits for the server to end (after the `shutdown` future of [`start`] completes).
    pub async fn wait(self) -> anyhow::Result<()> {
        let addr = self.addr;
        self.task
            .await
            .with_context(|| format!("kiln ui on {addr}"))?
            .with_context(|| format!("kiln ui on {addr}"))
    }
}

/// Binds and serves until `shutdown` completes or [`Running::stop`] is called.
pub async fn start(
    config: UiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let mut seen = BTreeSet::new();
    for j in &config.jobs {
        if !seen.insert(j.name.clone()) {
            anyhow::bail!(
                "two specs name job `{}` ({}): give each job of one ui its own name",
                j.name,
                j.spec.display()
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding kiln ui to {}", config.bind))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        jobs: config.jobs,
        days: config.days.max(1),
        requests: Mutex::new(Counts::new()),
    });
    let app = router(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = rx => {}
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
    });
    tracing::info!(%addr, "kiln ui listening");
    Ok(Running {
        addr,
        stop: Some(tx),
        task,
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/jobs/{job}", get(grid))
        .route("/jobs/{job}/model", get(model))
        .route(
            "/jobs/{job}/model/{version}/training",
            get(version_training),
        )
        .route("/jobs/{job}/runs/{id}", get(run))
        .route("/jobs/{job}/runs/{id}/training", get(run_training))
        .route("/jobs/{job}/runs/{id}/dataset", get(dataset))
        .route("/jobs/{job}/runs/{id}/log/{attempt}", get(log))
        .fallback(|uri: Uri| async move {
            (
                StatusCode::NOT_FOUND,
                format!("kiln ui: no page at {}\n", uri.path()),
            )
        })
        .with_state(state)
}

/// Runs `f` on a blocking thread and turns its outcome into a response, counted under `page`.
async fn respond(
    state: Arc<AppState>,
    page_name: &'static str,
    f: impl FnOnce(&AppState) -> Result<Body, PageError> + Send + 'static,
) -> Response {
    let s = state.clone();
    let result = tokio::task::spawn_blocking(move || f(&s))
        .await
        .unwrap_or_else(|e| Err(PageError::Internal(anyhow::anyhow!("page panicked: {e}"))));
    let names = state.names();
    let response = match result {
        Ok(Body::Html(title, body, live)) => html_response(
            StatusCode::OK,
            page(&title, &names, &body, live.then_some(REFRESH_SECONDS)),
        ),
        Ok(Body::Text(t)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            t,
        )
            .into_response(),
        Err(PageError::NotFound(m)) => html_response(
            StatusCode::NOT_FOUND,
            page(
                "not found",
                &names,
                &format!("<h1>Not found</h1><p>{}</p>", esc(&m)),
                None,
            ),
        ),
        Err(PageError::Internal(e)) => {
            tracing::error!(page = page_name, "{e:#}");
            html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                page(
                    "error",
                    &names,
                    &format!(
                        r#"<h1>Error</h1><p class="err">{}</p>"#,
                        esc(&format!("{e:#}"))
                    ),
                    None,
                ),
            )
        }
    };
    if let Ok(mut r) = state.requests.lock() {
        *r.entry((page_name, response.status().as_u16()))
            .or_default() += 1;
    }
    response
}

fn html_response(code: StatusCode, html: String) -> Response {
    let mut r = (code, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `?days=N` of a request (else the default), at most 365.
fn days_of(uri: &Uri, default: usize) -> usize {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("days="))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|d| *d > 0)
        .unwrap_or(default)
        .min(365)
}

fn open_store(job: &Job) -> anyhow::Result<Store> {
    Store::open(&job.metastore)
        .with_context(|| format!("opening the metadata store of {}", job.name))
}

/// The grid's columns: the newest run of each of the last `days` run dates, oldest first.
fn columns(store: &mut Store, job: &str, days: usize) -> anyhow::Result<Vec<GridColumn>> {
    // Enough recent runs to cover `days` dates with a few reruns each.
    let runs = store.list_runs(Some(job), None, days * 20)?;
    let mut by_date: BTreeMap<String, (i64, usize)> = BTreeMap::new();
    for r in &runs {
        let e = by_date.entry(r.run_date.clone()).or_insert((r.id, 0));
        e.0 = e.0.max(r.id);
        e.1 += 1;
    }
    let keep: Vec<(String, (i64, usize))> = by_date.into_iter().rev().take(days).collect();
    let mut out = Vec::new();
    for (date, (id, n)) in keep.into_iter().rev() {
        if let Some(run) = store.run(id)? {
            out.push(GridColumn { date, run, runs: n });
        }
    }
    Ok(out)
}

/// Whether a grid shows a run still running.
fn running(cols: &[GridColumn]) -> bool {
    cols.iter()
        .any(|c| c.run.run.status == kiln_pipeline::status::RunStatus::Running)
}

async fn index(State(state): State<Arc<AppState>>, uri: Uri) -> Response {
    respond(state, "index", move |s| {
        let days = days_of(&uri, s.days);
        let mut body = String::new();
        let mut live = false;
        for j in &s.jobs {
            let mut store = open_store(j)?;
            let cols = columns(&mut store, &j.name, days)?;
            live |= running(&cols);
            body.push_str(&pages::grid(&j.name, &cols, days));
            body.push_str(&format!(
                r#"<p><a href="{}">all of {}</a> · <a href="{}/model">model {}</a></p>"#,
                pages::job_url(&j.name),
                esc(&j.name),
                pages::job_url(&j.name),
                esc(&j.model)
            ));
        }
        if s.jobs.is_empty() {
            body.push_str("<p>No jobs.</p>");
        }
        Ok(Body::Html("jobs".into(), body, live))
    })
    .await
}

async fn grid(
    State(state): State<Arc<AppState>>,
    UrlPath(job): UrlPath<String>,
    uri: Uri,
) -> Response {
    respond(state, "grid", move |s| {
        let j = s.job(&job)?;
        let days = days_of(&uri, s.days);
        let mut store = open_store(j)?;
        let cols = columns(&mut store, &j.name, days)?;
        let mut body = pages::grid(&j.name, &cols, days);
        body.push_str(&pages::runs_table(
            &j.name,
            &store.list_runs(Some(&j.name), None, 50)?,
        ));
        Ok(Body::Html(format!("{} grid", j.name), body, running(&cols)))
    })
    .await
}

fn load_run(s: &AppState, job: &str, id: i64) -> Result<(Job, RunDetail), PageError> {
    let j = s.job(job)?.clone();
    let d = open_store(&j)?
        .run(id)?
        .filter(|d| d.run.job == j.name)
        .ok_or_else(|| PageError::NotFound(format!("no run {id} of job `{}`", j.name)))?;
    Ok((j, d))
}

/// The event files' directory of a run's model: the published version's `logs/`, else the
/// run's staging model directory's (a run that failed after training started).
fn run_logs(j: &Job, d: &RunDetail) -> Option<PathBuf> {
    let logs = kiln_trainer::events::LOGS_DIR;
    let published = d
        .run
        .model_version
        .and_then(|v| u64::try_from(v).ok())
        .map(|v| j.repo.version_dir(v).join(logs));
    let staged = pages::output(&d.tasks, "train")
        .and_then(|o| o["model_dir"].as_str())
        .map(|m| Path::new(m).join(logs));
    published.into_iter().chain(staged).find(|p| p.is_dir())
}

/// The examples dataset of a run.
fn run_examples(d: &RunDetail) -> Option<String> {
    d.run
        .lineage
        .as_ref()
        .and_then(|l| l["examples"].as_str())
        .or_else(|| pages::output(&d.tasks, "features").and_then(|o| o["examples"].as_str()))
        .map(str::to_string)
}

async fn run(
    State(state): State<Arc<AppState>>,
    UrlPath((job, id)): UrlPath<(String, i64)>,
) -> Response {
    respond(state, "run", move |s| {
        let (j, d) = load_run(s, &job, id)?;
        let links = RunLinks {
            labels: j.repo.labels().ok(),
            training: run_logs(&j, &d).is_some(),
            dataset: run_examples(&d).is_some(),
        };
        Ok(Body::Html(
            format!("run {id} of {}", j.name),
            pages::run(&j.name, &d, &links),
            d.run.status == kiln_pipeline::status::RunStatus::Running,
        ))
    })
    .await
}

async fn run_training(
    State(state): State<Arc<AppState>>,
    UrlPath((job, id)): UrlPath<(String, i64)>,
) -> Response {
    respond(state, "training", move |s| {
        let (j, d) = load_run(s, &job, id)?;
        let dir = run_logs(&j, &d)
            .ok_or_else(|| PageError::NotFound(format!("run {id} has no training event files")))?;
        let scalars = kiln_trainer::events::read_scalars(&dir).map_err(anyhow::Error::from)?;
        let title = format!(
            "Training · run #{id} · {} {}{}",
            j.name,
            d.run.run_date,
            d.run
                .model_version
                .map_or(String::new(), |v| format!(" · v{v}"))
        );
        Ok(Body::Html(
            title.clone(),
            pages::training(&title, &dir.display().to_string(), &scalars),
            scalars.truncated.is_some(),
        ))
    })
    .await
}

async fn version_training(
    State(state): State<Arc<AppState>>,
    UrlPath((job, version)): UrlPath<(String, u64)>,
) -> Response {
    respond(state, "training", move |s| {
        let j = s.job(&job)?;
        let dir = j
            .repo
            .version_dir(version)
            .join(kiln_trainer::events::LOGS_DIR);
        if !dir.is_dir() {
            return Err(PageError::NotFound(format!(
                "version {version} of {} has no training event files",
                j.model
            )));
        }
        let scalars = kiln_trainer::events::read_scalars(&dir).map_err(anyhow::Error::from)?;
        let title = format!("Training · {} v{version}", j.model);
        Ok(Body::Html(
            title.clone(),
            pages::training(&title, &dir.display().to_string(), &scalars),
            scalars.truncated.is_some(),
        ))
    })
    .await
}

async fn dataset(
    State(state): State<Arc<AppState>>,
    UrlPath((job, id)): UrlPath<(String, i64)>,
) -> Response {
    respond(state, "dataset", move |s| {
        let (j, d) = load_run(s, &job, id)?;
        let url = run_examples(&d)
            .ok_or_else(|| PageError::NotFound(format!("run {id} wrote no dataset")))?;
        let stats = kiln_pipeline::datastats::load(&url)?;
        // The previous day's dataset: the features task of the newest run of that date that
        // completed it.
        let prev = chrono::NaiveDate::parse_from_str(&d.run.run_date, "%Y-%m-%d")
            .ok()
            .and_then(|x| x.pred_opt())
            .map(|x| x.format("%Y-%m-%d").to_string());
        let baseline = match prev {
            Some(p) => open_store(&j)?
                .last_success(&j.name, &p, &TaskId::Step(TaskKind::Features))?
                .and_then(|t| t.output)
                .and_then(|o| o["examples"].as_str().map(str::to_string))
                .and_then(|u| match kiln_pipeline::datastats::load(&u) {
                    Ok(s) => Some((u, s)),
                    Err(e) => {
                        tracing::warn!("baseline {u}: {e:#}");
                        None
                    }
                }),
            None => None,
        };
        let title = format!("Dataset · run #{id} · {} {}", j.name, d.run.run_date);
        Ok(Body::Html(
            title.clone(),
            pages::dataset(
                &title,
                &url,
                &stats,
                baseline.as_ref().map(|(u, s)| (u.as_str(), s)),
            ),
            false,
        ))
    })
    .await
}

async fn model(State(state): State<Arc<AppState>>, UrlPath(job): UrlPath<String>) -> Response {
    respond(state, "model", move |s| {
        let j = s.job(&job)?;
        let repo = &j.repo;
        let labels = repo.labels().map_err(anyhow::Error::from)?;
        let versions = repo.list().map_err(anyhow::Error::from)?;
        let runs = open_store(j)?.list_runs(Some(&j.name), None, 500)?;
        let with_training: BTreeSet<u64> = versions
            .iter()
            .map(|v| v.version)
            .filter(|v| {
                repo.version_dir(*v)
                    .join(kiln_trainer::events::LOGS_DIR)
                    .is_dir()
            })
            .collect();
        let location = repo.location();
        let body = pages::model(&ModelView {
            job: &j.name,
            model: &j.model,
            location: &location,
            labels: &labels,
            versions: &versions,
            runs: &runs,
            with_training: &with_training,
        });
        Ok(Body::Html(format!("model {}", j.model), body, false))
    })
    .await
}

async fn log(
    State(state): State<Arc<AppState>>,
    UrlPath((job, id, attempt)): UrlPath<(String, i64, i64)>,
) -> Response {
    respond(state, "log", move |s| {
        let (_, d) = load_run(s, &job, id)?;
        let a = d
            .tasks
            .iter()
            .flat_map(|t| t.attempt_log.iter().map(move |a| (t, a)))
            .find(|(_, a)| a.id == attempt);
        let Some((t, a)) = a else {
            return Err(PageError::NotFound(format!(
                "run {id} has no attempt {attempt}"
            )));
        };
        let path = a.log_path.clone().ok_or_else(|| {
            PageError::NotFound(format!("attempt {attempt} recorded no log file"))
        })?;
        let head = format!(
            "# run {id} · task {} · attempt {} · {} · {}\n",
            t.task.name, a.attempt, a.status, path
        );
        let text = match read_tail(Path::new(&path), LOG_TAIL_BYTES) {
            Ok((text, skipped)) if skipped > 0 => {
                format!("{head}# (the first {skipped} bytes are not shown)\n{text}")
            }
            Ok((text, _)) => format!("{head}{text}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{head}# the log file is gone (not written, or removed since)\n")
            }
            Err(e) => return Err(anyhow::Error::from(e).context(path).into()),
        };
        Ok(Body::Text(text))
    })
    .await
}

/// The last `max` bytes of a file as (lossy) UTF-8, and how many bytes came before them.
fn read_tail(path: &Path, max: u64) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let skip = len.saturating_sub(max);
    f.seek(SeekFrom::Start(skip))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf).into_owned(), skip))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let s = state.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut m = kiln_metrics::Exposition::new();
        m.gauge(
            "kiln_ui_jobs",
            "Jobs this kiln ui shows.",
            &[],
            s.jobs.len() as f64,
        );
        for j in &s.jobs {
            let up = open_store(j).is_ok();
            m.gauge(
                "kiln_ui_metastore_up",
                "1 if the job's metadata store could be opened at this scrape, else 0.",
                &[("job", &j.name)],
                if up { 1.0 } else { 0.0 },
            );
        }
        let counts = s.requests.lock().map(|c| c.clone()).unwrap_or_default();
        for ((p, code), n) in counts {
            m.counter(
                "kiln_ui_requests_total",
                "HTTP requests answered, by page and status code.",
                &[("page", p), ("code", &code.to_string())],
                n as f64,
            );
        }
        m.render()
    })
    .await
    .unwrap_or_default();
    if let Ok(mut r) = state.requests.lock() {
        *r.entry(("metrics", 200)).or_default() += 1;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_come_from_the_query() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(days_of(&u("/jobs/a"), 14), 14);
        assert_eq!(days_of(&u("/jobs/a?days=30"), 14), 30);
        assert_eq!(days_of(&u("/jobs/a?x=1&days=3"), 14), 3);
        assert_eq!(days_of(&u("/jobs/a?days=0"), 14), 14);
        assert_eq!(days_of(&u("/jobs/a?days=abc"), 14), 14);
        assert_eq!(days_of(&u("/jobs/a?days=100000"), 14), 365);
    }

    #[test]
    fn log_tail_is_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "0123456789").unwrap();
        assert_eq!(read_tail(&p, 100).unwrap(), ("0123456789".into(), 0));
        assert_eq!(read_tail(&p, 4).unwrap(), ("6789".into(), 6));
        assert!(read_tail(&dir.path().join("none"), 4).is_err());
    }
}
