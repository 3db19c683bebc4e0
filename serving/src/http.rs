//! The HTTP server: TF Serving's REST API (`/v1/models/...`), `/metrics`, `/healthz`,
//! `/readyz`, an access log, a request size limit and graceful shutdown.
//!
//! Paths are parsed as TF Serving's `http_rest_api_handler.cc` does with its regular
//! expressions: `POST /v1/models/NAME[/versions/N|/labels/L]:(predict|classify|regress)` and
//! `GET /v1/models/NAME[/versions/N|/labels/L][/metadata]`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::batch::Batching;
use crate::input::{self, InputKind};
use crate::manager::{Loaded, Manager, VersionPolicy, VersionRef};
use crate::metrics::{Metrics, Series};
use crate::{Result, ServeError};

/// The response header naming the version that answered a request.
pub const VERSION_HEADER: &str = "x-kiln-model-version";

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0: any free port).
    pub bind: SocketAddr,
    /// How often the repository is polled for new versions and labels.
    pub poll: Duration,
    /// Which versions are loaded.
    pub policy: VersionPolicy,
    /// Largest request body accepted (bytes); larger ones get HTTP 413.
    pub max_body_bytes: usize,
    /// Server-side batching (`None`: off, the default).
    pub batching: Option<Batching>,
    /// Where versions of repositories on object stores (`s3://`, `hdfs://`) are downloaded
    /// before they are loaded (default: `kiln-serve-cache` in the temporary directory).
    pub cache_dir: PathBuf,
}

/// `kiln-serve-cache` in the system's temporary directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("kiln-serve-cache")
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8501)),
            poll: Duration::from_secs(5),
            policy: VersionPolicy::Labelled,
            max_body_bytes: 16 << 20,
            batching: None,
            cache_dir: default_cache_dir(),
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The models and their state.
    pub manager: Arc<Manager>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    /// Stops accepting connections, lets requests in flight finish, and waits.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.wait().await
    }

    /// Waits for the server to end (after `shutdown` of [`start`] fired).
    pub async fn wait(self) -> Result<()> {
        let addr = self.addr.to_string();
        self.task.await.map_err(|e| ServeError::Io {
            addr,
            source: std::io::Error::other(e),
        })?
    }
}

/// Loads the models (a first poll), binds, and serves until `shutdown` completes or
/// [`Running::stop`] is called; polls the repository every `config.poll` meanwhile.
pub async fn start(
    models: Vec<(String, kiln_registry::Repo)>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running> {
    let metrics = Metrics::new();
    let manager = Arc::new(Manager::new(
        models,
        config.policy.clone(),
        config.batching,
        metrics,
        &config.cache_dir,
    )?);
    {
        let m = manager.clone();
        tokio::task::spawn_blocking(move || m.poll())
            .await
            .map_err(|e| ServeError::Internal(format!("first poll: {e}")))?;
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| ServeError::Io {
            addr: config.bind.to_string(),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Io {
        addr: config.bind.to_string(),
        source: e,
    })?;
    let poller = {
        let m = manager.clone();
        let every = config.poll;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let m = m.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || m.poll()).await {
                    tracing::error!(error = %e, "repository poll panicked");
                }
            }
        })
    };
    let app = router(manager.clone(), config.max_body_bytes);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = rx => {}
            }
            tracing::info!("shutting down: no new connections, finishing requests in flight");
        };
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|e| ServeError::Io {
                addr: addr.to_string(),
                source: e,
            });
        poller.abort();
        r
    });
    tracing::info!(%addr, models = manager.models.len(), policy = %config.policy, "serving");
    Ok(Running {
        addr,
        manager,
        stop: Some(tx),
        task,
    })
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The routes.
pub fn router(manager: Arc<Manager>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/models/{*rest}", get(models_api).post(models_api))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(access_log))
        .with_state(manager)
}

async fn access_log(req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        target: "kiln_serving::access",
        %method,
        path = %uri.path(),
        status = resp.status().as_u16(),
        micros = t0.elapsed().as_micros() as u64,
        version = resp.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(""),
        "request"
    );
    resp
}

