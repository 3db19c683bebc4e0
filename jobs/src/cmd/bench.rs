//! `kiln bench`: benchmarks that print figures (never timed tests).

use std::path::{Path, PathBuf};
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
    /// Training throughput (examples/s) with 1 and 2 workers: of the example-shaped wide & deep
    /// on synthetic rows (ranks as threads), or with `--data` of the example job's model on a
    /// committed dataset (`kiln train` runs, dense and lazy Adam), next to Keras with `--keras`.
    Train(BenchTrainArgs),
    /// All-reduce bus bandwidth for 1, 16 and 64 MiB buffers across 2 and 4 local worker
    /// processes (the ranks `kiln train` uses), next to a plain TCP copy on loopback measured
    /// in the same trial (3 trials; medians).
    Allreduce(BenchJsonArgs),
    /// One rank of `kiln bench allreduce` (started by it with RANK, WORLD_SIZE, MASTER_ADDR,
    /// MASTER_PORT; rank 0 prints the timings as JSON).
    #[command(hide = true)]
    AllreduceRank(AllreduceRankArgs),
    /// `kiln serve` on loopback: requests/s, p50/p99 latency for 1- and 64-instance requests,
    /// and while a new version is published and swapped in.
    Serve(super::serve::BenchServeArgs),
    /// Events/s read from a Kafka topic on loopback (JSON values checked against the example
    /// job's schema) next to the same events read as Parquet, in one run.
    Kafka(super::bench_kafka::BenchKafkaArgs),
    /// Rows/s of a Spark table through Spark Connect, as an Arrow stream and as its files,
    /// next to the same events read as plain Parquet, in one run.
    Spark(super::bench_spark::BenchSparkArgs),
    /// `tf.train.Example` TFRecords written and read + decoded on one thread from a committed
    /// dataset's rows, next to TensorFlow on one thread with `--tf` (each side's file checked
    /// against the other's), with the ratios.
    Tfrecord(super::bench_tfrecord::BenchTfrecordArgs),
}

