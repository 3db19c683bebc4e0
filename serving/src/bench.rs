//! `kiln bench serve`: a loopback load test of the server. A trained model directory is
//! published as version 1 of a scratch repository and served in-process; `concurrency`
//! keep-alive clients then post single-instance and 64-instance `:predict` requests for a fixed
//! time each, and a third run posts 64-instance requests while version 2 is published and
//! labelled stable (the swap), counting failed requests and the versions that answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_registry::{Label, Repo};
use kiln_trainer::transform::CategoricalMap;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::batch::Batching;
use crate::http::{ServeConfig, VERSION_HEADER, start};
use crate::manager::{Loaded, VersionPolicy};
use crate::{Result, ServeError};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A model directory written by `kiln train`.
    pub model_dir: PathBuf,
    /// Seconds per run.
    pub seconds: f64,
    /// Concurrent client connections.
    pub concurrency: usize,
    /// Server-side batching (`None`: off).
    pub batching: Option<Batching>,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// Which run.
    pub run: String,
    /// Instances per request.
    pub instances: usize,
    /// Requests answered 200.
    pub requests: u64,
    /// Requests that failed (non-200 or a broken connection).
    pub errors: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Instances per second.
    pub instances_per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Versions that answered (the swap run: 1 then 2).
    pub versions: Vec<u64>,
}

/// Runs the three runs; the scratch repository is removed afterwards.
pub async fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let scratch = std::env::temp_dir().join(format!("kiln-bench-serve-{}", std::process::id()));
    let result = run_in(opts, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run_in(opts: &BenchOptions, scratch: &Path) -> Result<Vec<BenchRow>> {
    let repo = Repo::new(scratch.join("bench"));
    let publish = |repo: &Repo, tag: &str| -> Result<u64> {
        let v = repo
            .publish(&opts.model_dir, &json!({"bench": tag}), |_| Ok(()))
            .map_err(|source| ServeError::Repository {
                dir: repo.dir.clone(),
                source,
            })?;
        repo.promote(v, Label::Stable, false)
            .map_err(|source| ServeError::Repository {
                dir: repo.dir.clone(),
                source,
            })?;
        Ok(v)
    };
    publish(&repo, "v1")?;
    let config = ServeConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        poll: Duration::from_millis(200),
        policy: VersionPolicy::Labelled,
        max_body_bytes: 64 << 20,
        batching: opts.batching,
        cache_dir: scratch.join("cache"),
    };
    let running = start(
        vec![("bench".into(), repo.clone())],
        config,
        std::future::pending(),
    )
    .await?;
    let loaded = running.manager.models["bench"].resolve(&crate::manager::VersionRef::Default)?;
    let addr = running.addr.to_string();
    let seconds = Duration::from_secs_f64(opts.seconds);
    let mut rows = Vec::new();
    for (name, n) in [("steady", 1usize), ("steady", 64)] {
        let body = body(&loaded.0, n);
        rows.push(load(&addr, name, n, &body, opts.concurrency, seconds, None).await);
    }
    let body64 = body(&loaded.0, 64);
    let swap = {
        let repo = Repo::new(&repo.dir);
        let model_dir = opts.model_dir.clone();
        async move {
            tokio::time::sleep(seconds / 3).await;
            tokio::task::spawn_blocking(move || {
                let v = repo
                    .publish(&model_dir, &json!({"bench": "v2"}), |_| Ok(()))
                    .and_then(|v| repo.promote(v, Label::Stable, false).map(|_| v));
                if let Err(e) = v {
                    tracing::error!(error = %e, "publishing version 2");
                }
            })
            .await
            .ok();
        }
    };
    rows.push(
        load(
            &addr,
            "during swap",
            64,
            &body64,
            opts.concurrency,
            seconds,
            Some(Box::pin(swap)),
        )
        .await,
    );
    running.stop().await?;
    Ok(rows)
}

/// A request body of `n` instances of plausible raw values for the model's inputs.
fn body(l: &Loaded, n: usize) -> String {
    let t = &l.model.transform;
    let instances: Vec<Value> = (0..n)
        .map(|i| {
            let mut o = serde_json::Map::new();
            for c in &t.categorical {
                let v = match &c.map {
                    CategoricalMap::Vocabulary { values } if !values.is_empty() => {
                        json!(values[i % values.len()])
                    }
                    _ => json!((i as i64 * 7919) % 100_003),
                };
                o.insert(c.column.clone(), v);
            }
            for x in &t.numeric {
                o.insert(
                    x.column.clone(),
                    json!(x.mean + x.std * ((i % 7) as f64 - 3.0) / 3.0),
                );
            }
            Value::Object(o)
        })
        .collect();
    json!({ "instances": instances }).to_string()
}

type Swap = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn load(
    addr: &str,
    name: &str,
    instances: usize,
    body: &str,
    concurrency: usize,
    time: Duration,
    swap: Option<Swap>,
) -> BenchRow {
    let request = Arc::new(
        format!(
            "POST /v1/models/bench:predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let t0 = Instant::now();
    let end = t0 + time;
    let swapper = swap.map(tokio::spawn);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (addr, request) = (addr.to_string(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut errors, mut versions) = (0u64, std::collections::BTreeSet::new());
            let mut conn: Option<BufReader<TcpStream>> = None;
            while Instant::now() < end {
                if conn.is_none() {
                    conn = TcpStream::connect(&addr).await.ok().map(BufReader::new);
                }
                let Some(c) = conn.as_mut() else {
                    errors += 1;
                    continue;
                };
                let s = Instant::now();
                match exchange(c, &request).await {
                    Ok((200, v)) => {
                        lat.push(s.elapsed());
                        versions.extend(v);
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, errors, versions)
        }));
    }
    let (mut lat, mut errors, mut versions) = (Vec::new(), 0, std::collections::BTreeSet::new());
    for t in tasks {
        if let Ok((l, e, v)) = t.await {
            lat.extend(l);
            errors += e;
            versions.extend(v);
        }
    }
    if let Some(s) = swapper {
        let _ = s.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: usize| {
        lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    BenchRow {
        run: name.to_string(),
        instances,
        requests: lat.len() as u64,
        errors,
        requests_per_sec: lat.len() as f64 / wall,
        instances_per_sec: (lat.len() * instances) as f64 / wall,
        p50_ms: pct(50),
        p99_ms: pct(99),
        versions: versions.into_iter().collect(),
    }
}

/// One request on a keep-alive connection: the status and the answering version.
async fn exchange(
    c: &mut BufReader<TcpStream>,
    request: &[u8],
) -> std::io::Result<(u16, Option<u64>)> {
    c.get_mut().write_all(request).await?;
    let mut line = String::new();
    c.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut len, mut version) = (0usize, None);
    loop {
        line.clear();
        if c.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            } else if k == VERSION_HEADER {
                version = v.parse().ok();
            }
        }
    }
    let mut body = vec![0; len];
    c.read_exact(&mut body).await?;
    Ok((status, version))
}
