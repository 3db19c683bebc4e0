//! Registering a job's sources as DataFusion tables, with lineage and bad-row accounting.
//!
//! - Parquet sources are DataFusion listing tables (Hive partitions, pruning, statistics).
//! - CSV and JSON-lines sources are parsed by Kiln itself ([`crate::text`]) so a malformed
//!   row is reported with its file and line, or rejected and counted, never dropped.
//! - A source with `days = [a, b]` reads exactly the partitions `D+a ..= D+b`; every one
//!   must exist, or the run fails naming the path it looked at.

use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use serde::Serialize;

use crate::schema::{SchemaError, parse_schema};
use crate::spec::{PARTITION_DATE_FORMAT, RenderedJob, SourceFormat, SourceSpec};
use crate::text::{TextFileStream, TextFormat};
use crate::{EngineError, Result};

/// One input file read by a run (recorded in the manifest's lineage).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InputFile {
    /// Full URL of the file.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Object-store ETag, when the store has one (S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

/// What was registered for one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceLineage {
    /// Source name.
    pub name: String,
    /// Root URL.
    pub url: String,
    /// Format.
    pub format: String,
    /// Partition values read (e.g. the `dt` values), empty when unpartitioned.
    pub partitions: Vec<String>,
    /// Every file read, sorted by URL.
    pub files: Vec<InputFile>,
    /// A Kafka source's window and offset ranges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<crate::kafka::KafkaLineage>,
    /// A Spark source's URL (without token), table or query, mode and Spark version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spark: Option<crate::spark::SparkLineage>,
}

/// Registers every source of `job` in `ctx` and returns their lineage.
pub async fn register_sources(
    ctx: &SessionContext,
    job: &RenderedJob,
    text_counters: &Arc<crate::text::BadRowLedger>,
) -> Result<Vec<SourceLineage>> {
    let mut lineage = Vec::new();
    for source in &job.sources {
        if source.format == SourceFormat::Kafka {
            lineage.push(register_kafka(ctx, job, source, text_counters).await?);
            continue;
        }
        if source.format == SourceFormat::Spark {
            lineage.push(crate::spark::register_spark_source(ctx, job, source).await?);
            continue;
        }
        let (store, root) = crate::stores::store_for(ctx, &source.url)?;
        let partitions = selected_partitions(source, job.date);
        let files = list_input_files(source, &store, &root, &partitions).await?;
        if source.format == SourceFormat::Parquet {
            register_parquet(ctx, source, &partitions).await?;
        } else {
            register_text(ctx, source, &store, &files, text_counters)?;
        }
        lineage.push(SourceLineage {
            name: source.name.clone(),
            url: source.url.clone(),
            format: source.format.as_str().to_string(),
            partitions: partitions.iter().map(|(_, v)| v.clone()).collect(),
            files,
            kafka: None,
            spark: None,
        });
    }
    Ok(lineage)
}

