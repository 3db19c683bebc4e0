//! Kiln on Ballista: the pieces every process of a cluster shares.
//!
//! - the client ([`client_context`]): a Ballista session whose plans carry Kiln's nodes
//!   through [`KilnLogicalCodec`] / [`KilnPhysicalCodec`];
//! - the scheduler ([`scheduler_session_state`]): plans Kiln's [`crate::write::ShardWriteNode`]
//!   with [`KilnQueryPlanner`] and lists input files with [`KilnObjectStoreRegistry`];
//! - executors ([`executor_runtime_producer`], [`executor_function_registry`]): decode and run
//!   [`crate::sink::ShardSinkExec`], reading and writing object stores with their own
//!   credentials.
//!
//! Session settings sent to the cluster are DataFusion/Ballista options only; object store
//! credentials are never set there (each process reads its own `AWS_*` environment).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballista::extension::SessionContextExt;
use ballista_core::extension::{
    SessionConfigExt, ballista_aggregate_functions, ballista_scalar_functions,
    ballista_window_functions,
};
use ballista_core::registry::BallistaFunctionRegistry;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::codec::{KilnLogicalCodec, KilnPhysicalCodec};
use crate::sink::KilnShardUdf;
use crate::stores::KilnObjectStoreRegistry;
use crate::write::KilnQueryPlanner;

/// Ballista's default scheduler port.
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Attempts of one cluster job: `kiln scheduler` cancels every running job when an executor
/// leaves the cluster, and the client resubmits it (with a fresh run id) up to this many times
/// in all.
pub const CLUSTER_JOB_ATTEMPTS: usize = 3;

/// How a cluster job failed, read from the error Ballista's client returns.
///
/// Ballista 55 has no typed cancellation on the wire: the scheduler marks a cancelled job
/// `FailedJob { error: "Cancelled" }` and the client (`DistributedQueryExec`) turns any failed
/// job into `DataFusionError::Execution("Job <id> failed: <error>")`. This is the one place
/// that reads it: only that exact variant and shape, with the reason equal to the scheduler's
/// constant, counts as a cancellation; a data error whose text merely mentions "Cancelled"
/// does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterJobFailure {
    /// The scheduler cancelled the job (Kiln's scheduler does when an executor is lost).
    Cancelled {
        /// Ballista's job id.
        job_id: String,
    },
    /// The job failed for another reason (a task error, a lost stage, ...).
    Failed {
        /// Ballista's job id.
        job_id: String,
        /// The scheduler's reason.
        reason: String,
    },
}

/// The reason Ballista's scheduler gives a job it cancelled (`query_stage_scheduler.rs`).
const BALLISTA_CANCELLED_REASON: &str = "Cancelled";

impl ClusterJobFailure {
    /// The failed-job report at the root of `e`, if it is one.
    pub fn from_error(e: &datafusion::error::DataFusionError) -> Option<Self> {
        let datafusion::error::DataFusionError::Execution(message) = e.find_root() else {
            return None;
        };
        let (job_id, reason) = message.strip_prefix("Job ")?.split_once(" failed: ")?;
        if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let job_id = job_id.to_string();
        Some(if reason == BALLISTA_CANCELLED_REASON {
            ClusterJobFailure::Cancelled { job_id }
        } else {
            ClusterJobFailure::Failed {
                job_id,
                reason: reason.to_string(),
            }
        })
    }
}

/// How tasks reach executors, on the scheduler and every executor alike: executors pull work
/// and report their free slots on every poll (the poll is also their heartbeat).
///
/// Not Ballista's default push mode: there the scheduler counts each executor's free slots
/// itself, and when a lost executor makes it roll a running stage back, the slots held by
/// that stage's tasks on the surviving executors are never given back (Ballista 55 looks the
/// refund up in the rolled-back stage, which no longer has task records). The survivors then
/// sit idle and the job never finishes. In pull mode the executor's own count is the truth.
pub const TASK_SCHEDULING: ballista_core::config::TaskSchedulingPolicy =
    ballista_core::config::TaskSchedulingPolicy::PullStaged;

/// A cluster URL that is not `df://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterUrlError {
    /// Another scheme than `df://`.
    #[error("cluster `{0}`: expected df://HOST:PORT (the scheduler's address)")]
    Scheme(String),
    /// A port that is not a number in 0..=65535.
    #[error("cluster `{url}`: bad port `{port}`")]
    Port {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
    },
    /// No host.
    #[error("cluster `{0}`: missing host (df://HOST:PORT)")]
    MissingHost(String),
}

