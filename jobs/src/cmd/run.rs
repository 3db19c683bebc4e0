//! `kiln run`: the daily pipeline for one date (see `docs/pipeline.md`).

use std::path::PathBuf;

use chrono::NaiveDate;

use kiln_pipeline::runner::{self, Request, Summary};
use kiln_pipeline::status::{RunStatus, Trigger};

/// Arguments of `kiln run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The job spec (TOML) with `[train]` and optionally `[pipeline]`.
    pub spec: PathBuf,
    /// Run date, YYYY-MM-DD.
    #[arg(long)]
    pub date: NaiveDate,
    #[command(flatten)]
    pub overrides: super::features::OverrideArgs,
    /// Rerun tasks that already succeeded for this date with the same inputs.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object (the run summary) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Prints a run summary (JSON or one human line; progress went to stderr already).
pub fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    let version = s
        .model_version
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    println!(
        "run {} {} {}: {}{} in {:.1} s",
        s.run_id, s.job, s.date, s.status, version, s.seconds
    );
    Ok(())
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let summary = runner::run(&Request {
        spec: args.spec,
        date: args.date,
        sources: args.overrides.sources,
        out: args.overrides.out,
        force: args.force,
        trigger: Trigger::Run,
    })?;
    print_summary(&summary, args.json)?;
    if summary.status == RunStatus::Failed {
        anyhow::bail!(
            "run {} failed: {}",
            summary.run_id,
            summary.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
