//! `kiln predict`: score a dataset with an exported model, applying the saved feature
//! transform — the same code path as the trainer's evaluation, so predictions match exactly.

use std::sync::Arc;

use kiln_trainer::ShardSource;
use kiln_trainer::source::DatasetSource;
use kiln_trainer::transform::RowFilter;

use super::model_dir::{ModelDir, write_output};

/// Arguments of `kiln predict`.
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// Model directory written by `kiln train` (local path, file://, s3:// or hdfs:// URL).
    pub model_dir: String,
    /// Committed dataset to score (path or URL).
    #[arg(long)]
    pub input: String,
    /// Write predictions as CSV (`shard,row,label,logit,prediction`) to this path or URL
    /// (file://, s3://, hdfs://).
    #[arg(long)]
    pub output: Option<String>,
    /// Score only the rows of the model's held-out split (what the trainer evaluated).
    #[arg(long)]
    pub eval_split: bool,
    /// Print one JSON object (row count, metrics when labels are present) to stdout.
    #[arg(long)]
    pub json: bool,
    /// Where to score: cpu, cuda[:N], wgpu[:N] or wgpu:cpu. Default: the kind of device the
    /// model was trained on (`model.json`), when this build has it, else the CPU.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<kiln_trainer::device::ComputeDevice>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let mut model_dir = ModelDir::resolve(&args.model_dir)?;
    model_dir.fetch()?;
    let model = kiln_trainer::export::load(&model_dir.local)?;
    let trained_on = model.file.config.device;
    let device = args
        .device
        .unwrap_or_else(|| kiln_trainer::device::scoring_device(trained_on));
    if args.device.is_none() && device != trained_on {
        eprintln!(
            "kiln predict: the model was trained on {trained_on}; scoring on {device} \
             (metrics agree with training {})",
            kiln_trainer::device::Agreement::between(trained_on, device)
        );
    }
    kiln_trainer::device::select_device(device)?;
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
        write_output(
            out,
            kiln_trainer::predictions::to_csv(&logits, &labels, &rows)?,
        )?;
    }
    eprintln!(
        "scored {} rows: auc {} logloss {:.4} mean prediction {:.4} (label {:.4})",
        metrics.rows,
        metrics
            .auc
            .map_or_else(|| "undefined (one class)".into(), |a| format!("{a:.4}")),
        metrics.logloss,
        metrics.mean_prediction,
        metrics.mean_label
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rows": metrics.rows, "metrics": metrics, "model_dir": args.model_dir, "input": args.input, "output": args.output, "device": device.to_string(), "train_device": trained_on.to_string()})
        );
    }
    Ok(())
}
