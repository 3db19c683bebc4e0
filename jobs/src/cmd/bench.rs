//! `kiln bench`: benchmarks that print figures (never timed tests).

use std::path::PathBuf;
use std::process::Command;

use std::time::Duration;

use anyhow::{Context, bail};
use kiln_trainer::comm::{Comm, WorldEnv};

/// Benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// The example feature job on generated events: wall time, input rows/s, peak RSS,
    /// for Parquet-only output and for the full example (TFRecord gzip + Parquet).
    Features(BenchFeaturesArgs),
    /// Training throughput (examples/s) of the example-shaped wide & deep model with 1 and 2
    /// workers (threads with their own TCP ring), batch 1024, Adam.
    Train(BenchTrainArgs),
    /// All-reduce bus bandwidth for 1, 16 and 64 MiB buffers across 2 and 4 local worker
    /// processes (the ranks `kiln train` uses), next to a plain TCP copy on loopback measured
    /// in the same trial (3 trials; medians).
    Allreduce(BenchJsonArgs),
    /// One rank of `kiln bench allreduce` (started by it with RANK, WORLD_SIZE, MASTER_ADDR,
    /// MASTER_PORT; rank 0 prints the timings as JSON).
    #[command(hide = true)]
    AllreduceRank(AllreduceRankArgs),
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

/// Arguments of the hidden `kiln bench allreduce-rank`.
#[derive(clap::Args)]
pub struct AllreduceRankArgs {
    /// Buffer sizes in bytes.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
}

/// Buffer sizes of `kiln bench allreduce`.
const ALLREDUCE_SIZES: [usize; 3] = [1 << 20, 16 << 20, 64 << 20];

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
    /// Also run every variant on a Ballista scheduler + 2 executors started on this machine
    /// (`kiln scheduler`, `kiln executor`), to show the overhead of distribution.
    #[arg(long)]
    pub cluster: bool,
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
        BenchCommand::AllreduceRank(a) => allreduce_rank(a),
        BenchCommand::Allreduce(a) => {
            let r = kiln_trainer::bench::bench_allreduce(
                &ALLREDUCE_SIZES,
                &[2, 4],
                &|world, sizes| {
                    allreduce_processes(world, sizes).map_err(|e| kiln_trainer::Error::CommFailed {
                        context: format!("{world} worker processes"),
                        source: e.into(),
                    })
                },
            )?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let trials = kiln_trainer::bench::ALLREDUCE_TRIALS;
            for (bytes, gbps) in &r.loopback_copy_gbps {
                println!(
                    "loopback TCP copy {:>3} MiB: {gbps:.2} GB/s (median of {trials} trials)",
                    bytes >> 20
                );
            }
            for f in &r.allreduce {
                println!(
                    "all-reduce {:>3} MiB x {} processes: {:.2} ms, bus bandwidth {:.2} GB/s \
                     ({:.0}% of the copy, median of {trials} paired trials)",
                    f.bytes >> 20,
                    f.world,
                    f.seconds * 1e3,
                    f.busbw_gbps,
                    100.0 * f.copy_fraction
                );
            }
            Ok(())
        }
    }
}

/// Starts `world` copies of this binary as ranks of one group; returns rank 0's timings.
fn allreduce_processes(world: usize, sizes: &[usize]) -> anyhow::Result<Vec<f64>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let sizes_arg = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let children = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["bench", "allreduce-rank", "--sizes", &sizes_arg])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("starting rank {rank}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut timings = None;
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("rank {rank} exited with {}", out.status);
        }
        if rank == 0 {
            timings = Some(serde_json::from_slice(&out.stdout).context("rank 0's timings")?);
        }
    }
    timings.context("rank 0 printed no timings")
}

/// `kiln bench allreduce-rank`: one rank of the process group.
fn allreduce_rank(a: AllreduceRankArgs) -> anyhow::Result<()> {
    let env = WorldEnv::from_env()?.context("RANK, WORLD_SIZE, MASTER_PORT must be set")?;
    let mut comm = Comm::connect(&env, Duration::from_secs(60))?;
    let times = kiln_trainer::bench::time_allreduce(&mut comm, &a.sizes)?;
    comm.shutdown();
    if env.rank == 0 {
        println!("{}", serde_json::to_string(&times)?);
    }
    Ok(())
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
    let cluster = if a.cluster {
        Some(super::local_cluster::LocalCluster::start(
            2,
            &work.join("cluster"),
        )?)
    } else {
        None
    };
    let mut variants = vec![
        ("parquet".to_string(), &parquet_spec, None),
        ("tfrecord_gzip+parquet".to_string(), &full_spec, None),
    ];
    if let Some(c) = &cluster {
        variants.push((
            "parquet, cluster 1+2".into(),
            &parquet_spec,
            Some(c.url.clone()),
        ));
        variants.push((
            "tfrecord_gzip+parquet, cluster 1+2".into(),
            &full_spec,
            Some(c.url.clone()),
        ));
    }
    for (name, spec, cluster_url) in variants {
        let mut runs = Vec::new();
        for _ in 0..a.repeat {
            let mut cmd = Command::new(&exe);
            cmd.arg("features")
                .arg(spec)
                .args(["--date", "2026-11-20", "--json", "--source"])
                .arg(format!("events={}", events.display()))
                .arg("--out")
                .arg(work.join("out"))
                .env("RUST_LOG", "warn");
            if let Some(url) = &cluster_url {
                cmd.args(["--cluster", url]);
            }
            let out = cmd.output()?;
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
        if cluster.is_some() {
            println!(
                "  (cluster 1+2: scheduler + 2 executors on this machine; peak RSS is the client's)"
            );
        }
        for r in &results {
            println!(
                "  {:<36} {:>8.2} s best ({:.2} median)  {:>6.2} M input rows/s  peak RSS {}  -> {} examples",
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
