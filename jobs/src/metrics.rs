//! Prometheus metrics of batch commands, for node-exporter's textfile collector
//! (`--metrics-textfile PATH` of `kiln train`, `kiln features` and `kiln run`).
//!
//! [`Exposition`] collects metric families and renders Prometheus' text exposition format
//! (version 0.0.4: `# HELP` / `# TYPE` lines, then `name{label="value"} value` samples);
//! [`Exposition::write_atomic`] writes it to `PATH.tmp` and renames that onto `PATH`, so the
//! collector never reads a half-written file (it only reads `*.prom`, so the temporary name
//! is never collected). Names follow Prometheus conventions: a `kiln_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` for counters. See `docs/observability.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that can go up and down (or a value of the last run).
    Gauge,
    /// A count of events; its name ends in `_total`.
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One metric family: name, help, type and its samples (label sets and values).
#[derive(Debug, Clone)]
struct Family {
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// Metric families to render in the text exposition format, in name order.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    /// Adds a counter sample (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Counter, labels, value);
    }

    /// Adds a sample of family `name`. Names, label names and a family's help and type are
    /// fixed by Kiln's code, so a violation of the naming rules (or a family added twice with
    /// another type or help, or the same label set twice) is a bug and panics.
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], value: f64) {
        assert!(valid_metric_name(name), "invalid metric name `{name}`");
        assert!(
            name.starts_with("kiln_"),
            "metric `{name}` lacks the kiln_ prefix"
        );
        assert_eq!(
            kind == Kind::Counter,
            name.ends_with("_total"),
            "metric `{name}`: counters, and only counters, end in _total"
        );
        for (l, _) in labels {
            assert!(valid_label_name(l), "metric `{name}`: invalid label `{l}`");
        }
        let family = self
            .families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: help.to_string(),
                kind,
                samples: Vec::new(),
            });
        assert!(
            family.kind == kind && family.help == help,
            "metric `{name}` added with another type or help"
        );
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(
            family.samples.iter().all(|(l, _)| *l != labels),
            "metric `{name}`: label set {labels:?} added twice"
        );
        family.samples.push((labels, value));
    }

    /// The text exposition format (ends with a newline).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for (labels, value) in &f.samples {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }

    /// Writes [`render`](Self::render) to `PATH.tmp`, fsyncs it and renames it onto `path`.
    pub fn write_atomic(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing metrics to {}", path.display()));
        }
        Ok(())
    }
}

/// `PATH.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    !s.starts_with("__")
        && c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// HELP text: `\` and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values: `\`, `"` and newline escaped.
fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as Go's `ParseFloat` reads it: `NaN`, `+Inf`, `-Inf` or a decimal.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

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

