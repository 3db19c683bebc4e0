//! A real Kiln Ballista cluster for tests: `kiln scheduler` and N `kiln executor` processes
//! on 127.0.0.1 and free ports, logging to files, all killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running scheduler and its executors.
pub struct Cluster {
    scheduler: Child,
    executors: Vec<Option<Child>>,
    /// `df://127.0.0.1:PORT`.
    pub url: String,
    /// Port of the scheduler's status endpoint.
    pub status_port: u16,
    /// `127.0.0.1:PORT` of the scheduler's Prometheus `/metrics`.
    pub scheduler_metrics: String,
    /// `127.0.0.1:PORT` of each executor's Prometheus `/metrics`.
    pub executor_metrics: Vec<String>,
    logs: PathBuf,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[String], env: &[(&str, &str)], log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("kiln starts")
}

impl Cluster {
    /// Starts a scheduler and `executors` executors (2 slots each; an executor that has
    /// not polled for work for 8 s is declared lost) with `env` (e.g. S3 credentials), logging
    /// under `logs`, and waits until every executor is registered.
    pub fn start(executors: usize, env: &[(&str, &str)], logs: &Path) -> Cluster {
        std::fs::create_dir_all(logs).unwrap();
        let port = free_port();
        let status_port = free_port();
        let scheduler_metrics = format!("127.0.0.1:{}", free_port());
        let scheduler = spawn(
            &[
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--status-bind".into(),
                format!("127.0.0.1:{status_port}"),
                "--executor-timeout".into(),
                "8".into(),
                "--expire-interval".into(),
                "1".into(),
                "--metrics-bind".into(),
                scheduler_metrics.clone(),
            ],
            env,
            &logs.join("scheduler.log"),
        );
        let mut cluster = Cluster {
            scheduler,
            executors: Vec::new(),
            url: format!("df://127.0.0.1:{port}"),
            status_port,
            scheduler_metrics,
            executor_metrics: Vec::new(),
            logs: logs.to_path_buf(),
        };
        cluster.wait_for(
            |s| s["executors"].as_array().is_some(),
            "the scheduler to answer",
        );
        for i in 0..executors {
            let work = logs.join(format!("executor-{i}-work"));
            let metrics = format!("127.0.0.1:{}", free_port());
            let child = spawn(
                &[
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{port}"),
                    "--bind".into(),
                    format!("127.0.0.1:{}", free_port()),
                    "--slots".into(),
                    "2".into(),
                    "--work-dir".into(),
                    work.display().to_string(),
                    "--id".into(),
                    format!("executor-{i}"),
                    "--metrics-bind".into(),
                    metrics.clone(),
                ],
                env,
                &logs.join(format!("executor-{i}.log")),
            );
            cluster.executors.push(Some(child));
            cluster.executor_metrics.push(metrics);
        }
        cluster.wait_for(
            |s| s["executors"].as_array().map(Vec::len) == Some(executors),
            "every executor to register",
        );
        cluster
    }

    /// `kiln cluster status --json` of this cluster.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "cluster",
                "status",
                "--cluster",
                &self.url,
                "--status-port",
                &self.status_port.to_string(),
                "--json",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Polls the status (every 100 ms, up to 60 s) until `ok`.
    pub fn wait_for(
        &self,
        ok: impl Fn(&serde_json::Value) -> bool,
        what: &str,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {s}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/metrics` of the scheduler and of every executor still running (those killed are
    /// skipped), each with its address.
    pub fn metrics(&self) -> Vec<(String, String)> {
        std::iter::once(&self.scheduler_metrics)
            .chain(
                self.executor_metrics
                    .iter()
                    .zip(&self.executors)
                    .filter(|(_, c)| c.is_some())
                    .map(|(a, _)| a),
            )
            .map(|a| {
                let body = super::prom::http_get(a, "/metrics")
                    .unwrap_or_else(|| panic!("GET http://{a}/metrics\n{}", self.logs()));
                (a.clone(), body)
            })
            .collect()
    }

    /// SIGKILLs executor `i`.
    pub fn kill_executor(&mut self, i: usize) {
        if let Some(mut c) = self.executors[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The scheduler's log.
    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self.logs.join("scheduler.log")).unwrap_or_default()
    }

    /// Every process's log, concatenated (for assertions and failure messages).
    pub fn logs(&self) -> String {
        let mut names: Vec<_> = std::fs::read_dir(&self.logs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                format!(
                    "==== {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}
