//! Spark through Spark Connect: Spark tables and queries as sources, and Spark as the engine
//! that runs a job's feature SQL (`--engine sc://HOST:PORT`).
//!
//! - **`read = "arrow"`**: Spark runs the source's query; its Arrow batches stream into a
//!   DataFusion table as they arrive. Local runs stage the stream once into temporary Parquet
//!   ([`crate::sources::stage_local`]), so Spark runs the query once however many statements
//!   scan the source.
//! - **`read = "files"`**: Spark names the table's files for the selected partitions
//!   (`Dataset.inputFiles`) and Kiln reads exactly those files itself (locally, or on the
//!   Ballista executors): no rows pass through the Spark driver. The partition column's value
//!   comes from each file's `COLUMN=VALUE/` directory.
//! - **The engine**: every source becomes a temporary view in one Spark session (Parquet sources
//!   read by Spark from the same URLs, Spark sources as themselves), every feature statement a
//!   temporary view in order, and each output's statement streams from Spark into Kiln's shard
//!   writers. Batches are conformed to the schema DataFusion plans for the same statement, so
//!   the shards, manifest and commit are those of a local run.
//!
//! Every Spark session Kiln opens uses UTC (`spark.sql.session.timeZone`) and string partition
//! columns (`spark.sql.sources.partitionColumnTypeInference.enabled = false`), as Kiln reads
//! `dt=YYYY-MM-DD` directories.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use kiln_connectors::spark::{
    SparkAddress, SparkSession, file_url_from_spark, spark_path_from_url,
};
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::schema::parse_schema;
use crate::sources::{InputFile, SourceLineage, partition_value_of};
use crate::spec::{RenderedJob, SourceFormat, SourceSpec, SparkRead};
use crate::{EngineError, Result};

/// What a Spark source read, recorded in the manifest's lineage.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SparkLineage {
    /// The Spark Connect URL, without its token.
    pub url: String,
    /// The catalog table, when the source names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The query Spark ran (the table's partition filter included), or that listed the files.
    pub query: String,
    /// `arrow` or `files`.
    pub read: String,
    /// The server's Spark version.
    pub spark_version: String,
}

/// Session settings every Kiln Spark session gets.
const SESSION_CONF: [(&str, &str); 2] = [
    ("spark.sql.session.timeZone", "UTC"),
    (
        "spark.sql.sources.partitionColumnTypeInference.enabled",
        "false",
    ),
];

/// Opens a Spark Connect session on `url` with Kiln's session settings.
pub async fn open_session(url: &str, timeout: Option<f64>) -> Result<SparkSession> {
    let address = SparkAddress::parse(url).map_err(|e| EngineError::Spark(e.to_string()))?;
    let timeout = timeout
        .map(Duration::from_secs_f64)
        .unwrap_or(kiln_connectors::spark::DEFAULT_TIMEOUT);
    let session = SparkSession::connect(&address, timeout)
        .await
        .map_err(|e| EngineError::Spark(e.to_string()))?;
    for (key, value) in SESSION_CONF {
        session
            .set_conf(key, value)
            .await
            .map_err(|e| EngineError::Spark(e.to_string()))?;
    }
    Ok(session)
}

