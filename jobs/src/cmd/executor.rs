//! `kiln executor`: a Ballista executor that runs Kiln's plan nodes — the sharded
//! TFRecord/Parquet writer included — with object stores built from its own environment;
//! with `--metrics-bind`, Prometheus' `GET /metrics` (tasks by outcome, task durations,
//! tasks running, slots, process start time, CPU and memory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use ballista_core::JobId;
use ballista_core::serde::protobuf::ShuffleWritePartition;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::prelude::SessionConfig;
use kiln_engine::codec::{KilnLogicalCodec, KilnPhysicalCodec};

use crate::metrics::{DurationHistogram, Exposition};

/// Arguments of `kiln executor`.
#[derive(clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler's gRPC address (`kiln scheduler --bind`).
    #[arg(long, value_name = "HOST:PORT")]
    pub scheduler: String,
    /// Address of this executor's Arrow Flight service, which serves its shuffle output.
    #[arg(long, default_value = "0.0.0.0:50052", value_name = "HOST:PORT")]
    pub bind: SocketAddr,
    /// Host name the scheduler and other executors use to reach this executor
    /// [default: the --bind host, or this machine's host name when binding 0.0.0.0].
    #[arg(long)]
    pub external_host: Option<String>,
    /// Directory for shuffle files and spills [default: a fresh temporary directory].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Task slots: partitions this executor runs at once [default: CPU cores].
    #[arg(long)]
    pub slots: Option<usize>,
    /// Memory pool shared by the running tasks, e.g. `8GiB` (tasks spill beyond it)
    /// [default: a fraction of the host's or cgroup's memory]. `0` means unbounded.
    #[arg(long, value_name = "BYTES")]
    pub memory_pool: Option<String>,
    /// Executor id [default: a fresh unique id].
    #[arg(long)]
    pub id: Option<String>,
    /// Serve Prometheus metrics at `http://HOST:PORT/metrics` (port 0 picks a free one; the
    /// address is logged): tasks succeeded and failed, task durations, tasks running, slots,
    /// process start time, CPU and memory. Counting tasks wraps Ballista's default execution
    /// engine, whose pool of connections to other executors is private to it: with this flag
    /// each shuffle fetch opens its own connection (Ballista's `client_ttl = 0` behaviour).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_bind: Option<String>,
}

pub fn run(args: ExecutorArgs) -> anyhow::Result<()> {
    let (scheduler_host, scheduler_port) =
        kiln_engine::cluster::parse_cluster_url(&args.scheduler).context("--scheduler")?;
    let memory_pool_size = match &args.memory_pool {
        Some(text) => Some(
            kiln_engine::job::parse_bytes(text)
                .with_context(|| format!("--memory-pool: cannot parse `{text}` (e.g. 8GiB)"))?
                as u64,
        ),
        None => None,
    };
    let work_dir = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating work directory {}", dir.display()))?;
            std::path::absolute(dir)?
        }
        None => {
            let dir = std::env::temp_dir().join(format!("kiln-executor-{}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating work directory {}", dir.display()))?;
            dir
        }
    };
    let work_dir_text = work_dir.display().to_string();
    let mut config = ExecutorProcessConfig {
        bind_host: args.bind.ip().to_string(),
        external_host: Some(super::scheduler::advertised_host(
            &args.bind,
            args.external_host.as_deref(),
        )),
        port: args.bind.port(),
        scheduler_host,
        scheduler_port,
        work_dir: Some(work_dir_text.clone()),
        vcores: args.slots.unwrap_or(0),
        memory_pool_size,
        // Executors pull work: see `kiln_engine::cluster::TASK_SCHEDULING`.
        task_scheduling_policy: kiln_engine::cluster::TASK_SCHEDULING,
        override_logical_codec: Some(Arc::new(KilnLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(KilnPhysicalCodec::default())),
        override_function_registry: Some(Arc::new(
            kiln_engine::cluster::executor_function_registry(),
        )),
        override_runtime_producer: Some(kiln_engine::cluster::executor_runtime_producer(
            work_dir.clone(),
        )),
        ..ExecutorProcessConfig::default()
    };
    if let Some(id) = args.id {
        config.executor_id = id;
    }
    if let Some(bind) = &args.metrics_bind {
        let tasks = Arc::new(TaskMetrics::default());
        config.override_execution_engine = Some(Arc::new(CountingEngine {
            inner: DefaultExecutionEngine::new(),
            tasks: Arc::clone(&tasks),
        }));
        let slots = args.slots.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let addr = serve_metrics(bind, tasks, slots, &config.executor_id)?;
        tracing::info!("kiln executor: metrics at http://{addr}/metrics");
    }
    tracing::info!(
        "kiln executor {} on {}, scheduler {}:{}, work dir {work_dir_text}",
        config.executor_id,
        args.bind,
        config.scheduler_host,
        config.scheduler_port
    );
    let runtime = super::runtime()?;
    runtime
        .block_on(start_executor_process(Arc::new(config)))
        .context("executor")?;
    Ok(())
}

