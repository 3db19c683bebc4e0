//! `kiln bench`: benchmarks that print figures (never timed tests).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// The example feature job on generated events: wall time, input rows/s, peak RSS,
    /// for Parquet-only output and for the full example (TFRecord gzip + Parquet).
    Features(BenchFeaturesArgs),
    /// Training throughput (examples/s) of the example-shaped wide & deep model with 1 and 2
    /// workers (threads with their own TCP ring), batch 1024, Adam.
    Train(BenchTrainArgs),
    /// All-reduce bus bandwidth for 1, 16 and 64 MiB buffers across 2 and 4 ranks, next to a
    /// plain TCP copy on loopback.
    Allreduce(BenchJsonArgs),
}

/// Arguments of `kiln bench train`.
#[derive(clap::Args)]
pub struct BenchTrainArgs {
    /// Steps to time per worker count.
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Synthetic rows to train on.
    #[arg(long, default_value_t = 400_000)]
    pub rows: usize,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of benchmarks that only take `--json`.
#[derive(clap::Args)]
pub struct BenchJsonArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln bench features`.
#[derive(clap::Args)]
pub struct BenchFeaturesArgs {
    /// Events to generate (over 9 days; the run date's window reads all of them).
    #[arg(long, default_value_t = 10_000_000)]
    pub rows: u64,
    /// Working directory (generated events are kept there and reused).
    #[arg(long, default_value = "target/bench-features")]
    pub work: PathBuf,
    /// Repetitions per variant (the best and median are printed).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Features(a) => bench_features(a),
        BenchCommand::Train(a) => {
            for workers in [1, 2] {
                let r = kiln_trainer::bench::bench_train(workers, a.steps, a.rows)?;
                if a.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "train: {} worker(s), batch {}, {} steps: {:.0} examples/s (held-out AUC {})",
                        r.workers,
                        r.batch_size,
                        r.steps,
                        r.examples_per_sec,
                        r.auc.map_or("-".into(), |a| format!("{a:.4}"))
                    );
                }
            }
            Ok(())
        }
        BenchCommand::Allreduce(a) => {
            let r = kiln_trainer::bench::bench_allreduce(&[1 << 20, 16 << 20, 64 << 20], &[2, 4])?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            for (bytes, gbps) in &r.loopback_copy_gbps {
                println!("loopback TCP copy {:>3} MiB: {gbps:.2} GB/s", bytes >> 20);
            }
            for f in &r.allreduce {
                println!(
                    "all-reduce {:>3} MiB x {} ranks: {:.2} ms, bus bandwidth {:.2} GB/s",
                    f.bytes >> 20,
                    f.world,
                    f.seconds * 1e3,
                    f.busbw_gbps
                );
            }
            Ok(())
        }
    }
}

fn bench_features(a: BenchFeaturesArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let spec_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
    let spec_text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    std::fs::create_dir_all(&a.work)?;
    let work = std::path::absolute(&a.work)?;
    let events = work.join(format!("events-{}", a.rows));
    if !events.join("_SUCCESS").exists() && !events.exists() {
        eprintln!("generating {} events into {}", a.rows, events.display());
        let status = Command::new(&exe)
            .args([
                "gen",
                "events",
                "--rows",
                &a.rows.to_string(),
                "--days",
                "9",
            ])
            .args([
                "--end-date",
                "2026-11-21",
                "--seed",
                "42",
                "--format",
                "parquet",
                "--out",
            ])
            .arg(&events)
            .status()?;
        if !status.success() {
            bail!("kiln gen events failed");
        }
    }
    let parquet_spec = work.join("job-parquet.toml");
    std::fs::write(
        &parquet_spec,
        spec_text.replace(
            "formats = [\"tfrecord\", \"parquet\"]",
            "formats = [\"parquet\"]",
        ),
    )?;
    let full_spec = work.join("job-full.toml");
    std::fs::write(&full_spec, &spec_text)?;
    let mut results = Vec::new();
    for (name, spec) in [
        ("parquet", &parquet_spec),
        ("tfrecord_gzip+parquet", &full_spec),
    ] {
        let mut runs = Vec::new();
        for _ in 0..a.repeat {
            let out = Command::new(&exe)
                .arg("features")
                .arg(spec)
                .args(["--date", "2026-11-20", "--json", "--source"])
                .arg(format!("events={}", events.display()))
                .arg("--out")
                .arg(work.join("out"))
                .env("RUST_LOG", "warn")
                .output()?;
            if !out.status.success() {
                bail!(
                    "kiln features failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            runs.push(report);
        }
        let mut secs: Vec<f64> = runs
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap_or(0.0))
            .collect();
        secs.sort_by(f64::total_cmp);
        let peak = runs
            .iter()
            .filter_map(|r| r["peak_rss_bytes"].as_u64())
            .max()
            .unwrap_or(0);
        let rows_out = runs[0]["outputs"][0]["rows"].as_u64().unwrap_or(0);
        results.push(serde_json::json!({
            "variant": name,
            "input_rows": a.rows,
            "output_rows": rows_out,
            "best_seconds": secs[0],
            "median_seconds": secs[secs.len() / 2],
            "input_rows_per_sec": a.rows as f64 / secs[0],
            "peak_rss_bytes": peak,
        }));
    }
    if a.json {
        println!("{}", serde_json::json!({ "features": results }));
    } else {
        println!(
            "example job on {} events (9 days), run date 2026-11-20, {} cores",
            a.rows,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for r in &results {
            println!(
                "  {:<22} {:>8.2} s best ({:.2} median)  {:>6.2} M input rows/s  peak RSS {}  -> {} examples",
                r["variant"].as_str().unwrap_or(""),
                r["best_seconds"].as_f64().unwrap_or(0.0),
                r["median_seconds"].as_f64().unwrap_or(0.0),
                r["input_rows_per_sec"].as_f64().unwrap_or(0.0) / 1e6,
                super::human_bytes(r["peak_rss_bytes"].as_u64().unwrap_or(0)),
                r["output_rows"]
            );
        }
    }
    Ok(())
}
