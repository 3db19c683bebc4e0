//! Prometheus metrics of batch commands, for node-exporter's textfile collector
//! (`--metrics-textfile PATH` of `kiln train`, `kiln features` and `kiln run`).
//!
//! The text format, its naming checks and the atomic textfile write are `kiln-metrics`'
//! [`Exposition`]; this module adds what every batch command reports, and `GET /metrics` for
//! `kiln schedule`. See `docs/observability.md`.

use std::path::Path;
use std::sync::Arc;

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

/// What `GET /metrics` answers, rendered on each request.
type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `bind` (`HOST:PORT`; port 0 picks a free one) from a background
/// thread (axum on a single-threaded runtime), answering each request with `render()` at that
/// moment (`kiln schedule`, `kiln scheduler`, `kiln executor`); returns the address it
/// listens on.
pub fn serve_metrics(
    bind: &str,
    render: impl Fn() -> Exposition + Send + Sync + 'static,
) -> anyhow::Result<std::net::SocketAddr> {
    serve(bind, Arc::new(move || render().render()))
}

/// Serves `GET /metrics` with `render()` on `bind` from a thread of its own.
fn serve(bind: &str, render: Render) -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(bind)
        .with_context(|| format!("binding the metrics endpoint to {bind}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the metrics endpoint's runtime")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render();
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
    Ok(addr)
}

/// When this process started (Unix time), fixed on first call; [`add_process`] reports it.
pub fn process_start() -> f64 {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *START.get_or_init(unix_now)
}

/// Adds what every long-running process reports about itself, labelled with its `component`
/// (`scheduler`, `executor`): `kiln_build_info` (1, with the version),
/// `kiln_process_start_time_seconds`, and from Linux' `/proc/self` (absent elsewhere)
/// `kiln_process_cpu_seconds_total` and `kiln_process_resident_memory_bytes`.
pub fn add_process(m: &mut Exposition, component: &str) {
    let l = [("component", component)];
    m.gauge(
        "kiln_build_info",
        "Always 1; the version of the running kiln binary.",
        &[
            ("component", component),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
    m.gauge(
        "kiln_process_start_time_seconds",
        "When the process started (Unix time).",
        &l,
        process_start(),
    );
    if let Some((cpu, rss)) = proc_self() {
        m.counter(
            "kiln_process_cpu_seconds_total",
            "User and system CPU time of the process.",
            &l,
            cpu,
        );
        m.gauge(
            "kiln_process_resident_memory_bytes",
            "Resident memory of the process.",
            &l,
            rss,
        );
    }
}

/// (CPU seconds, resident bytes) of this process from `/proc/self/stat` (fields 14 and 15,
/// utime and stime in clock ticks, and 24, rss in pages); `None` off Linux.
fn proc_self() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse().ok() };
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if tick <= 0 || page <= 0 {
        return None;
    }
    Some((
        (field(14)? + field(15)?) / tick as f64,
        field(24)? * page as f64,
    ))
}

/// Cumulative bucket counts of durations, for a `*_seconds` histogram of a long-running
/// process (job durations in `kiln scheduler`, task durations in `kiln executor`).
#[derive(Debug)]
pub struct DurationHistogram {
    counts: [std::sync::atomic::AtomicU64; DURATION_BUCKETS.len()],
    count: std::sync::atomic::AtomicU64,
    sum_micros: std::sync::atomic::AtomicU64,
}

/// Upper bounds (seconds) of [`DurationHistogram`]'s buckets: feature jobs and their tasks
/// take from a fraction of a second to tens of minutes.
const DURATION_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            counts: std::array::from_fn(|_| Default::default()),
            count: Default::default(),
            sum_micros: Default::default(),
        }
    }
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, seconds: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        // Each bucket counts its own durations; `add_to` makes them cumulative.
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Relaxed);
    }

    /// Adds the histogram to `m` as family `name`.
    pub fn add_to(&self, m: &mut Exposition, name: &str, help: &str, labels: &[(&str, &str)]) {
        use std::sync::atomic::Ordering::Relaxed;
        // The total first, and buckets capped by it: a concurrent observe never shows a
        // bucket above +Inf.
        let count = self.count.load(Relaxed);
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(b, n)| {
                below += n.load(Relaxed);
                (*b, below.min(count))
            })
            .collect();
        m.histogram(name, help, labels, &buckets, sum, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_get_metrics() {
        use std::io::Read;
        let addr = serve_metrics("127.0.0.1:0", || {
            let mut m = Exposition::new();
            m.gauge("kiln_x", "X.", &[], 2.0);
            m
        })
        .unwrap();
        let get = |req: &str| {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(addr).unwrap();
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
    fn duration_histograms_are_cumulative() {
        let h = DurationHistogram::default();
        for s in [0.05, 0.3, 0.3, 7.0, 4000.0] {
            h.observe(s);
        }
        let mut m = Exposition::new();
        h.add_to(&mut m, "kiln_x_seconds", "X.", &[]);
        let text = m.render();
        for want in [
            "kiln_x_seconds_bucket{le=\"0.1\"} 1\n",
            "kiln_x_seconds_bucket{le=\"0.5\"} 3\n",
            "kiln_x_seconds_bucket{le=\"5\"} 3\n",
            "kiln_x_seconds_bucket{le=\"10\"} 4\n",
            "kiln_x_seconds_bucket{le=\"1800\"} 4\n",
            "kiln_x_seconds_bucket{le=\"+Inf\"} 5\n",
            "kiln_x_seconds_sum 4007.65\n",
            "kiln_x_seconds_count 5\n",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }

    #[test]
    fn processes_report_start_time_cpu_and_memory() {
        let mut m = Exposition::new();
        add_process(&mut m, "executor");
        let text = m.render();
        assert!(text.contains("kiln_build_info{component=\"executor\",version=\""));
        let start = process_start();
        assert!(start > 1.7e9 && start <= unix_now(), "{start}");
        let rss = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("kiln_process_resident_memory_bytes{component=\"executor\"} ")
            })
            .expect("resident memory on Linux");
        assert!(rss.parse::<f64>().unwrap() > 1e6, "{text}");
        assert!(text.contains("kiln_process_cpu_seconds_total{component=\"executor\"} "));
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
