//! `kiln scheduler`: a Ballista scheduler that knows Kiln's plan nodes, functions and object
//! stores, plus a small JSON status endpoint for `kiln cluster status` and, with
//! `--metrics-bind`, Prometheus' `GET /metrics` (jobs by outcome and their durations, from
//! Ballista's `SchedulerMetricsCollector` hooks; running jobs, pending tasks, live executors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ballista_core::JobId;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::job_status;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::metrics::SchedulerMetricsCollector;
use ballista_scheduler::scheduler_process::start_grpc_service_with_listener;
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::state::task_manager::JobOverview;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use kiln_engine::codec::{KilnLogicalCodec, KilnPhysicalCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster::{ClusterStatus, ExecutorStatus, JobProgress, STATUS_PATH};
use crate::metrics::{DurationHistogram, Exposition};

/// Arguments of `kiln scheduler`.
#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Address of the scheduler's gRPC service (clients use `--cluster df://HOST:PORT`,
    /// executors `--scheduler HOST:PORT`).
    #[arg(long, default_value = "0.0.0.0:50050", value_name = "HOST:PORT")]
    pub bind: SocketAddr,
    /// Address of the JSON status endpoint read by `kiln cluster status`
    /// [default: the --bind host, port + 1].
    #[arg(long, value_name = "HOST:PORT")]
    pub status_bind: Option<SocketAddr>,
    /// Host name executors and clients use to reach this scheduler
    /// [default: the --bind host, or this machine's host name when binding 0.0.0.0].
    #[arg(long)]
    pub external_host: Option<String>,
    /// An executor whose last heartbeat (its last poll for work; a busy executor polls at
    /// least every 5 s) is older than this is declared lost: its running
    /// tasks are re-run elsewhere, and the stages whose shuffle output it held are re-run.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub executor_timeout: u64,
    /// How often lost executors are looked for.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub expire_interval: u64,
    /// Attempts of one task before its job fails (only I/O errors are retried).
    #[arg(long, default_value_t = 4)]
    pub task_max_failures: usize,
    /// Attempts of one stage before its job fails.
    #[arg(long, default_value_t = 4)]
    pub stage_max_failures: usize,
    /// Shuffle files of a finished job are deleted from executors after this delay
    /// (0 keeps them).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub cleanup_delay: u64,
    /// Serve Prometheus metrics at `http://HOST:PORT/metrics` (port 0 picks a free one; the
    /// address is logged): jobs submitted, completed, failed and cancelled, job durations,
    /// running jobs, pending tasks, live executors, process start time, CPU and memory.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_bind: Option<String>,
}

/// Default host name: the bind host, or this machine's name for a wildcard bind.
pub fn advertised_host(bind: &SocketAddr, external: Option<&str>) -> String {
    if let Some(h) = external {
        return h.to_string();
    }
    if bind.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else {
        bind.ip().to_string()
    }
}

pub fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    runtime.block_on(serve(args))
}

