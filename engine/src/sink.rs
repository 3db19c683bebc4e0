//! Sharded dataset writes as a DataFusion plan: one writer per partition, then a commit.
//!
//! ```text
//! ShardSinkExec                      P partitions; each writes the shards it receives and
//!   SortExec [__kiln_shard, key]     returns one row per shard file it wrote
//!     RepartitionExec Hash(__kiln_shard, P)
//!       Projection +__kiln_shard = kiln_shard(key, N)
//!         <the statement's plan>
//! ```
//!
//! The write is the logical node [`crate::write::ShardWriteNode`]; Kiln's extension planner
//! ([`crate::write::KilnQueryPlanner`]) turns it into the plan above, locally and on a
//! Ballista scheduler alike (where the repartition becomes a shuffle between stages and each
//! shard-writer task runs on an executor). [`ShardSinkExec`] carries only a serialisable
//! [`SinkSpec`] (URL, run id, options): executors resolve the object store themselves.
//!
//! Row -> shard is Kiln's own hash ([`kiln_connectors::shard`]), so it is the same in every
//! engine. Rows arrive in each partition grouped by shard and ordered by key; the writer
//! opens shard `s` when its first row arrives and finishes it when the shard id changes.
//! Shards that receive no rows are written empty by the commit step
//! ([`kiln_connectors::commit_dataset`]), which runs once, on the client, after every
//! partition has succeeded, and writes `_manifest.json` last.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
    PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;
use kiln_connectors::{Compression, Location, ShardFile, ShardFormat, ShardOptions, ShardWriter};
use serde::{Deserialize, Serialize};

use crate::ties::TieBreaker;

/// Name of the shard-id column added before repartitioning.
pub const SHARD_COLUMN: &str = "__kiln_shard";

/// `kiln_shard(key, n)`: Kiln's shard of each key, as UInt32 in `0..n`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KilnShardUdf {
    signature: Signature,
}

impl KilnShardUdf {
    /// The UDF, ready to register or call.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(2, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for KilnShardUdf {
    fn name(&self) -> &str {
        "kiln_shard"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = match &args.args[1] {
            ColumnarValue::Scalar(s) => s
                .to_string()
                .parse::<u32>()
                .map_err(|_| DataFusionError::Plan(format!("kiln_shard: bad shard count {s}")))?,
            ColumnarValue::Array(_) => {
                return Err(DataFusionError::Plan(
                    "kiln_shard: the shard count must be a constant".into(),
                ));
            }
        };
        let keys = args.args[0].to_array(args.number_rows)?;
        let ids: UInt32Array = kiln_connectors::shard::shard_ids(keys.as_ref(), n)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        Ok(ColumnarValue::Array(Arc::new(ids)))
    }
}

/// Everything a shard writer needs, in a form that travels inside plans: the dataset URL
/// (never credentials: every process resolves its object store from its own environment),
/// the run id and the shard options of one output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub struct SinkSpec {
    /// Statement written (for messages).
    pub statement: String,
    /// Dataset location URL.
    pub location: String,
    /// Run id (`run-<id>/` prefix of every shard).
    pub run_id: String,
    /// Key column: shard assignment and order inside a shard.
    pub key: String,
    /// Number of shards.
    pub shards: u32,
    /// `tfrecord` and/or `parquet`.
    pub formats: Vec<ShardFormat>,
    /// TFRecord compression.
    pub tfrecord_compression: Compression,
    /// Its DEFLATE level.
    #[serde(default = "crate::spec::default_tfrecord_compression_level")]
    pub tfrecord_compression_level: u32,
    /// Parquet compression.
    pub parquet_compression: crate::spec::ParquetCodec,
    /// Column statistics in the write pass (`_stats.json`).
    #[serde(default = "crate::spec::default_true")]
    pub statistics: bool,
}

impl SinkSpec {
    /// The connectors' shard options.
    pub fn options(&self) -> DfResult<ShardOptions> {
        Ok(ShardOptions {
            num_shards: self.shards,
            formats: self.formats.clone(),
            tfrecord_compression: self.tfrecord_compression,
            tfrecord_compression_level: self.tfrecord_compression_level,
            parquet_compression: self.parquet_compression.compression(),
            key_column: Some(self.key.clone()),
            statistics: self.statistics,
            ..ShardOptions::default()
        })
    }

