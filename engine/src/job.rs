//! `kiln features`: render a spec for a date, plan every statement, write and commit outputs.

use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{col, lit};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use kiln_connectors::{
    Compression, EncodeOptions, ExampleEncoder, Manifest, ParquetCompression, ShardFormat,
    ShardOptions,
};
use object_store::ObjectStoreExt;
use serde::Serialize;
use serde_json::json;

use crate::sink::{KilnShardUdf, SHARD_COLUMN, ShardSinkExec, shard_files_from_batches};
use crate::sources::{SourceLineage, register_sources};
use crate::spec::{JobSpec, OutputFormat, OutputSpec, Overrides, RenderedJob};
use crate::text::{BadRowLedger, RowCounts};
use crate::{EngineError, Result};

/// What one `kiln features` run did.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesReport {
    /// Job name.
    pub job: String,
    /// Run date.
    pub date: String,
    /// Run id (names the `run-<id>/` prefix of every output).
    pub run_id: String,
    /// One entry per committed dataset.
    pub outputs: Vec<OutputReport>,
    /// Row accounting of CSV/JSON-lines sources (`rows_in = rows_out + rows_rejected`).
    pub bad_rows: std::collections::BTreeMap<String, RowCounts>,
    /// Where rejected rows were written, if any were.
    pub rejects_file: Option<String>,
    /// Input files read, per source.
    pub inputs: Vec<SourceLineage>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak resident memory of this process (Linux `VmHWM`), when known.
    pub peak_rss_bytes: Option<u64>,
}

/// One committed output dataset.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    /// Statement written.
    pub statement: String,
    /// Dataset location URL.
    pub location: String,
    /// Rows written.
    pub rows: u64,
    /// Shards per format.
    pub shards: u32,
    /// Formats written.
    pub formats: Vec<String>,
    /// Total bytes of all shard files.
    pub bytes: u64,
}

/// Builds the DataFusion session for a spec's `[engine]` settings.
pub fn session(spec: &JobSpec) -> Result<SessionContext> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let engine = &spec.engine;
    let mut config = SessionConfig::new()
        .with_target_partitions(engine.target_partitions.unwrap_or(2 * cores))
        .with_batch_size(engine.batch_size.unwrap_or(32 * 1024));
    {
        let opts = config.options_mut();
        // Spark's legacy INT96 timestamps read as UTC microseconds, like Spark shows them.
        opts.execution.parquet.coerce_int96 = Some("us".into());
        opts.execution.parquet.coerce_int96_tz = Some("UTC".into());
        // Plain Utf8 columns, so output schemas are the standard Arrow types.
        opts.execution.parquet.schema_force_view_types = false;
    }
    let limit = match &engine.memory_limit {
        Some(text) => parse_bytes(text).ok_or_else(|| {
            spec.error(format!(
                "engine.memory_limit: cannot parse `{text}` (e.g. \"4GiB\")"
            ))
        })?,
        None => default_memory_limit(),
    };
    let mut runtime =
        RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    if let Some(dir) = &engine.spill_dir {
        runtime = runtime.with_temp_file_path(spec.base_dir().join(dir));
    }
    let runtime = runtime.build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_udf(KilnShardUdf::udf());
    Ok(ctx)
}

/// Half of physical memory (at least 1 GiB).
fn default_memory_limit() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(8 << 30, |kib| kib * 1024);
    (total / 2).max(1 << 30)
}

/// `"4GiB"`, `"512MiB"`, `"1000000"` -> bytes.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((num * mult) as usize)
}

/// A planned job: sources registered, every statement planned and checked.
pub struct PlannedJob {
    /// The session holding sources and statements.
    pub ctx: SessionContext,
    /// The rendered spec.
    pub job: RenderedJob,
    /// Lineage of every source.
    pub inputs: Vec<SourceLineage>,
    /// Bad-row accounting for text sources.
    pub ledger: Arc<BadRowLedger>,
}

