//! One module per `kiln` subcommand: argument struct + `run`.

pub mod backfill;
pub mod bench;
pub mod bench_kafka;
pub mod bench_peers;
pub mod bench_spark;
pub mod bench_tfrecord;
pub mod cluster;
pub mod executor;
pub mod features;
pub mod r#gen;
pub mod inspect;
pub mod k8s;
pub mod local_cluster;
pub mod model_dir;
pub mod models;
pub mod predict;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod scheduler;
pub mod schema;
pub mod serve;
pub mod stats;
pub mod train;
pub mod ui;

/// Logs go to stderr (`RUST_LOG` to tune; default `info`), so stdout stays machine-readable.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A multi-threaded tokio runtime for async I/O (CPU-heavy training uses its own threads).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
