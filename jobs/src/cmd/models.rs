//! `kiln models list|show|promote|rollback|verify`: the model repository
//! (`<models_dir>/<name>/<version>/`, `labels.json`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

use kiln_pipeline::config;
use kiln_registry::{self as registry, Repo};

/// A job spec (its `[pipeline]` model repository) or a model's directory
/// (`<models_dir>/<name>`).
fn repo_of(target: &Path) -> anyhow::Result<Repo> {
    if target.is_file() {
        let (_, p) = config::load(target)?;
        Ok(Repo::new(p.repo_dir))
    } else if target.is_dir() {
        Ok(Repo::new(target))
    } else {
        bail!(
            "{}: neither a job spec nor a model directory",
            target.display()
        )
    }
}

/// `kiln models ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ModelsCommand {
    /// Versions with labels (stable, canary), rejected candidates, date and metrics.
    List {
        /// Job spec or model directory (`models/<name>`).
        target: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One version: lineage (job, date, run, data, metrics, gate), files, labels.
    Show {
        /// Job spec or model directory.
        target: PathBuf,
        /// Version number.
        version: u64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Point a label (stable or canary) at a version.
    Promote {
        /// Job spec or model directory.
        target: PathBuf,
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
        /// Job spec or model directory.
        target: PathBuf,
    },
    /// Recompute SHA256SUMS and load the model, for one version or all.
    Verify {
        /// Job spec or model directory.
        target: PathBuf,
        /// Version (default: every version).
        version: Option<u64>,
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
                    json!({"repository": repo.dir, "labels": repo.labels()?, "versions": list})
                );
                return Ok(());
            }
            println!("{}", repo.dir.display());
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
                .with_context(|| format!("{}: no version {version}", repo.dir.display()))?;
            let sums = std::fs::read_to_string(repo.version_dir(version).join(registry::SUMS))
                .unwrap_or_default();
            if json {
                println!("{}", json!({"version": info, "sha256sums": sums}));
                return Ok(());
            }
            println!(
                "{} version {version}{}{}",
                repo.dir.display(),
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
                "{}: {label} -> {version} (stable {:?}, canary {:?})",
                repo.dir.display(),
                l.stable,
                l.canary
            );
            Ok(())
        }
        ModelsCommand::Rollback { target } => {
            let repo = repo_of(&target)?;
            let (from, to) = repo.rollback()?;
            println!(
                "{}: stable {} -> {to}",
                repo.dir.display(),
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
                bail!("{}: no versions", repo.dir.display());
            }
            let mut bad = Vec::new();
            for v in versions {
                let dir = repo.version_dir(v);
                let r = registry::verify_checksums(&dir)
                    .map_err(anyhow::Error::from)
                    .and_then(|n| {
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
                bail!("verification failed for versions {bad:?}");
            }
            Ok(())
        }
    }
}