/// `GET /metrics` over plain HTTP/1.1 on a background thread, answering with the text the
/// owner last [`set`](MetricsServer::set) (`kiln schedule --metrics-bind`). One connection at a
/// time: a scrape is a short request and a small answer.
pub struct MetricsServer {
    addr: std::net::SocketAddr,
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl MetricsServer {
    /// Binds `bind` (`HOST:PORT`; port 0 picks a free one) and starts serving an empty page.
    pub fn start(bind: &str) -> anyhow::Result<MetricsServer> {
        let listener = std::net::TcpListener::bind(bind)
            .with_context(|| format!("binding the metrics endpoint to {bind}"))?;
        let addr = listener.local_addr()?;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let shared = text.clone();
        std::thread::Builder::new()
            .name("kiln-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let body = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Err(e) = answer(conn, &body) {
                        tracing::debug!("metrics endpoint: {e}");
                    }
                }
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

/// Reads one request (its head) and answers `GET /metrics` with `body`, anything else 404.
fn answer(mut conn: std::net::TcpStream, body: &str) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n",
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n",
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_escaped_samples() {
        let mut m = Exposition::new();
        m.gauge("kiln_b_seconds", "B\\ help\nline", &[], 1.5);
        m.counter(
            "kiln_a_rows_total",
            "Rows.",
            &[("source", "ev\"ents\\\n")],
            3.0,
        );
        m.counter("kiln_a_rows_total", "Rows.", &[("source", "x")], 0.0);
        m.gauge("kiln_c", "C.", &[("k", "v"), ("l", "w")], f64::NAN);
        m.gauge("kiln_d", "D.", &[], f64::INFINITY);
        m.gauge("kiln_e", "E.", &[], f64::NEG_INFINITY);
        m.gauge("kiln_f", "F.", &[], 1e-7);
        let want = "\
# HELP kiln_a_rows_total Rows.
# TYPE kiln_a_rows_total counter
kiln_a_rows_total{source=\"ev\\\"ents\\\\\\n\"} 3
kiln_a_rows_total{source=\"x\"} 0
# HELP kiln_b_seconds B\\\\ help\\nline
# TYPE kiln_b_seconds gauge
kiln_b_seconds 1.5
# HELP kiln_c C.
# TYPE kiln_c gauge
kiln_c{k=\"v\",l=\"w\"} NaN
# HELP kiln_d D.
# TYPE kiln_d gauge
kiln_d +Inf
# HELP kiln_e E.
# TYPE kiln_e gauge
kiln_e -Inf
# HELP kiln_f F.
# TYPE kiln_f gauge
kiln_f 0.0000001
";
        assert_eq!(m.render(), want);
    }

    #[test]
    #[should_panic(expected = "end in _total")]
    fn counters_end_in_total() {
        Exposition::new().counter("kiln_rows", "Rows.", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "end in _total")]
    fn gauges_do_not_end_in_total() {
        Exposition::new().gauge("kiln_rows_total", "Rows.", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "another type or help")]
    fn one_family_one_help() {
        let mut m = Exposition::new();
        m.gauge("kiln_x", "X.", &[("a", "1")], 1.0);
        m.gauge("kiln_x", "Y.", &[("a", "2")], 1.0);
    }

    #[test]
    #[should_panic(expected = "added twice")]
    fn no_duplicate_samples() {
        let mut m = Exposition::new();
        m.gauge("kiln_x", "X.", &[("a", "1")], 1.0);
        m.gauge("kiln_x", "X.", &[("a", "1")], 2.0);
    }

    #[test]
    fn names_and_labels_are_checked() {
        assert!(valid_metric_name("kiln_a:b_1"));
        assert!(!valid_metric_name("1kiln"));
        assert!(!valid_metric_name("kiln-a"));
        assert!(!valid_metric_name(""));
        assert!(valid_label_name("kiln_job"));
        assert!(!valid_label_name("__name"));
        assert!(!valid_label_name("a:b"));
        assert!(!valid_label_name(""));
    }

    #[test]
    fn serves_get_metrics() {
        use std::io::Read;
        let server = MetricsServer::start("127.0.0.1:0").unwrap();
        let mut m = Exposition::new();
        m.gauge("kiln_x", "X.", &[], 2.0);
        server.set(&m);
        let get = |req: &str| {
            let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(
            r.ends_with("\r\n\r\n# HELP kiln_x X.\n# TYPE kiln_x gauge\nkiln_x 2\n"),
            "{r}"
        );
        assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn writes_atomically_through_a_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.prom");
        std::fs::write(&p, "old").unwrap();
        let mut m = Exposition::new();
        add_outcome(&mut m, "train", &[("kiln_job", "ctr")], 2.5, true);
        m.write_atomic(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("kiln_train_duration_seconds{kiln_job=\"ctr\"} 2.5\n"),
            "{text}"
        );
        assert!(text.contains("kiln_train_success{kiln_job=\"ctr\"} 1\n"));
        assert!(!dir.path().join("kiln.prom.tmp").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // An unwritable path fails, naming it, and leaves no temporary file.
        let bad = dir.path().join("missing/kiln.prom");
        let e = m.write_atomic(&bad).unwrap_err();
        assert!(format!("{e:#}").contains("missing/kiln.prom"), "{e:#}");
    }
}
