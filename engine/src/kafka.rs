//! Kafka sources as DataFusion tables: one table partition per Kafka partition's offset range
//! (large ranges split), read directly from the brokers by whichever process runs the
//! partition (a local run, or a Ballista executor with its own `KILN_KAFKA_*` settings).
//!
//! The offsets are fixed when the job is planned — from the day window through ListOffsets by
//! timestamp, or from a manifest's lineage on `--replay` — and travel in the plan
//! ([`KafkaScanSpec`], no credentials), so every scan of the source in every statement reads
//! exactly the same records however far the topic has grown.
//!
//! Columns: the declared schema (value format `json`) or `_value` (binary, format `raw`),
//! then `_partition` (int32), `_offset` (int64), `_timestamp` (timestamp, UTC; the record's
//! create or log-append time) and `_key` (binary). A JSON value that does not fit the schema
//! fails the run naming topic, partition and offset, or (under `on_bad_rows = "reject"`) goes
//! to the rejects file with `file` = `kafka://HOSTS/TOPIC/PARTITION` and `line` = the offset.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::project_schema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use kiln_connectors::kafka::{KafkaAddress, KafkaClient, KafkaRecord, OffsetRange};
use serde::{Deserialize, Serialize};

use crate::spec::{BadRowPolicy, ValueFormat};
use crate::text::{BadRow, BadRowLedger, FileTally, decode_json_rows};

/// Offsets per table partition when a spec does not say (`kafka.split_records`).
pub const DEFAULT_SPLIT_RECORDS: i64 = 1_000_000;
/// Records per batch handed from the reading thread to DataFusion.
const READ_BATCH: usize = 8192;

/// The metadata columns every Kafka table ends with.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("_key", DataType::Binary, true),
    ]
}

/// What a run read from a Kafka source (in the manifest's lineage, under the source).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KafkaLineage {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// Topic.
    pub topic: String,
    /// Window start asked for (RFC 3339, UTC, inclusive).
    pub window_start: String,
    /// Window end asked for (RFC 3339, UTC, exclusive).
    pub window_end: String,
    /// Whether the ranges came from an earlier manifest (`--replay`) instead of a timestamp
    /// lookup.
    pub replayed: bool,
    /// The offsets read, one range per partition.
    pub ranges: Vec<OffsetRange>,
    /// Offsets in the ranges (records read, unless compacted or transaction markers).
    pub offsets: i64,
}

/// The offset ranges a manifest's lineage recorded, by Kafka source name (for `--replay`).
pub fn replay_ranges(lineage: &serde_json::Value) -> BTreeMap<String, Vec<OffsetRange>> {
    let inputs = lineage.get("inputs").and_then(|i| i.as_array());
    inputs
        .into_iter()
        .flatten()
        .filter_map(|source| {
            let name = source.get("name")?.as_str()?.to_string();
            let kafka: KafkaLineage = serde_json::from_value(source.get("kafka")?.clone()).ok()?;
            Some((name, kafka.ranges))
        })
        .collect()
}

/// What a Kafka scan reads: everything a process needs to read it, no credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KafkaScanSpec {
    /// Source name (errors, bad-row accounting).
    pub source: String,
    /// Brokers and topic.
    pub address: KafkaAddress,
    /// Non-secret librdkafka properties from the spec.
    pub properties: BTreeMap<String, String>,
    /// Bound on each broker request, seconds.
    pub timeout_secs: Option<f64>,
    /// How values are read.
    pub value_format: ValueFormat,
    /// Declared columns of the JSON values (`"name type"`), empty for `raw`.
    pub value_schema: Vec<String>,
    /// One table partition each, in order.
    pub splits: Vec<OffsetRange>,
    /// The bad-row policy of the job.
    pub on_bad_rows: BadRowPolicy,
    /// Read every split concurrently as ONE table partition (set when the table is decoded
    /// by a Ballista scheduler). Ballista 55 restricts a task to its own partitions only for
    /// its built-in file and shuffle scans; any other scan with several partitions would be
    /// read whole by every task of its stage.
    #[serde(default)]
    pub one_partition: bool,
}

impl KafkaScanSpec {
    /// The columns of the values (before the metadata columns).
    fn value_schema(&self) -> DfResult<SchemaRef> {
        match self.value_format {
            ValueFormat::Raw => Ok(Arc::new(Schema::new(vec![Field::new(
                "_value",
                DataType::Binary,
                true,
            )]))),
            ValueFormat::Json => crate::schema::parse_schema(&self.value_schema)
                .map(Arc::new)
                .map_err(|e| DataFusionError::Plan(format!("source `{}`: {e}", self.source))),
        }
    }

