//! The job spec (TOML): sources, feature SQL, outputs. See `docs/job-spec.md`.
//!
//! A spec is loaded once ([`JobSpec::load`]), then rendered for a run date and command-line
//! overrides ([`JobSpec::render`]) into a [`RenderedJob`] whose every URL is absolute and
//! whose every template has been expanded. Mistakes are reported with the spec path and the
//! offending name before any data is read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::template;

/// A spec mistake, always naming the spec file and the offending item.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct SpecError {
    /// The spec file.
    pub path: String,
    /// What is wrong, naming the section/source/statement/field.
    pub what: String,
    /// The underlying error (I/O, TOML, URL), when there is one.
    #[source]
    pub cause: Option<crate::BoxError>,
}

/// A source URL, output location or path that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// `file://` followed by a relative path.
    #[error("`{0}`: file:// URLs must be absolute")]
    RelativeFileUrl(String),
    /// `s3://` without a bucket, `hdfs://` without a name node.
    #[error("`{0}`: expected s3://BUCKET/PREFIX or hdfs://NAMENODE:PORT/PATH")]
    MissingBucket(String),
    /// A `kafka://` URL that does not parse.
    #[error("{0}")]
    Kafka(String),
    /// An `sc://` (Spark Connect) URL that does not parse.
    #[error("{0}")]
    Spark(String),
    /// A scheme Kiln cannot read or write.
    #[error(
        "`{url}`: unsupported scheme `{scheme}` (expected file://, s3://, hdfs://, kafka:// or sc://)"
    )]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// An empty path.
    #[error("empty path")]
    Empty,
}

/// A source or statement name that is not a SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: names must be SQL identifiers ([A-Za-z_][A-Za-z0-9_]*)")]
pub struct IdentifierError(pub String);

/// The largest `days` offset a source may use (ten years each way).
pub const MAX_DAY_OFFSET: i64 = 3660;
/// The most shards an output may have (shard names have five digits).
pub const MAX_SHARDS: u32 = 99_999;

/// The job spec as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name (used for model names, run records, default paths).
    pub name: String,
    /// Optional description.
    #[serde(default)]
    pub description: Option<String>,
    /// Engine settings (partitions, batch size, memory pool).
    #[serde(default)]
    pub engine: EngineConfig,
    /// Input tables.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// Named SQL statements, run in order; each may use sources and earlier statements.
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    /// Which statements to write as committed sharded datasets.
    #[serde(default)]
    pub outputs: Vec<OutputSpec>,
    /// What to do with malformed input rows: `fail` (default) or `reject`.
    #[serde(default)]
    pub on_bad_rows: BadRowPolicy,
    /// Where rejected rows go when `on_bad_rows = "reject"` (templated).
    #[serde(default)]
    pub rejects_location: Option<String>,
    /// The trainer's section, interpreted by `kiln-trainer` (kept raw here).
    #[serde(default)]
    pub train: Option<toml::Table>,
    /// The daily pipeline's section (`kiln run`: model repository, gate, retries, sensors,
    /// schedule, alerts), interpreted by `kiln-jobs` (kept raw here). See `docs/pipeline.md`.
    #[serde(default)]
    pub pipeline: Option<toml::Table>,
    /// The file this spec came from.
    #[serde(skip)]
    pub path: PathBuf,
    /// SHA-256 of the spec file's bytes.
    #[serde(skip)]
    pub sha256: String,
}

/// DataFusion session settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Partitions per operator; default 2 x the number of cores.
    pub target_partitions: Option<usize>,
    /// Rows per Arrow batch; default 32768.
    pub batch_size: Option<usize>,
    /// Memory pool for sorts/joins/aggregations, e.g. `"4GiB"`; they spill to disk above it.
    /// Default: half of physical memory.
    pub memory_limit: Option<String>,
    /// Directory for spill files (default: the system temporary directory).
    pub spill_dir: Option<String>,
    /// Any other DataFusion setting by its full key, e.g.
    /// `"datafusion.execution.parquet.pushdown_filters" = "true"` (applied after Kiln's own;
    /// an unknown key or a bad value is an error naming it).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// Input file formats.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Comma-separated values with a header line (options: `delimiter`, `has_header`).
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
    /// An Apache Kafka topic (`kafka://HOST:PORT[,...]/TOPIC`), bounded by `days` through
    /// record timestamps; options under `[sources.kafka]`.
    Kafka,
    /// A Spark table or query through Spark Connect (`sc://HOST:PORT`); options under
    /// `[sources.spark]`.
    Spark,
}

impl SourceFormat {
    /// The format's name in specs and lineage.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Csv => "csv",
            SourceFormat::Jsonl => "jsonl",
            SourceFormat::Parquet => "parquet",
            SourceFormat::Kafka => "kafka",
            SourceFormat::Spark => "spark",
        }
    }
}

