//! `kiln runs list|show`: what the run metadata store recorded.

use std::path::PathBuf;

use anyhow::{Context, bail};

use kiln_pipeline::config;
use kiln_pipeline::metastore::Store;

/// Where the metadata store is.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// A job spec: its `[pipeline] metastore` (and, for `list`, its job name).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// A metadata store: SQLite file path or postgres:// URL (default: env KILN_METASTORE).
    #[arg(long, env = config::METASTORE_ENV)]
    pub metastore: Option<String>,
}

impl StoreArgs {
    /// Opens the store; returns it with the spec's job name, if a spec was given.
    pub fn open(&self) -> anyhow::Result<(Store, Option<String>)> {
        let (url, job) = match (&self.metastore, &self.spec) {
            (Some(url), spec) => {
                let job = match spec {
                    Some(p) => Some(config::load(p)?.0.name),
                    None => None,
                };
                (url.clone(), job)
            }
            (None, Some(p)) => {
                let (spec, pipeline) = config::load(p)?;
                (pipeline.metastore, Some(spec.name))
            }
            (None, None) => bail!("pass --spec SPEC or --metastore URL (or set KILN_METASTORE)"),
        };
        Ok((Store::open(&url)?, job))
    }
}

/// `kiln runs ...`.
#[derive(clap::Subcommand, Debug)]
pub enum RunsCommand {
    /// Newest runs first: id, job, date, status, model version, duration.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this job (default: the spec's job).
        #[arg(long)]
        job: Option<String>,
        /// Only this run date.
        #[arg(long)]
        date: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run: tasks, attempts (with log files), metrics, gate, lineage, events.
    Show {
        /// Run id.
        id: i64,
        #[command(flatten)]
        store: StoreArgs,
        /// JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: RunsCommand) -> anyhow::Result<()> {
    match cmd {
        RunsCommand::List {
            store,
            job,
            date,
            limit,
            json,
        } => {
            let (mut s, spec_job) = store.open()?;
            let job = job.or(spec_job);
            let runs = s.list_runs(job.as_deref(), date.as_deref(), limit)?;
            if json {
                println!("{}", serde_json::to_string(&runs)?);
                return Ok(());
            }
            println!(
                "{:>5}  {:<16} {:<10}  {:<9} {:<8} {:>7}  {:>8}  started",
                "run", "job", "date", "status", "trigger", "version", "seconds"
            );
            for r in runs {
                println!(
                    "{:>5}  {:<16} {:<10}  {:<9} {:<8} {:>7}  {:>8}  {}",
                    r.id,
                    r.job,
                    r.run_date,
                    r.status,
                    r.trigger,
                    r.model_version.map_or("-".into(), |v| v.to_string()),
                    r.seconds.map_or("-".into(), |s| format!("{s:.1}")),
                    r.started_at
                );
            }
            Ok(())
        }
        RunsCommand::Show { id, store, json } => {
            let (mut s, _) = store.open()?;
            let d = s
                .run(id)?
                .with_context(|| format!("no run {id} in {}", s.describe))?;
            if json {
                println!("{}", serde_json::to_string(&d)?);
                return Ok(());
            }
            let r = &d.run;
            println!("run {} — {} {} ({})", r.id, r.job, r.run_date, r.trigger);
            println!("  status        {}", r.status);
            if let Some(e) = &r.error {
                println!("  error         {e}");
            }
            println!(
                "  started       {} on {} (pid {}), {} s",
                r.started_at,
                r.host,
                r.pid,
                r.seconds.map_or("-".into(), |s| format!("{s:.1}"))
            );
            println!("  kiln          {}", r.kiln_version);
            println!("  spec          {} (sha256 {})", r.spec_path, r.spec_sha256);
            println!("  logs          {}", r.log_dir);
            if let Some(v) = r.model_version {
                println!("  model version {v}");
            }
            if let Some(m) = &r.metrics {
                println!("  metrics       {m}");
            }
            if let Some(g) = &r.gate {
                // Both sides of the comparison, on the same rows (today's held-out rows).
                if !g["candidate"].is_null() {
                    println!(
                        "  gate          candidate on today's held-out rows: {}",
                        brief_metrics(&g["candidate"])
                    );
                }
                let s = &g["stable"];
                if !s.is_null() {
                    let v = &s["version"];
                    match s["error"].as_str() {
                        Some(e) => println!(
                            "  gate          stable v{v} on the same rows: not scored: {e}"
                        ),
                        None => println!(
                            "  gate          stable v{v} on the same rows: {}",
                            brief_metrics(&s["rescored"])
                        ),
                    }
                    println!(
                        "  gate          stable v{v} as recorded on its own day's rows: {}",
                        brief_metrics(&s["recorded"])
                    );
                }
                for rule in g["rules"].as_array().into_iter().flatten() {
                    println!("  gate          {}", rule["detail"].as_str().unwrap_or(""));
                }
            }
            if let Some(l) = &r.lineage {
                println!("  lineage       {l}");
            }
            println!("  tasks:");
            for t in &d.tasks {
                println!(
                    "    {:<18} {:<15} {:>7}  attempts {}{}",
                    t.task.name,
                    t.task.status,
                    t.task.seconds.map_or("-".into(), |s| format!("{s:.1}s")),
                    t.task.attempts,
                    t.task
                        .error
                        .as_deref()
                        .map(|e| format!("  {}", e.lines().next().unwrap_or("")))
                        .unwrap_or_default()
                );
                for a in &t.attempt_log {
                    println!(
                        "      attempt {} {:<8} {}",
                        a.attempt,
                        a.status,
                        a.log_path.as_deref().unwrap_or("")
                    );
                }
            }
            for e in &d.events {
                println!("  {} {}: {}", e.at, e.kind, e.message);
            }
            Ok(())
        }
    }
}

/// `rows N, auc X, logloss Y` of a metrics object (`-` for what it lacks).
fn brief_metrics(m: &serde_json::Value) -> String {
    let f = |k: &str| m[k].as_f64().map_or("-".into(), |x| format!("{x:.6}"));
    format!(
        "rows {}, auc {}, logloss {}",
        m["rows"].as_u64().map_or("-".into(), |n| n.to_string()),
        f("auc"),
        f("logloss")
    )
}