async fn readyz(State(m): State<Arc<Manager>>) -> Response {
    if m.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let waiting: Vec<&str> = m
            .models
            .values()
            .filter(|s| s.snapshot().loaded.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no loaded version of {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(m): State<Arc<Manager>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.metrics.render(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_response(&ServeError::NotFound(format!(
        "Malformed request: {method} {}",
        uri.path()
    )))
}

fn error_response(e: &ServeError) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(json!({"error": e.to_string()}))).into_response()
}

/// What a `/v1/models/...` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    /// Model name.
    pub model: String,
    /// Version selector.
    pub version: VersionRef,
    /// What to do.
    pub call: Call,
}

/// The API call of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `GET .../NAME[/versions/N]`: version status.
    Status,
    /// `GET .../metadata`.
    Metadata,
    /// `POST ...:predict`.
    Predict,
    /// `POST ...:classify`.
    Classify,
    /// `POST ...:regress`.
    Regress,
}

impl Call {
    fn as_str(self) -> &'static str {
        match self {
            Call::Status => "status",
            Call::Metadata => "metadata",
            Call::Predict => "predict",
            Call::Classify => "classify",
            Call::Regress => "regress",
        }
    }
}

/// Parses the part of a path after `/v1/models/` for `method`; `None` when malformed.
pub fn parse_path(method: &Method, rest: &str) -> Option<ApiPath> {
    let (path, call) = if *method == Method::POST {
        let (p, verb) = rest.rsplit_once(':')?;
        let call = match verb.to_ascii_lowercase().as_str() {
            "predict" => Call::Predict,
            "classify" => Call::Classify,
            "regress" => Call::Regress,
            _ => return None,
        };
        (p, call)
    } else if *method == Method::GET {
        match rest.strip_suffix("/metadata") {
            Some(p) => (p, Call::Metadata),
            None => (rest, Call::Status),
        }
    } else {
        return None;
    };
    let parts: Vec<&str> = path.split('/').collect();
    let ok_name = |s: &str| !s.is_empty() && !s.contains(':');
    let (model, version) = match parts.as_slice() {
        [name] if ok_name(name) => (name, VersionRef::Default),
        [name, kind, v] if ok_name(name) && kind.eq_ignore_ascii_case("versions") => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (name, VersionRef::Number(v.parse().ok()?))
        }
        [name, kind, l] if ok_name(name) && kind.eq_ignore_ascii_case("labels") && ok_name(l) => {
            (name, VersionRef::Label(l.to_string()))
        }
        _ => return None,
    };
    Some(ApiPath {
        model: model.to_string(),
        version,
        call,
    })
}

async fn models_api(
    State(m): State<Arc<Manager>>,
    method: Method,
    uri: Uri,
    body: std::result::Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let body = match body {
        Ok(b) => b,
        // Above `--max-body-bytes` (413) or an unreadable body, as `{"error": ...}` too.
        Err(r) => return (r.status(), axum::Json(json!({"error": r.body_text()}))).into_response(),
    };
    let rest = uri.path().strip_prefix("/v1/models/").unwrap_or_default();
    let Some(path) = parse_path(&method, rest) else {
        return error_response(&ServeError::InvalidArgument(format!(
            "Malformed request: {method} {}",
            uri.path()
        )));
    };
    let mut series = Series {
        model: path.model.clone(),
        version: String::new(),
        label: String::new(),
        method: path.call.as_str().to_string(),
    };
    let known = m.models.contains_key(&path.model);
    let (resp, instances) = match handle(&m, &path, &body, &mut series).await {
        Ok((v, version, n)) => {
            let mut r = axum::Json(v).into_response();
            if let Some(version) = version
                && let Ok(h) = HeaderValue::from_str(&version.to_string())
            {
                r.headers_mut().insert(VERSION_HEADER, h);
            }
            (r, n)
        }
        Err(e) => (error_response(&e), 0),
    };
    if known {
        m.metrics
            .request(series, resp.status().as_u16(), t0.elapsed(), instances);
    }
    resp
}

