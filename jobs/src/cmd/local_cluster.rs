//! A scheduler and executors started as `kiln` child processes on 127.0.0.1 (for
//! `kiln bench features --cluster`), stopped when dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running local cluster.
pub struct LocalCluster {
    children: Vec<Child>,
    /// `df://127.0.0.1:PORT`.
    pub url: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalCluster {
    /// Starts a scheduler and `executors` executors (default slots and memory pool), logging
    /// to files under `work`, and waits until every executor has registered.
    pub fn start(executors: usize, work: &Path) -> anyhow::Result<LocalCluster> {
        let exe = std::env::current_exe()?;
        std::fs::create_dir_all(work)?;
        let spawn = |args: Vec<String>, log: &str| -> anyhow::Result<Child> {
            let file = std::fs::File::create(work.join(log))?;
            Command::new(&exe)
                .args(&args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::from(file.try_clone()?))
                .stderr(Stdio::from(file))
                .spawn()
                .with_context(|| format!("starting kiln {}", args[0]))
        };
        let port = free_port()?;
        let status_port = free_port()?;
        let mut cluster = LocalCluster {
            children: Vec::new(),
            url: format!("df://127.0.0.1:{port}"),
        };
        cluster.children.push(spawn(
            vec![
                "scheduler".into(),
                format!("--bind=127.0.0.1:{port}"),
                format!("--status-bind=127.0.0.1:{status_port}"),
            ],
            "scheduler.log",
        )?);
        for i in 0..executors {
            cluster.children.push(spawn(
                vec![
                    "executor".into(),
                    format!("--scheduler=127.0.0.1:{port}"),
                    format!("--bind=127.0.0.1:{}", free_port()?),
                    format!(
                        "--work-dir={}",
                        work.join(format!("executor-{i}")).display()
                    ),
                ],
                &format!("executor-{i}.log"),
            )?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match super::cluster::fetch_status(&cluster.url, Some(status_port)) {
                Ok(s) if s.executors.len() == executors => return Ok(cluster),
                _ if Instant::now() > deadline => {
                    bail!(
                        "the local cluster did not start in 60 s (logs in {})",
                        work.display()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