async fn serve(args: SchedulerArgs) -> anyhow::Result<()> {
    let status_bind = args
        .status_bind
        .unwrap_or_else(|| SocketAddr::new(args.bind.ip(), args.bind.port().wrapping_add(1)));
    let mut config = SchedulerConfig {
        bind_host: args.bind.ip().to_string(),
        bind_port: args.bind.port(),
        external_host: advertised_host(&args.bind, args.external_host.as_deref()),
        executor_timeout_seconds: args.executor_timeout,
        expire_dead_executor_interval_seconds: args.expire_interval,
        no_executors_grace_period_seconds: args.executor_timeout,
        task_max_failures: args.task_max_failures,
        stage_max_failures: args.stage_max_failures,
        finished_job_data_clean_up_interval_seconds: args.cleanup_delay,
        scheduling_policy: kiln_engine::cluster::TASK_SCHEDULING,
        override_logical_codec: Some(Arc::new(KilnLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(KilnPhysicalCodec::default())),
        override_session_builder: Some(Arc::new(kiln_engine::cluster::scheduler_session_state)),
        ..SchedulerConfig::default()
    };
    // Jobs never wait forever for executors that do not exist.
    config.job_resubmit_interval_ms = Some(500);
    let config = Arc::new(config);
    config.validate()?;
    let cluster = BallistaCluster::new_from_config(&config).await?;
    // Ballista's `create_scheduler`, with Kiln's metrics collector in place of its default
    // (a no-op without Ballista's `prometheus` feature).
    let metrics = Arc::new(JobMetrics::default());
    let codec = BallistaCodec::new(
        Arc::new(KilnLogicalCodec::default()),
        Arc::new(KilnPhysicalCodec::default()),
    );
    let mut scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
        config.scheduler_endpoint(),
        cluster,
        codec,
        Arc::clone(&config),
        Arc::clone(&metrics) as Arc<dyn SchedulerMetricsCollector>,
    );
    scheduler.init().await?;
    if let Some(bind) = &args.metrics_bind {
        let addr = serve_metrics(bind, &scheduler, metrics)?;
        tracing::info!("kiln scheduler: metrics at http://{addr}/metrics");
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding the scheduler to {}", args.bind))?;
    let status_listener = tokio::net::TcpListener::bind(status_bind)
        .await
        .with_context(|| format!("binding the status endpoint to {status_bind}"))?;
    tracing::info!(
        "kiln scheduler {} (Ballista {}) on {} (status http://{status_bind}{STATUS_PATH})",
        env!("CARGO_PKG_VERSION"),
        ballista_core::BALLISTA_VERSION,
        args.bind
    );
    let status = tokio::spawn(serve_status(status_listener, scheduler.clone(), args.bind));
    let events = scheduler
        .cluster_state_events()
        .await
        .context("subscribing to executor events")?;
    tokio::spawn(cancel_jobs_on_executor_loss(events, scheduler.clone()));
    tokio::select! {
        r = start_grpc_service_with_listener(listener, scheduler) => {
            r.context("scheduler gRPC service")?;
        }
        r = status => {
            r.context("status endpoint")??;
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("scheduler stopping (interrupt)");
        }
    }
    Ok(())
}

/// The scheduler's job events, counted: Ballista's event loop calls these hooks as jobs are
/// submitted and end.
#[derive(Default)]
struct JobMetrics {
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    pending_tasks: AtomicU64,
    /// From queued to completed or failed.
    durations: DurationHistogram,
    /// Executors alive at the last refresh (every second; the executor list is async).
    executors: AtomicU64,
}

impl SchedulerMetricsCollector for JobMetrics {
    fn record_submitted(&self, _job: &JobId, _queued_at: u64, _submitted_at: u64) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    fn record_completed(&self, _job: &JobId, queued_at: u64, completed_at: u64) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.durations
            .observe(completed_at.saturating_sub(queued_at) as f64 / 1e3);
    }

    fn record_failed(&self, _job: &JobId, queued_at: u64, failed_at: u64) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.durations
            .observe(failed_at.saturating_sub(queued_at) as f64 / 1e3);
    }

    fn record_cancelled(&self, _job: &JobId) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    fn set_pending_tasks_queue_size(&self, value: u64) {
        self.pending_tasks.store(value, Ordering::Relaxed);
    }

    fn gather_metrics(&self) -> ballista_core::error::Result<Option<(Vec<u8>, String)>> {
        Ok(None)
    }
}