/// Answers one API call: the JSON, the version that answered, the instances scored.
async fn handle(
    m: &Manager,
    path: &ApiPath,
    body: &[u8],
    series: &mut Series,
) -> Result<(Value, Option<u64>, usize)> {
    let served = m
        .models
        .get(&path.model)
        .ok_or_else(|| match path.call {
            Call::Status => ServeError::NotFound(format!(
                "Could not find any versions of model {}",
                path.model
            )),
            _ => ServeError::NotFound(format!(
                "Servable not found for request: Latest({})",
                path.model
            )),
        })?
        .clone();
    if path.call == Call::Status {
        return status(&served.name, &served.snapshot(), &path.version).map(|v| (v, None, 0));
    }
    let (loaded, label) = served.resolve(&path.version)?;
    series.version = loaded.version.to_string();
    series.label = label.map(|l| l.as_str().to_string()).unwrap_or_default();
    if path.call == Call::Metadata {
        return Ok((metadata(&served.name, &loaded), Some(loaded.version), 0));
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::InvalidArgument(format!("JSON Parse error: {e}")))?;
    let obj = request.as_object().ok_or_else(|| {
        ServeError::InvalidArgument("JSON Value: the request must be a JSON object".into())
    })?;
    if let Some(sig) = obj.get("signature_name") {
        let s = sig.as_str().unwrap_or_default();
        if !(s.is_empty() || s == "serving_default") {
            return Err(ServeError::InvalidArgument(format!(
                "Serving signature name: \"{s}\" not found in signature def (the model has \"serving_default\")"
            )));
        }
    }
    let (batch, shape) = match path.call {
        Call::Predict => match (obj.get("instances"), obj.get("inputs")) {
            (Some(_), Some(_)) => {
                return Err(ServeError::InvalidArgument(
                    "JSON Value: Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists".into(),
                ));
            }
            (Some(inst), None) => {
                let list = inst.as_array().ok_or_else(|| {
                    ServeError::InvalidArgument("'instances' must be a list".into())
                })?;
                (input::batch_from_rows(&loaded.inputs, list)?, Shape::Rows)
            }
            (None, Some(cols)) => {
                let cols = cols.as_object().ok_or_else(|| {
                    ServeError::InvalidArgument(
                        "'inputs' must be an object of named features, each a list of values"
                            .into(),
                    )
                })?;
                (
                    input::batch_from_columns(&loaded.inputs, cols)?,
                    Shape::Columns,
                )
            }
            (None, None) => {
                return Err(ServeError::InvalidArgument(
                    "Missing 'inputs' or 'instances' key".into(),
                ));
            }
        },
        _ => {
            let examples = obj
                .get("examples")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    ServeError::InvalidArgument("Missing 'examples' key (a list of objects)".into())
                })?;
            let context = obj.get("context").and_then(Value::as_object);
            let merged: Vec<Value> = examples
                .iter()
                .map(|e| match (e.as_object(), context) {
                    (Some(o), Some(c)) => {
                        let mut all: Map<String, Value> = c.clone();
                        all.extend(o.clone());
                        Value::Object(all)
                    }
                    _ => e.clone(),
                })
                .collect();
            (
                input::batch_from_rows(&loaded.inputs, &merged)?,
                Shape::Rows,
            )
        }
    };
    let n = batch.num_rows();
    let version = loaded.version;
    let logits = score_blocking(loaded, batch).await?;
    let probs: Vec<f32> = logits.iter().map(|&z| input::probability(z)).collect();
    let out = match (path.call, shape) {
        (Call::Predict, Shape::Rows) => json!({ "predictions": probs }),
        (Call::Predict, Shape::Columns) => json!({ "outputs": probs }),
        (Call::Regress, _) => json!({ "result": probs }),
        _ => json!({
            "result": probs
                .iter()
                .map(|&p| json!([["0", 1.0 - p], ["1", p]]))
                .collect::<Vec<_>>()
        }),
    };
    Ok((out, Some(version), n))
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Rows,
    Columns,
}

/// Scores on a blocking thread (CPU work stays off the async workers). The `Arc` keeps the
/// version alive until the request is done, even if a swap unloads it meanwhile.
async fn score_blocking(
    loaded: Arc<Loaded>,
    batch: arrow::record_batch::RecordBatch,
) -> Result<Vec<f32>> {
    if let Some(b) = &loaded.batcher {
        return b.score(batch).await;
    }
    tokio::task::spawn_blocking(move || input::score(&loaded.model, &batch))
        .await
        .map_err(|e| ServeError::Internal(format!("scoring task: {e}")))?
}

