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
    #[arg(long, value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    pub json: bool,
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
    let spec = JobSpec::load(&args.spec)?;
    let overrides = Overrides {
        sources: args.overrides.sources,
        out: args.overrides.out,
    };
    let mode = match args.cluster {
        Some(url) => kiln_engine::Mode::Cluster(url),
        None => kiln_engine::Mode::Local,
    };
    let runtime = super::runtime()?;
    let report = runtime
        .block_on(kiln_engine::run_features_on(
            &spec, args.date, &overrides, &mode,
        ))
        .with_context(|| format!("features for {} on {}", spec.name, args.date))?;
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