/// `name` quoted as a Spark identifier (`db.events` -> `` `db`.`events` ``).
fn quote_spark_name(name: &str) -> String {
    name.split('.')
        .map(|p| format!("`{}`", p.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The partition filter of a source for `date`: `` WHERE `dt` IN ('2026-11-13', ...) ``.
fn partition_filter(source: &SourceSpec, date: NaiveDate) -> (Vec<String>, String) {
    let values: Vec<String> = crate::sources::selected_partitions(source, date)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    match &source.partition_column {
        Some(col) if !values.is_empty() => {
            let list = values
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ");
            let filter = format!(" WHERE {} IN ({list})", quote_spark_name(col));
            (values, filter)
        }
        _ => (values, String::new()),
    }
}

/// The Spark SQL that produces a Spark source's rows for `date`.
fn source_query(source: &SourceSpec, date: NaiveDate) -> String {
    match (&source.spark.table, &source.spark.query) {
        (Some(table), _) => {
            let (_, filter) = partition_filter(source, date);
            format!("SELECT * FROM {}{filter}", quote_spark_name(table))
        }
        (None, Some(query)) => query.clone(),
        // The spec check requires one of them.
        (None, None) => String::new(),
    }
}

/// The table schema Kiln gives a Spark source: the declared columns (in order) plus the
/// partition column as a string, or Spark's own schema with Arrow's large and view string
/// types made plain.
fn target_schema(source: &SourceSpec, spark: &Schema) -> Result<SchemaRef> {
    let invalid = |m: String| EngineError::source_invalid(&source.name, m);
    let Some(columns) = &source.schema else {
        let fields: Vec<Field> = spark
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
            .collect();
        return Ok(Arc::new(Schema::new(fields)));
    };
    let declared =
        parse_schema(columns).map_err(|e| EngineError::source_failed(&source.name, "schema", e))?;
    let mut fields: Vec<Field> = declared.fields().iter().map(|f| (**f).clone()).collect();
    if let Some(col) = &source.partition_column {
        fields.push(Field::new(col, DataType::Utf8, false));
    }
    for f in &fields {
        let found = spark.field_with_name(f.name()).map_err(|_| {
            invalid(format!(
                "Spark's result has no column `{}` (its columns: {})",
                f.name(),
                spark
                    .fields()
                    .iter()
                    .map(|g| format!("{} {}", g.name(), g.data_type()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if plain_type(found.data_type()) != *f.data_type() {
            return Err(invalid(format!(
                "column `{}` is {} in Spark's result; the spec declares {}",
                f.name(),
                found.data_type(),
                f.data_type()
            )));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `LargeUtf8`/`Utf8View` -> `Utf8`, `LargeBinary`/`BinaryView` -> `Binary`.
fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

/// `batch` as `target`: columns by name in the target's order, each cast to the target type
/// (an out-of-range value is an error, never a null), and non-null target columns checked.
pub fn conform(batch: &RecordBatch, target: &SchemaRef, what: &str) -> Result<RecordBatch> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns = Vec::with_capacity(target.fields().len());
    for f in target.fields() {
        let Ok(i) = batch.schema().index_of(f.name()) else {
            return Err(EngineError::Spark(format!(
                "{what}: Spark's result has no column `{}`",
                f.name()
            )));
        };
        let column = batch.column(i);
        let column = if column.data_type() == f.data_type() {
            Arc::clone(column)
        } else {
            cast_with_options(column, f.data_type(), &options).map_err(|e| {
                EngineError::Spark(format!(
                    "{what}: column `{}`: Spark's {} does not convert to {}: {e}",
                    f.name(),
                    column.data_type(),
                    f.data_type()
                ))
            })?
        };
        if !f.is_nullable() && column.null_count() > 0 {
            return Err(EngineError::Spark(format!(
                "{what}: column `{}` holds {} nulls in Spark's result, where Kiln's plan of the \
                 same statement has no nulls",
                f.name(),
                column.null_count()
            )));
        }
        columns.push(column);
    }
    RecordBatch::try_new(Arc::clone(target), columns)
        .map_err(|e| EngineError::Spark(format!("{what}: {e}")))
}

/// One query's result, streamed from a Spark session as one table partition.
#[derive(Clone)]
pub struct SparkQueryStream {
    session: Arc<SparkSession>,
    query: String,
    schema: SchemaRef,
    what: String,
}

impl std::fmt::Debug for SparkQueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparkQueryStream")
            .field("url", &self.session.address().redacted())
            .field("query", &self.query)
            .finish()
    }
}

impl SparkQueryStream {
    /// The result of `query` on `session`, conformed to `schema`; `what` names it in errors.
    pub fn new(session: Arc<SparkSession>, query: String, schema: SchemaRef, what: String) -> Self {
        SparkQueryStream {
            session,
            query,
            schema,
            what,
        }
    }
}

impl PartitionStream for SparkQueryStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let this = self.clone();
        let schema = Arc::clone(&self.schema);
        let stream = futures::stream::once(async move {
            let batches = this
                .session
                .query(&this.query)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let target = Arc::clone(&this.schema);
            let what = this.what.clone();
            Ok::<_, DataFusionError>(batches.map(move |b| {
                let b = b.map_err(|e| DataFusionError::External(Box::new(e)))?;
                conform(&b, &target, &what).map_err(|e| DataFusionError::External(Box::new(e)))
            }))
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

/// Registers a `format = "spark"` source in `ctx` (arrow or files mode) and returns its
/// lineage.
pub async fn register_spark_source(
    ctx: &SessionContext,
    job: &RenderedJob,
    source: &SourceSpec,
) -> Result<SourceLineage> {
    let fail = |what: &str, e: crate::BoxError| EngineError::source_failed(&source.name, what, e);
    let session = Arc::new(open_session(&source.url, source.spark.timeout_secs).await?);
    let url = session.address().redacted().to_string();
    let query = source_query(source, job.date);
    let (partitions, _) = partition_filter(source, job.date);
    let spark_files = if source.spark.read == SparkRead::Files || !partitions.is_empty() {
        session
            .input_files(&query)
            .await
            .map_err(|e| fail("asking Spark for the input files", e.into()))?
    } else {
        Vec::new()
    };
    if source.spark.read == SparkRead::Files && spark_files.is_empty() {
        return Err(EngineError::source_invalid(
            &source.name,
            format!(
                "no input: Spark ({url}) lists no files for `{query}` (read = \"files\" needs a \
                 table stored as files)"
            ),
        ));
    }
    // Every selected partition must exist, as for Parquet sources (when Spark lists files).
    if let (Some(col), false) = (&source.partition_column, spark_files.is_empty()) {
        for p in &partitions {
            if !spark_files
                .iter()
                .any(|f| partition_value_of(f, col).as_deref() == Some(p.as_str()))
            {
                return Err(EngineError::source_invalid(
                    &source.name,
                    format!(
                        "no input: Spark ({url}) lists no file of table `{}` in partition \
                         {col}={p}",
                        source.spark.table.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    let spark_schema = session
        .schema_of(&query)
        .await
        .map_err(|e| fail("reading the result schema", e.into()))?;
    let schema = target_schema(source, &spark_schema)?;
    let mut files = Vec::new();
    match source.spark.read {
        SparkRead::Arrow => {
            let stream = SparkQueryStream::new(
                Arc::clone(&session),
                query.clone(),
                Arc::clone(&schema),
                format!("source `{}` ({url})", source.name),
            );
            let table = StreamingTable::try_new(Arc::clone(&schema), vec![Arc::new(stream)])
                .map_err(|e| fail("building the table", e.into()))?;
            ctx.register_table(source.name.as_str(), Arc::new(table))
                .map_err(|e| fail("registering the table", e.into()))?;
        }
        SparkRead::Files => {
            let urls: Vec<String> = spark_files.iter().map(|f| file_url_from_spark(f)).collect();
            for u in &urls {
                let (store, path) = crate::stores::store_for(ctx, u)?;
                let meta = store
                    .head(&path)
                    .await
                    .map_err(|e| fail(&format!("reading {u}"), e.into()))?;
                files.push(InputFile {
                    url: u.clone(),
                    size: meta.size,
                    e_tag: meta.e_tag.filter(|_| !u.starts_with("file://")),
                });
            }
            register_files(ctx, source, &urls, &schema).await?;
        }
    }
    Ok(SourceLineage {
        name: source.name.clone(),
        url,
        format: SourceFormat::Spark.as_str().to_string(),
        partitions,
        files,
        kafka: None,
        spark: Some(SparkLineage {
            url: session.address().redacted().to_string(),
            table: source.spark.table.clone(),
            query,
            read: source.spark.read.as_str().to_string(),
            spark_version: session.version().to_string(),
        }),
    })
}

/// Registers the Parquet files Spark named as the source's table: one listing table per
/// partition value, united with the value as the partition column.
async fn register_files(
    ctx: &SessionContext,
    source: &SourceSpec,
    urls: &[String],
    schema: &SchemaRef,
) -> Result<()> {
    let fail = |what: &str, e: crate::BoxError| EngineError::source_failed(&source.name, what, e);
    let mut groups: std::collections::BTreeMap<String, Vec<&String>> = Default::default();
    for u in urls {
        let value = match &source.partition_column {
            Some(col) => partition_value_of(u, col).ok_or_else(|| {
                EngineError::source_invalid(
                    &source.name,
                    format!("{u}: Spark names a file outside any `{col}=VALUE/` directory"),
                )
            })?,
            None => String::new(),
        };
        groups.entry(value).or_default().push(u);
    }
    let file_fields: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| Some(f.name()) != source.partition_column.as_ref())
        .map(|f| f.as_ref().clone())
        .collect();
    let file_schema = Arc::new(Schema::new(file_fields));
    let state = ctx.state();
    let mut selects = Vec::new();
    for (i, (value, group)) in groups.iter().enumerate() {
        let format = ParquetFormat::new().with_options(state.table_options().parquet.clone());
        let options = ListingOptions::new(Arc::new(format)).with_file_extension("");
        let paths = group
            .iter()
            .map(|u| ListingTableUrl::parse(u.as_str()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail("parsing the file URLs", e.into()))?;
        let config = ListingTableConfig::new_with_multi_paths(paths)
            .with_listing_options(options)
            .with_schema(Arc::clone(&file_schema));
        let table =
            ListingTable::try_new(config).map_err(|e| fail("building the table", e.into()))?;
        let name = format!("__kiln_spark_{}_{i}", source.name);
        ctx.register_table(name.as_str(), Arc::new(table))
            .map_err(|e| fail("registering the table", e.into()))?;
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                if Some(f.name()) == source.partition_column.as_ref() {
                    format!("'{}' AS \"{}\"", value.replace('\'', "''"), f.name())
                } else {
                    format!("\"{}\"", f.name())
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        selects.push(format!("SELECT {columns} FROM \"{name}\""));
    }
    let df = ctx
        .sql(&selects.join(" UNION ALL "))
        .await
        .map_err(|e| fail("uniting the files", e.into()))?;
    ctx.register_table(source.name.as_str(), df.into_view())
        .map_err(|e| fail("registering the table", e.into()))?;
    Ok(())
}

/// What `--engine sc://` cannot run, named before anything is read.
pub fn check_engine_support(job: &RenderedJob, url: &str) -> Result<()> {
    for source in &job.sources {
        if matches!(
            source.format,
            SourceFormat::Csv | SourceFormat::Jsonl | SourceFormat::Kafka
        ) {
            return Err(EngineError::source_invalid(
                &source.name,
                format!(
                    "{} sources cannot run with --engine {url}: Kiln reads them itself (bad-row \
                     accounting, exact Kafka offsets), in this process. Use a parquet or spark \
                     source, or run without --engine",
                    source.format.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Creates the job's sources and feature statements as temporary views of `session`, in
/// order, so each output statement can be queried there.
pub async fn create_views(session: &SparkSession, job: &RenderedJob) -> Result<()> {
    let run = |sql: String, what: String| async move {
        session
            .execute(&sql)
            .await
            .map_err(|e| EngineError::Spark(format!("{what}: {e}")))
    };
    for source in &job.sources {
        let body = match source.format {
            SourceFormat::Spark => source_query(source, job.date),
            _ => {
                let columns = match &source.schema {
                    Some(cols) => {
                        let declared = parse_schema(cols)
                            .map_err(|e| EngineError::source_failed(&source.name, "schema", e))?;
                        let mut names: Vec<String> = declared
                            .fields()
                            .iter()
                            .map(|f| quote_spark_name(f.name()))
                            .collect();
                        if let Some(col) = &source.partition_column {
                            names.push(quote_spark_name(col));
                        }
                        names.join(", ")
                    }
                    None => "*".to_string(),
                };
                let (_, filter) = partition_filter(source, job.date);
                format!(
                    "SELECT {columns} FROM parquet.`{}`{filter}",
                    spark_path_from_url(source.url.trim_end_matches('/')).replace('`', "``")
                )
            }
        };
        run(
            format!(
                "CREATE OR REPLACE TEMPORARY VIEW {} AS {body}",
                quote_spark_name(&source.name)
            ),
            format!("source `{}`", source.name),
        )
        .await?;
    }
    for f in &job.features {
        let sql = if f.materialize {
            format!("CACHE TABLE {} AS {}", quote_spark_name(&f.name), f.sql)
        } else {
            format!(
                "CREATE OR REPLACE TEMPORARY VIEW {} AS {}",
                quote_spark_name(&f.name),
                f.sql
            )
        };
        run(sql, format!("features `{}`", f.name)).await?;
    }
    Ok(())
}

/// Registers output `statement`'s result on Spark as table `name` of `ctx`, conformed to
/// the schema of `ctx`'s own plan of the statement.
pub async fn register_output_stream(
    ctx: &SessionContext,
    session: &Arc<SparkSession>,
    statement: &str,
    name: &str,
) -> Result<()> {
    let df = ctx.table(statement).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let stream = SparkQueryStream::new(
        Arc::clone(session),
        format!("SELECT * FROM {}", quote_spark_name(statement)),
        Arc::clone(&schema),
        format!(
            "statement `{statement}` on Spark ({})",
            session.address().redacted()
        ),
    );
    let table = StreamingTable::try_new(schema, vec![Arc::new(stream)])?;
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// Where a committed run was registered in Spark's catalog (`kiln features --json`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SparkRegistration {
    /// The table.
    pub table: String,
    /// The partition, `COLUMN=VALUE`.
    pub partition: String,
    /// The partition's location as Spark reads it: the run's directory of shards.
    pub location: String,
}

/// Spark SQL's name of an Arrow type Kiln writes to Parquet.
fn spark_type(t: &DataType) -> Option<String> {
    Some(match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BINARY".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, Some(_)) => {
            "TIMESTAMP".into()
        }
        DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None) => {
            "TIMESTAMP_NTZ".into()
        }
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("ARRAY<{}>", spark_type(f.data_type())?)
        }
        _ => return None,
    })
}

/// The table's root for `CREATE TABLE ... LOCATION`: the dataset location, or its parent when
/// the location is itself a `COLUMN=VALUE` directory (`examples/dt=2026-11-20/`).
fn table_root(location: &str, column: &str) -> String {
    let trimmed = location.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, last)) if last.starts_with(&format!("{column}=")) => parent.to_string(),
        _ => trimmed.to_string(),
    }
}

/// Registers a committed Parquet-only output's shards (`<location>/run-<id>/`) as partition
/// `COLUMN = <date>` of the output's `spark_table`: creates the table (external, Parquet) if
/// it does not exist, checks an existing table's columns against the dataset's, then adds the
/// partition or moves it to this run. A rerun therefore re-points the partition.
pub async fn register_output_partition(
    o: &crate::spec::OutputSpec,
    manifest: &kiln_connectors::Manifest,
    run_id: &str,
    date: NaiveDate,
) -> Result<SparkRegistration> {
    let (Some(table), Some(url)) = (&o.spark_table, &o.spark_url) else {
        return Err(EngineError::Spark(format!(
            "outputs `{}`: spark_table needs spark_url",
            o.statement
        )));
    };
    let fail = |m: String| {
        EngineError::Spark(format!(
            "outputs `{}`: spark_table `{table}`: {m}",
            o.statement
        ))
    };
    let column = o.spark_partition_column();
    let value = date.format(crate::spec::PARTITION_DATE_FORMAT).to_string();
    let schema = manifest
        .schema
        .to_schema()
        .map_err(|e| fail(format!("the dataset's schema: {e}")))?;
    if schema.field_with_name(column).is_ok() {
        return Err(fail(format!(
            "the dataset has a column `{column}`, the table's partition column; rename one \
             (spark_partition_column)"
        )));
    }
    let mut columns = Vec::new();
    for f in schema.fields() {
        let ty = spark_type(f.data_type()).ok_or_else(|| {
            fail(format!(
                "column `{}`: no Spark SQL type for {}",
                f.name(),
                f.data_type()
            ))
        })?;
        columns.push(format!("{} {ty}", quote_spark_name(f.name())));
    }
    let session = open_session(url, None).await?;
    let quoted = quote_spark_name(table);
    let literal = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let root = spark_path_from_url(&table_root(&o.location, column));
    let location = spark_path_from_url(&format!(
        "{}/run-{run_id}",
        o.location.trim_end_matches('/')
    ));
    let run = |sql: String| {
        let session = &session;
        async move {
            session
                .execute(&sql)
                .await
                .map_err(|e| EngineError::Spark(format!("outputs `{}`: {e}", o.statement)))
        }
    };
    run(format!(
        "CREATE TABLE IF NOT EXISTS {quoted} ({}, {} STRING) USING parquet \
         PARTITIONED BY ({}) LOCATION {}",
        columns.join(", "),
        quote_spark_name(column),
        quote_spark_name(column),
        literal(&root)
    ))
    .await?;
    // An existing table must have the dataset's columns (then the partition column).
    let existing = session
        .schema_of(&format!("SELECT * FROM {quoted}"))
        .await
        .map_err(|e| EngineError::Spark(e.to_string()))?;
    for f in schema.fields() {
        match existing.field_with_name(f.name()) {
            Ok(g) if plain_type(g.data_type()) == plain_type(f.data_type()) => {}
            Ok(g) => {
                return Err(fail(format!(
                    "column `{}` is {} in the table but {} in the dataset",
                    f.name(),
                    g.data_type(),
                    f.data_type()
                )));
            }
            Err(_) => return Err(fail(format!("the table has no column `{}`", f.name()))),
        }
    }
    let spec = format!(
        "PARTITION ({} = {})",
        quote_spark_name(column),
        literal(&value)
    );
    run(format!(
        "ALTER TABLE {quoted} ADD IF NOT EXISTS {spec} LOCATION {}",
        literal(&location)
    ))
    .await?;
    run(format!(
        "ALTER TABLE {quoted} {spec} SET LOCATION {}",
        literal(&location)
    ))
    .await?;
    run(format!("REFRESH TABLE {quoted}")).await?;
    tracing::info!(table = %table, partition = %format!("{column}={value}"), location = %location, "registered in Spark");
    Ok(SparkRegistration {
        table: table.clone(),
        partition: format!("{column}={value}"),
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, Int64Array, LargeStringArray};

    #[test]
    fn conform_casts_by_name_and_refuses_nulls_in_non_null_columns() {
        let spark = Arc::new(Schema::new(vec![
            Field::new("s", DataType::LargeUtf8, true),
            Field::new("n", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            spark,
            vec![
                Arc::new(LargeStringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![Some(1), None])),
            ],
        )
        .unwrap();
        let target = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, false),
        ]));
        let out = conform(&batch, &target, "t").unwrap();
        assert_eq!(out.schema(), target);
        let n = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((n.value(0), n.is_null(1)), (1, true));
        let strict = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let e = conform(&batch, &strict, "statement `x`")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("statement `x`") && e.contains("`n`") && e.contains("1 nulls"),
            "{e}"
        );
        let narrow = Arc::new(Schema::new(vec![Field::new("x", DataType::Int8, true)]));
        let e = conform(&batch, &narrow, "t").unwrap_err().to_string();
        assert!(e.contains("no column `x`"), "{e}");
    }

    #[test]
    fn table_roots_and_types() {
        assert_eq!(
            table_root("file:///o/examples/dt=2026-11-20/", "dt"),
            "file:///o/examples"
        );
        assert_eq!(
            table_root("file:///o/examples/", "dt"),
            "file:///o/examples"
        );
        assert_eq!(spark_type(&DataType::Int32).as_deref(), Some("INT"));
        assert_eq!(
            spark_type(&DataType::Decimal128(38, 10)).as_deref(),
            Some("DECIMAL(38, 10)")
        );
        assert_eq!(spark_type(&DataType::Float16), None);
    }

    #[test]
    fn spark_names_are_quoted() {
        assert_eq!(quote_spark_name("db.events"), "`db`.`events`");
        assert_eq!(quote_spark_name("a`b"), "`a``b`");
    }
}
