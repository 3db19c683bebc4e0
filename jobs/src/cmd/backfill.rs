//! `kiln backfill SPEC --from D1 --to D2`: the daily pipeline for each date in order,
//! skipping dates already done.

use std::path::PathBuf;

use anyhow::bail;
use chrono::NaiveDate;
use serde_json::json;

use kiln_pipeline::config;
use kiln_pipeline::metastore::Store;
use kiln_pipeline::runner::{self, Request};
use kiln_pipeline::status::{RunStatus, Trigger};

/// Arguments of `kiln backfill`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackfillArgs {
    /// The job spec.
    pub spec: PathBuf,
    /// First date (YYYY-MM-DD).
    #[arg(long)]
    pub from: NaiveDate,
    /// Last date, inclusive.
    #[arg(long)]
    pub to: NaiveDate,
    #[command(flatten)]
    pub overrides: super::features::OverrideArgs,
    /// Rerun dates (and tasks) already done.
    #[arg(long)]
    pub force: bool,
    /// Continue with the next date after a failed one.
    #[arg(long)]
    pub keep_going: bool,
    /// Print one JSON object per date on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The run that already completed `date` with this spec and these overrides, if any.
pub fn done_run(
    store: &mut Store,
    job: &str,
    date: &str,
    spec_sha256: &str,
    overrides: &serde_json::Value,
) -> anyhow::Result<Option<i64>> {
    Ok(store
        .list_runs(Some(job), Some(date), 1)?
        .into_iter()
        .find(|r| r.status.is_done() && r.spec_sha256 == spec_sha256 && &r.overrides == overrides)
        .map(|r| r.id))
}

pub fn run(args: BackfillArgs) -> anyhow::Result<()> {
    if args.to < args.from {
        bail!("--to {} is before --from {}", args.to, args.from);
    }
    let (spec, pipeline) = config::load(&args.spec)?;
    let mut store = Store::open(&pipeline.metastore)?;
    let overrides = json!({"sources": args.overrides.sources, "out": args.overrides.out});
    let mut failed = Vec::new();
    let mut date = args.from;
    while date <= args.to {
        let d = date.to_string();
        let done = if args.force {
            None
        } else {
            done_run(&mut store, &spec.name, &d, &spec.sha256, &overrides)?
        };
        if let Some(id) = done {
            eprintln!("{} {d}: already done (run {id}), skipped", spec.name);
            if args.json {
                println!("{}", json!({"date": d, "status": "done", "run_id": id}));
            }
        } else {
            let r = runner::run(&Request {
                spec: args.spec.clone(),
                date,
                sources: args.overrides.sources.clone(),
                out: args.overrides.out.clone(),
                force: args.force,
                trigger: Trigger::Backfill,
                accept: Vec::new(),
                quiet: crate::progress::quiet(),
            });
            match r {
                Ok(s) => {
                    super::run::print_summary(&s, args.json)?;
                    if matches!(s.status, RunStatus::Failed | RunStatus::Anomalies) {
                        failed.push(d.clone());
                        if !args.keep_going {
                            bail!(
                                "backfill stopped at {d}: {} (rerun to continue; done dates are skipped)",
                                s.error.as_deref().unwrap_or("")
                            );
                        }
                    }
                }
                Err(e) => {
                    failed.push(d.clone());
                    if !args.keep_going {
                        return Err(e.context(format!("backfill stopped at {d}")));
                    }
                    eprintln!("{} {d}: {e:#}", spec.name);
                }
            }
        }
        date = date.succ_opt().expect("date in range");
    }
    if !failed.is_empty() {
        bail!("backfill: dates failed: {}", failed.join(", "));
    }
    Ok(())
}
