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
    /// Accept the data validation's anomalies of COLUMN (repeatable; `@rows` for the row
    /// counts, `@all` for every anomaly), after a person checked the data: the `validate`
    /// task passes them and the run records who accepted what. See `docs/validation.md`.
    #[arg(long, value_name = "COLUMN")]
    pub accept: Vec<String>,
    /// Print one JSON object (the run summary) on stdout.
    #[arg(long)]
    pub json: bool,
    /// At the end, write Prometheus metrics (run and task durations and outcomes, the
    /// published model version) to PATH for node-exporter's textfile collector (written to
    /// PATH.tmp, then renamed). See `docs/observability.md`.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

/// The metrics of a finished run (its summary).
pub(crate) fn summary_metrics(s: &Summary) -> crate::metrics::Exposition {
    let mut m = crate::metrics::Exposition::new();
    let job = s.job.as_str();
    crate::metrics::add_outcome(
        &mut m,
        "run",
        &[("kiln_job", job)],
        s.seconds,
        matches!(s.status, RunStatus::Success | RunStatus::Rejected),
    );
    for t in &s.tasks {
        let task = t.name.to_string();
        let l: &[(&str, &str)] = &[("kiln_job", job), ("task", &task)];
        m.gauge(
            "kiln_run_task_duration_seconds",
            "Wall time of a task of the last run (all attempts).",
            l,
            t.seconds,
        );
        m.gauge(
            "kiln_run_task_attempts",
            "Attempts of a task of the last run.",
            l,
            f64::from(t.attempts),
        );
        let status = t.status.to_string();
        m.gauge(
            "kiln_run_task_status",
            "Outcome of a task of the last run: 1 for the label `status` it ended with.",
            &[("kiln_job", job), ("task", &task), ("status", &status)],
            1.0,
        );
    }
    if let Some(v) = s.model_version {
        m.gauge(
            "kiln_run_published_model_version",
            "Model version the last run published (or found already published).",
            &[("kiln_job", job)],
            v as f64,
        );
    }
    m
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
    let started = std::time::Instant::now();
    let result = runner::run(&Request {
        spec: args.spec.clone(),
        date: args.date,
        sources: args.overrides.sources,
        out: args.overrides.out,
        force: args.force,
        trigger: Trigger::Run,
        accept: args.accept.clone(),
        quiet: crate::progress::quiet(),
    });
    let summary = match result {
        Ok(s) => {
            crate::metrics::write_if_asked(args.metrics_textfile.as_deref(), &summary_metrics(&s));
            s
        }
        Err(e) => {
            // No summary (the run could not start: a bad spec, the date locked by another
            // run, ...): the outcome alone.
            let mut m = crate::metrics::Exposition::new();
            let stem = args
                .spec
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            crate::metrics::add_outcome(
                &mut m,
                "run",
                &[("kiln_job", &stem)],
                started.elapsed().as_secs_f64(),
                false,
            );
            crate::metrics::write_if_asked(args.metrics_textfile.as_deref(), &m);
            return Err(e);
        }
    };
    print_summary(&summary, args.json)?;
    match summary.status {
        RunStatus::Failed => anyhow::bail!(
            "run {} failed: {}",
            summary.run_id,
            summary.error.as_deref().unwrap_or("")
        ),
        RunStatus::Anomalies => anyhow::bail!(
            "run {} stopped before training: {}",
            summary.run_id,
            summary.error.as_deref().unwrap_or("")
        ),
        _ => {}
    }
    Ok(())
}