/// One input table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Table name in SQL.
    pub name: String,
    /// `file://`, `s3://` URL or a path (relative to the spec file's directory); templated.
    pub url: String,
    /// File format.
    pub format: SourceFormat,
    /// Explicit schema as `"column type"` strings, in file column order (required for CSV
    /// and JSON lines; optional for Parquet, where it is checked against the files).
    /// Types: bool, int32, int64, float32, float64, string, date, timestamp (UTC, µs).
    #[serde(default)]
    pub schema: Option<Vec<String>>,
    /// Hive-style partition column (directories `COLUMN=VALUE/`), e.g. `dt`.
    #[serde(default)]
    pub partition_column: Option<String>,
    /// Day partitions to read, relative to the run date, inclusive: `[-7, 1]` reads
    /// `dt=D-7` .. `dt=D+1`. Each must exist, or the run fails naming the missing path.
    #[serde(default)]
    pub days: Option<[i64; 2]>,
    /// CSV options.
    #[serde(default)]
    pub csv: CsvOptions,
    /// Kafka options (format `kafka`).
    #[serde(default)]
    pub kafka: KafkaOptions,
    /// Spark options (format `spark`).
    #[serde(default)]
    pub spark: SparkOptions,
}

/// How a Spark source's rows reach Kiln.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SparkRead {
    /// Spark runs the query and streams its result as Arrow batches.
    #[default]
    Arrow,
    /// Spark names the table's files (`inputFiles`) and Kiln reads them itself: no data
    /// through the Spark driver.
    Files,
}

impl SparkRead {
    /// The mode's name in specs and lineage.
    pub fn as_str(self) -> &'static str {
        match self {
            SparkRead::Arrow => "arrow",
            SparkRead::Files => "files",
        }
    }
}

/// Options of a Spark source (`[sources.spark]`): exactly one of `table` and `query`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkOptions {
    /// A table of Spark's catalog (`db.events`); `partition_column` and `days` become a filter
    /// Spark pushes down.
    #[serde(default)]
    pub table: Option<String>,
    /// A Spark SQL query (templated, e.g. `WHERE dt = '{{ ds }}'`), instead of `table`.
    #[serde(default)]
    pub query: Option<String>,
    /// `arrow` (default) or `files` (`table` only).
    #[serde(default)]
    pub read: SparkRead,
    /// Bound, in seconds, on each call that must answer before data flows (connecting, the
    /// schema, the file list); default 30.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

/// How a Kafka record's value is read.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// One JSON object per record, strictly checked against the declared `schema` (as JSON
    /// lines are).
    #[default]
    Json,
    /// The value's bytes as a binary column `_value`.
    Raw,
}

/// Options of a Kafka source (`[sources.kafka]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOptions {
    /// How values are read (default `json`).
    #[serde(default)]
    pub value_format: ValueFormat,
    /// librdkafka properties that are not secrets (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, ...). Secrets come from `KILN_KAFKA_*` environment variables.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    /// Bound on each request to the brokers, in seconds (default 30, or
    /// `KILN_KAFKA_TIMEOUT_SECS`).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// A partition's range is read as several table partitions of at most this many offsets
    /// (default 1,000,000).
    #[serde(default)]
    pub split_records: Option<i64>,
}

/// How a day partition's value is written in its directory name, `<partition_column>=VALUE`
/// (`dt=2026-11-21`): the layout `days` reads and a pipeline sensor on a source waits for.
pub const PARTITION_DATE_FORMAT: &str = "%Y-%m-%d";

impl SourceSpec {
    /// The directory of the day partition `date + offset` of this source, as `days` reads it:
    /// `<url>/<partition_column>=YYYY-MM-DD/` (on a rendered source, an absolute URL). `None`
    /// when the source has no `partition_column` or the day is outside the calendar.
    pub fn day_partition_url(&self, date: NaiveDate, offset: i64) -> Option<String> {
        let column = self.partition_column.as_ref()?;
        let day = date.checked_add_signed(chrono::Duration::try_days(offset)?)?;
        Some(format!(
            "{}/{column}={}/",
            self.url.trim_end_matches('/'),
            day.format(PARTITION_DATE_FORMAT)
        ))
    }
}

/// CSV format options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field delimiter (one byte), default `,`.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Whether the first line of each file is a header, default true.
    #[serde(default = "default_true")]
    pub has_header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: ',',
            has_header: true,
        }
    }
}

fn default_delimiter() -> char {
    ','
}
pub(crate) fn default_true() -> bool {
    true
}

/// One named SQL statement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Name the statement's result is registered under (a view).
    pub name: String,
    /// The SQL, templated with the run date.
    pub sql: String,
    /// Compute once and keep in memory instead of recomputing at each use.
    #[serde(default)]
    pub materialize: bool,
}

/// Parquet compression of an output (`parquet_compression`): a closed set; the levels are
/// Kiln's defaults (zstd 3, gzip 6).
#[derive(
    Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCodec {
    /// Uncompressed.
    None,
    /// Snappy.
    Snappy,
    /// Zstandard, level 3 (the default).
    #[default]
    Zstd,
    /// Gzip, level 6.
    Gzip,
}