/// Tasks this executor ran, counted by [`CountingEngine`].
#[derive(Default)]
struct TaskMetrics {
    succeeded: AtomicU64,
    failed: AtomicU64,
    running: AtomicU64,
    durations: DurationHistogram,
}

/// Serves `GET /metrics` on `bind`.
fn serve_metrics(
    bind: &str,
    tasks: Arc<TaskMetrics>,
    slots: usize,
    id: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    crate::metrics::process_start();
    let id = id.to_string();
    crate::metrics::serve_metrics(bind, move || {
        let mut m = Exposition::new();
        let l = [("executor", id.as_str())];
        crate::metrics::add_process(&mut m, "executor");
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        m.counter(
            "kiln_executor_tasks_succeeded_total",
            "Tasks (one partition of a query stage) this executor ran to success.",
            &l,
            load(&tasks.succeeded),
        );
        m.counter(
            "kiln_executor_tasks_failed_total",
            "Tasks this executor ran that failed.",
            &l,
            load(&tasks.failed),
        );
        m.gauge(
            "kiln_executor_tasks_running",
            "Tasks running now.",
            &l,
            load(&tasks.running),
        );
        m.gauge(
            "kiln_executor_slots",
            "Tasks this executor runs at once (--slots).",
            &l,
            slots as f64,
        );
        tasks.durations.add_to(
            &mut m,
            "kiln_executor_task_duration_seconds",
            "Wall time of a task, successful or not.",
            &l,
        );
        m
    })
}

/// Ballista's default execution engine, with every task's outcome and duration counted.
struct CountingEngine {
    inner: DefaultExecutionEngine,
    tasks: Arc<TaskMetrics>,
}

impl ExecutionEngine for CountingEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn QueryStageExecutor>> {
        let inner = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(CountedStage {
            inner,
            tasks: Arc::clone(&self.tasks),
        }))
    }
}

/// A query stage whose executions are counted in [`TaskMetrics`].
struct CountedStage {
    inner: Arc<dyn QueryStageExecutor>,
    tasks: Arc<TaskMetrics>,
}

impl std::fmt::Debug for CountedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.inner, f)
    }
}

impl std::fmt::Display for CountedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

/// Decrements `running` when the task ends, however it ends (an aborted task is dropped).
struct Running<'a>(&'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for CountedStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<Vec<ShuffleWritePartition>> {
        self.tasks.running.fetch_add(1, Ordering::Relaxed);
        let _running = Running(&self.tasks.running);
        let started = std::time::Instant::now();
        let result = self.inner.execute_query_stage(task_id, context).await;
        self.tasks
            .durations
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() {
            &self.tasks.succeeded
        } else {
            &self.tasks.failed
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.inner.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(
        &self,
    ) -> Vec<ballista_core::serde::protobuf::RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(
        &self,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<ballista_core::serde::protobuf::TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}
