//! Prometheus in tests: `promtool check metrics` on an exposition, its samples, plain
//! `GET`s of `/metrics`, and a real Prometheus server (Debian's `prometheus` package, which
//! `scripts/test.sh` installs with promtool) scraping Kiln's endpoints on 127.0.0.1.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `promtool check metrics` on `text` (what `what` served): no errors and no lint warnings.
/// Without promtool on `PATH` the lint is skipped (printing why), except under `CI=true`,
/// where it fails.
pub fn promtool_check(what: &str, text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            !ci(),
            "promtool is not on PATH and CI=true (Debian: apt-get install prometheus; \
             scripts/test.sh does)"
        );
        eprintln!("promtool not on PATH: {what} not linted here (scripts/test.sh installs it)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics of {what}:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The value of the sample `line_prefix` (`name{labels}`) in an exposition.
pub fn sample(text: &str, line_prefix: &str) -> f64 {
    try_sample(text, line_prefix).unwrap_or_else(|| panic!("no sample {line_prefix} in:\n{text}"))
}

/// The value of the sample `line_prefix`, if the exposition has it.
pub fn try_sample(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `GET path` on `addr` (HTTP/1.0, so no chunked body); the body, or `None` unless it
/// answered 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// A real Prometheus server on 127.0.0.1, scraping targets every second; killed on drop.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` (`HOST:PORT`, path `/metrics`) as job `kiln`,
    /// with its data and log under `dir`, and waits until it answers. `None` (after printing
    /// why) when the binary is missing outside CI; under `CI=true` a missing one fails.
    pub fn start(targets: &[&str], dir: &Path) -> Option<Prometheus> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                !ci(),
                "prometheus is not on PATH and CI=true (Debian: apt-get install prometheus; \
                 scripts/test.sh does)"
            );
            eprintln!("prometheus not on PATH: skipping the scrape (scripts/test.sh installs it)");
            return None;
        }
        let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: kiln\n    static_configs:\n      \
                 - targets: [{}]\n",
                quoted.join(", ")
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&p.addr, "/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready within 60 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(p)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The instant vector of PromQL `query`: each series' labels and value.
    pub fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Some(body) = http_get(&self.addr, &format!("/api/v1/query?query={encoded}")) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{query}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// Polls `query` (every 250 ms, up to 60 s) until its series satisfy `ok`; returns them.
    pub fn wait_for(
        &self,
        query: &str,
        ok: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.query(query);
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: `{query}` still {r:?} after 60 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