impl ParquetCodec {
    /// The connectors' compression setting.
    pub fn compression(self) -> kiln_connectors::ParquetCompression {
        use kiln_connectors::ParquetCompression as P;
        match self {
            ParquetCodec::None => P::None,
            ParquetCodec::Snappy => P::Snappy,
            ParquetCodec::Zstd => P::Zstd(3),
            ParquetCodec::Gzip => P::Gzip(6),
        }
    }
}

/// One committed dataset written from a statement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The statement (feature name) to write.
    pub statement: String,
    /// Dataset location (templated); relative paths resolve against the spec directory.
    pub location: String,
    /// Column that assigns rows to shards (hash) and orders rows inside each shard.
    pub key: String,
    /// Number of shards.
    pub shards: u32,
    /// One or both formats, written side by side.
    pub formats: Vec<kiln_connectors::ShardFormat>,
    /// TFRecord compression: none | gzip | zlib (default gzip).
    #[serde(default = "default_tfrecord_compression")]
    pub tfrecord_compression: kiln_connectors::Compression,
    /// DEFLATE level 0..=9 of gzip/zlib TFRecord shards (default 6, TensorFlow's; 1 writes
    /// several times faster for somewhat larger files: docs/datasets.md).
    #[serde(default = "default_tfrecord_compression_level")]
    pub tfrecord_compression_level: u32,
    /// Parquet compression: none | snappy | zstd | gzip (default zstd).
    #[serde(default)]
    pub parquet_compression: ParquetCodec,
    /// Column statistics computed while the shards are written, committed as
    /// `_stats.json` (default true; `docs/validation.md`).
    #[serde(default = "default_true")]
    pub statistics: bool,
    /// After each commit, register the run's Parquet shards as partition
    /// `spark_partition_column = <run date>` of this Spark table (`[catalog.][db.]table`,
    /// created as an external Parquet table if missing), through Spark Connect at `spark_url`.
    #[serde(default)]
    pub spark_table: Option<String>,
    /// The Spark Connect URL (`sc://HOST:PORT`) for `spark_table`.
    #[serde(default)]
    pub spark_url: Option<String>,
    /// The partition column of `spark_table` (default `dt`).
    #[serde(default)]
    pub spark_partition_column: Option<String>,
    /// Expectations checked on the statistics at commit (`[[outputs.expect]]`; see
    /// `docs/validation.md`). After loading, the entries of `expect_file` come first.
    #[serde(default)]
    pub expect: Vec<kiln_connectors::stats::Expectation>,
    /// A file of `[[expect]]` entries (e.g. written by `kiln schema infer`), relative to the
    /// spec's directory.
    #[serde(default)]
    pub expect_file: Option<String>,
    /// The dataset drift and relative checks compare with (templated URL). Default: this
    /// output's location for the day before the run date. After rendering: the absolute URL.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Set by rendering: `baseline` is the default (the previous day of this output).
    #[serde(skip)]
    pub baseline_is_previous_day: bool,
}

impl OutputSpec {
    /// The partition column of `spark_table`.
    pub fn spark_partition_column(&self) -> &str {
        self.spark_partition_column.as_deref().unwrap_or("dt")
    }
}

/// TensorFlow's (and zlib's) default DEFLATE level.
pub(crate) fn default_tfrecord_compression_level() -> u32 {
    kiln_connectors::tfrecord::DEFAULT_COMPRESSION_LEVEL
}

fn default_tfrecord_compression() -> kiln_connectors::Compression {
    kiln_connectors::Compression::Gzip
}

/// Malformed input row policy.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BadRowPolicy {
    /// The job fails, naming the file and line.
    #[default]
    Fail,
    /// Bad rows go to `rejects_location` and are counted; the job continues.
    Reject,
}

/// Command-line overrides applied when rendering.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--source NAME=URL`.
    pub sources: Vec<(String, String)>,
    /// `--out URL`: base location replacing the directory part of every output location
    /// (outputs then go to `URL/<statement>/`).
    pub out: Option<String>,
    /// `--replay MANIFEST`: per Kafka source, the offset ranges an earlier run read (read
    /// again exactly, no timestamp lookup).
    pub kafka_replay: std::collections::BTreeMap<String, Vec<kiln_connectors::kafka::OffsetRange>>,
    /// Where each output's write reports its progress (a terminal's bar); `None`: nowhere.
    pub progress: Option<crate::progress::ProgressHook>,
}

