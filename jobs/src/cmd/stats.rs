//! `kiln stats`: a committed dataset's statistics (`_stats.json`, computed while its shards
//! were written) as a table or JSON, and with `--baseline` the drift against another dataset.

use anyhow::{Context, bail};
use kiln_connectors::stats::{ColumnStats, DatasetStats, drift};
use kiln_connectors::{Dataset, OpenOptions};
use object_store::ObjectStoreExt;
use sha2::Digest;

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
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Reads and checks (size, SHA-256) a dataset's `_stats.json` through its manifest.
pub fn load(url: &str) -> anyhow::Result<DatasetStats> {
    let ds = Dataset::open_blocking(url, OpenOptions::default())
        .with_context(|| format!("opening {url}"))?;
    let Some(file) = ds.manifest().stats.clone() else {
        bail!("{url}: the manifest lists no statistics (written by a Kiln before statistics)");
    };
    let location = kiln_connectors::store::resolve(url)?.child(&file.path);
    let bytes = kiln_connectors::store::block_on(async {
        location.store.get(&location.path).await?.bytes().await
    })
    .with_context(|| format!("reading {}", location.url))?;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    if bytes.len() as u64 != file.bytes || sha != file.sha256 {
        bail!(
            "{}: {} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
            location.url,
            bytes.len(),
            file.bytes,
            file.sha256
        );
    }
    DatasetStats::from_json(&bytes).with_context(|| format!("parsing {}", location.url))
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
    let stats = load(&a.dataset)?;
    if let Some(path) = &a.tfdv {
        let name = a.dataset.trim_end_matches('/');
        std::fs::write(path, stats.to_tfdv_proto(name))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let drifts = match &a.baseline {
        Some(b) => Some(drift(&stats, &load(b)?)),
        None => None,
    };
    if a.json {
        let mut out = serde_json::json!({ "dataset": a.dataset, "statistics": stats });
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