    /// The dataset location, with the object store of this process's environment.
    pub fn resolve_location(&self) -> DfResult<Location> {
        kiln_connectors::store::resolve(&self.location).map_err(|e| {
            DataFusionError::Plan(format!(
                "output `{}`: location {}: {e}",
                self.statement, self.location
            ))
        })
    }
}

/// Writes each input partition's rows into shard files; emits one row per file written.
#[derive(Debug)]
pub struct ShardSinkExec {
    input: Arc<dyn ExecutionPlan>,
    spec: SinkSpec,
    location: Location,
    /// Schema of the written data (the input without the shard column).
    data_schema: SchemaRef,
    options: ShardOptions,
    /// Rows grouped by shard and ordered by key inside each partition.
    ordering: LexOrdering,
    properties: Arc<PlanProperties>,
    /// Live counters of the write ([`SINK_ROWS_WRITTEN`], [`SINK_SHARDS_WRITTEN`],
    /// [`SINK_BYTES_WRITTEN`]), read while it runs for progress.
    metrics: ExecutionPlanMetricsSet,
}

/// [`ShardSinkExec`]'s metric: rows handed to the shard writers so far.
pub const SINK_ROWS_WRITTEN: &str = "rows_written";
/// [`ShardSinkExec`]'s metric: shards finished (every format's file written).
pub const SINK_SHARDS_WRITTEN: &str = "shards_written";
/// [`ShardSinkExec`]'s metric: bytes of the finished shard files.
pub const SINK_BYTES_WRITTEN: &str = "bytes_written";

impl ShardSinkExec {
    /// A sink writing `input` (which carries [`SHARD_COLUMN`] as its last column).
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: SinkSpec) -> DfResult<Self> {
        let location = spec.resolve_location()?;
        let options = spec.options()?;
        let in_schema = input.schema();
        let shard_idx = in_schema.index_of(SHARD_COLUMN)?;
        if shard_idx + 1 != in_schema.fields().len() {
            return Err(DataFusionError::Plan(format!(
                "{SHARD_COLUMN} must be the last input column"
            )));
        }
        let data_schema = Arc::new(Schema::new_with_metadata(
            in_schema.fields()[..shard_idx].to_vec(),
            in_schema.metadata().clone(),
        ));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(result_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        let ordering = shard_key_ordering(&in_schema, &spec.key)?;
        Ok(Self {
            input,
            spec,
            location,
            data_schema,
            options,
            ordering,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Schema of the data as written.
    pub fn data_schema(&self) -> &SchemaRef {
        &self.data_schema
    }

    /// What this sink writes.
    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }
}

/// `[__kiln_shard ASC, key ASC]` (nulls first) over `schema`; rows with equal keys are then
/// ordered by all columns by the writer (see [`crate::ties`]).
pub fn shard_key_ordering(schema: &SchemaRef, key: &str) -> DfResult<LexOrdering> {
    let sort_key = |name: &str| -> DfResult<PhysicalSortExpr> {
        let expr = datafusion::physical_expr::expressions::col(name, schema)?;
        Ok(PhysicalSortExpr::new_default(expr).asc().nulls_first())
    };
    LexOrdering::new(vec![sort_key(SHARD_COLUMN)?, sort_key(key)?])
        .ok_or_else(|| DataFusionError::Internal("empty shard ordering".into()))
}

/// One column, `shard_file`: a JSON [`ShardFile`] per written file.
pub fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "shard_file",
        DataType::Utf8,
        false,
    )]))
}

impl DisplayAs for ShardSinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardSinkExec: location={}, run={}, shards={}, formats={:?}",
            self.location.url, self.spec.run_id, self.options.num_shards, self.options.formats
        )
    }
}

