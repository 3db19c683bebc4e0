//! `kiln schedule SPEC`: a long-running scheduler that starts the daily run at the spec's
//! cron time in its time zone, with catch-up of missed runs on or off.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use kiln_pipeline::config;
use kiln_pipeline::metastore::Store;
use kiln_pipeline::runner::{self, Request};
use kiln_pipeline::schedule::Schedule;
use kiln_pipeline::status::Trigger;

/// Arguments of `kiln schedule`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// The job spec, with a `[pipeline.schedule]` section.
    pub spec: PathBuf,
    #[command(flatten)]
    pub overrides: super::features::OverrideArgs,
    /// Exit after starting this many runs (default: run forever).
    #[arg(long)]
    pub max_runs: Option<usize>,
    /// Print the dates due now and the next fire times, then exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// The newest date this job completed (success or rejected), from the metadata store.
fn last_done(store: &mut Store, job: &str) -> anyhow::Result<Option<chrono::NaiveDate>> {
    Ok(store
        .list_runs(Some(job), None, 1000)?
        .into_iter()
        .filter(|r| r.status.is_done())
        .filter_map(|r| r.run_date.parse().ok())
        .max())
}

pub fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    let (spec, pipeline) = config::load(&args.spec)?;
    let cfg = pipeline
        .config
        .schedule
        .clone()
        .with_context(|| format!("{}: no [pipeline.schedule] section", spec.path.display()))?;
    let sched = Schedule::new(&cfg)?;
    let mut store = Store::open(&pipeline.metastore)?;
    let mut done = last_done(&mut store, &spec.name)?;
    if args.dry_run {
        let now = chrono::Utc::now();
        let due = sched.due(done, now)?;
        let mut next = Vec::new();
        let mut t = now;
        for _ in 0..3 {
            if let Some(n) = sched.next_after(t) {
                next.push(json!({"at": n.to_rfc3339(), "date": sched.run_date(n).to_string()}));
                t = n;
            }
        }
        println!(
            "{}",
            json!({"job": spec.name, "last_done": done.map(|d| d.to_string()), "due_now": due.iter().map(|d| d.to_string()).collect::<Vec<_>>(), "next": next, "catch_up": sched.catch_up, "timezone": cfg.timezone})
        );
        return Ok(());
    }
    eprintln!(
        "kiln schedule {}: cron `{}` in {}, catch-up {}",
        spec.name,
        cfg.cron,
        cfg.timezone,
        if sched.catch_up { "on" } else { "off" }
    );
    let mut runs = 0usize;
    loop {
        let now = chrono::Utc::now();
        for date in sched.due(done, now)? {
            if args.max_runs.is_some_and(|m| runs >= m) {
                return Ok(());
            }
            runs += 1;
            eprintln!("kiln schedule: starting the run for {date}");
            let r = runner::run(&Request {
                spec: args.spec.clone(),
                date,
                sources: args.overrides.sources.clone(),
                out: args.overrides.out.clone(),
                force: false,
                trigger: Trigger::Schedule,
            });
            match r {
                Ok(s) => eprintln!(
                    "kiln schedule: run {} for {date}: {}{}",
                    s.run_id,
                    s.status,
                    s.error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
                Err(e) => eprintln!("kiln schedule: {date}: {e:#}"),
            }
            // A failed date is not retried by the scheduler (its alert went out); rerun it
            // with `kiln run` or `kiln backfill`.
            done = done.max(Some(date));
        }
        if args.max_runs.is_some_and(|m| runs >= m) {
            return Ok(());
        }
        let Some(next) = sched.next_after(chrono::Utc::now()) else {
            eprintln!("kiln schedule: the cron expression never fires again");
            return Ok(());
        };
        eprintln!(
            "kiln schedule: next run at {} (date {})",
            next.to_rfc3339(),
            sched.run_date(next)
        );
        // Sleep in short steps so clock changes and suspends are noticed.
        while chrono::Utc::now() < next {
            let left = (next - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            std::thread::sleep(left.min(Duration::from_secs(30)));
        }
    }
}
