//! `kiln executor`: a Ballista executor that runs Kiln's plan nodes — the sharded
//! TFRecord/Parquet writer included — with object stores built from its own environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use kiln_engine::codec::{KilnLogicalCodec, KilnPhysicalCodec};

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