fn status(name: &str, s: &crate::manager::Snapshot, which: &VersionRef) -> Result<Value> {
    let entry = |v: u64, st: &crate::manager::VersionStatus| {
        json!({
            "version": v.to_string(),
            "state": st.state.as_str(),
            "status": {
                "error_code": if st.error.is_some() { "DATA_LOSS" } else { "OK" },
                "error_message": st.error.clone().unwrap_or_default(),
            }
        })
    };
    let list: Vec<Value> = match which {
        VersionRef::Default => s.status.iter().rev().map(|(v, st)| entry(*v, st)).collect(),
        VersionRef::Number(v) => match s.status.get(v) {
            Some(st) => vec![entry(*v, st)],
            None => {
                return Err(ServeError::NotFound(format!(
                    "Could not find version {v} of model {name}"
                )));
            }
        },
        VersionRef::Label(l) => match s.labels.get(l.as_str()) {
            Some(v) => vec![entry(*v, &s.status[v])],
            None => {
                return Err(ServeError::NotFound(format!(
                    "Unrecognized servable version label: {l}"
                )));
            }
        },
    };
    if list.is_empty() {
        return Err(ServeError::NotFound(format!(
            "Could not find any versions of model {name}"
        )));
    }
    Ok(json!({ "model_version_status": list }))
}

fn metadata(name: &str, l: &Loaded) -> Value {
    let vocab_strings = |col: &str| {
        l.model.transform.categorical.iter().any(|c| {
            c.column == col
                && matches!(&c.map, kiln_trainer::transform::CategoricalMap::Vocabulary { values }
                    if values.iter().any(|v| v.parse::<i64>().is_err()))
        })
    };
    let shape = json!({"dim": [{"size": "-1", "name": ""}], "unknown_rank": false});
    let mut inputs = Map::new();
    for s in &l.inputs {
        let dtype = if s.kinds == [InputKind::Numeric] {
            "DT_DOUBLE"
        } else if vocab_strings(&s.name) {
            "DT_STRING"
        } else {
            "DT_INT64"
        };
        inputs.insert(
            s.name.clone(),
            json!({
                "dtype": dtype,
                "tensor_shape": shape,
                "name": s.name,
                "kiln_kind": s.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            }),
        );
    }
    json!({
        "model_spec": {"name": name, "signature_name": "", "version": l.version.to_string()},
        "metadata": {"signature_def": {
            "signature_def": {"serving_default": {
                "inputs": inputs,
                "outputs": {"prediction": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "prediction"}},
                "method_name": "tensorflow/serving/predict"
            }},
            "kiln": {
                "label": l.model.transform.label,
                "output": "probability of the positive class: sigmoid(logit), as `kiln predict`'s `prediction` column",
            }
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_tf_serving() {
        let p = |m: &Method, s: &str| parse_path(m, s);
        let post = Method::POST;
        let getm = Method::GET;
        assert_eq!(
            p(&post, "ctr:predict").unwrap(),
            ApiPath {
                model: "ctr".into(),
                version: VersionRef::Default,
                call: Call::Predict
            }
        );
        assert_eq!(
            p(&post, "ctr/versions/12:classify").unwrap().version,
            VersionRef::Number(12)
        );
        assert_eq!(
            p(&post, "ctr/labels/canary:regress").unwrap().version,
            VersionRef::Label("canary".into())
        );
        assert_eq!(p(&getm, "ctr/metadata").unwrap().call, Call::Metadata);
        assert_eq!(
            p(&getm, "ctr/versions/3").unwrap(),
            ApiPath {
                model: "ctr".into(),
                version: VersionRef::Number(3),
                call: Call::Status
            }
        );
        assert!(p(&post, "ctr:explain").is_none());
        assert!(p(&post, "ctr").is_none());
        assert!(p(&getm, "ctr/versions/x").is_none());
        assert!(p(&getm, "ctr/other/1").is_none());
        assert!(p(&Method::PUT, "ctr").is_none());
    }
}