/// Renders, registers sources and plans every statement; fails before reading data.
pub async fn plan_job(
    spec: &JobSpec,
    date: NaiveDate,
    overrides: &Overrides,
) -> Result<PlannedJob> {
    let job = spec.render(date, overrides)?;
    let ctx = session(spec)?;
    let ledger = Arc::new(BadRowLedger::new(spec.on_bad_rows));
    let inputs = register_sources(&ctx, &job, &ledger).await?;
    for f in &job.features {
        let df = plan_statement(&ctx, spec, &f.name, &f.sql).await?;
        ctx.register_table(f.name.as_str(), df.into_view())?;
    }
    for o in &job.outputs {
        let df = ctx.table(o.statement.as_str()).await?;
        let schema = SchemaRef::new(df.schema().as_arrow().clone());
        if schema.index_of(&o.key).is_err() {
            return Err(spec
                .error(format!(
                    "outputs `{}`: key column `{}` is not a column of the statement (columns: {})",
                    o.statement,
                    o.key,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
        }
        ExampleEncoder::new(Arc::clone(&schema), &EncodeOptions::default()).map_err(|e| {
            spec.error(format!(
                "outputs `{}`: cannot be written as tf.train.Example: {e}",
                o.statement
            ))
        })?;
    }
    Ok(PlannedJob {
        ctx,
        job,
        inputs,
        ledger,
    })
}

async fn plan_statement(
    ctx: &SessionContext,
    spec: &JobSpec,
    name: &str,
    sql: &str,
) -> Result<DataFrame> {
    ctx.sql(sql)
        .await
        .map_err(|e| spec.error(format!("features `{name}`: {e}")).into())
}

/// Runs the whole feature job for `date` and commits every output.
pub async fn run_features(
    spec: &JobSpec,
    date: NaiveDate,
    overrides: &Overrides,
) -> Result<FeaturesReport> {
    let started = Instant::now();
    let planned = plan_job(spec, date, overrides).await?;
    let PlannedJob {
        ctx,
        job,
        inputs,
        ledger,
    } = planned;
    // Materialised statements: compute once, then re-plan the rest against the cached table.
    if job.features.iter().any(|f| f.materialize) {
        for f in &job.features {
            let df = plan_statement(&ctx, spec, &f.name, &f.sql).await?;
            ctx.deregister_table(f.name.as_str())?;
            if f.materialize {
                ctx.register_table(f.name.as_str(), df.cache().await?.into_view())?;
            } else {
                ctx.register_table(f.name.as_str(), df.into_view())?;
            }
        }
    }
    let run_id = kiln_connectors::dataset::new_run_id();
    let lineage_base = json!({
        "job": spec.name,
        "date": date.to_string(),
        "spec_path": spec.path.display().to_string(),
        "spec_sha256": spec.sha256,
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "run_id": run_id,
        "inputs": inputs,
    });
    let mut outputs = Vec::new();
    for o in &job.outputs {
        let df = ctx.table(o.statement.as_str()).await?;
        let (manifest, report) = write_output(&ctx, df, o, &run_id, &lineage_base, &ledger).await?;
        tracing::info!(
            statement = %o.statement,
            rows = manifest.total_rows,
            location = %o.location,
            "committed dataset"
        );
        outputs.push(report);
    }
    let counts = ledger.counts();
    for (source, c) in &counts {
        if c.rows_in != c.rows_out + c.rows_rejected {
            return Err(EngineError::Accounting(format!(
                "source `{source}`: rows_in {} != rows_out {} + rows_rejected {}",
                c.rows_in, c.rows_out, c.rows_rejected
            )));
        }
    }
    let rejects_file = write_rejects(&ctx, &job, &ledger).await?;
    Ok(FeaturesReport {
        job: spec.name.clone(),
        date: date.to_string(),
        run_id,
        outputs,
        bad_rows: counts,
        rejects_file,
        inputs,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Shard options of an output spec.
pub fn shard_options(o: &OutputSpec) -> Result<ShardOptions> {
    let formats = o
        .formats
        .iter()
        .map(|f| match f {
            OutputFormat::Tfrecord => ShardFormat::TfRecord,
            OutputFormat::Parquet => ShardFormat::Parquet,
        })
        .collect();
    let tfrecord_compression = match o.tfrecord_compression.as_str() {
        "none" => Compression::None,
        "zlib" => Compression::Zlib,
        _ => Compression::Gzip,
    };
    let parquet_compression = match o.parquet_compression.as_str() {
        "none" => ParquetCompression::None,
        "snappy" => ParquetCompression::Snappy,
        "gzip" => ParquetCompression::Gzip(6),
        _ => ParquetCompression::Zstd(3),
    };
    Ok(ShardOptions {
        num_shards: o.shards,
        formats,
        tfrecord_compression,
        parquet_compression,
        key_column: Some(o.key.clone()),
        ..ShardOptions::default()
    })
}

/// Builds the write plan of one output, runs it and commits the dataset.
async fn write_output(
    ctx: &SessionContext,
    df: DataFrame,
    o: &OutputSpec,
    run_id: &str,
    lineage_base: &serde_json::Value,
    ledger: &Arc<BadRowLedger>,
) -> Result<(Manifest, OutputReport)> {
    let options = shard_options(o)?;
    let location = crate::stores::location_for(ctx, &o.location)?;
    let partitions = ctx.state().config().target_partitions().max(1);
    let df = df.with_column(
        SHARD_COLUMN,
        KilnShardUdf::udf().call(vec![col(format!("\"{}\"", o.key)), lit(o.shards)]),
    )?;
    let plan = df.create_physical_plan().await?;
    // Repartition after optimisation: the optimiser would drop a logical repartition
    // whose input already looks partitioned enough.
    let shard_expr = datafusion::physical_expr::expressions::col(SHARD_COLUMN, &plan.schema())?;
    let plan: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        plan,
        datafusion::physical_plan::Partitioning::Hash(vec![shard_expr], partitions),
    )?);
    let sort_key = |name: &str| -> Result<PhysicalSortExpr> {
        let expr = datafusion::physical_expr::expressions::col(name, &plan.schema())?;
        Ok(PhysicalSortExpr::new_default(expr).asc().nulls_first())
    };
    let ordering =
        LexOrdering::new(vec![sort_key(SHARD_COLUMN)?, sort_key(&o.key)?]).expect("two sort keys");
    let sorted: Arc<dyn ExecutionPlan> =
        Arc::new(SortExec::new(ordering, plan).with_preserve_partitioning(true));
    let sink = ShardSinkExec::new(
        sorted,
        location.clone(),
        run_id.to_string(),
        options.clone(),
    )?;
    let data_schema = Arc::clone(sink.data_schema());
    let sink: Arc<dyn ExecutionPlan> = Arc::new(sink);
    tracing::debug!(
        "write plan of `{}`:\n{}",
        o.statement,
        datafusion::physical_plan::displayable(sink.as_ref()).indent(true)
    );
    let results = collect(sink, ctx.task_ctx()).await?;
    let files = shard_files_from_batches(&results)?;
    let mut lineage = lineage_base.clone();
    lineage["statement"] = json!(o.statement);
    lineage["written_at"] = json!(chrono::Utc::now().to_rfc3339());
    lineage["bad_rows"] = json!(ledger.counts());
    let manifest = kiln_connectors::commit_dataset(
        &location,
        run_id,
        data_schema,
        &options,
        files,
        lineage,
        true,
    )
    .await
    .map_err(|e| EngineError::Output {
        statement: o.statement.clone(),
        message: format!("commit of {} failed: {e}", o.location),
    })?;
    let report = OutputReport {
        statement: o.statement.clone(),
        location: o.location.clone(),
        rows: manifest.total_rows,
        shards: o.shards,
        formats: o
            .formats
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect(),
        bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
    };
    Ok((manifest, report))
}

/// Writes rejected rows as JSON lines to `<rejects_location>/rejects-<date>.jsonl`.
async fn write_rejects(
    ctx: &SessionContext,
    job: &RenderedJob,
    ledger: &BadRowLedger,
) -> Result<Option<String>> {
    let rejected = ledger.rejected();
    if rejected.is_empty() {
        return Ok(None);
    }
    let base = job
        .rejects_location
        .as_ref()
        .expect("reject policy requires rejects_location (checked at load)");
    let url = format!("{}/rejects-{}.jsonl", base.trim_end_matches('/'), job.date);
    let (store, path) = crate::stores::store_for(ctx, &url)?;
    let mut body = Vec::new();
    for r in &rejected {
        serde_json::to_writer(&mut body, r).expect("BadRow serialises");
        body.push(b'\n');
    }
    store
        .put(&path, body.into())
        .await
        .map_err(|e| EngineError::Url {
            url: url.clone(),
            message: e.to_string(),
        })?;
    Ok(Some(url))
}

/// Peak resident set size of this process from `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