impl ExecutionPlan for ShardSinkExec {
    fn name(&self) -> &str {
        "ShardSinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// Every row of a shard in one partition: the optimiser keeps (or re-adds) the hash
    /// repartition on the shard column, which Ballista turns into a shuffle.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let shard = datafusion::physical_expr::expressions::col(SHARD_COLUMN, &self.input.schema())
            .expect("the shard column was checked in new()");
        vec![Distribution::KeyPartitioned(vec![shard])]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.ordering.clone()))]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            Arc::clone(&children[0]),
            self.spec.clone(),
        )?))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        // The writers' buffers count against the session's memory pool, like the sort's.
        let reservation = MemoryConsumer::new(format!(
            "ShardWriter[{}, partition {partition}]",
            self.spec.statement
        ))
        .register(context.memory_pool());
        let writer = PartitionWriter {
            reservation,
            location: self.location.clone(),
            run_id: self.spec.run_id.clone(),
            key: self.spec.key.clone(),
            data_schema: Arc::clone(&self.data_schema),
            options: self.options.clone(),
            counters: SinkCounters {
                rows: MetricBuilder::new(&self.metrics).counter(SINK_ROWS_WRITTEN, partition),
                shards: MetricBuilder::new(&self.metrics).counter(SINK_SHARDS_WRITTEN, partition),
                bytes: MetricBuilder::new(&self.metrics).counter(SINK_BYTES_WRITTEN, partition),
            },
        };
        let stream = futures::stream::once(writer.write_all(input));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            result_schema(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's share of [`ShardSinkExec`]'s metrics.
struct SinkCounters {
    rows: Count,
    shards: Count,
    bytes: Count,
}

impl SinkCounters {
    /// Counts a finished shard's files.
    fn finished(&self, files: &[ShardFile]) {
        self.shards.add(1);
        self.bytes
            .add(files.iter().map(|f| f.bytes as usize).sum::<usize>());
    }
}

struct PartitionWriter {
    /// Memory of the open shard writer's buffers, resized after every write.
    reservation: MemoryReservation,
    location: Location,
    run_id: String,
    /// The key column (rows arrive ordered by it within each shard).
    key: String,
    data_schema: SchemaRef,
    options: ShardOptions,
    counters: SinkCounters,
}

impl PartitionWriter {
    /// Streams one partition (grouped by shard, ordered by key) into shard files. On failure
    /// the open shard's uploads are aborted before the error is returned.
    async fn write_all(mut self, input: SendableRecordBatchStream) -> DfResult<RecordBatch> {
        let mut current: Option<(u32, ShardWriter)> = None;
        let files = match self.write_shards(input, &mut current).await {
            Ok(files) => files,
            Err(e) => {
                if let Some((_, w)) = current.take()
                    && let Err(abort) = w.abort().await
                {
                    tracing::warn!("after a failed shard write: {abort}");
                }
                return Err(e);
            }
        };
        let json: Vec<String> = files
            .iter()
            .map(|f| serde_json::to_string(f).expect("ShardFile serialises"))
            .collect();
        Ok(RecordBatch::try_new(
            result_schema(),
            vec![Arc::new(StringArray::from(json)) as ArrayRef],
        )?)
    }

    async fn write_shards(
        &mut self,
        mut input: SendableRecordBatchStream,
        current: &mut Option<(u32, ShardWriter)>,
    ) -> DfResult<Vec<ShardFile>> {
        let mut files: Vec<ShardFile> = Vec::new();
        let shard_col = self.data_schema.fields().len();
        // Rows arrive ordered by (shard, key); rows with equal keys are put in one order.
        let mut ties = TieBreaker::new(self.data_schema.index_of(&self.key)?);
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let shards = batch
                .column(shard_col)
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| DataFusionError::Internal(format!("{SHARD_COLUMN} is not UInt32")))?
                .clone();
            let data = RecordBatch::try_new(
                Arc::clone(&self.data_schema),
                batch.columns()[..shard_col].to_vec(),
            )?;
            // Split the batch into runs of equal shard id (rows are grouped by shard).
            let mut start = 0;
            while start < data.num_rows() {
                let shard = shards.value(start);
                let mut end = start + 1;
                while end < data.num_rows() && shards.value(end) == shard {
                    end += 1;
                }
                if current.as_ref().map(|(s, _)| *s) != Some(shard) {
                    if let Some((_, mut w)) = current.take() {
                        if let Some(rest) = ties.finish()? {
                            w.write_batch(&rest).await.map_err(io_error)?;
                        }
                        let finished = w.finish().await.map_err(io_error)?;
                        self.counters.finished(&finished);
                        files.extend(finished);
                    }
                    let w = ShardWriter::new(
                        &self.location,
                        &self.run_id,
                        shard,
                        Arc::clone(&self.data_schema),
                        &self.options,
                    )
                    .map_err(io_error)?;
                    *current = Some((shard, w));
                }
                let (_, w) = current.as_mut().expect("writer just opened");
                for ready in ties.push(data.slice(start, end - start))? {
                    w.write_batch(&ready).await.map_err(io_error)?;
                }
                self.reservation.try_resize(w.buffered_bytes())?;
                self.counters.rows.add(end - start);
                start = end;
            }
        }
        if let Some((_, mut w)) = current.take() {
            if let Some(rest) = ties.finish()? {
                w.write_batch(&rest).await.map_err(io_error)?;
            }
            let finished = w.finish().await.map_err(io_error)?;
            self.counters.finished(&finished);
            files.extend(finished);
        }
        Ok(files)
    }
}

