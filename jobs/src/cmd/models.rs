//! `kiln models list|show|promote|rollback|verify|prune`: the model repository
//! (`<models_dir>/<name>/<version>/`, `labels.json`), on a local disk, `s3://` or `hdfs://`.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;

use kiln_pipeline::config;
use kiln_registry::Repo;

/// A job spec (its `[pipeline]` model repository), a model's directory
/// (`<models_dir>/<name>`) or its `s3://` / `hdfs://` URL.
fn repo_of(target: &str) -> anyhow::Result<Repo> {
    if target.contains("://") && !target.starts_with("file://") {
        return Ok(Repo::open(target)?);
    }
    let path = Path::new(target.strip_prefix("file://").unwrap_or(target));
    if path.is_file() {
        let (_, p) = config::load(path)?;
        Ok(p.repo()?)
    } else if path.is_dir() {
        Ok(Repo::new(path))
    } else {
        bail!("{target}: neither a job spec nor a model directory (nor an s3:// or hdfs:// URL)")
    }
}

/// The help text of a TARGET argument.
const TARGET: &str = "Job spec, model directory (`models/<name>`), or its s3:// / hdfs:// URL";

/// `kiln models ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ModelsCommand {
    /// Versions with labels (stable, canary), rejected candidates, date and metrics.
    List {
        #[arg(help = TARGET)]
        target: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One version: lineage (job, date, run, data, metrics, gate), files, labels.
    Show {
        #[arg(help = TARGET)]
        target: String,
        /// Version number.
        version: u64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Point a label (stable or canary) at a version.
    Promote {
        #[arg(help = TARGET)]
        target: String,
        /// Version number.
        version: u64,
        /// Label to move.
        #[arg(long, default_value = "stable")]
        label: kiln_registry::Label,
        /// Allow labelling a version the gate rejected.
        #[arg(long)]
        force: bool,
    },
    /// Move `stable` back to the previous stable version that still exists.
    Rollback {
        #[arg(help = TARGET)]
        target: String,
    },
    /// Recompute SHA256SUMS and load the model, for one version or all (a version on
    /// s3:// or hdfs:// is checked where it is stored, then downloaded to load it).
    Verify {
        #[arg(help = TARGET)]
        target: String,
        /// Version (default: every version).
        version: Option<u64>,
    },
    /// Retention: remove versions that are neither among the newest N nor labelled.
    Prune {
        #[arg(help = TARGET)]
        target: String,
        /// Versions to keep besides the labelled ones.
        #[arg(long)]
        keep: usize,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List { target, json } => {
            let repo = repo_of(&target)?;
            let list = repo.list()?;
            if json {
                println!(
                    "{}",
                    json!({"repository": repo.location(), "labels": repo.labels()?, "versions": list})
                );
                return Ok(());
            }
            println!("{repo}");
            println!(
                "{:>7}  {:<14} {:<10} {:>6}  {:>8}  {:>8}",
                "version", "labels", "date", "run", "auc", "logloss"
            );
            for v in list {
                let l = v.lineage.unwrap_or_default();
                let mut labels = v.labels.join(",");
                if v.rejected {
                    labels = "rejected".into();
                }
                let f =
                    |x: &serde_json::Value| x.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
                println!(
                    "{:>7}  {:<14} {:<10} {:>6}  {:>8}  {:>8}",
                    v.version,
                    labels,
                    l["date"].as_str().unwrap_or("-"),
                    l["run_id"].to_string(),
                    f(&l["metrics"]["auc"]),
                    f(&l["metrics"]["logloss"])
                );
            }
            Ok(())
        }
        ModelsCommand::Show {
            target,
            version,
            json,
        } => {
            let repo = repo_of(&target)?;
            let info = repo
                .list()?
                .into_iter()
                .find(|v| v.version == version)
                .with_context(|| format!("{repo}: no version {version}"))?;
            let sums = repo.read_sums(version)?;
            if json {
                println!("{}", json!({"version": info, "sha256sums": sums}));
                return Ok(());
            }
            println!(
                "{repo} version {version}{}{}",
                if info.labels.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", info.labels.join(", "))
                },
                if info.rejected { " (rejected)" } else { "" }
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&info.lineage.unwrap_or_default())?
            );
            print!("{sums}");
            Ok(())
        }
        ModelsCommand::Promote {
            target,
            version,
            label,
            force,
        } => {
            let repo = repo_of(&target)?;
            let l = repo.promote(version, label, force)?;
            println!(
                "{repo}: {label} -> {version} (stable {:?}, canary {:?})",
                l.stable, l.canary
            );
            Ok(())
        }
        ModelsCommand::Rollback { target } => {
            let repo = repo_of(&target)?;
            let (from, to) = repo.rollback()?;
            println!(
                "{repo}: stable {} -> {to}",
                from.map_or("-".into(), |v| v.to_string())
            );
            Ok(())
        }
        ModelsCommand::Verify { target, version } => {
            let repo = repo_of(&target)?;
            let versions = match version {
                Some(v) => vec![v],
                None => repo.versions()?,
            };
            if versions.is_empty() {
                bail!("{repo}: no versions");
            }
            // Versions on an object store are loaded from a verified download.
            let scratch = tempfile::tempdir().context("creating a scratch directory")?;
            let mut bad = Vec::new();
            for v in versions {
                let r = repo
                    .verify_version(v)
                    .and_then(|n| Ok((n, repo.fetch_version(v, scratch.path())?)))
                    .map_err(anyhow::Error::from)
                    .and_then(|(n, dir)| {
                        kiln_trainer::export::load(&dir)?;
                        Ok(n)
                    });
                match r {
                    Ok(n) => println!("version {v}: ok ({n} files, model loads)"),
                    Err(e) => {
                        println!("version {v}: FAILED: {e:#}");
                        bad.push(v);
                    }
                }
            }
            if !bad.is_empty() {
                bail!("{repo}: verification failed for versions {bad:?}");
            }
            Ok(())
        }
        ModelsCommand::Prune { target, keep, json } => {
            if keep == 0 {
                bail!("--keep 0: keep at least 1 version");
            }
            let repo = repo_of(&target)?;
            let removed = repo.prune(keep)?;
            let left = repo.versions()?;
            if json {
                println!(
                    "{}",
                    json!({"repository": repo.location(), "removed": removed, "versions": left})
                );
            } else {
                println!("{repo}: removed versions {removed:?}; versions now {left:?}");
            }
            Ok(())
        }
    }
}