/// Arguments of `kiln bench train`.
#[derive(clap::Args)]
pub struct BenchTrainArgs {
    /// Steps to time per run (synthetic rows: 300; `--data`: the `[train]` table's, which is
    /// one epoch for the example job).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Synthetic rows to train on (without `--data`).
    #[arg(long, default_value_t = 400_000)]
    pub rows: usize,
    /// Train the `[train]` model of `--spec` on this committed dataset (path or URL) with
    /// `kiln train --workers N` for each of `--workers`, with Adam dense (`lazy = false`) and
    /// lazy (`lazy = true`), and print each run's examples/s.
    #[arg(long, value_name = "DATASET_URL")]
    pub data: Option<String>,
    /// Job spec (or `--config`-style TOML) whose `[train]` table `--data` trains. Default: the
    /// example job, examples/daily_ctr/job.toml.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Worker counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Where to train (`kiln train --device`): cpu, cuda[:N], wgpu[:N] or wgpu:cpu.
    #[arg(long, default_value = "cpu")]
    pub device: kiln_trainer::device::ComputeDevice,
    /// A Python with TensorFlow: with `--data` (a local dataset), also run the Keras reference
    /// (bench/keras_ctr.py) on the same shards, model and steps, and print Kiln's speed as a
    /// multiple of Keras's.
    #[arg(long, value_name = "PYTHON")]
    pub keras: Option<PathBuf>,
    /// The Keras reference script. Default: bench/keras_ctr.py of this source tree.
    #[arg(long, value_name = "FILE")]
    pub keras_script: Option<PathBuf>,
    /// Print JSON (synthetic rows: one line per run; `--data`: one object).
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
    /// A Python with duckdb, polars and pyarrow: instead of the variants, run the example job
    /// with Kiln (Parquet output), DuckDB and Polars (bench/peers/), check the peers' examples
    /// equal to Kiln's row for row, then time them interleaved and print the ratios.
    #[arg(long, value_name = "PYTHON", conflicts_with = "cluster")]
    pub peers: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Features(a) => bench_features(a),
        BenchCommand::Train(a) if a.data.is_some() => bench_train_data(a),
        BenchCommand::Train(a) => {
            if a.keras.is_some() {
                bail!("--keras needs --data DATASET (a committed dataset of the example job)");
            }
            if a.workers.is_empty() || a.workers.contains(&0) {
                bail!("--workers: give worker counts of 1 or more");
            }
            for lazy in [false, true] {
                for &workers in &a.workers {
                    let r = kiln_trainer::bench::bench_train(
                        workers,
                        a.steps.unwrap_or(300),
                        a.rows,
                        a.device,
                        lazy,
                    )?;
                    if a.json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        println!(
                            "train on {}: Adam {}, {} worker(s), batch {}, {} steps: {:.0} examples/s (held-out AUC {})",
                            r.device,
                            r.adam,
                            r.workers,
                            r.batch_size,
                            r.steps,
                            r.examples_per_sec,
                            r.auc.map_or("-".into(), |a| format!("{a:.4}"))
                        );
                    }
                }
            }
            Ok(())
        }
        BenchCommand::AllreduceRank(a) => allreduce_rank(a),
        BenchCommand::Serve(a) => super::serve::bench(a),
        BenchCommand::Kafka(a) => super::bench_kafka::run(a),
        BenchCommand::Spark(a) => super::bench_spark::run(a),
        BenchCommand::Tfrecord(a) => super::bench_tfrecord::run(a),
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
    if let Some(python) = &a.peers {
        return super::bench_peers::PeerBench {
            exe: &exe,
            python,
            scripts: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/peers"),
            events: &events,
            spec: &parquet_spec,
            work: &work,
            date: "2026-11-20",
            rows: a.rows,
            repeat: a.repeat,
            json: a.json,
        }
        .run();
    }
    let full_spec = work.join("job-full.toml");
    std::fs::write(&full_spec, &spec_text)?;
    // The statistics' cost: the full job without them.
    let no_stats_spec = work.join("job-full-no-statistics.toml");
    std::fs::write(&no_stats_spec, without_statistics(&spec_text)?)?;
    // The DEFLATE level's cost: the full job at the other of levels 1 and 6 (TensorFlow's).
    let level = tfrecord_level(&spec_text)?;
    let other_level = if level == 1 { 6 } else { 1 };
    let other_level_spec = work.join(format!("job-full-gzip-level-{other_level}.toml"));
    std::fs::write(
        &other_level_spec,
        with_tfrecord_level(&spec_text, other_level)?,
    )?;
    let full_name = format!("tfrecord_gzip level {level}+parquet");
    let other_level_name = format!("tfrecord_gzip level {other_level}+parquet");
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
        (full_name.clone(), &full_spec, None),
        (format!("{full_name}, no statistics"), &no_stats_spec, None),
        (other_level_name.clone(), &other_level_spec, None),
    ];
    if let Some(c) = &cluster {
        variants.push((
            "parquet, cluster 1+2".into(),
            &parquet_spec,
            Some(c.url.clone()),
        ));
        variants.push((
            format!("{full_name}, cluster 1+2"),
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
            "output_bytes": runs[0]["outputs"][0]["bytes"].as_u64().unwrap_or(0),
        }));
    }
    let find = |name: &str| results.iter().find(|r| r["variant"] == name);
    let best = |name: &str| {
        find(name).map(|r| {
            (
                r["best_seconds"].as_f64().unwrap_or(0.0),
                r["peak_rss_bytes"].as_u64().unwrap_or(0),
            )
        })
    };
    // The full example's cost over Parquet-only, and the TFRecord bytes at each level (the
    // full output's bytes less the Parquet-only output's).
    let full_vs_parquet = match (best("parquet"), best(&full_name), best(&other_level_name)) {
        (Some((parquet, _)), Some((full, _)), Some((other, _))) if parquet > 0.0 => {
            let bytes = |name: &str| find(name).and_then(|r| r["output_bytes"].as_u64());
            let tfrecord_bytes = |name: &str| Some(bytes(name)?.saturating_sub(bytes("parquet")?));
            Some(serde_json::json!({
                "level": level,
                "wall_time_ratio": full / parquet,
                "tfrecord_bytes": tfrecord_bytes(&full_name),
                "other_level": other_level,
                "other_level_wall_time_ratio": other / parquet,
                "other_level_tfrecord_bytes": tfrecord_bytes(&other_level_name),
            }))
        }
        _ => None,
    };
    let statistics_cost = match (
        best(&full_name),
        best(&format!("{full_name}, no statistics")),
    ) {
        (Some((with, rss_with)), Some((without, rss_without))) if without > 0.0 => {
            Some(serde_json::json!({
                "seconds_with": with,
                "seconds_without": without,
                "wall_time_increase": with / without - 1.0,
                "peak_rss_increase_bytes": rss_with as i64 - rss_without as i64,
            }))
        }
        _ => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "features": results,
                "full_vs_parquet": full_vs_parquet,
                "statistics_cost": statistics_cost,
            })
        );
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
        if let Some(f) = &full_vs_parquet {
            for (level, ratio, bytes) in [
                ("level", "wall_time_ratio", "tfrecord_bytes"),
                (
                    "other_level",
                    "other_level_wall_time_ratio",
                    "other_level_tfrecord_bytes",
                ),
            ] {
                println!(
                    "  tfrecord_gzip level {}+parquet / parquet: {:.2}x wall time (best vs best); TFRecord shards {}",
                    f[level],
                    f[ratio].as_f64().unwrap_or(0.0),
                    super::human_bytes(f[bytes].as_u64().unwrap_or(0))
                );
            }
        }
        if let Some(c) = &statistics_cost {
            println!(
                "  statistics in the write pass: {:+.1}% wall time (best vs best), peak RSS {:+.0} MiB",
                100.0 * c["wall_time_increase"].as_f64().unwrap_or(0.0),
                c["peak_rss_increase_bytes"].as_i64().unwrap_or(0) as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}

/// One `kiln train` run of `kiln bench train --data`.
#[derive(Debug, Clone, serde::Serialize)]
struct DataRun {
    /// `dense` (`lazy = false`), `lazy` (`lazy = true`), or the configured optimizer's kind.
    optimizer: String,
    /// Worker processes.
    workers: usize,
    /// Steps trained.
    steps: u64,
    /// Global batch.
    batch_size: u64,
    /// Training examples per second (the step loop, as `kiln train --json` reports it).
    examples_per_sec: f64,
    /// Held-out AUC.
    auc: Option<f64>,
    /// Wall time of the whole `kiln train` process (statistics pass, training, evaluation,
    /// export), seconds.
    process_seconds: f64,
}

/// The optimizer variants `kiln bench train --data` runs: Adam dense and lazy, or the one
/// configured optimizer when it is not Adam. Each is (name, `[train]` table).
fn optimizer_variants(train: &toml::Table) -> Vec<(String, toml::Table)> {
    let opt = train.get("optimizer").and_then(toml::Value::as_table);
    let kind = opt
        .and_then(|o| o.get("kind"))
        .and_then(toml::Value::as_str)
        .unwrap_or("adam");
    if kind != "adam" {
        return vec![(kind.to_string(), train.clone())];
    }
    [("dense", false), ("lazy", true)]
        .into_iter()
        .map(|(name, lazy)| {
            let mut t = train.clone();
            let mut o = opt.cloned().unwrap_or_default();
            o.insert("kind".into(), "adam".into());
            o.insert("lazy".into(), lazy.into());
            t.insert("optimizer".into(), toml::Value::Table(o));
            (name.to_string(), t)
        })
        .collect()
}

/// How a run's optimizer variant is printed: `Adam dense`, `Adam lazy`, or the kind.
fn optimizer_label(name: &str) -> String {
    match name {
        "dense" | "lazy" => format!("Adam {name}"),
        other => other.to_string(),
    }
}

/// The local directory of a dataset given as a path or `file://` URL (the Keras script reads
/// files).
fn local_dataset_dir(data: &str) -> anyhow::Result<PathBuf> {
    let path = match data.strip_prefix("file://") {
        Some(p) => p,
        None if data.contains("://") => {
            bail!("--keras reads the shards from local files; {data} is not a local dataset")
        }
        None => data,
    };
    Ok(std::path::absolute(path)?)
}

/// `kiln bench train --data DATASET [--keras PYTHON]`.
fn bench_train_data(a: BenchTrainArgs) -> anyhow::Result<()> {
    let data = a.data.clone().context("--data")?;
    let exe = std::env::current_exe()?;
    let spec = a.spec.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml")
    });
    let text =
        std::fs::read_to_string(&spec).with_context(|| format!("reading {}", spec.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", spec.display()))?;
    let train = match doc.get("train") {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => bail!("{}: no [train] table", spec.display()),
    };
    let keras_dir = a
        .keras
        .as_ref()
        .map(|_| local_dataset_dir(&data))
        .transpose()?;
    if a.workers.is_empty() || a.workers.contains(&0) {
        bail!("--workers: give worker counts of 1 or more");
    }
    let work = std::env::temp_dir().join(format!("kiln-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_data_bench(&a, &exe, &data, &train, keras_dir.as_deref(), &work);
    let _ = std::fs::remove_dir_all(&work);
    let (runs, keras) = result?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let keras_shards = keras
        .as_ref()
        .and_then(|k| k["from_shards"]["examples_per_sec"].as_f64());
    if a.json {
        let ratios: Vec<serde_json::Value> = runs
            .iter()
            .filter_map(|r| {
                let k = keras_shards?;
                Some(serde_json::json!({
                    "optimizer": r.optimizer, "workers": r.workers,
                    "kiln_over_keras_from_shards": r.examples_per_sec / k,
                }))
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "data": data, "spec": spec.display().to_string(), "cores": cores,
                "device": a.device.to_string(), "kiln": runs, "keras": keras, "ratios": ratios,
            })
        );
        return Ok(());
    }
    println!(
        "kiln train on {data} ([train] of {}), {cores} cores, device {}:",
        spec.display(),
        a.device
    );
    for r in &runs {
        println!(
            "  {:<10} {} worker(s): {} steps of {}: {:>9.0} examples/s  (held-out AUC {}, \
             process {:.1} s)",
            optimizer_label(&r.optimizer),
            r.workers,
            r.steps,
            r.batch_size,
            r.examples_per_sec,
            r.auc.map_or("-".into(), |a| format!("{a:.4}")),
            r.process_seconds
        );
    }
    if let Some(k) = &keras {
        let f = |key: &str| k[key]["examples_per_sec"].as_f64().unwrap_or(0.0);
        println!(
            "keras ({}), the same model, shards and steps:",
            k["framework"].as_str().unwrap_or("?")
        );
        println!(
            "  fed from the shards:        {:>9.0} examples/s",
            f("from_shards")
        );
        println!(
            "  input pipeline alone:       {:>9.0} examples/s",
            f("input_only")
        );
        println!(
            "  model step, batches in RAM: {:>9.0} examples/s",
            f("model_step")
        );
        println!(
            "  input pipeline: {}",
            k["input_pipeline"].as_str().unwrap_or("?")
        );
        for r in &runs {
            println!(
                "  Kiln {} {} worker(s) / Keras from the shards: {:.2}x",
                optimizer_label(&r.optimizer),
                r.workers,
                r.examples_per_sec / f("from_shards")
            );
        }
    }
    Ok(())
}

/// The `kiln train` runs (and the Keras run) of [`bench_train_data`], in `work`.
fn run_data_bench(
    a: &BenchTrainArgs,
    exe: &std::path::Path,
    data: &str,
    train: &toml::Table,
    keras_dir: Option<&std::path::Path>,
    work: &std::path::Path,
) -> anyhow::Result<(Vec<DataRun>, Option<serde_json::Value>)> {
    let batch_size = toml::Value::Table(train.clone())
        .try_into::<kiln_trainer::TrainConfig>()
        .context("[train]")?
        .batch_size;
    let mut runs = Vec::new();
    let mut keras_config = None;
    for (name, table) in optimizer_variants(train) {
        let mut doc = toml::Table::new();
        doc.insert("train".into(), toml::Value::Table(table));
        let cfg = work.join(format!("train-{name}.toml"));
        std::fs::write(&cfg, toml::to_string(&doc)?)?;
        keras_config.get_or_insert_with(|| cfg.clone());
        for &workers in &a.workers {
            let mut cmd = Command::new(exe);
            cmd.arg("train")
                .arg("--config")
                .arg(&cfg)
                .args(["--data", data, "--json", "--workers"])
                .arg(workers.to_string())
                .arg("--model-dir")
                .arg(work.join(format!("model-{name}-{workers}")))
                .args(["--device", &a.device.to_string()])
                .env("RUST_LOG", "warn");
            if let Some(s) = a.steps {
                cmd.args(["--steps", &s.to_string()]);
            }
            eprintln!(
                "kiln bench train: {}, {workers} worker(s)...",
                optimizer_label(&name)
            );
            let t0 = std::time::Instant::now();
            let out = cmd.output()?;
            let process_seconds = t0.elapsed().as_secs_f64();
            if !out.status.success() {
                bail!(
                    "kiln train ({name}, {workers} workers) failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("kiln train ({name}, {workers} workers): its --json"))?;
            runs.push(DataRun {
                optimizer: name.clone(),
                workers,
                steps: v["steps"].as_u64().unwrap_or(0),
                batch_size: batch_size as u64,
                examples_per_sec: v["examples_per_sec"].as_f64().unwrap_or(0.0),
                auc: v["metrics"]["auc"].as_f64(),
                process_seconds,
            });
        }
    }
    let keras = match (&a.keras, keras_dir, keras_config) {
        (Some(python), Some(dir), Some(cfg)) => {
            let script = a.keras_script.clone().unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/keras_ctr.py")
            });
            let steps = runs.first().map_or(0, |r| r.steps);
            eprintln!(
                "kiln bench train: Keras ({}), {steps} steps...",
                python.display()
            );
            Some(python_json(
                Command::new(python)
                    .arg(&script)
                    .arg(dir)
                    .arg("--config")
                    .arg(&cfg)
                    .args(["--steps", &steps.to_string()]),
                &script,
            )?)
        }
        _ => None,
    };
    Ok((runs, keras))
}

/// Runs a Python peer script (`cmd`: the interpreter with the script and its arguments) with
/// TensorFlow's C++ logging quiet, and parses the last line of its output that is a JSON object.
pub(super) fn python_json(cmd: &mut Command, script: &Path) -> anyhow::Result<serde_json::Value> {
    let out = cmd
        .env("TF_CPP_MIN_LOG_LEVEL", "2")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{} printed no JSON", script.display()))?;
    serde_json::from_str(line).with_context(|| format!("{}: its JSON", script.display()))
}

/// The DEFLATE level of the example's TFRecord shards (`tfrecord_compression_level` of its
/// output, 6 when unset).
fn tfrecord_level(spec_text: &str) -> anyhow::Result<i64> {
    let t: toml::Table = toml::from_str(spec_text)?;
    let output = t
        .get("outputs")
        .and_then(toml::Value::as_array)
        .and_then(|o| o.first())
        .context("the example spec has no [[outputs]]")?;
    Ok(output
        .get("tfrecord_compression_level")
        .and_then(toml::Value::as_integer)
        .unwrap_or(6))
}

/// The spec with every output's TFRecord DEFLATE level set to `level`.
fn with_tfrecord_level(spec_text: &str, level: i64) -> anyhow::Result<String> {
    edit_outputs(spec_text, |o| {
        o.insert(
            "tfrecord_compression_level".into(),
            toml::Value::Integer(level),
        );
    })
}

/// The spec with `edit` applied to every `[[outputs]]` table.
fn edit_outputs(spec_text: &str, edit: impl Fn(&mut toml::Table)) -> anyhow::Result<String> {
    let mut t: toml::Table = toml::from_str(spec_text)?;
    t.get_mut("outputs")
        .and_then(toml::Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_table_mut)
        .for_each(edit);
    Ok(toml::to_string(&t)?)
}

/// `spec_text` with `statistics = false` on every output (and so without its expectations,
/// which are checked on the statistics): the baseline of the statistics' cost.
pub(crate) fn without_statistics(spec_text: &str) -> anyhow::Result<String> {
    edit_outputs(spec_text, |o| {
        o.insert("statistics".into(), toml::Value::Boolean(false));
        o.remove("expect");
        o.remove("expect_file");
        o.remove("baseline");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_bench_runs_adam_dense_and_lazy() {
        let train: toml::Table = toml::from_str(
            "batch_size = 1024\noptimizer = { kind = \"adam\", lr = 0.002, lazy = false }",
        )
        .unwrap();
        let v = optimizer_variants(&train);
        let names: Vec<&str> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dense", "lazy"]);
        for (name, t) in &v {
            let o = t["optimizer"].as_table().unwrap();
            assert_eq!(o["lazy"].as_bool(), Some(name == "lazy"));
            assert_eq!(o["lr"].as_float(), Some(0.002), "other settings are kept");
        }
        let sgd: toml::Table = toml::from_str("optimizer = { kind = \"sgd\", lr = 0.05 }").unwrap();
        assert_eq!(optimizer_variants(&sgd)[0].0, "sgd");
        let none = optimizer_variants(&toml::Table::new());
        assert_eq!(none.len(), 2, "Adam is the default optimizer");
    }

    #[test]
    fn keras_reads_local_datasets_only() {
        assert_eq!(
            local_dataset_dir("file:///data/examples").unwrap(),
            PathBuf::from("/data/examples")
        );
        assert!(local_dataset_dir("relative/ex").unwrap().is_absolute());
        let e = local_dataset_dir("s3://b/examples")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a local dataset"), "{e}");
    }
}
