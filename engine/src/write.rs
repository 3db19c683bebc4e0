//! The sharded write as a logical plan node, and the planner that turns it into
//! `RepartitionExec(Hash(shard)) -> SortExec(shard, key) -> ShardSinkExec`.
//!
//! The same node and planner run locally and on a Ballista cluster: the client builds
//! [`ShardWriteNode`] over the statement, Kiln's logical codec ([`crate::codec`]) carries it
//! to the scheduler, and the scheduler's session (built by
//! [`crate::cluster::scheduler_session_state`]) plans it with [`KilnQueryPlanner`]. There the
//! hash repartition becomes a shuffle: every task of the final stage sorts and writes the
//! shards of its partition.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore, col, lit,
};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::DataFrame;

use crate::sink::{
    KilnShardUdf, SHARD_COLUMN, ShardSinkExec, SinkSpec, result_schema, shard_key_ordering,
};

/// Writes its input (which ends with [`SHARD_COLUMN`]) as the sharded dataset of `spec`;
/// outputs one `shard_file` row per written file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardWriteNode {
    input: LogicalPlan,
    spec: SinkSpec,
    schema: DFSchemaRef,
}

impl ShardWriteNode {
    /// A write of `input` (must end with [`SHARD_COLUMN`]).
    pub fn try_new(input: LogicalPlan, spec: SinkSpec) -> DfResult<Self> {
        let fields = input.schema().fields();
        if fields.last().map(|f| f.name().as_str()) != Some(SHARD_COLUMN) {
            return Err(DataFusionError::Plan(format!(
                "output `{}`: the write input must end with {SHARD_COLUMN}",
                spec.statement
            )));
        }
        input.schema().field_with_unqualified_name(&spec.key)?;
        let schema = Arc::new(DFSchema::try_from(result_schema().as_ref().clone())?);
        Ok(Self {
            input,
            spec,
            schema,
        })
    }

    /// The write of `df` (the statement) as `spec`: adds `kiln_shard(key, N)` and wraps it.
    pub fn plan(df: DataFrame, spec: SinkSpec) -> DfResult<LogicalPlan> {
        let df = df.with_column(
            SHARD_COLUMN,
            KilnShardUdf::udf().call(vec![col(format!("\"{}\"", spec.key)), lit(spec.shards)]),
        )?;
        let node = Self::try_new(df.into_unoptimized_plan(), spec)?;
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }))
    }

    /// What is written.
    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    /// The data written (with the shard column).
    pub fn input(&self) -> &LogicalPlan {
        &self.input
    }
}

impl PartialOrd for ShardWriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.spec.partial_cmp(&other.spec) {
            Some(std::cmp::Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for ShardWriteNode {
    fn name(&self) -> &str {
        "ShardWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardWrite: location={}, run={}, key={}, shards={}, formats={:?}",
            self.spec.location,
            self.spec.run_id,
            self.spec.key,
            self.spec.shards,
            self.spec.formats
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("ShardWrite takes one input".into()))?;
        Self::try_new(input, self.spec.clone())
    }

    /// Every input column is written.
    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        Some(vec![(0..self.input.schema().fields().len()).collect()])
    }
}

/// Plans [`ShardWriteNode`] as `RepartitionExec(Hash(shard), P) -> SortExec(shard, key)
/// (per partition) -> ShardSinkExec`, with `P` the session's target partitions.
#[derive(Debug, Default)]
pub struct ShardWritePlanner;

#[async_trait]
impl ExtensionPlanner for ShardWritePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn datafusion::catalog::Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(write) = node.as_any().downcast_ref::<ShardWriteNode>() else {
            return Ok(None);
        };
        let input = Arc::clone(&physical_inputs[0]);
        let partitions = session.config().target_partitions().max(1);
        Ok(Some(write_plan(input, write.spec.clone(), partitions)?))
    }
}

/// The physical write of `input` (ending with [`SHARD_COLUMN`]) into `partitions` writers.
pub fn write_plan(
    input: Arc<dyn ExecutionPlan>,
    spec: SinkSpec,
    partitions: usize,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = input.schema();
    let shard = datafusion::physical_expr::expressions::col(SHARD_COLUMN, &schema)?;
    let repartitioned: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        input,
        Partitioning::Hash(vec![shard], partitions),
    )?);
    let ordering = shard_key_ordering(&schema, &spec.key)?;
    let sorted: Arc<dyn ExecutionPlan> =
        Arc::new(SortExec::new(ordering, repartitioned).with_preserve_partitioning(true));
    Ok(Arc::new(ShardSinkExec::new(sorted, spec)?))
}

/// DataFusion's planner plus Kiln's extension planner (the sharded write); file scans are
/// then wrapped so their transient failures are retried ([`crate::retry`]).
#[derive(Debug, Default)]
pub struct KilnQueryPlanner;

#[async_trait]
impl QueryPlanner for KilnQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let planner =
            DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ShardWritePlanner)]);
        let plan = planner.create_physical_plan(logical_plan, session).await?;
        crate::retry::wrap_sources(plan)
    }
}