/// The `(column, value)` partitions a source reads for `date` (empty: the whole root).
pub(crate) fn selected_partitions(source: &SourceSpec, date: NaiveDate) -> Vec<(String, String)> {
    match (&source.partition_column, source.days) {
        // Offsets are bounded when the spec is loaded; a date past chrono's range is skipped
        // only in theory (±3660 days of a real run date never is).
        (Some(col), Some([from, to])) => (from..=to)
            .filter_map(|d| date.checked_add_signed(Duration::try_days(d)?))
            .map(|day| (col.clone(), day.format(PARTITION_DATE_FORMAT).to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

fn file_extension(format: SourceFormat) -> &'static str {
    match format {
        SourceFormat::Parquet => ".parquet",
        SourceFormat::Csv => ".csv",
        SourceFormat::Jsonl => ".jsonl",
        SourceFormat::Kafka | SourceFormat::Spark => "",
    }
}

/// Lists the data files a source will read; fails naming the path of a missing partition.
async fn list_input_files(
    source: &SourceSpec,
    store: &Arc<dyn ObjectStore>,
    root: &StorePath,
    partitions: &[(String, String)],
) -> Result<Vec<InputFile>> {
    let prefixes: Vec<StorePath> = if partitions.is_empty() {
        vec![root.clone()]
    } else {
        partitions
            .iter()
            .map(|(c, v)| root.clone().join(format!("{c}={v}")))
            .collect()
    };
    let base = source.url.trim_end_matches('/');
    let ext = file_extension(source.format);
    let mut files = Vec::new();
    for prefix in prefixes {
        let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.map_err(|e| {
            EngineError::source_failed(&source.name, format!("cannot list {prefix}"), e)
        })?;
        let mut found = 0;
        for meta in metas {
            let name = meta.location.filename().unwrap_or_default();
            if !name.ends_with(ext) || name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            found += 1;
            let rel = meta
                .location
                .as_ref()
                .strip_prefix(root.as_ref())
                .unwrap_or(meta.location.as_ref())
                .trim_start_matches('/')
                .to_string();
            files.push(InputFile {
                url: format!("{base}/{rel}"),
                size: meta.size,
                e_tag: meta.e_tag.filter(|_| !base.starts_with("file://")),
            });
        }
        if found == 0 {
            let looked_at = if prefix == *root {
                format!("{base}/")
            } else {
                format!(
                    "{base}/{}/",
                    prefix
                        .as_ref()
                        .strip_prefix(root.as_ref())
                        .unwrap_or(prefix.as_ref())
                        .trim_start_matches('/')
                )
            };
            return Err(EngineError::source_invalid(
                &source.name,
                format!("no input: no `*{ext}` file under {looked_at}"),
            ));
        }
    }
    files.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(files)
}

async fn register_parquet(
    ctx: &SessionContext,
    source: &SourceSpec,
    partitions: &[(String, String)],
) -> Result<()> {
    let src_err =
        |what: &str, e: crate::BoxError| EngineError::source_failed(&source.name, what, e);
    // The session's parquet options (INT96 coercion, plain Utf8) apply to this table too.
    let state = ctx.state();
    let format = ParquetFormat::new().with_options(state.table_options().parquet.clone());
    let mut options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    if let Some(col) = &source.partition_column {
        options = options.with_table_partition_cols(vec![(col.clone(), DataType::Utf8)]);
    }
    let dir_url = format!("{}/", source.url.trim_end_matches('/'));
    let table_url =
        ListingTableUrl::parse(&dir_url).map_err(|e| src_err("parsing the URL", e.into()))?;
    let file_schema: SchemaRef = match &source.schema {
        Some(cols) => {
            let declared = Arc::new(parse_schema(cols).map_err(|e| src_err("schema", e.into()))?);
            let inferred = options
                .infer_schema(&state, &table_url)
                .await
                .map_err(|e| src_err("reading the Parquet schema", e.into()))?;
            check_declared_schema(&declared, &inferred)
                .map_err(|e| src_err("declared schema", e.into()))?;
            declared
        }
        None => options
            .infer_schema(&state, &table_url)
            .await
            .map_err(|e| src_err("reading the Parquet schema", e.into()))?,
    };
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(options)
        .with_schema(file_schema);
    let table =
        ListingTable::try_new(config).map_err(|e| src_err("building the table", e.into()))?;
    let all_name = format!("__kiln_all_{}", source.name);
    ctx.register_table(all_name.as_str(), Arc::new(table))
        .map_err(|e| src_err("registering the table", e.into()))?;
    register_partition_view(ctx, source, &all_name, partitions).await
}

/// Exposes `name` as the selected partitions of `__kiln_all_name` (pruned at planning).
async fn register_partition_view(
    ctx: &SessionContext,
    source: &SourceSpec,
    all_name: &str,
    partitions: &[(String, String)],
) -> Result<()> {
    let filter = match partitions.first() {
        Some((col, _)) => format!(
            " WHERE \"{col}\" IN ({})",
            partitions
                .iter()
                .map(|(_, v)| format!("'{v}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    let df = ctx
        .sql(&format!("SELECT * FROM \"{all_name}\"{filter}"))
        .await
        .map_err(|e| EngineError::source_failed(&source.name, "selecting the partitions", e))?;
    ctx.register_table(source.name.as_str(), df.into_view())
        .map_err(|e| EngineError::source_failed(&source.name, "registering the table", e))?;
    Ok(())
}

/// Every declared column must exist in the files with the same type.
fn check_declared_schema(
    declared: &Schema,
    found: &Schema,
) -> std::result::Result<(), SchemaError> {
    for f in declared.fields() {
        match found.field_with_name(f.name()) {
            Ok(g) if g.data_type() == f.data_type() => {}
            Ok(g) => {
                return Err(SchemaError::TypeMismatch {
                    column: f.name().clone(),
                    declared: f.data_type().clone(),
                    found: g.data_type().clone(),
                });
            }
            Err(_) => return Err(SchemaError::MissingColumn(f.name().clone())),
        }
    }
    Ok(())
}

fn register_text(
    ctx: &SessionContext,
    source: &SourceSpec,
    store: &Arc<dyn ObjectStore>,
    files: &[InputFile],
    ledger: &Arc<crate::text::BadRowLedger>,
) -> Result<()> {
    let declared = parse_schema(source.schema.as_deref().unwrap_or_default())
        .map_err(|e| EngineError::source_failed(&source.name, "schema", e))?;
    let mut fields: Vec<Field> = declared.fields().iter().map(|f| (**f).clone()).collect();
    if let Some(col) = &source.partition_column {
        fields.push(Field::new(col, DataType::Utf8, false));
    }
    let table_schema = Arc::new(Schema::new(fields));
    let format = match source.format {
        SourceFormat::Csv => TextFormat::Csv {
            delimiter: source.csv.delimiter as u8,
            has_header: source.csv.has_header,
        },
        _ => TextFormat::Jsonl,
    };
    let streams: Vec<Arc<dyn PartitionStream>> = files
        .iter()
        .map(|f| {
            let partition_value = source
                .partition_column
                .as_ref()
                .map(|col| partition_value_of(&f.url, col).unwrap_or_default());
            Arc::new(TextFileStream {
                source: source.name.clone(),
                url: f.url.clone(),
                store: Arc::clone(store),
                file_schema: Arc::new(declared.clone()),
                table_schema: Arc::clone(&table_schema),
                partition_value,
                format,
                ledger: Arc::clone(ledger),
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    let table = StreamingTable::try_new(Arc::clone(&table_schema), streams)
        .map_err(|e| EngineError::source_failed(&source.name, "building the table", e))?;
    ctx.register_table(source.name.as_str(), Arc::new(table))
        .map_err(|e| EngineError::source_failed(&source.name, "registering the table", e))?;
    Ok(())
}

/// Resolves a Kafka source's offsets (the day window by record timestamps, or the ranges of
/// `--replay`) and registers it as a [`crate::kafka::KafkaTable`].
async fn register_kafka(
    ctx: &SessionContext,
    job: &RenderedJob,
    source: &SourceSpec,
    ledger: &Arc<crate::text::BadRowLedger>,
) -> Result<SourceLineage> {
    use kiln_connectors::kafka::{KafkaAddress, KafkaClient};
    let fail = |what: &str, e: crate::BoxError| EngineError::source_failed(&source.name, what, e);
    let address = KafkaAddress::parse(&source.url).map_err(|e| fail("url", e.into()))?;
    let [from, to] = source.days.unwrap_or([0, 0]);
    let day_start = |offset: i64| {
        job.date
            .checked_add_signed(Duration::try_days(offset)?)?
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
    };
    let (Some(start), Some(end)) = (day_start(from), day_start(to + 1)) else {
        return Err(EngineError::source_invalid(
            &source.name,
            "days are outside the calendar",
        ));
    };
    let client = KafkaClient::new(
        address.clone(),
        &source.kafka.properties,
        source
            .kafka
            .timeout_secs
            .map(std::time::Duration::from_secs_f64),
    )
    .map_err(|e| fail("client settings", e.into()))?;
    let replay = job.kafka_replay.get(&source.name).cloned();
    if replay.is_none() && !job.kafka_replay.is_empty() {
        return Err(EngineError::source_invalid(
            &source.name,
            "--replay: the manifest records no Kafka offsets for this source",
        ));
    }
    let replayed = replay.is_some();
    let ranges = tokio::task::spawn_blocking(move || match replay {
        Some(ranges) => client.check_available(&ranges).map(|()| ranges),
        None => client
            .resolve_window(start.timestamp_millis(), end.timestamp_millis())
            .map(|w| w.ranges),
    })
    .await
    .map_err(|e| fail("resolving offsets", e.into()))?
    .map_err(|e| fail("resolving offsets", e.into()))?;
    let split = source
        .kafka
        .split_records
        .unwrap_or(crate::kafka::DEFAULT_SPLIT_RECORDS);
    let spec = crate::kafka::KafkaScanSpec {
        source: source.name.clone(),
        address: address.clone(),
        properties: source.kafka.properties.clone(),
        timeout_secs: source.kafka.timeout_secs,
        value_format: source.kafka.value_format,
        value_schema: source.schema.clone().unwrap_or_default(),
        splits: ranges.iter().flat_map(|r| r.split(split)).collect(),
        on_bad_rows: job.spec.on_bad_rows,
        one_partition: false,
    };
    let table = crate::kafka::KafkaTable::try_new(spec, Arc::clone(ledger))
        .map_err(|e| fail("building the table", e.into()))?;
    ctx.register_table(source.name.as_str(), Arc::new(table))
        .map_err(|e| fail("registering the table", e.into()))?;
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(SourceLineage {
        name: source.name.clone(),
        url: address.url(),
        format: source.format.as_str().to_string(),
        partitions: Vec::new(),
        files: Vec::new(),
        spark: None,
        kafka: Some(crate::kafka::KafkaLineage {
            bootstrap: address.bootstrap,
            topic: address.topic,
            window_start: rfc(start),
            window_end: rfc(end),
            replayed,
            offsets: ranges.iter().map(|r| r.len()).sum(),
            ranges,
        }),
    })
}

/// Reads every streamed source of a local run (Kafka topics, Spark sources with
/// `read = "arrow"`) once into Parquet files in a temporary directory (under `spill_dir` when
/// set) and replaces the source's table with them, so that the statements that scan it
/// several times read local files instead of asking the topic or Spark again. A Kafka
/// source's bad-row accounting happens during this one read. Returns the directories, removed
/// when dropped: keep them until the run ends.
pub async fn stage_local(
    ctx: &datafusion::prelude::SessionContext,
    job: &crate::spec::RenderedJob,
    spill_dir: Option<&std::path::Path>,
) -> crate::Result<Vec<tempfile::TempDir>> {
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::prelude::ParquetReadOptions;
    let mut staged = Vec::new();
    for source in job.sources.iter().filter(|s| is_streamed(s)) {
        let fail = |what: &str, e: crate::BoxError| {
            crate::EngineError::source_failed(&source.name, what, e)
        };
        let mut builder = tempfile::Builder::new();
        let prefix = format!("kiln-{}-", source.format.as_str());
        builder.prefix(&prefix);
        let dir = match spill_dir {
            Some(d) => builder.tempdir_in(d),
            None => builder.tempdir(),
        }
        .map_err(|e| fail("creating a staging directory", e.into()))?;
        let df = ctx.table(source.name.as_str()).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let url = format!("{}/", dir.path().display());
        df.write_parquet(&url, DataFrameWriteOptions::new(), None)
            .await
            .map_err(|e| fail("reading the source into the staging directory", e.into()))?;
        ctx.deregister_table(source.name.as_str())?;
        let written = std::fs::read_dir(dir.path())
            .map_err(|e| fail("listing the staging directory", e.into()))?
            .count();
        if written == 0 {
            let empty = datafusion::datasource::empty::EmptyTable::new(schema);
            ctx.register_table(source.name.as_str(), Arc::new(empty))?;
        } else {
            let options = ParquetReadOptions::default().schema(&schema);
            ctx.register_parquet(source.name.as_str(), &url, options)
                .await
                .map_err(|e| fail("registering the staged records", e.into()))?;
        }
        staged.push(dir);
    }
    Ok(staged)
}

/// Whether a source is streamed from a remote system (and staged once by local runs).
fn is_streamed(source: &crate::spec::SourceSpec) -> bool {
    match source.format {
        crate::spec::SourceFormat::Kafka => true,
        crate::spec::SourceFormat::Spark => source.spark.read == crate::spec::SparkRead::Arrow,
        _ => false,
    }
}

/// `.../dt=2026-11-21/part-0.csv` -> `2026-11-21` for column `dt`.
pub(crate) fn partition_value_of(url: &str, column: &str) -> Option<String> {
    let key = format!("{column}=");
    url.split('/')
        .find_map(|seg| seg.strip_prefix(&key))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_partition_values() {
        assert_eq!(
            partition_value_of("file:///x/dt=2026-11-21/p.csv", "dt").as_deref(),
            Some("2026-11-21")
        );
        assert_eq!(partition_value_of("file:///x/p.csv", "dt"), None);
    }
}
