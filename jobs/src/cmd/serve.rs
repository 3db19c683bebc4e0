//! `kiln serve`: the model repository behind TF Serving's REST API (`docs/serving.md`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kiln_serving::batch::Batching;
use kiln_serving::http::{ServeConfig, start, termination};
use kiln_serving::manager::{VersionPolicy, discover};

/// Arguments of `kiln serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Job specs (their `[pipeline]` model repository), model directories
    /// (`<models_dir>/<name>`) or repository roots (every model under it): local paths, or
    /// `s3://bucket/prefix` / `hdfs://namenode:port/path` URLs (versions are downloaded into
    /// --cache-dir, verified, then loaded).
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Address to listen on (port 0: a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8501")]
    pub bind: std::net::SocketAddr,
    /// Seconds between polls of the repository for new versions and labels.
    #[arg(long, default_value_t = 5.0)]
    pub poll_seconds: f64,
    /// Versions to load: `labelled` (stable and canary), `latest[:N]` (newest N not
    /// rejected) or `specific:V[,V...]`.
    #[arg(long, default_value = "labelled")]
    pub policy: String,
    /// Largest request body accepted, in bytes (HTTP 413 above).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Where versions of repositories on `s3://` / `hdfs://` are downloaded before loading
    /// (default: `kiln-serve-cache` in the temporary directory).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub batching: BatchingArgs,
}

/// Server-side batching options (off by default).
#[derive(clap::Args, Debug, Clone)]
pub struct BatchingArgs {
    /// Batch concurrent requests to one version, up to this many rows per batch (0: off).
    #[arg(long, default_value_t = 0)]
    pub batch_max_rows: usize,
    /// Longest a batch waits for more requests after its first, in microseconds.
    #[arg(long, default_value_t = 1000)]
    pub batch_wait_micros: u64,
}

impl BatchingArgs {
    fn settings(&self) -> Option<Batching> {
        (self.batch_max_rows > 0).then(|| Batching {
            max_rows: self.batch_max_rows,
            max_wait: Duration::from_micros(self.batch_wait_micros),
        })
    }
}

/// Arguments of `kiln bench serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchServeArgs {
    /// A model directory written by `kiln train` (published into a scratch repository).
    pub model_dir: PathBuf,
    /// Seconds per run (single-instance, 64-instance, 64-instance during a version swap).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Concurrent keep-alive client connections.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[command(flatten)]
    pub batching: BatchingArgs,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kiln bench serve`: requests/s and p50/p99 latency on loopback, then during a swap.
pub fn bench(args: BenchServeArgs) -> anyhow::Result<()> {
    let opts = kiln_serving::bench::BenchOptions {
        model_dir: args.model_dir.clone(),
        seconds: args.seconds,
        concurrency: args.concurrency,
        batching: args.batching.settings(),
    };
    let rows = super::runtime()?.block_on(kiln_serving::bench::run(&opts))?;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<12} {:>9} {:>9} {:>7} {:>10} {:>12} {:>8} {:>8}  versions",
        "run", "instances", "requests", "errors", "req/s", "instances/s", "p50 ms", "p99 ms"
    );
    for r in &rows {
        println!(
            "{:<12} {:>9} {:>9} {:>7} {:>10.0} {:>12.0} {:>8.3} {:>8.3}  {:?}",
            r.run,
            r.instances,
            r.requests,
            r.errors,
            r.requests_per_sec,
            r.instances_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.versions
        );
    }
    Ok(())
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let policy: VersionPolicy = args.policy.parse().map_err(anyhow::Error::msg)?;
    if !(args.poll_seconds.is_finite() && args.poll_seconds > 0.0) {
        anyhow::bail!("--poll-seconds {}: must be positive", args.poll_seconds);
    }
    let mut models = Vec::new();
    for t in &args.targets {
        let target = if !t.contains("://") && std::path::Path::new(t).is_file() {
            let (_, p) = kiln_pipeline::config::load(std::path::Path::new(t))
                .with_context(|| format!("reading job spec {t}"))?;
            p.repo_url
        } else {
            t.clone()
        };
        models.extend(discover(&target)?);
    }
    let config = ServeConfig {
        bind: args.bind,
        poll: Duration::from_secs_f64(args.poll_seconds),
        policy,
        max_body_bytes: args.max_body_bytes,
        batching: args.batching.settings(),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(kiln_serving::http::default_cache_dir),
    };
    super::runtime()?.block_on(async move {
        let running = start(models, config, termination()).await?;
        println!(
            "{}",
            serde_json::json!({ "listening": running.addr.to_string() })
        );
        running.wait().await?;
        anyhow::Ok(())
    })
}