/// Starts `GET /metrics` on `bind`, and the task refreshing the count of live executors.
fn serve_metrics(
    bind: &str,
    scheduler: &SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    metrics: Arc<JobMetrics>,
) -> anyhow::Result<SocketAddr> {
    crate::metrics::process_start();
    let refreshed = Arc::clone(&metrics);
    let state = Arc::clone(&scheduler.state);
    tokio::spawn(async move {
        loop {
            if let Ok(alive) = state.executor_manager.get_executors_state().await {
                refreshed
                    .executors
                    .store(alive.len() as u64, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let state = Arc::clone(&scheduler.state);
    crate::metrics::serve_metrics(bind, move || {
        let mut m = Exposition::new();
        crate::metrics::add_process(&mut m, "scheduler");
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (outcome, n, help) in [
            (
                "submitted",
                &metrics.submitted,
                "Jobs planned and queued for executors.",
            ),
            ("completed", &metrics.completed, "Jobs that succeeded."),
            ("failed", &metrics.failed, "Jobs that failed."),
            (
                "cancelled",
                &metrics.cancelled,
                "Jobs cancelled (by a client or on executor loss).",
            ),
        ] {
            m.counter(
                &format!("kiln_scheduler_jobs_{outcome}_total"),
                help,
                &[],
                load(n),
            );
        }
        metrics.durations.add_to(
            &mut m,
            "kiln_scheduler_job_duration_seconds",
            "Time from a job's submission to its success or failure.",
            &[],
        );
        m.gauge(
            "kiln_scheduler_jobs_running",
            "Jobs running now.",
            &[],
            state.task_manager.get_running_job_cache().len() as f64,
        );
        m.gauge(
            "kiln_scheduler_pending_tasks",
            "Tasks ready to run that wait for a free executor slot.",
            &[],
            load(&metrics.pending_tasks),
        );
        m.gauge(
            "kiln_scheduler_executors",
            "Executors registered and alive (refreshed every second).",
            &[],
            load(&metrics.executors),
        );
        m
    })
}

/// Cancels every running job when an executor leaves the cluster; the Kiln client then
/// resubmits its job from the start on the executors that remain
/// (`kiln_engine::cluster::CLUSTER_JOB_ATTEMPTS`).
///
/// Ballista's own recovery (re-run the lost tasks, roll back the stages that read their
/// shuffle output) is not safe in Ballista 55 under pull scheduling, the only mode that does
/// not leak task slots (see `kiln_engine::cluster::TASK_SCHEDULING`): the scheduler cannot
/// cancel the tasks of a rolled-back stage attempt on the surviving executors, and those
/// stale tasks write shuffle files under the same names as the new attempt's tasks. We saw it
/// commit shards with wrong aggregates. A fresh job has fresh shuffle paths.
async fn cancel_jobs_on_executor_loss(
    mut events: ballista_scheduler::cluster::ClusterStateEventStream,
    scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
) {
    use ballista_scheduler::cluster::ClusterStateEvent;
    use futures::StreamExt;
    while let Some(event) = events.next().await {
        let ClusterStateEvent::RemovedExecutor { executor_id } = event else {
            continue;
        };
        let running: Vec<_> = scheduler
            .state
            .task_manager
            .get_running_job_cache()
            .keys()
            .cloned()
            .collect();
        for job_id in running {
            tracing::warn!(
                "executor {executor_id} left the cluster: cancelling running job {job_id}; \
                 the Kiln client resubmits it on the remaining executors"
            );
            if let Err(e) = scheduler.cancel_job(job_id.clone()).await {
                tracing::error!("cancelling job {job_id} after losing {executor_id}: {e}");
            }
        }
    }
}

/// Answers every HTTP request with the cluster status as JSON.
async fn serve_status(
    listener: tokio::net::TcpListener,
    scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    bind: SocketAddr,
) -> anyhow::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let scheduler = scheduler.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 << 10 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let (code, body) = match status(&scheduler, bind).await {
                Ok(s) => ("200 OK", serde_json::to_string(&s).unwrap_or_default()),
                Err(e) => (
                    "500 Internal Server Error",
                    serde_json::json!({ "error": e.to_string() }).to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

async fn status(
    scheduler: &SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    bind: SocketAddr,
) -> anyhow::Result<ClusterStatus> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let mut executors = Vec::new();
    for (meta, heartbeat, _) in scheduler
        .state
        .executor_manager
        .get_executors_state()
        .await?
    {
        let last = heartbeat.map(|d| d.as_secs());
        executors.push(ExecutorStatus {
            id: meta.id,
            host: meta.host,
            port: meta.port,
            slots: meta.specification.vcores,
            last_heartbeat_unix: last,
            seconds_since_heartbeat: last.map(|t| now.saturating_sub(t)),
        });
    }
    executors.sort_by(|a, b| a.id.cmp(&b.id));
    // Running jobs live in the active cache; the job state lists queued and finished ones.
    let mut overviews = Vec::new();
    for cached in scheduler
        .state
        .task_manager
        .get_running_job_cache()
        .values()
    {
        let graph = cached.execution_graph.read().await;
        overviews.push(JobOverview::from(&*graph));
    }
    for job in scheduler.state.task_manager.get_running_jobs().await? {
        if !overviews.iter().any(|o| o.job_id == job.job_id) {
            overviews.push(job);
        }
    }
    let mut jobs = Vec::new();
    for job in overviews {
        let status = match &job.status.status {
            Some(job_status::Status::Queued(_)) => "queued",
            Some(job_status::Status::Running(_)) => "running",
            Some(job_status::Status::Failed(_)) => "failed",
            Some(job_status::Status::Successful(_)) => "successful",
            None => "unknown",
        };
        jobs.push(JobProgress {
            id: job.job_id.to_string(),
            name: job.job_name,
            status: status.to_string(),
            stages_completed: job.completed_stages,
            stages_total: job.num_stages,
            started_at_ms: job.start_time,
        });
    }
    jobs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ClusterStatus {
        scheduler: bind.to_string(),
        ballista_version: ballista_core::BALLISTA_VERSION.to_string(),
        executors,
        jobs,
    })
}
