//! `kiln schema infer`: a starting expectations file from one committed day's statistics (as
//! TFDV's `infer_schema`), to review and reference from an output's `expect_file`.

use std::path::PathBuf;

use anyhow::Context;
use kiln_connectors::stats::expect::infer;
use kiln_pipeline::datastats::load;

/// `kiln schema ...`.
#[derive(clap::Subcommand)]
pub enum SchemaCommand {
    /// Write expectations inferred from a committed dataset's statistics: each column's type
    /// and a null-fraction bound, the allowed values and a drift bound (0.1) of string
    /// columns with few values, the label rate (--label), rows within half to twice the
    /// previous day's. Review it, then set `expect_file = "FILE"` on the output.
    Infer(InferArgs),
}

/// Arguments of `kiln schema infer`.
#[derive(clap::Args)]
pub struct InferArgs {
    /// The dataset (a committed location: path, file://, s3:// or hdfs:// URL).
    pub dataset: String,
    /// Where to write the TOML (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The 0/1 label column: bound its mean (the label rate) to half..twice today's.
    #[arg(long, value_name = "COLUMN")]
    pub label: Option<String>,
}

/// Runs `kiln schema ...`.
pub fn run(c: SchemaCommand) -> anyhow::Result<()> {
    match c {
        SchemaCommand::Infer(a) => infer_cmd(a),
    }
}

fn infer_cmd(a: InferArgs) -> anyhow::Result<()> {
    let stats = load(&a.dataset)?;
    if let Some(l) = &a.label
        && stats.column(l).and_then(|c| c.numeric.as_ref()).is_none()
    {
        anyhow::bail!("{}: --label {l}: no numeric column `{l}`", a.dataset);
    }
    let file = infer(&stats, a.label.as_deref());
    let text = format!(
        "# Expectations inferred by `kiln schema infer` from {} ({} rows).\n\
         # Review them; see docs/validation.md for every key.\n\n{}",
        a.dataset,
        stats.num_rows,
        toml::to_string(&file).context("writing the expectations as TOML")?
    );
    match &a.out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} expectations to {}",
                file.expect.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}