/// A spec rendered for one date: templates expanded, URLs absolute, names checked.
#[derive(Debug, Clone)]
pub struct RenderedJob {
    /// The spec as written.
    pub spec: JobSpec,
    /// The run date.
    pub date: NaiveDate,
    /// Sources with rendered absolute URLs.
    pub sources: Vec<SourceSpec>,
    /// Statements with rendered SQL.
    pub features: Vec<FeatureSpec>,
    /// Outputs with rendered absolute locations.
    pub outputs: Vec<OutputSpec>,
    /// Rendered absolute rejects location (when the policy is `reject`).
    pub rejects_location: Option<String>,
    /// `--replay`: recorded offset ranges per Kafka source.
    pub kafka_replay: std::collections::BTreeMap<String, Vec<kiln_connectors::kafka::OffsetRange>>,
}

impl JobSpec {
    /// Reads and parses a spec file; checks names and structure (not SQL).
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let err = |what: &str, cause: crate::BoxError| SpecError {
            path: path.display().to_string(),
            what: what.to_string(),
            cause: Some(cause),
        };
        let bytes = std::fs::read(path).map_err(|e| err("cannot read spec", e.into()))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| err("not UTF-8", e.into()))?;
        let mut spec: JobSpec =
            toml::from_str(text).map_err(|e| err("not a valid job spec", e.into()))?;
        spec.path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        spec.sha256 = hex::encode(Sha256::digest(&bytes));
        spec.check_names()?;
        spec.load_expectations()?;
        Ok(spec)
    }

    /// Reads each output's `expect_file` (its entries go before the inline ones) and checks
    /// every expectation, naming the output, the entry and the key.
    fn load_expectations(&mut self) -> Result<(), SpecError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for i in 0..self.outputs.len() {
            let statement = self.outputs[i].statement.clone();
            let mut entries = Vec::new();
            if let Some(file) = &self.outputs[i].expect_file {
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.error_caused(
                        format!("outputs `{statement}`: expect_file {}", path.display()),
                        e,
                    )
                })?;
                let parsed: kiln_connectors::stats::ExpectationsFile = toml::from_str(&text)
                    .map_err(|e| {
                        self.error_caused(
                            format!("outputs `{statement}`: expect_file {}", path.display()),
                            e,
                        )
                    })?;
                for (k, e) in parsed.expect.iter().enumerate() {
                    e.check().map_err(|m| {
                        self.error(format!(
                            "outputs `{statement}`: expect_file {} entry {}: {m}",
                            path.display(),
                            k + 1
                        ))
                    })?;
                }
                entries = parsed.expect;
            }
            for (k, e) in self.outputs[i].expect.iter().enumerate() {
                e.check().map_err(|m| {
                    self.error(format!(
                        "outputs `{statement}`: [[outputs.expect]] entry {}: {m}",
                        k + 1
                    ))
                })?;
            }
            let o = &mut self.outputs[i];
            entries.append(&mut o.expect);
            o.expect = entries;
            if !o.statistics && (!o.expect.is_empty() || o.baseline.is_some()) {
                return Err(self.error(format!(
                    "outputs `{statement}`: expectations and baseline are checked on the \
                     statistics: they need statistics = true"
                )));
            }
        }
        Ok(())
    }

    /// Builds an error naming this spec's file.
    pub fn error(&self, what: impl Into<String>) -> SpecError {
        SpecError {
            path: self.path.display().to_string(),
            what: what.into(),
            cause: None,
        }
    }

    /// Builds an error naming this spec's file and item `what`, caused by `cause`.
    pub fn error_caused(
        &self,
        what: impl Into<String>,
        cause: impl Into<crate::BoxError>,
    ) -> SpecError {
        SpecError {
            path: self.path.display().to_string(),
            what: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// The directory relative paths resolve against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The spec file's text under its file name, then the files it names relative to its
    /// directory (each output's `expect_file`), once each: what a copy of the job elsewhere
    /// (a Kubernetes ConfigMap) must carry for the spec to load there.
    pub fn files(&self) -> Result<Vec<(String, String)>, SpecError> {
        let read = |rel: &str, p: &Path| {
            std::fs::read_to_string(p)
                .map(|text| (rel.to_string(), text))
                .map_err(|e| self.error_caused(format!("reading {}", p.display()), e))
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = vec![read(&name, &self.path)?];
        let dir = self.base_dir();
        for o in &self.outputs {
            if let Some(f) = &o.expect_file
                && !files.iter().any(|(n, _)| n == f)
            {
                files.push(read(f, &dir.join(f))?);
            }
        }
        Ok(files)
    }

    fn check_spark_source(&self, s: &SourceSpec) -> Result<(), SpecError> {
        let err = |m: &str| self.error(format!("source `{}`: {m}", s.name));
        match (&s.spark.table, &s.spark.query) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(err(
                    "a spark source names exactly one of spark.table (a table of Spark's \
                     catalog) and spark.query (Spark SQL)",
                ));
            }
            (Some(table), None) => {
                let parts: Vec<&str> = table.split('.').collect();
                if parts.len() > 3 || parts.iter().any(|p| check_identifier(p).is_err()) {
                    return Err(err(&format!(
                        "spark.table `{table}` is not a table name ([catalog.][db.]table of \
                         SQL identifiers)"
                    )));
                }
            }
            (None, Some(_)) => {
                if s.spark.read == SparkRead::Files {
                    return Err(err(
                        "spark.read = \"files\" reads a table's files: name spark.table, or \
                         use read = \"arrow\" for a query",
                    ));
                }
                if s.partition_column.is_some() || s.days.is_some() {
                    return Err(err(
                        "a spark.query selects its own rows: put the date filter in the query \
                         (`WHERE dt = '{{ ds }}'`) instead of partition_column/days",
                    ));
                }
            }
        }
        if s.days.is_some() != s.partition_column.is_some() {
            return Err(err(
                "partition_column and days go together on a spark table (e.g. \"dt\" and \
                 [-7, 1])",
            ));
        }
        if s.spark
            .timeout_secs
            .is_some_and(|t| !(t > 0.0 && t.is_finite()))
        {
            return Err(err(
                "spark.timeout_secs must be a positive number of seconds",
            ));
        }
        Ok(())
    }

    fn check_spark_table(&self, o: &OutputSpec) -> Result<(), SpecError> {
        let err = |m: String| self.error(format!("outputs `{}`: {m}", o.statement));
        let Some(table) = &o.spark_table else {
            if o.spark_url.is_some() || o.spark_partition_column.is_some() {
                return Err(err(
                    "spark_url and spark_partition_column only go with spark_table".into(),
                ));
            }
            return Ok(());
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 3 || parts.iter().any(|p| check_identifier(p).is_err()) {
            return Err(err(format!(
                "spark_table `{table}` is not a table name ([catalog.][db.]table of SQL \
                 identifiers)"
            )));
        }
        check_identifier(o.spark_partition_column())
            .map_err(|e| err(format!("spark_partition_column: {e}")))?;
        let Some(url) = &o.spark_url else {
            return Err(err(format!(
                "spark_table `{table}` needs spark_url = \"sc://HOST:PORT\" (the Spark \
                 Connect server that registers the partitions)"
            )));
        };
        kiln_connectors::spark::SparkAddress::parse(url).map_err(|e| err(e.to_string()))?;
        if o.formats != [kiln_connectors::ShardFormat::Parquet] {
            return Err(err(format!(
                "spark_table `{table}` needs formats = [\"parquet\"]: the partition is the run's \
                 directory of shards, and Spark's catalog reads every file in a partition \
                 directory (it ignores pathGlobFilter there), so TFRecord shards beside the \
                 Parquet ones would fail its scans. Write the TFRecord shards from a second \
                 [[outputs]] of the same statement"
            )));
        }
        Ok(())
    }

    fn check_names(&self) -> Result<(), SpecError> {
        let mut names = BTreeSet::new();
        for s in &self.sources {
            check_identifier(&s.name)
                .map_err(|e| self.error(format!("source `{}`: {e}", s.name)))?;
            if !names.insert(s.name.to_ascii_lowercase()) {
                return Err(self.error(format!("source `{}` is defined twice", s.name)));
            }
            let needs_schema = match s.format {
                SourceFormat::Csv | SourceFormat::Jsonl => true,
                SourceFormat::Kafka => s.kafka.value_format == ValueFormat::Json,
                SourceFormat::Parquet | SourceFormat::Spark => false,
            };
            if needs_schema && s.schema.is_none() {
                return Err(self.error(format!(
                    "source `{}`: format {} needs an explicit `schema`",
                    s.name,
                    s.format.as_str()
                )));
            }
            if s.format == SourceFormat::Csv
                && (!s.csv.delimiter.is_ascii() || matches!(s.csv.delimiter, '\n' | '\r' | '"'))
            {
                return Err(self.error(format!(
                    "source `{}`: csv.delimiter {:?} must be one ASCII character other than a \
                     quote or a line break",
                    s.name, s.csv.delimiter
                )));
            }
            if let Some([from, to]) = s.days {
                if from > to {
                    return Err(self.error(format!(
                        "source `{}`: days = [{from}, {to}] is reversed (expected [first, last], \
                         e.g. [-7, 0])",
                        s.name
                    )));
                }
                if from.abs() > MAX_DAY_OFFSET || to.abs() > MAX_DAY_OFFSET {
                    return Err(self.error(format!(
                        "source `{}`: days = [{from}, {to}]: offsets must be within \
                         ±{MAX_DAY_OFFSET} days of the run date",
                        s.name
                    )));
                }
            }
            if s.format == SourceFormat::Kafka {
                if s.partition_column.is_some() {
                    return Err(self.error(format!(
                        "source `{}`: a kafka source has no `partition_column`: `days` selects \
                         records by their Kafka timestamps",
                        s.name
                    )));
                }
                kiln_connectors::kafka::check_spec_properties(&s.kafka.properties)
                    .map_err(|e| self.error(format!("source `{}`: {e}", s.name)))?;
                if s.kafka
                    .timeout_secs
                    .is_some_and(|t| !(t > 0.0 && t.is_finite()))
                {
                    return Err(self.error(format!(
                        "source `{}`: kafka.timeout_secs must be a positive number of seconds",
                        s.name
                    )));
                }
                if s.kafka.split_records.is_some_and(|n| n < 1) {
                    return Err(self.error(format!(
                        "source `{}`: kafka.split_records must be at least 1",
                        s.name
                    )));
                }
                if s.days.is_none() {
                    return Err(self.error(format!(
                        "source `{}`: a kafka source needs `days` (e.g. [0, 0] for the run \
                         date): a daily job reads a bounded window of the topic",
                        s.name
                    )));
                }
            } else if s.format == SourceFormat::Spark {
                self.check_spark_source(s)?;
            } else if s.days.is_some() && s.partition_column.is_none() {
                return Err(self.error(format!(
                    "source `{}`: `days` needs `partition_column` (e.g. \"dt\")",
                    s.name
                )));
            }
            if let Some(schema) = &s.schema {
                crate::schema::parse_schema(schema)
                    .map_err(|e| self.error(format!("source `{}`: schema: {e}", s.name)))?;
            }
        }
        for f in &self.features {
            check_identifier(&f.name)
                .map_err(|e| self.error(format!("features `{}`: {e}", f.name)))?;
            if !names.insert(f.name.to_ascii_lowercase()) {
                return Err(self.error(format!(
                    "features `{}`: name already used by a source or an earlier statement",
                    f.name
                )));
            }
        }
        if self.outputs.is_empty() {
            return Err(self.error("no [[outputs]]: nothing would be written"));
        }
        for o in &self.outputs {
            if !self.features.iter().any(|f| f.name == o.statement) {
                return Err(self.error(format!(
                    "outputs: unknown statement `{}` (statements: {})",
                    o.statement,
                    self.features
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if o.shards == 0 || o.shards > MAX_SHARDS {
                return Err(self.error(format!(
                    "outputs `{}`: shards must be in 1..={MAX_SHARDS} (shard files are named \
                     part-NNNNN-of-NNNNN), got {}",
                    o.statement, o.shards
                )));
            }
            if o.formats.is_empty() {
                return Err(self.error(format!(
                    "outputs `{}`: formats is empty (use [\"tfrecord\"], [\"parquet\"] or both)",
                    o.statement
                )));
            }
            if o.tfrecord_compression_level > 9 {
                return Err(self.error(format!(
                    "outputs `{}`: tfrecord_compression_level must be in 0..=9, got {}",
                    o.statement, o.tfrecord_compression_level
                )));
            }
            self.check_spark_table(o)?;
        }
        if self.on_bad_rows == BadRowPolicy::Reject && self.rejects_location.is_none() {
            return Err(self.error("on_bad_rows = \"reject\" needs `rejects_location`"));
        }
        Ok(())
    }

    /// Expands templates for `date`, applies overrides and resolves relative paths.
    pub fn render(&self, date: NaiveDate, overrides: &Overrides) -> Result<RenderedJob, SpecError> {
        for (name, _) in &overrides.sources {
            if !self.sources.iter().any(|s| &s.name == name) {
                return Err(self.error(format!(
                    "--source {name}=...: unknown source `{name}` (sources: {})",
                    self.sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let render = |what: &str, text: &str| {
            template::render(text, date).map_err(|e| self.error(format!("{what}: {e}")))
        };
        let mut sources = Vec::new();
        for s in &self.sources {
            let mut s = s.clone();
            let raw = overrides
                .sources
                .iter()
                .rev()
                .find(|(n, _)| n == &s.name)
                .map(|(_, u)| u.clone())
                .unwrap_or_else(|| s.url.clone());
            let url = render(&format!("source `{}` url", s.name), &raw)?;
            s.url = self
                .absolute_url(&url)
                .map_err(|e| self.error_caused(format!("source `{}` url", s.name), e))?;
            let is_spark_url = s.url.starts_with("sc://");
            if is_spark_url != (s.format == SourceFormat::Spark) {
                return Err(self.error(format!(
                    "source `{}`: url {} does not fit format {} (spark sources, and only they, \
                     have sc:// URLs)",
                    s.name,
                    kiln_connectors::spark::SparkAddress::parse(&s.url)
                        .map(|a| a.redacted().to_string())
                        .unwrap_or_else(|_| s.url.clone()),
                    s.format.as_str()
                )));
            }
            if let Some(q) = &s.spark.query {
                s.spark.query = Some(render(&format!("source `{}` spark.query", s.name), q)?);
            }
            let is_kafka_url = s.url.starts_with("kafka://");
            if is_kafka_url != (s.format == SourceFormat::Kafka) {
                if !is_kafka_url || s.schema.is_none() {
                    return Err(self.error(format!(
                        "source `{}`: url {} does not fit format {}{}",
                        s.name,
                        s.url,
                        s.format.as_str(),
                        if is_kafka_url {
                            " and the source declares no `schema` for the JSON values"
                        } else {
                            ""
                        }
                    )));
                }
                // `--source events=kafka://...`: the same table, read from a topic as JSON
                // values with the declared schema, the day window from record timestamps.
                s.format = SourceFormat::Kafka;
                s.partition_column = None;
                s.kafka.value_format = ValueFormat::Json;
            }
            sources.push(s);
        }
        let mut features = Vec::new();
        for f in &self.features {
            let mut f = f.clone();
            f.sql = render(&format!("features `{}` sql", f.name), &f.sql)?;
            features.push(f);
        }
        let mut outputs = Vec::new();
        for o in &self.outputs {
            let mut o = o.clone();
            let template_location = o.location.clone();
            let location = render(&format!("outputs `{}` location", o.statement), &o.location)?;
            let location = match &overrides.out {
                Some(base) => format!("{}/{}/", base.trim_end_matches('/'), o.statement),
                None => location,
            };
            o.location = self
                .absolute_url(&location)
                .map_err(|e| self.error_caused(format!("outputs `{}` location", o.statement), e))?;
            let what = format!("outputs `{}` baseline", o.statement);
            let baseline = match &o.baseline {
                Some(b) => render(&what, b)?,
                None => match (&overrides.out, date.pred_opt()) {
                    (Some(_), _) => o.location.clone(),
                    (None, Some(previous)) => template::render(&template_location, previous)
                        .map_err(|e| self.error(format!("{what}: {e}")))?,
                    (None, None) => o.location.clone(),
                },
            };
            o.baseline_is_previous_day = o.baseline.is_none();
            o.baseline = Some(
                self.absolute_url(&baseline)
                    .map_err(|e| self.error_caused(&what, e))?,
            );
            outputs.push(o);
        }
        let rejects_location = match &self.rejects_location {
            Some(r) => {
                let r = render("rejects_location", r)?;
                Some(
                    self.absolute_url(&r)
                        .map_err(|e| self.error_caused("rejects_location", e))?,
                )
            }
            None => None,
        };
        Ok(RenderedJob {
            spec: self.clone(),
            date,
            sources,
            features,
            outputs,
            rejects_location,
            kafka_replay: overrides.kafka_replay.clone(),
        })
    }

    /// Turns a path or URL into an absolute URL; relative paths resolve against the spec dir.
    pub fn absolute_url(&self, url: &str) -> Result<String, UrlError> {
        absolute_url(url, &self.base_dir())
    }
}

/// Turns a path or URL into an absolute URL ending in `/` for directories given with one;
/// relative paths resolve against `base`. Supported schemes: `file`, `s3`, `hdfs` and (for
/// sources) `kafka`.
pub fn absolute_url(url: &str, base: &Path) -> Result<String, UrlError> {
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(UrlError::RelativeFileUrl(url.to_string()));
                }
                Ok(url.to_string())
            }
            "s3" | "hdfs" => {
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(UrlError::MissingBucket(url.to_string()));
                }
                Ok(url.to_string())
            }
            "kafka" => kiln_connectors::kafka::KafkaAddress::parse(url)
                .map(|a| a.url())
                .map_err(|e| UrlError::Kafka(e.to_string())),
            // Kept as given (its token, if any, is needed to connect); lineage and messages
            // use the redacted form.
            "sc" => kiln_connectors::spark::SparkAddress::parse(url)
                .map(|_| url.to_string())
                .map_err(|e| UrlError::Spark(e.to_string())),
            other => Err(UrlError::UnsupportedScheme {
                url: url.to_string(),
                scheme: other.to_string(),
            }),
        };
    }
    if url.is_empty() {
        return Err(UrlError::Empty);
    }
    let path = Path::new(url);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut s = format!(
        "file://{}",
        kiln_connectors::store::normalize(&abs).display()
    );
    if url.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

fn check_identifier(name: &str) -> Result<(), IdentifierError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(IdentifierError(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_spec(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("job.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = r#"
name = "t"
[[sources]]
name = "events"
url = "data/events"
format = "parquet"
partition_column = "dt"
days = [-7, 1]
[[features]]
name = "x"
sql = "SELECT * FROM events WHERE ts >= TIMESTAMP '{{ ds | add_days(-7) }}'"
[[outputs]]
statement = "x"
location = "out/x/dt={{ ds }}/"
key = "event_id"
shards = 4
formats = ["tfrecord", "parquet"]
"#;

    #[test]
    fn bad_spec_values_are_spec_errors() {
        let dir = tempfile::tempdir().unwrap();
        let load_err = |text: &str| {
            let p = write_spec(dir.path(), text);
            let e = JobSpec::load(&p).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            e
        };
        let e = load_err(&GOOD.replace("days = [-7, 1]", "days = [1, -7]"));
        assert!(e.contains("days = [1, -7] is reversed"), "{e}");
        let e = load_err(&GOOD.replace("days = [-7, 1]", "days = [-7, 9223372036854775807]"));
        assert!(e.contains("offsets must be within"), "{e}");
        let e = load_err(&GOOD.replace("shards = 4", "shards = 100000"));
        assert!(e.contains("shards must be in 1..=99999"), "{e}");
        let e =
            load_err(&GOOD.replace("shards = 4", "shards = 4\ntfrecord_compression_level = 10"));
        assert!(
            e.contains("outputs `x`: tfrecord_compression_level must be in 0..=9, got 10"),
            "{e}"
        );
        let e = load_err(&format!(
            "{GOOD}[[outputs.expect]]\nmax_null_fraction = 0.1\n"
        ));
        assert!(
            e.contains(
                "outputs `x`: [[outputs.expect]] entry 1: `max_null_fraction` needs a `column`"
            ),
            "{e}"
        );
        let e = load_err(&format!("{GOOD}expect_file = \"missing.toml\"\n"));
        assert!(
            e.contains("outputs `x`: expect_file") && e.contains("missing.toml"),
            "{e}"
        );
        let e = load_err(&format!(
            "{GOOD}statistics = false\n[[outputs.expect]]\ncolumn = \"a\"\nmax_null_fraction = 0.1\n"
        ));
        assert!(e.contains("they need statistics = true"), "{e}");
        // The default baseline is the output's location for the day before.
        let p = write_spec(dir.path(), GOOD);
        let spec = JobSpec::load(&p).unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let r = spec.render(d, &Overrides::default()).unwrap();
        let b = r.outputs[0].baseline.as_deref().unwrap();
        assert!(b.ends_with("/out/x/dt=2026-11-19/"), "{b}");
        assert!(r.outputs[0].baseline_is_previous_day);
        let csv = GOOD.replace(
            "format = \"parquet\"",
            "format = \"csv\"\nschema = [\"event_id int64\"]\ncsv = { delimiter = \"é\" }",
        );
        let e = load_err(&csv);
        assert!(
            e.contains("csv.delimiter 'é' must be one ASCII character"),
            "{e}"
        );
    }

    #[test]
    fn renders_relative_paths_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let spec = JobSpec::load(&write_spec(dir.path(), GOOD)).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let r = spec.render(date, &Overrides::default()).unwrap();
        let base = std::path::absolute(dir.path()).unwrap();
        assert_eq!(
            r.sources[0].url,
            format!("file://{}/data/events", base.display())
        );
        assert_eq!(
            r.outputs[0].location,
            format!("file://{}/out/x/dt=2026-11-21/", base.display())
        );
        assert!(r.features[0].sql.contains("TIMESTAMP '2026-11-14'"));
        let o = Overrides {
            sources: vec![("events".into(), "s3://b/ev/".into())],
            out: Some("/tmp/o".into()),
            ..Default::default()
        };
        let r = spec.render(date, &o).unwrap();
        assert_eq!(r.sources[0].url, "s3://b/ev/");
        assert_eq!(r.outputs[0].location, "file:///tmp/o/x/");
        let day = |offset| r.sources[0].day_partition_url(date, offset);
        assert_eq!(day(1).as_deref(), Some("s3://b/ev/dt=2026-11-22/"));
        assert_eq!(day(-21).as_deref(), Some("s3://b/ev/dt=2026-10-31/"));
        let mut unpartitioned = r.sources[0].clone();
        unpartitioned.partition_column = None;
        assert_eq!(unpartitioned.day_partition_url(date, 0), None);
    }

    #[test]
    fn reports_mistakes_with_path_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_spec(
            dir.path(),
            &GOOD.replace("statement = \"x\"", "statement = \"y\""),
        );
        let e = JobSpec::load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains("unknown statement `y`"), "{e}");

        let p = write_spec(dir.path(), &GOOD.replace("{{ ds }}/", "{{ dz }}/"));
        let spec = JobSpec::load(&p).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let e = spec
            .render(date, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outputs `x` location") && e.contains("unknown variable `dz`"),
            "{e}"
        );

        let o = Overrides {
            sources: vec![("evnts".into(), "/x".into())],
            out: None,
            ..Default::default()
        };
        let e = spec.render(date, &o).unwrap_err().to_string();
        assert!(e.contains("unknown source `evnts`"), "{e}");

        let p = write_spec(dir.path(), &GOOD.replace("data/events", "ftp://h/x"));
        let spec = JobSpec::load(&p).unwrap();
        let e = spec.render(date, &Overrides::default()).unwrap_err();
        // The message and its causes, as the binary prints them.
        let e = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        assert!(
            e.contains("source `events` url") && e.contains("unsupported scheme `ftp`"),
            "{e}"
        );

        let p = write_spec(
            dir.path(),
            &GOOD.replace("format = \"parquet\"", "format = \"csv\""),
        );
        let e = JobSpec::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("source `events`: format csv needs an explicit `schema`"),
            "{e}"
        );
    }
}