    /// Value columns then metadata columns.
    pub fn table_schema(&self) -> DfResult<SchemaRef> {
        let values = self.value_schema()?;
        let mut fields: Vec<Field> = values.fields().iter().map(|f| (**f).clone()).collect();
        for m in metadata_fields() {
            if values.index_of(m.name()).is_ok() {
                return Err(DataFusionError::Plan(format!(
                    "source `{}`: column `{}` is reserved for Kafka metadata",
                    self.source,
                    m.name()
                )));
            }
            fields.push(m);
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn client(&self) -> DfResult<KafkaClient> {
        KafkaClient::new(
            self.address.clone(),
            &self.properties,
            self.timeout_secs.map(Duration::from_secs_f64),
        )
        .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// A Kafka source as a table.
#[derive(Debug)]
pub struct KafkaTable {
    spec: KafkaScanSpec,
    schema: SchemaRef,
    ledger: Arc<BadRowLedger>,
}

impl KafkaTable {
    /// The table of `spec`, accounting bad rows in `ledger`.
    pub fn try_new(spec: KafkaScanSpec, ledger: Arc<BadRowLedger>) -> DfResult<Self> {
        let schema = spec.table_schema()?;
        Ok(Self {
            spec,
            schema,
            ledger,
        })
    }

    /// What the table reads.
    pub fn spec(&self) -> &KafkaScanSpec {
        &self.spec
    }
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(KafkaScanExec::try_new(
            self.spec.clone(),
            projection.cloned(),
            Arc::clone(&self.ledger),
        )?))
    }
}

/// Reads a [`KafkaScanSpec`]: partition `i` is `splits[i]`.
#[derive(Debug)]
pub struct KafkaScanExec {
    spec: KafkaScanSpec,
    projection: Option<Vec<usize>>,
    ledger: Arc<BadRowLedger>,
    table_schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    /// A scan of `spec`'s splits, keeping the `projection` columns of the table schema.
    pub fn try_new(
        spec: KafkaScanSpec,
        projection: Option<Vec<usize>>,
        ledger: Arc<BadRowLedger>,
    ) -> DfResult<Self> {
        let table_schema = spec.table_schema()?;
        let projected = project_schema(&table_schema, projection.as_ref())?;
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(if spec.one_partition {
                1
            } else {
                spec.splits.len().max(1)
            }),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            spec,
            projection,
            ledger,
            table_schema,
            properties,
        })
    }

    /// What the scan reads.
    pub fn spec(&self) -> &KafkaScanSpec {
        &self.spec
    }

    /// The projected columns (indices into the table schema).
    pub fn projection(&self) -> Option<&Vec<usize>> {
        self.projection.as_ref()
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "KafkaScanExec: {} splits={}",
            self.spec.address.url(),
            self.spec.splits.len()
        )
    }
}

