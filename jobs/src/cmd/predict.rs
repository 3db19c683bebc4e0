//! `kiln predict`: score a dataset with an exported model, applying the saved feature
//! transform — the same code path as the trainer's evaluation, so predictions match exactly.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use kiln_trainer::ShardSource;
use kiln_trainer::source::DatasetSource;
use kiln_trainer::transform::RowFilter;

/// Arguments of `kiln predict`.
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// Model directory written by `kiln train`.
    pub model_dir: PathBuf,
    /// Committed dataset to score (path or URL).
    #[arg(long)]
    pub input: String,
    /// Write predictions as CSV (`shard,row,label,logit,prediction`) to this path or file:// URL.
    #[arg(long)]
    pub output: Option<String>,
    /// Score only the rows of the model's held-out split (what the trainer evaluated).
    #[arg(long)]
    pub eval_split: bool,
    /// Print one JSON object (row count, metrics when labels are present) to stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let model = kiln_trainer::export::load(&args.model_dir)?;
    let source: Arc<dyn ShardSource> = Arc::new(DatasetSource::open(&args.input)?);
    let filter = if args.eval_split {
        RowFilter::Eval
    } else {
        RowFilter::All
    };
    let (logits, labels, rows) =
        kiln_trainer::export::score(&model.params, &model.transform, &source, filter)?;
    let metrics = kiln_trainer::eval::metrics(&logits, &labels);
    if let Some(out) = &args.output {
        if out.contains("://") && !out.starts_with("file://") {
            bail!("--output {out}: only local paths and file:// URLs are supported");
        }
        let path = PathBuf::from(out.strip_prefix("file://").unwrap_or(out));
        let mut text = String::with_capacity(logits.len() * 32);
        text.push_str("shard,row,label,logit,prediction\n");
        for ((z, y), (s, r)) in logits.iter().zip(&labels).zip(&rows) {
            text.push_str(&format!(
                "{s},{r},{y},{z:?},{:?}\n",
                kiln_trainer::model::sigmoid(*z)
            ));
        }
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "scored {} rows: auc {:.4} logloss {:.4} mean prediction {:.4} (label {:.4})",
        metrics.rows, metrics.auc, metrics.logloss, metrics.mean_prediction, metrics.mean_label
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rows": metrics.rows, "metrics": metrics, "model_dir": args.model_dir, "input": args.input, "output": args.output})
        );
    }
    Ok(())
}
