//! `kiln features`: render a spec for a date, plan every statement, write and commit outputs.

use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use kiln_connectors::{EncodeOptions, ExampleEncoder, Manifest};
use serde::Serialize;
use serde_json::json;

use crate::progress::{ProgressHook, WriteProgress};
use crate::sink::{KilnShardUdf, SinkSpec, shard_files_from_batches};
use crate::sources::{SourceLineage, register_sources};
use crate::spec::{BadRowPolicy, JobSpec, OutputSpec, Overrides, RenderedJob, SourceFormat};
use crate::stores::KilnObjectStoreRegistry;
use crate::text::{BadRowLedger, RowCounts};
use crate::write::{KilnQueryPlanner, ShardWriteNode};
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
    /// Times the job was run: more than 1 when a cluster lost an executor and the job was
    /// resubmitted.
    pub attempts: usize,
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
    /// The Spark table partition this run was registered as (`spark_table`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spark: Option<crate::spark::SparkRegistration>,
    /// The statistics checked against the expectations and the baseline, as recorded in the
    /// manifest (absent with `statistics = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<kiln_connectors::stats::Validation>,
}

/// Where a feature job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// In this process (DataFusion).
    #[default]
    Local,
    /// On the Ballista cluster whose scheduler is at `df://HOST:PORT`.
    Cluster(String),
    /// The feature SQL on the Spark Connect server at `sc://HOST:PORT` (temporary views in
    /// one session); each output streams back into this process's shard writers.
    Spark(String),
}

/// Builds the local DataFusion session for a spec's `[engine]` settings.
pub fn session(spec: &JobSpec) -> Result<SessionContext> {
    let config = session_config(spec)?;
    let limit = memory_limit(spec)?;
    let mut runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
        .with_object_store_registry(Arc::new(KilnObjectStoreRegistry::new()));
    if let Some(dir) = &spec.engine.spill_dir {
        runtime = runtime.with_temp_file_path(spec.base_dir().join(dir));
    }
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime.build_arc()?)
        .with_query_planner(Arc::new(KilnQueryPlanner))
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udf(KilnShardUdf::udf());
    Ok(ctx)
}

/// The session for `mode`: local, or a Ballista client of the cluster (whose executors
/// bring their own memory pools, spill directories and object store credentials).
pub async fn session_for(spec: &JobSpec, mode: &Mode, date: NaiveDate) -> Result<SessionContext> {
    match mode {
        Mode::Local | Mode::Spark(_) => session(spec),
        Mode::Cluster(url) => {
            memory_limit(spec)?;
            let name = format!("kiln {} {date}", spec.name);
            crate::cluster::client_context(url, session_config(spec)?, &name)
                .await
                .map_err(|e| EngineError::url_failed(url, "cannot use the cluster", e))
        }
    }
}

/// DataFusion settings of a spec (the same locally and on a cluster): Kiln's defaults, then
/// `[engine] options`.
fn session_config(spec: &JobSpec) -> Result<SessionConfig> {
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
        for (key, value) in &engine.options {
            opts.set(key, value).map_err(|e| {
                spec.error(format!(
                    "[engine] options: `{key}` = \"{value}\": {}",
                    root_message(&e)
                ))
            })?;
        }
    }
    Ok(config)
}

/// `engine.memory_limit`, or half of physical memory.
fn memory_limit(spec: &JobSpec) -> Result<usize> {
    Ok(match &spec.engine.memory_limit {
        Some(text) => parse_bytes(text).ok_or_else(|| {
            spec.error(format!(
                "engine.memory_limit: cannot parse `{text}` (e.g. \"4GiB\")"
            ))
        })?,
        None => default_memory_limit(),
    })
}

/// Half of the memory this process may use (at least 1 GiB): the container's cgroup limit
/// when there is one (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), else physical memory.
fn default_memory_limit() -> usize {
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| meminfo_total(&s))
        .unwrap_or(8 << 30);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| cgroup_limit(&s))
    });
    let available = cgroup.map_or(physical, |c| c.min(physical));
    (available / 2).max(1 << 30)
}