/// Shard write failures: store and I/O failures that may pass are I/O errors, so a distributed
/// scheduler retries the task; anything else (a value that cannot be encoded, a missing or
/// denied location, bad options) fails the job at once.
fn io_error(e: kiln_connectors::Error) -> DataFusionError {
    let transient = match &e {
        kiln_connectors::Error::Io { source, .. } => crate::retry::io_transient(source),
        kiln_connectors::Error::ObjectStore { source, .. } => {
            crate::retry::object_store_transient(source)
        }
        _ => false,
    };
    if transient {
        DataFusionError::IoError(std::io::Error::other(e.to_string()))
    } else {
        DataFusionError::External(Box::new(e))
    }
}

/// Parses the sink's result rows back into shard files.
pub fn shard_files_from_batches(batches: &[RecordBatch]) -> DfResult<Vec<ShardFile>> {
    let mut files = Vec::new();
    for b in batches {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("shard_file is not Utf8".into()))?;
        for i in 0..col.len() {
            files.push(
                serde_json::from_str(col.value(i))
                    .map_err(|e| DataFusionError::Internal(format!("bad shard_file row: {e}")))?,
            );
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray, UInt32Array};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::collect;

    use super::*;

    /// Issue 12.12: the shard writers' buffers are reserved in the session's memory pool, so
    /// a pool too small for them fails the write naming the writer instead of growing past
    /// the limit unseen.
    #[tokio::test]
    async fn shard_writer_buffers_count_against_the_memory_pool() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
            Field::new(SHARD_COLUMN, DataType::UInt32, false),
        ]));
        let rows = 50_000;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("row {i} {}", "x".repeat(60))),
                )),
                Arc::new(UInt32Array::from(vec![0; rows as usize])),
            ],
        )
        .unwrap();
        let write = |pool_bytes: usize| {
            let dir = tempfile::tempdir().unwrap();
            let batch = batch.clone();
            let schema = Arc::clone(&schema);
            async move {
                let spec = SinkSpec {
                    statement: "wide".into(),
                    location: format!("file://{}/out/", dir.path().display()),
                    run_id: "20261120T000000Z-test".into(),
                    key: "id".into(),
                    shards: 1,
                    formats: vec![ShardFormat::Parquet],
                    tfrecord_compression: Compression::None,
                    tfrecord_compression_level: 6,
                    parquet_compression: crate::spec::ParquetCodec::default(),
                    statistics: true,
                };
                let input = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
                let sink = Arc::new(ShardSinkExec::new(input, spec).unwrap());
                let runtime = RuntimeEnvBuilder::new()
                    .with_memory_pool(Arc::new(GreedyMemoryPool::new(pool_bytes)))
                    .build_arc()
                    .unwrap();
                let ctx = Arc::new(TaskContext::default().with_runtime(runtime));
                let r = collect(sink, ctx).await;
                drop(dir);
                r
            }
        };
        let e = write(256 << 10).await.unwrap_err().to_string();
        assert!(
            e.contains("Resources exhausted") && e.contains("ShardWriter[wide, partition 0]"),
            "{e}"
        );
        let files = shard_files_from_batches(&write(256 << 20).await.unwrap()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, rows as u64);
    }
}
