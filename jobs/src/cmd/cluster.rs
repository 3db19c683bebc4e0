//! `kiln cluster status`: executors and running jobs of a Kiln Ballista cluster, read from
//! the scheduler's status endpoint (`kiln scheduler --status-bind`, by default the
//! scheduler's port + 1).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// HTTP path of the scheduler's status endpoint.
pub const STATUS_PATH: &str = "/kiln/status";

/// The cluster as the scheduler sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Scheduler gRPC address.
    pub scheduler: String,
    /// Ballista version of the scheduler.
    pub ballista_version: String,
    /// Registered executors.
    pub executors: Vec<ExecutorStatus>,
    /// Queued and running jobs.
    pub jobs: Vec<JobProgress>,
}

/// One registered executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutorStatus {
    /// Executor id.
    pub id: String,
    /// Advertised host.
    pub host: String,
    /// Arrow Flight port (shuffle output).
    pub port: u16,
    /// Task slots.
    pub slots: u32,
    /// Unix time (s) of the last heartbeat.
    pub last_heartbeat_unix: Option<u64>,
    /// Seconds since the last heartbeat.
    pub seconds_since_heartbeat: Option<u64>,
}

/// One queued or running job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobProgress {
    /// Ballista job id.
    pub id: String,
    /// Job name (`kiln <job> <date>` for feature jobs).
    pub name: String,
    /// queued | running | failed | successful.
    pub status: String,
    /// Stages completed.
    pub stages_completed: usize,
    /// Stages in the job.
    pub stages_total: usize,
    /// Start time, Unix ms (0 while queued).
    pub started_at_ms: u64,
}

/// `kiln cluster ...`.
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Executors (id, host, slots, last heartbeat) and running jobs with stage progress.
    Status(StatusArgs),
}

/// Arguments of `kiln cluster status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The scheduler, df://HOST:PORT.
    #[arg(long, value_name = "df://HOST:PORT")]
    pub cluster: String,
    /// Port of the scheduler's status endpoint [default: the scheduler port + 1].
    #[arg(long)]
    pub status_port: Option<u16>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: ClusterCommand) -> anyhow::Result<()> {
    match c {
        ClusterCommand::Status(a) => {
            let status = fetch_status(&a.cluster, a.status_port)?;
            if a.json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", render(&status));
            }
            Ok(())
        }
    }
}

/// Reads the status of the cluster whose scheduler is at `cluster` (df://HOST:PORT).
pub fn fetch_status(cluster: &str, status_port: Option<u16>) -> anyhow::Result<ClusterStatus> {
    let (host, port) = kiln_engine::cluster::parse_cluster_url(cluster)?;
    let port = status_port.unwrap_or(port.wrapping_add(1));
    let addr = format!("{host}:{port}");
    let endpoint = format!("http://{addr}{STATUS_PATH}");
    let mut conn = TcpStream::connect(&addr).with_context(|| {
        format!(
            "cannot reach the scheduler's status endpoint {endpoint} (is `kiln scheduler` running?)"
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "GET {STATUS_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)
        .with_context(|| format!("reading {endpoint}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{endpoint}: malformed HTTP response");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{endpoint}: {} {body}",
            head.lines().next().unwrap_or_default()
        );
    }
    serde_json::from_str(body).with_context(|| format!("{endpoint}: not a Kiln status"))
}

/// The human table of `kiln cluster status`.
pub fn render(s: &ClusterStatus) -> String {
    let mut out = format!(
        "scheduler {} (Ballista {}): {} executor(s), {} job(s)\n",
        s.scheduler,
        s.ballista_version,
        s.executors.len(),
        s.jobs.len()
    );
    out.push_str(
        "EXECUTOR                              HOST:PORT              SLOTS  LAST HEARTBEAT\n",
    );
    for e in &s.executors {
        let beat = e
            .seconds_since_heartbeat
            .map_or("never".to_string(), |s| format!("{s} s ago"));
        out.push_str(&format!(
            "{:<37} {:<22} {:>5}  {beat}\n",
            e.id,
            format!("{}:{}", e.host, e.port),
            e.slots
        ));
    }
    out.push_str("JOB            STATUS      STAGES  NAME\n");
    for j in &s.jobs {
        out.push_str(&format!(
            "{:<14} {:<11} {:>2}/{:<3}  {}\n",
            j.id, j.status, j.stages_completed, j.stages_total, j.name
        ));
    }
    out
}