/// `MemTotal:` of `/proc/meminfo`, in bytes.
fn meminfo_total(meminfo: &str) -> Option<usize> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map(|kib| kib * 1024)
}

/// A cgroup memory limit file's value in bytes; `None` for "max" (no limit) or an unreadable
/// value. cgroup v1 reports "no limit" as a huge number, which `min` with physical memory drops.
fn cgroup_limit(text: &str) -> Option<usize> {
    text.trim().parse::<usize>().ok()
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
    plan_job_on(spec, date, overrides, &Mode::Local).await
}

/// [`plan_job`] for a local run or a cluster.
pub async fn plan_job_on(
    spec: &JobSpec,
    date: NaiveDate,
    overrides: &Overrides,
    mode: &Mode,
) -> Result<PlannedJob> {
    let job = spec.render(date, overrides)?;
    match mode {
        Mode::Cluster(url) => check_cluster_support(spec, &job, url)?,
        Mode::Spark(url) => crate::spark::check_engine_support(
            &job,
            kiln_connectors::spark::SparkAddress::parse(url)
                .map_err(|e| EngineError::Spark(e.to_string()))?
                .redacted(),
        )?,
        Mode::Local => {}
    }
    let ctx = session_for(spec, mode, date).await?;
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
        let key_type = schema
            .field_with_name(&o.key)
            .map(|f| f.data_type().clone())
            .map_err(datafusion::error::DataFusionError::from)?;
        if !kiln_connectors::shard::is_supported_key_type(&key_type) {
            return Err(spec
                .error(format!(
                    "outputs `{}`: key column `{}` has type {key_type}; shard keys must be \
                     integers, dates, timestamps, strings or binary (not floats or booleans)",
                    o.statement, o.key
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

/// What a cluster run cannot do yet, named before anything is read.
fn check_cluster_support(spec: &JobSpec, job: &RenderedJob, url: &str) -> Result<()> {
    for source in &job.sources {
        if source.format == SourceFormat::Kafka && spec.on_bad_rows == BadRowPolicy::Reject {
            return Err(EngineError::source_invalid(
                &source.name,
                format!(
                    "on_bad_rows = \"reject\" cannot run with a kafka source on the cluster \
                     {url}: rejected records would stay on the executors. Use \"fail\" (a bad \
                     record then fails the run naming topic, partition and offset), or run \
                     without --cluster"
                ),
            ));
        }
        if matches!(source.format, SourceFormat::Csv | SourceFormat::Jsonl) {
            return Err(EngineError::source_invalid(
                &source.name,
                format!(
                    "{} sources cannot run on the cluster {url} yet: Kiln parses text files \
                     itself to account for bad rows, in the client process. Convert the \
                     source to Parquet, or run without --cluster",
                    source.format.as_str()
                ),
            ));
        }
    }
    if let Some(f) = job.features.iter().find(|f| f.materialize) {
        return Err(spec
            .error(format!(
                "features `{}`: materialize = true is not supported with --cluster ({url}) yet; \
                 remove it (the statement is then computed inside each query that uses it)",
                f.name
            ))
            .into());
    }
    Ok(())
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
    run_features_on(spec, date, overrides, &Mode::Local).await
}

/// [`run_features`] locally or on a Ballista cluster: the same plan either way, and the
/// client commits each dataset once every shard task has succeeded. A cluster job that the
/// scheduler cancels because an executor was lost is run again from the start, with a fresh
/// run id, up to [`crate::cluster::CLUSTER_JOB_ATTEMPTS`] times in all.
pub async fn run_features_on(
    spec: &JobSpec,
    date: NaiveDate,
    overrides: &Overrides,
    mode: &Mode,
) -> Result<FeaturesReport> {
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        match run_features_once(spec, date, overrides, mode).await {
            Err(EngineError::ClusterJobCancelled { statement, message })
                if attempt < crate::cluster::CLUSTER_JOB_ATTEMPTS =>
            {
                attempt += 1;
                tracing::warn!(
                    "the cluster cancelled the job writing `{statement}` ({message}), which \
                     `kiln scheduler` does when an executor is lost: running it again from \
                     the start, attempt {attempt} of {}",
                    crate::cluster::CLUSTER_JOB_ATTEMPTS
                );
            }
            Ok(mut report) => {
                report.seconds = started.elapsed().as_secs_f64();
                report.attempts = attempt;
                return Ok(report);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt of [`run_features_on`].
async fn run_features_once(
    spec: &JobSpec,
    date: NaiveDate,
    overrides: &Overrides,
    mode: &Mode,
) -> Result<FeaturesReport> {
    let started = Instant::now();
    let planned = plan_job_on(spec, date, overrides, mode).await?;
    let PlannedJob {
        ctx,
        job,
        inputs,
        ledger,
    } = planned;
    // Kafka sources of a local run: read once into local Parquet, which every statement then
    // scans (the example job scans `events` five times; each scan of the topic would fetch and
    // decode every record again). Statements are re-planned against the staged tables.
    let staged = match mode {
        Mode::Local => {
            let spill = spec
                .engine
                .spill_dir
                .as_ref()
                .map(|d| spec.base_dir().join(d));
            crate::sources::stage_local(&ctx, &job, spill.as_deref()).await?
        }
        Mode::Cluster(_) | Mode::Spark(_) => Vec::new(),
    };
    // Materialised statements: compute once, then re-plan the rest against the cached table
    // (on Spark, `CACHE TABLE` does it there).
    let materialize_here =
        job.features.iter().any(|f| f.materialize) && !matches!(mode, Mode::Spark(_));
    if !staged.is_empty() || materialize_here {
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
    // --engine sc://: the sources and statements become views of one Spark session, and
    // each output reads its statement from there.
    let spark = match mode {
        Mode::Spark(url) => {
            let session = Arc::new(crate::spark::open_session(url, None).await?);
            crate::spark::create_views(&session, &job).await?;
            Some(session)
        }
        _ => None,
    };
    let run_id = kiln_connectors::dataset::new_run_id();
    let mut lineage_base = json!({
        "job": spec.name,
        "date": date.to_string(),
        "spec_path": spec.path.display().to_string(),
        "spec_sha256": spec.sha256,
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "run_id": run_id,
        "inputs": inputs,
    });
    if let Some(session) = &spark {
        lineage_base["engine"] = json!({
            "spark": session.address().redacted(),
            "spark_version": session.version(),
        });
    }
    // Every output's shards first; then the row accounting and the rejects file; only then
    // the commits, so a crash or a failed check never leaves a committed dataset whose bad
    // rows were not recorded.
    let mut written = Vec::new();
    for o in &job.outputs {
        let df = match &spark {
            Some(session) => {
                let name = format!("__kiln_spark_output_{}", o.statement);
                crate::spark::register_output_stream(&ctx, session, &o.statement, &name).await?;
                ctx.table(name.as_str()).await?
            }
            None => ctx.table(o.statement.as_str()).await?,
        };
        written.push(write_shards(&ctx, df, o, &run_id, overrides.progress.as_ref()).await?);
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
    let mut outputs = Vec::new();
    for (o, w) in job.outputs.iter().zip(written) {
        let (manifest, mut report) =
            commit_output(o, w, &run_id, &lineage_base, &counts, date).await?;
        if o.spark_table.is_some() {
            report.spark =
                Some(crate::spark::register_output_partition(o, &manifest, &run_id, date).await?);
        }
        tracing::info!(
            statement = %o.statement,
            rows = manifest.total_rows,
            location = %o.location,
            "committed dataset"
        );
        outputs.push(report);
    }
    Ok(FeaturesReport {
        job: spec.name.clone(),
        date: date.to_string(),
        run_id,
        outputs,
        bad_rows: counts,
        rejects_file,
        inputs,
        seconds: started.elapsed().as_secs_f64(),
        attempts: 1,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// The serialisable description of one output's write.
pub fn sink_spec(o: &OutputSpec, run_id: &str) -> Result<SinkSpec> {
    Ok(SinkSpec {
        statement: o.statement.clone(),
        location: crate::stores::location_for_url(&o.location)?,
        run_id: run_id.to_string(),
        key: o.key.clone(),
        shards: o.shards,
        formats: o.formats.clone(),
        tfrecord_compression: o.tfrecord_compression,
        tfrecord_compression_level: o.tfrecord_compression_level,
        parquet_compression: o.parquet_compression,
        statistics: o.statistics,
    })
}

/// The shards of one output, written and not yet committed.
struct WrittenOutput {
    options: kiln_connectors::ShardOptions,
    location: kiln_connectors::Location,
    data_schema: SchemaRef,
    files: Vec<kiln_connectors::ShardFile>,
}

/// Runs the write of one output's shards (locally or on the cluster), reporting its progress
/// to `progress` while it runs and once at the end.
async fn write_shards(
    ctx: &SessionContext,
    df: DataFrame,
    o: &OutputSpec,
    run_id: &str,
    progress: Option<&ProgressHook>,
) -> Result<WrittenOutput> {
    let spec = sink_spec(o, run_id)?;
    let options = spec.options()?;
    let location = spec.resolve_location()?;
    let data_schema = SchemaRef::new(df.schema().as_arrow().clone());
    let plan = ShardWriteNode::plan(df, spec)?;
    let write = DataFrame::new(ctx.state(), plan);
    tracing::debug!(
        "write plan of `{}`:\n{}",
        o.statement,
        write.logical_plan().display_indent()
    );
    let failed = |e: datafusion::error::DataFusionError| {
        let message = root_message(&e);
        if let Some(crate::cluster::ClusterJobFailure::Cancelled { .. }) =
            crate::cluster::ClusterJobFailure::from_error(&e)
        {
            EngineError::ClusterJobCancelled {
                statement: o.statement.clone(),
                message,
            }
        } else {
            EngineError::Output {
                statement: o.statement.clone(),
                message: format!("writing shards to {}: {message}", o.location),
                cause: Some(e.into()),
            }
        }
    };
    let task_ctx = Arc::new(write.task_ctx());
    let physical = write.create_physical_plan().await.map_err(failed)?;
    let start = WriteProgress {
        statement: o.statement.clone(),
        shards: o.shards,
        rows: 0,
        shards_written: 0,
        bytes: 0,
        done: false,
        elapsed: std::time::Duration::ZERO,
    };
    let started = Instant::now();
    // A local plan's sink counts as it writes: report its counters while it runs.
    let ticker = match (progress, find_sink(&physical)) {
        (Some(hook), Some(sink)) => {
            let hook = hook.clone();
            let start = start.clone();
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let Some(m) = sink.metrics() else { continue };
                    let count = |name| m.sum_by_name(name).map_or(0, |v| v.as_usize() as u64);
                    hook.report(&WriteProgress {
                        rows: count(crate::sink::SINK_ROWS_WRITTEN),
                        shards_written: count(crate::sink::SINK_SHARDS_WRITTEN),
                        bytes: count(crate::sink::SINK_BYTES_WRITTEN),
                        elapsed: started.elapsed(),
                        ..start.clone()
                    });
                }
            }))
        }
        _ => None,
    };
    let results = datafusion::physical_plan::collect(Arc::clone(&physical), task_ctx).await;
    if let Some(t) = ticker {
        t.abort();
    }
    // The profile of the write (`RUST_LOG=kiln_engine=debug`): every operator with its rows,
    // elapsed compute time, spills and memory, as EXPLAIN ANALYZE prints them.
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(
            "executed plan of `{}` ({:.2} s):\n{}",
            o.statement,
            started.elapsed().as_secs_f64(),
            datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                physical.as_ref()
            )
            .indent(true)
        );
    }
    let files = shard_files_from_batches(&results.map_err(failed)?)?;
    if let Some(hook) = progress {
        let first = o.formats.first();
        let rows = files
            .iter()
            .filter(|f| Some(&f.format) == first)
            .map(|f| f.rows)
            .sum();
        let shards = files
            .iter()
            .map(|f| f.index)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        hook.report(&WriteProgress {
            rows,
            shards_written: shards,
            bytes: files.iter().map(|f| f.bytes).sum(),
            done: true,
            elapsed: started.elapsed(),
            ..start
        });
    }
    Ok(WrittenOutput {
        options,
        location,
        data_schema,
        files,
    })
}

/// The shard sink of a local write plan (its root, or below it), whose metrics count the
/// write as it runs; `None` for a cluster plan, whose sink runs in the executors.
fn find_sink(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.is::<crate::sink::ShardSinkExec>() {
        return Some(Arc::clone(plan));
    }
    plan.children().into_iter().find_map(find_sink)
}

/// Commits one output's written shards with its manifest.
async fn commit_output(
    o: &OutputSpec,
    w: WrittenOutput,
    run_id: &str,
    lineage_base: &serde_json::Value,
    bad_rows: &std::collections::BTreeMap<String, RowCounts>,
    date: chrono::NaiveDate,
) -> Result<(Manifest, OutputReport)> {
    let mut lineage = lineage_base.clone();
    lineage["statement"] = json!(o.statement);
    lineage["written_at"] = json!(chrono::Utc::now().to_rfc3339());
    lineage["bad_rows"] = json!(bad_rows);
    let failed =
        |e| EngineError::output_failed(&o.statement, format!("commit of {} failed", o.location), e);
    let manifest = if o.statistics {
        // Read before the commit: the default baseline may be this very location.
        let plan = kiln_connectors::stats::ValidationPlan {
            expectations: o.expect.clone(),
            baseline: load_baseline(o, date).await,
        };
        kiln_connectors::commit_dataset_validated(
            &w.location,
            run_id,
            w.data_schema,
            &w.options,
            w.files,
            lineage,
            true,
            &plan,
        )
        .await
        .map_err(failed)?
    } else {
        kiln_connectors::commit_dataset(
            &w.location,
            run_id,
            w.data_schema,
            &w.options,
            w.files,
            lineage,
            true,
        )
        .await
        .map_err(failed)?
    };
    if let Some(v) = &manifest.validation {
        for a in &v.anomalies {
            tracing::warn!(statement = %o.statement, "anomaly: {a}");
        }
    }
    let report = OutputReport {
        statement: o.statement.clone(),
        location: o.location.clone(),
        rows: manifest.total_rows,
        shards: o.shards,
        formats: o.formats.iter().map(|f| f.to_string()).collect(),
        bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
        spark: None,
        validation: manifest.validation.clone(),
    };
    Ok((manifest, report))
}

/// The statistics of `o`'s baseline (its URL and statistics), or why there is none: the
/// default baseline (the output's location for the day before) must hold a dataset of that
/// day, which matters when the location does not change with the date (`--out`).
async fn load_baseline(
    o: &OutputSpec,
    date: chrono::NaiveDate,
) -> std::result::Result<(String, kiln_connectors::stats::DatasetStats), String> {
    let url = o
        .baseline
        .clone()
        .expect("rendered outputs have a baseline");
    let (manifest, stats) = match kiln_connectors::stats::load_committed(&url).await {
        Ok(x) => x,
        Err(kiln_connectors::Error::NotCommitted { .. }) => {
            return Err(format!("no committed dataset at {url}"));
        }
        Err(e) => return Err(format!("{url}: {e}")),
    };
    if o.baseline_is_previous_day {
        let previous = date.pred_opt().map(|d| d.to_string());
        let found = manifest.lineage["date"].as_str().map(String::from);
        if found != previous {
            return Err(format!(
                "the dataset at {url} is of date {}, not the previous day {}",
                found.as_deref().unwrap_or("<none recorded>"),
                previous.as_deref().unwrap_or("-")
            ));
        }
    }
    Ok((url, stats))
}

/// The innermost message of a DataFusion error (a failed cluster job's task error,
/// not the wrappers around it).
fn root_message(e: &datafusion::error::DataFusionError) -> String {
    e.find_root().to_string()
}

/// Writes rejected rows as JSON lines to `<rejects_location>/rejects-<date>.jsonl`, streamed
/// from the scans' spill files through a local temporary file and a (multipart) upload, so
/// memory does not grow with the number of rejected rows.
async fn write_rejects(
    ctx: &SessionContext,
    job: &RenderedJob,
    ledger: &BadRowLedger,
) -> Result<Option<String>> {
    if ledger.counts().values().all(|c| c.rows_rejected == 0) {
        return Ok(None);
    }
    let base = job
        .rejects_location
        .as_ref()
        .expect("reject policy requires rejects_location (checked at load)");
    let url = format!("{}/rejects-{}.jsonl", base.trim_end_matches('/'), job.date);
    let (store, path) = crate::stores::store_for(ctx, &url)?;
    let io = |e: std::io::Error| EngineError::url_failed(&url, "writing the rejects file", e);
    let mut staged = tempfile::tempfile().map_err(io)?;
    {
        let mut w = std::io::BufWriter::new(&mut staged);
        ledger.write_rejected(&mut w).map_err(io)?;
        std::io::Write::flush(&mut w).map_err(io)?;
    }
    std::io::Seek::seek(&mut staged, std::io::SeekFrom::Start(0)).map_err(io)?;
    let mut upload = object_store::buffered::BufWriter::new(store, path);
    let mut file = tokio::fs::File::from_std(staged);
    if let Err(e) = tokio::io::copy(&mut file, &mut upload).await {
        // No part of a failed upload is left behind (a multipart upload is aborted).
        let _ = upload.abort().await;
        return Err(io(e));
    }
    tokio::io::AsyncWriteExt::shutdown(&mut upload)
        .await
        .map_err(io)?;
    Ok(Some(url))
}

/// Peak resident set size of this process from `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_options_reach_datafusion_and_bad_ones_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml"),
        )
        .unwrap();
        let load = |engine: &str| {
            let p = dir.path().join("job.toml");
            std::fs::write(
                &p,
                example.replacen("[engine]\n", &format!("[engine]\n{engine}\n"), 1),
            )
            .unwrap();
            crate::JobSpec::load(&p).unwrap()
        };
        let spec = load(
            "options = { \"datafusion.execution.parquet.pushdown_filters\" = \"true\", \
             \"datafusion.execution.parquet.schema_force_view_types\" = \"true\" }",
        );
        let c = super::session_config(&spec).unwrap();
        assert!(c.options().execution.parquet.pushdown_filters);
        // An option overrides Kiln's own default.
        assert!(c.options().execution.parquet.schema_force_view_types);
        let defaults = super::session_config(&load("")).unwrap();
        assert!(!defaults.options().execution.parquet.schema_force_view_types);
        let e = super::session_config(&load(
            "options = { \"datafusion.execution.no_such_thing\" = \"1\" }",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[engine] options: `datafusion.execution.no_such_thing` = \"1\""),
            "{e}"
        );
        let e = super::session_config(&load(
            "options = { \"datafusion.execution.batch_size\" = \"many\" }",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`datafusion.execution.batch_size` = \"many\""),
            "{e}"
        );
    }

    #[test]
    fn memory_limit_sources() {
        assert_eq!(super::cgroup_limit("max\n"), None);
        assert_eq!(super::cgroup_limit("2147483648\n"), Some(2 << 30));
        assert_eq!(
            super::meminfo_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16 << 20)
        );
    }
}
