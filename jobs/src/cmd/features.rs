//! `kiln features`: run a spec's feature SQL for one date and commit sharded datasets.

use std::path::PathBuf;

use anyhow::Context;
use chrono::NaiveDate;
use kiln_engine::{JobSpec, Overrides};

/// Arguments of `kiln features`.
#[derive(clap::Args)]
pub struct FeaturesArgs {
    /// The job spec (TOML).
    pub spec: PathBuf,
    /// Run date, YYYY-MM-DD (the day whose examples are built).
    #[arg(long)]
    pub date: NaiveDate,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Run on the Ballista cluster whose scheduler is at df://HOST:PORT (`kiln scheduler`);
    /// shards are written by the executors and committed here once all succeeded.
    #[arg(long, value_name = "df://HOST:PORT", conflicts_with = "engine")]
    pub cluster: Option<String>,
    /// Run the feature SQL on the Spark Connect server at sc://HOST:PORT (Spark Connect URL
    /// syntax, `;token=...` included): sources and statements become temporary views of one
    /// Spark session, and each output's rows stream back into the same shard writers,
    /// manifest and commit as a local run. Sources must be parquet or spark.
    #[arg(long, value_name = "sc://HOST:PORT")]
    pub engine: Option<String>,
    /// Read every Kafka source's exact offset ranges from this earlier run's manifest (a
    /// dataset location or its `_manifest.json`) instead of looking the day window up by
    /// timestamp: the rerun gives the same shards however far the topics have grown.
    #[arg(long, value_name = "MANIFEST_URL")]
    pub replay: Option<String>,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// At the end, write Prometheus metrics (duration, outcome, rows in/out/rejected, rows
    /// and bytes written) to PATH for node-exporter's textfile collector (written to
    /// PATH.tmp, then renamed). See `docs/observability.md`.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

/// Adds a feature run's metrics to `m`.
fn add_report_metrics(m: &mut crate::metrics::Exposition, r: &kiln_engine::FeaturesReport) {
    let job = r.job.as_str();
    for (source, c) in &r.bad_rows {
        let l: &[(&str, &str)] = &[("kiln_job", job), ("source", source)];
        m.counter(
            "kiln_features_source_rows_in_total",
            "Rows read from a validated text source.",
            l,
            c.rows_in as f64,
        );
        m.counter(
            "kiln_features_source_rows_out_total",
            "Rows of a validated text source passed on to the query.",
            l,
            c.rows_out as f64,
        );
        m.counter(
            "kiln_features_source_rows_rejected_total",
            "Rows of a validated text source rejected.",
            l,
            c.rows_rejected as f64,
        );
    }
    for o in &r.outputs {
        let l: &[(&str, &str)] = &[("kiln_job", job), ("output", &o.statement)];
        m.counter(
            "kiln_features_output_rows_total",
            "Rows written to an output dataset.",
            l,
            o.rows as f64,
        );
        m.counter(
            "kiln_features_output_bytes_total",
            "Bytes of shards written to an output dataset.",
            l,
            o.bytes as f64,
        );
        m.gauge(
            "kiln_features_output_shards",
            "Shards per format of an output dataset.",
            l,
            f64::from(o.shards),
        );
    }
    let files: usize = r.inputs.iter().map(|s| s.files.len()).sum();
    m.gauge(
        "kiln_features_input_files",
        "Input files read.",
        &[("kiln_job", job)],
        files as f64,
    );
}

/// The offset ranges `--replay URL`'s manifest recorded, by Kafka source.
fn replay_ranges(
    url: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<kiln_connectors::kafka::OffsetRange>>> {
    let location = url
        .trim_end_matches('/')
        .trim_end_matches(kiln_connectors::manifest::MANIFEST_FILE);
    let dataset =
        kiln_connectors::Dataset::open_blocking(location, kiln_connectors::OpenOptions::default())
            .with_context(|| format!("--replay {url}"))?;
    let ranges = kiln_engine::kafka::replay_ranges(&dataset.manifest().lineage);
    if ranges.is_empty() {
        anyhow::bail!("--replay {url}: the manifest records no Kafka offsets (no Kafka source)");
    }
    Ok(ranges)
}

/// Where a run reads and writes instead of the spec's locations (`--source`, `--out`): shared
/// by `kiln features`, `run`, `backfill` and `schedule`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OverrideArgs {
    /// Override a source's URL: NAME=URL (repeatable).
    #[arg(long = "source", value_name = "NAME=URL", value_parser = parse_source_override)]
    pub sources: Vec<(String, String)>,
    /// Write every feature output under URL/<statement>/ instead of the spec's locations.
    #[arg(long, value_name = "URL")]
    pub out: Option<String>,
}

/// `NAME=URL` -> `(NAME, URL)`.
pub fn parse_source_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, u)) if !n.is_empty() && !u.is_empty() => Ok((n.to_string(), u.to_string())),
        _ => Err(format!("expected NAME=URL, got `{s}`")),
    }
}

pub fn run(args: FeaturesArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let path = args.metrics_textfile.clone();
    let stem = args
        .spec
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let mut m = crate::metrics::Exposition::new();
    let mut job = None;
    let result = run_features(args, &mut m, &mut job);
    if path.is_some() {
        crate::metrics::add_outcome(
            &mut m,
            "features",
            &[("kiln_job", job.as_deref().unwrap_or(&stem))],
            started.elapsed().as_secs_f64(),
            result.is_ok(),
        );
        crate::metrics::write_if_asked(path.as_deref(), &m);
    }
    result
}

/// `kiln features`; adds the run's metrics to `m` and sets `job` to the spec's job name.
fn run_features(
    args: FeaturesArgs,
    m: &mut crate::metrics::Exposition,
    job: &mut Option<String>,
) -> anyhow::Result<()> {
    let spec = JobSpec::load(&args.spec)?;
    *job = Some(spec.name.clone());
    let kafka_replay = match &args.replay {
        Some(url) => replay_ranges(url)?,
        None => Default::default(),
    };
    let overrides = Overrides {
        sources: args.overrides.sources,
        out: args.overrides.out,
        kafka_replay,
        progress: crate::progress::features(),
    };
    let mode = match (args.cluster, args.engine) {
        (Some(url), _) => kiln_engine::Mode::Cluster(url),
        (None, Some(url)) => kiln_engine::Mode::Spark(url),
        (None, None) => kiln_engine::Mode::Local,
    };
    let runtime = super::runtime()?;
    let report = runtime
        .block_on(kiln_engine::run_features_on(
            &spec, args.date, &overrides, &mode,
        ))
        .with_context(|| format!("features for {} on {}", spec.name, args.date))?;
    if args.metrics_textfile.is_some() {
        add_report_metrics(m, &report);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    for o in &report.outputs {
        println!(
            "{}: {} rows -> {} shards x [{}], {} in {}",
            o.statement,
            o.rows,
            o.shards,
            o.formats.join(", "),
            super::human_bytes(o.bytes),
            o.location
        );
        if let Some(v) = &o.validation {
            super::stats::print_validation(&o.statement, v);
        }
    }
    for (source, c) in &report.bad_rows {
        println!(
            "{source}: rows_in {} = rows_out {} + rows_rejected {}",
            c.rows_in, c.rows_out, c.rows_rejected
        );
    }
    if let Some(f) = &report.rejects_file {
        println!("rejected rows written to {f}");
    }
    let files: usize = report.inputs.iter().map(|s| s.files.len()).sum();
    println!(
        "{} {}: {} input files, run {} in {:.2} s",
        report.job, report.date, files, report.run_id, report.seconds
    );
    Ok(())
}