/// `df://host:port` (or `host:port`) -> `(host, port)`; the port defaults to 50050.
pub fn parse_cluster_url(url: &str) -> Result<(String, u16), ClusterUrlError> {
    let rest = url
        .strip_prefix("df://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if rest.contains("://") {
        return Err(ClusterUrlError::Scheme(url.to_string()));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| ClusterUrlError::Port {
                url: url.to_string(),
                port: p.to_string(),
            })?,
        ),
        None => (rest, DEFAULT_SCHEDULER_PORT),
    };
    if host.is_empty() {
        return Err(ClusterUrlError::MissingHost(url.to_string()));
    }
    Ok((host.to_string(), port))
}

/// Scalar functions of every Kiln Ballista process: Ballista's set plus `kiln_shard`.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    let mut f = ballista_scalar_functions();
    f.push(Arc::new(KilnShardUdf::udf()));
    f
}

/// A runtime whose object stores come from this process's environment, spilling to
/// `temp_dir` when given.
pub fn runtime_env(temp_dir: Option<&Path>) -> DfResult<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(KilnObjectStoreRegistry::new()));
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// The scheduler's session for a job's settings: Ballista's rules and functions, Kiln's
/// planner (the sharded write) and `kiln_shard`, object stores from the environment.
pub fn scheduler_session_state(config: SessionConfig) -> DfResult<SessionState> {
    Ok(SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime_env(None)?)
        .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
        .with_scalar_functions(scalar_functions())
        .with_aggregate_functions(ballista_aggregate_functions())
        .with_window_functions(ballista_window_functions())
        .with_query_planner(Arc::new(KilnQueryPlanner))
        .build())
}

/// The functions executors resolve plans against: Ballista's defaults plus `kiln_shard`.
pub fn executor_function_registry() -> BallistaFunctionRegistry {
    let mut registry = BallistaFunctionRegistry::default();
    let udf = Arc::new(KilnShardUdf::udf());
    registry
        .scalar_functions
        .insert(udf.name().to_string(), udf);
    registry
}

/// Executor task runtimes: object stores from the executor's environment, spill files in
/// its work directory (Ballista adds the memory pool).
pub fn executor_runtime_producer(work_dir: PathBuf) -> ballista_core::RuntimeProducer {
    Arc::new(move |_config: &SessionConfig| runtime_env(Some(&work_dir)))
}

/// A Ballista client session on the scheduler at `url` (`df://host:port`) with Kiln's
/// codecs and functions. `config` carries DataFusion settings only.
pub async fn client_context(
    url: &str,
    config: SessionConfig,
    job_name: &str,
) -> DfResult<SessionContext> {
    let (host, port) =
        parse_cluster_url(url).map_err(|e| DataFusionError::Configuration(e.to_string()))?;
    let config = config
        .upgrade_for_ballista()
        .with_ballista_logical_extension_codec(Arc::new(KilnLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(KilnPhysicalCodec::default()))
        // The static planner: stages exactly as planned (the write's shuffle included).
        .with_ballista_adaptive_query_planner(false)
        .with_ballista_job_name(job_name);
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime_env(None)?)
        .build();
    let ctx = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state).await?;
    ctx.register_udf(KilnShardUdf::udf());
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_schedulers_cancellation_counts_as_cancelled() {
        use datafusion::error::DataFusionError as E;
        let cancelled = E::Execution("Job aB3dE9x failed: Cancelled".into());
        assert_eq!(
            ClusterJobFailure::from_error(&cancelled),
            Some(ClusterJobFailure::Cancelled {
                job_id: "aB3dE9x".into()
            })
        );
        // Wrapped in context, as the write path sees it.
        let wrapped = E::Context("writing shards".into(), Box::new(cancelled));
        assert!(matches!(
            ClusterJobFailure::from_error(&wrapped),
            Some(ClusterJobFailure::Cancelled { .. })
        ));
        // A task error whose text mentions "failed: Cancelled" is not a cancellation.
        for not in [
            E::Execution(
                "Job aB3dE9x failed: Error in task: value 'order failed: Cancelled' is not int64"
                    .into(),
            ),
            E::Execution("column note: Job x failed: Cancelled".into()),
            E::Plan("Job aB3dE9x failed: Cancelled".into()),
        ] {
            assert!(
                !matches!(
                    ClusterJobFailure::from_error(&not),
                    Some(ClusterJobFailure::Cancelled { .. })
                ),
                "{not}"
            );
        }
    }

    #[test]
    fn parses_cluster_urls() {
        assert_eq!(
            parse_cluster_url("df://127.0.0.1:50123").unwrap(),
            ("127.0.0.1".to_string(), 50123)
        );
        assert_eq!(
            parse_cluster_url("sched.kiln.svc").unwrap(),
            ("sched.kiln.svc".to_string(), DEFAULT_SCHEDULER_PORT)
        );
        let err = |u: &str| parse_cluster_url(u).unwrap_err().to_string();
        assert!(err("http://x:1").contains("df://"));
        assert!(err("df://x:port").contains("bad port"));
        assert!(err("df://:1").contains("missing host"));
    }
}
