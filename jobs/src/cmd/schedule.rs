//! `kiln schedule SPEC`: a long-running scheduler that starts the daily run at the spec's
//! cron time in its time zone, with catch-up of missed runs on or off.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use kiln_pipeline::config;
use kiln_pipeline::metastore::Store;
use kiln_pipeline::runner::{self, Request};
use kiln_pipeline::schedule::Schedule;
use kiln_pipeline::status::{RunStatus, Trigger};

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
    /// Serve Prometheus metrics at http://HOST:PORT/metrics: runs started and failed, the
    /// next run's time, and the last run's metrics (those of `kiln run --metrics-textfile`).
    /// Port 0 picks a free port (printed on stderr). See `docs/observability.md`.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_bind: Option<String>,
}

/// What `--metrics-bind` serves.
#[derive(Default)]
struct ScheduleMetrics {
    started: u64,
    failed: u64,
    next: Option<chrono::DateTime<chrono::Utc>>,
    last_run: Option<crate::metrics::Exposition>,
    /// The newest run date that succeeded.
    last_success: Option<chrono::NaiveDate>,
}

impl ScheduleMetrics {
    /// The exposition at `now` (the lag is computed on each scrape).
    fn exposition(
        &self,
        job: &str,
        sched: &Schedule,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::metrics::Exposition {
        let mut m = self.last_run.clone().unwrap_or_default();
        let l: &[(&str, &str)] = &[("kiln_job", job)];
        match sched.lag(self.last_success, now) {
            Ok(lag) => m.gauge(
                "kiln_schedule_lag_seconds",
                "How long the daily data is overdue: 0 while the latest due run date \
                 succeeded, else seconds since the scheduled start of the first run date after \
                 the newest success.",
                l,
                lag.num_milliseconds() as f64 / 1000.0,
            ),
            Err(e) => tracing::warn!("kiln schedule: lag: {e:#}"),
        }
        m.counter(
            "kiln_schedule_runs_started_total",
            "Runs this scheduler started.",
            l,
            self.started as f64,
        );
        m.counter(
            "kiln_schedule_runs_failed_total",
            "Runs this scheduler started that failed (or could not start).",
            l,
            self.failed as f64,
        );
        if let Some(n) = self.next {
            m.gauge(
                "kiln_schedule_next_run_timestamp_seconds",
                "When the scheduler starts its next run (Unix time).",
                l,
                n.timestamp() as f64,
            );
        }
        m
    }
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

/// The newest run date of this job that succeeded, from the metadata store.
fn last_success(store: &mut Store, job: &str) -> anyhow::Result<Option<chrono::NaiveDate>> {
    Ok(store
        .list_runs(Some(job), None, 1000)?
        .into_iter()
        .filter(|r| r.status == RunStatus::Success)
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
    let metrics = Arc::new(Mutex::new(ScheduleMetrics {
        last_success: last_success(&mut store, &spec.name)?,
        ..Default::default()
    }));
    if let Some(bind) = &args.metrics_bind {
        let (shared, sched, job) = (Arc::clone(&metrics), sched.clone(), spec.name.clone());
        let addr = crate::metrics::serve_metrics(bind, move || {
            shared.lock().unwrap_or_else(|p| p.into_inner()).exposition(
                &job,
                &sched,
                chrono::Utc::now(),
            )
        })?;
        eprintln!("kiln schedule: metrics at http://{addr}/metrics");
    }
    let update = |f: &dyn Fn(&mut ScheduleMetrics)| {
        f(&mut metrics.lock().unwrap_or_else(|p| p.into_inner()));
    };
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
                accept: Vec::new(),
                quiet: crate::progress::quiet(),
            });
            update(&|m| m.started += 1);
            match r {
                Ok(s) => {
                    let (status, summary) = (s.status, super::run::summary_metrics(&s));
                    update(&|m| {
                        if !status.is_done() || status == RunStatus::Anomalies {
                            m.failed += 1;
                        }
                        if status == RunStatus::Success {
                            m.last_success = m.last_success.max(Some(date));
                        }
                        m.last_run = Some(summary.clone());
                    });
                    eprintln!(
                        "kiln schedule: run {} for {date}: {}{}",
                        s.run_id,
                        s.status,
                        s.error.map(|e| format!(": {e}")).unwrap_or_default()
                    )
                }
                Err(e) => {
                    update(&|m| m.failed += 1);
                    eprintln!("kiln schedule: {date}: {e:#}")
                }
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
        update(&|m| m.next = Some(next));
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
