//! Prometheus metrics of batch commands, for node-exporter's textfile collector
//! (`--metrics-textfile PATH` of `kiln train`, `kiln features` and `kiln run`).
//!
//! The text format, its naming checks and the atomic textfile write are `kiln-metrics`'
//! [`Exposition`]; this module adds what every batch command reports, and `GET /metrics` for
//! `kiln schedule`. See `docs/observability.md`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
pub use kiln_metrics::Exposition;

/// Seconds since the Unix epoch (for `*_timestamp_seconds` gauges).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Adds the metrics every batch command writes: `kiln_<command>_duration_seconds`,
/// `kiln_<command>_success` (1 or 0) and `kiln_<command>_last_run_timestamp_seconds`.
pub fn add_outcome(
    m: &mut Exposition,
    command: &str,
    labels: &[(&str, &str)],
    seconds: f64,
    ok: bool,
) {
    m.gauge(
        &format!("kiln_{command}_duration_seconds"),
        &format!("Wall time of the last `kiln {command}`."),
        labels,
        seconds,
    );
    m.gauge(
        &format!("kiln_{command}_success"),
        &format!("1 if the last `kiln {command}` succeeded, else 0."),
        labels,
        if ok { 1.0 } else { 0.0 },
    );
    m.gauge(
        &format!("kiln_{command}_last_run_timestamp_seconds"),
        &format!("When the last `kiln {command}` ended (Unix time)."),
        labels,
        unix_now(),
    );
}

/// Writes `m` to `path` if there is one; a failure to write is logged, and does not change
/// the command's own outcome.
pub fn write_if_asked(path: Option<&Path>, m: &Exposition) {
    if let Some(p) = path
        && let Err(e) = m.write_atomic(p)
    {
        tracing::error!("{e:#}");
    }
}

/// `GET /metrics` on a background thread (axum on a single-threaded runtime), answering with
/// the text the owner last [`set`](MetricsServer::set) (`kiln schedule --metrics-bind`).
pub struct MetricsServer {
    addr: std::net::SocketAddr,
    text: Arc<Mutex<String>>,
}

impl MetricsServer {
    /// Binds `bind` (`HOST:PORT`; port 0 picks a free one) and starts serving an empty page.
    pub fn start(bind: &str) -> anyhow::Result<MetricsServer> {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("binding the metrics endpoint to {bind}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the metrics endpoint's runtime")?;
        let text = Arc::new(Mutex::new(String::new()));
        let shared = Arc::clone(&text);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let body = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
        std::thread::Builder::new()
            .name("kiln-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let served = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => axum::serve(l, app).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = served {
                        tracing::error!("metrics endpoint on {addr}: {e}");
                    }
                })
            })
            .context("starting the metrics endpoint thread")?;
        Ok(MetricsServer { addr, text })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Replaces what `GET /metrics` answers.
    pub fn set(&self, m: &Exposition) {
        *self.text.lock().unwrap_or_else(|p| p.into_inner()) = m.render();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_get_metrics() {
        use std::io::Read;
        let server = MetricsServer::start("127.0.0.1:0").unwrap();
        let mut m = Exposition::new();
        m.gauge("kiln_x", "X.", &[], 2.0);
        server.set(&m);
        let get = |req: &str| {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{r}"
        );
        assert!(
            r.ends_with("\r\n\r\n# HELP kiln_x X.\n# TYPE kiln_x gauge\nkiln_x 2\n"),
            "{r}"
        );
        assert!(
            get("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .starts_with("HTTP/1.1 404")
        );
        assert!(get("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn every_batch_command_reports_its_outcome() {
        let mut m = Exposition::new();
        add_outcome(&mut m, "train", &[("kiln_job", "ctr")], 2.5, true);
        let text = m.render();
        assert!(
            text.contains("kiln_train_duration_seconds{kiln_job=\"ctr\"} 2.5\n"),
            "{text}"
        );
        assert!(
            text.contains("kiln_train_success{kiln_job=\"ctr\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("kiln_train_last_run_timestamp_seconds{kiln_job=\"ctr\"} "));
    }
}
