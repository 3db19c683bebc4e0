//! `kiln stats`: a committed dataset's statistics (`_stats.json`, computed while its shards
//! were written) as a table or JSON, and with `--baseline` the drift against another dataset.

use anyhow::Context;
use kiln_connectors::stats::{ColumnStats, Validation, drift};
use kiln_pipeline::datastats::{load, load_with_manifest};

/// Arguments of `kiln stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// The dataset (a committed location: path, file://, s3:// or hdfs:// URL).
    pub dataset: String,
    /// Compare with this dataset (e.g. the previous day): L-infinity distance of the top
    /// values of string columns, Jensen-Shannon divergence of numeric histograms.
    #[arg(long, value_name = "DATASET")]
    pub baseline: Option<String>,
    /// Write the statistics as TFDV's `DatasetFeatureStatisticsList` protobuf to PATH (for
    /// TFDV and Facets).
    #[arg(long, value_name = "PATH")]
    pub tfdv: Option<std::path::PathBuf>,
    /// Also write the statistics as a standalone HTML page to PATH: a histogram or the top
    /// values of every column, drawn over the baseline's when --baseline is given (the
    /// dataset page of `kiln ui`).
    #[arg(long, value_name = "PATH")]
    pub html: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn number(x: Option<f64>) -> String {
    match x {
        Some(v) if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-3) => format!("{v:.4e}"),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}

fn describe(c: &ColumnStats) -> String {
    if let Some(n) = &c.numeric {
        return format!(
            "min {} max {} mean {} std {} zeros {} median {}",
            number(n.min),
            number(n.max),
            number(n.mean),
            number(n.std_dev),
            n.zeros,
            number(n.quantiles.get(n.quantiles.len() / 2).copied()),
        );
    }
    if let Some(s) = &c.string {
        let top: Vec<String> = s
            .top_values
            .iter()
            .take(3)
            .map(|v| format!("{}:{}", v.value, v.count))
            .collect();
        return format!(
            "distinct ~{} len {}..{} top {}",
            s.distinct,
            s.min_length,
            s.max_length,
            top.join(" ")
        );
    }
    String::new()
}

/// Runs `kiln stats`.
pub fn run(a: StatsArgs) -> anyhow::Result<()> {
    let (manifest, stats) = load_with_manifest(&a.dataset)?;
    if let Some(path) = &a.tfdv {
        let name = a.dataset.trim_end_matches('/');
        std::fs::write(path, stats.to_tfdv_proto(name))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let baseline = match &a.baseline {
        Some(b) => Some((b.clone(), load(b)?)),
        None => None,
    };
    let drifts = baseline.as_ref().map(|(_, b)| drift(&stats, b));
    if let Some(path) = &a.html {
        let title = format!("Dataset {}", a.dataset);
        let body = kiln_ui::pages::dataset(
            &title,
            &a.dataset,
            &stats,
            baseline.as_ref().map(|(u, s)| (u.as_str(), s)),
        );
        std::fs::write(path, kiln_ui::html::page(&title, &[], &body, None))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        let mut out = serde_json::json!({
            "dataset": a.dataset,
            "statistics": stats,
            "validation": manifest.validation,
        });
        if let Some(d) = &drifts {
            out["baseline"] = serde_json::json!(a.baseline);
            out["drift"] = serde_json::to_value(d)?;
        }
        println!("{out}");
        return Ok(());
    }
    println!("{}: {} rows", a.dataset, stats.num_rows);
    let width = stats
        .columns
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    for c in &stats.columns {
        println!(
            "{:<width$}  {:<10} nulls {:>9} ({:>5.1}%)  {}",
            c.name,
            c.data_type,
            c.null_count,
            100.0 * c.null_count as f64 / stats.num_rows.max(1) as f64,
            describe(c),
        );
    }
    if let Some(v) = &manifest.validation {
        print_validation("recorded at commit", v);
    }
    if let Some(d) = drifts {
        println!(
            "drift against {}:",
            a.baseline.as_deref().unwrap_or_default()
        );
        for x in d {
            println!("{:<width$}  {:?} {:.4}", x.column, x.measure, x.value);
        }
    }
    Ok(())
}

/// Prints a recorded validation: baseline, checks, anomalies (one per line).
pub(crate) fn print_validation(what: &str, v: &Validation) {
    let baseline = match (&v.baseline, &v.baseline_missing) {
        (Some(b), _) => format!("baseline {b}"),
        (None, Some(why)) => format!("no baseline ({why})"),
        (None, None) => "no baseline".into(),
    };
    println!(
        "{what}: {} checks, {} anomal{}, {baseline}{}",
        v.checks,
        v.anomalies.len(),
        if v.anomalies.len() == 1 { "y" } else { "ies" },
        if v.skipped.is_empty() {
            String::new()
        } else {
            format!(", skipped without a baseline: {}", v.skipped.join(", "))
        }
    );
    for a in &v.anomalies {
        println!("  ANOMALY {a}");
    }
}