impl ExecutionPlan for KafkaScanExec {
    fn name(&self) -> &str {
        "KafkaScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
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
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.properties.eq_properties.schema().clone();
        let splits: Vec<OffsetRange> = if self.spec.one_partition {
            self.spec.splits.clone()
        } else {
            self.spec
                .splits
                .get(partition)
                .copied()
                .into_iter()
                .collect()
        };
        // One reading thread per split, all feeding this partition's stream.
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2 * splits.len().max(1));
        let value_schema = self.spec.value_schema()?;
        for range in splits {
            let reader = RangeReader {
                spec: self.spec.clone(),
                range,
                projection: self.projection.clone(),
                table_schema: Arc::clone(&self.table_schema),
                value_schema: Arc::clone(&value_schema),
                ledger: Arc::clone(&self.ledger),
            };
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("kafka-{}-p{}", self.spec.source, range.partition))
                .spawn(move || reader.run(&tx))
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        drop(tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One split read on its own thread (librdkafka's consumer API blocks).
struct RangeReader {
    spec: KafkaScanSpec,
    range: OffsetRange,
    projection: Option<Vec<usize>>,
    table_schema: SchemaRef,
    value_schema: SchemaRef,
    ledger: Arc<BadRowLedger>,
}

impl RangeReader {
    /// The bad-row ledger's name for this split: `kafka://HOSTS/TOPIC/PARTITION`, with the
    /// range so that splits of one partition are accounted separately.
    fn unit(&self) -> String {
        format!(
            "{}/{}@{}-{}",
            self.spec.address.url(),
            self.range.partition,
            self.range.start,
            self.range.end
        )
    }

    fn run(self, tx: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>) {
        let mut tally = FileTally::default();
        match self.read(tx, &mut tally) {
            // The receiver may be gone (the query stopped); nothing else to tell.
            Err(e) => drop(tx.blocking_send(Err(e))),
            Ok(finished) => tally.complete = finished,
        }
        self.ledger.record(&self.spec.source, &self.unit(), tally);
    }

    /// Reads the split into `tx`; `Ok(false)` when the query stopped reading first.
    fn read(
        &self,
        tx: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
        tally: &mut FileTally,
    ) -> DfResult<bool> {
        let client = self.spec.client()?;
        let mut failure: Option<DataFusionError> = None;
        let mut stopped = false;
        client
            .read_range(self.range, READ_BATCH, |records| {
                tally.counts.rows_in += records.len() as u64;
                match self.to_batch(&records, tally) {
                    Ok(Some(batch)) => {
                        stopped = tx.blocking_send(Ok(batch)).is_err();
                        !stopped
                    }
                    Ok(None) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(!stopped),
        }
    }

    /// Decodes records into a batch of the projected schema (`None` when none survived).
    fn to_batch(
        &self,
        records: &[KafkaRecord],
        tally: &mut FileTally,
    ) -> DfResult<Option<RecordBatch>> {
        let (values, kept): (Vec<ArrayRef>, Vec<usize>) = match self.spec.value_format {
            ValueFormat::Raw => {
                let mut b = BinaryBuilder::new();
                for r in records {
                    b.append_option(r.value.as_deref());
                }
                (vec![Arc::new(b.finish())], (0..records.len()).collect())
            }
            ValueFormat::Json => {
                let rows = records
                    .iter()
                    .map(|r| (r.offset as u64, r.value.as_deref().unwrap_or(b"null")));
                let (batch, kept) = decode_json_rows(
                    &self.spec.source,
                    &self.value_schema,
                    rows,
                    |offset, raw, error| self.bad_record(offset, raw, error, tally),
                )?;
                (batch.columns().to_vec(), kept)
            }
        };
        tally.counts.rows_out += kept.len() as u64;
        if kept.is_empty() {
            return Ok(None);
        }
        let mut columns = values;
        let picked = || kept.iter().map(|&i| &records[i]);
        columns.push(Arc::new(Int32Array::from(vec![
            self.range.partition;
            kept.len()
        ])));
        columns.push(Arc::new(picked().map(|r| r.offset).collect::<Int64Array>()));
        columns.push(Arc::new(
            picked()
                .map(|r| r.timestamp_ms.map(|ms| ms * 1000))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ));
        let mut keys = BinaryBuilder::new();
        for r in picked() {
            keys.append_option(r.key.as_deref());
        }
        columns.push(Arc::new(keys.finish()));
        let batch = RecordBatch::try_new(Arc::clone(&self.table_schema), columns)?;
        Ok(Some(match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        }))
    }

    /// A value that does not fit: an error under `fail`, a rejected row under `reject`.
    fn bad_record(
        &self,
        offset: u64,
        raw: &[u8],
        error: String,
        tally: &mut FileTally,
    ) -> DfResult<()> {
        if self.ledger.policy() == BadRowPolicy::Fail {
            return Err(DataFusionError::External(Box::new(
                crate::EngineError::BadMessage {
                    bootstrap: self.spec.address.bootstrap.clone(),
                    topic: self.spec.address.topic.clone(),
                    partition: self.range.partition,
                    offset: offset as i64,
                    message: format!(
                        "source `{}`: {error} (set on_bad_rows = \"reject\" to divert bad \
                         records)",
                        self.spec.source
                    ),
                },
            )));
        }
        let row = BadRow {
            source: self.spec.source.clone(),
            file: format!("{}/{}", self.spec.address.url(), self.range.partition),
            line: offset,
            error,
            raw: String::from_utf8_lossy(&raw[..raw.len().min(64 * 1024)]).into_owned(),
        };
        tally.reject(&row).map_err(|e| {
            DataFusionError::Execution(format!(
                "{}: spilling rejected records to a temporary file: {e}",
                self.spec.address.url()
            ))
        })
    }
}
