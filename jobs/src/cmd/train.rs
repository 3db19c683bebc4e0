//! `kiln train`: train the spec's `[train]` model on a committed examples dataset, on one or
//! several worker processes (see `docs/training.md`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_trainer::comm::{Comm, WorldEnv};
use kiln_trainer::source::DatasetSource;
use kiln_trainer::{TrainConfig, TrainOptions};

use super::model_dir::ModelDir;

/// Arguments of `kiln train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Job spec (TOML) with a `[train]` section; its `examples` output (for `--date`) is the
    /// training data unless `--data` is given.
    pub spec: Option<PathBuf>,
    /// Run date (YYYY-MM-DD) whose committed examples to train on.
    #[arg(long)]
    pub date: Option<String>,
    /// A TOML file with a `[train]` table (instead of a job spec).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Committed dataset to train on (path or URL), overriding the spec's output.
    #[arg(long)]
    pub data: Option<String>,
    /// Start this many local worker processes (ranks 0..N-1).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Model directory: a local path, file://, s3:// or hdfs:// URL (stores: trained in a local
    /// staging directory and uploaded at the end). Default: <spec dir>/models/<job name>/<date>
    /// (with --config: ./models/<config file stem>/<date>).
    #[arg(long)]
    pub model_dir: Option<String>,
    /// Continue from the latest checkpoint in the model directory (refused, naming what
    /// changed, if it was trained on another dataset, seed or `[train]` config).
    #[arg(long)]
    pub resume: bool,
    /// Override `[train] steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override `[train] device`: cpu, cuda[:N], wgpu[:N] (`cuda` / `wgpu` alone: GPU
    /// `LOCAL_RANK`) or wgpu:cpu (a software Vulkan device such as lavapipe). GPU devices need a
    /// build with `--features kiln-jobs/cuda` or `kiln-jobs/wgpu`.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<kiln_trainer::device::ComputeDevice>,
    /// Print one JSON object with the results to stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds a silent peer may take before it counts as lost (also the bound of TCP
    /// keepalive, which finds a host lost without FIN/RST while no data is moving).
    #[arg(long, default_value_t = 30)]
    pub peer_timeout: u64,
    /// Skip corrupt TFRecord records (CRC mismatch, truncation) instead of failing; each
    /// rank prints every skipped record (shard, index, offset, reason) and the rows lost, and
    /// `--json` lists them under `skipped`.
    #[arg(long)]
    pub skip_corrupt: bool,
    /// Seconds to wait for all workers to join.
    #[arg(long, default_value_t = 120)]
    pub rendezvous_timeout: u64,
    /// At the end, write Prometheus metrics (duration, outcome, examples/s, final loss,
    /// held-out AUC and log loss) to PATH for node-exporter's textfile collector (written to
    /// PATH.tmp, then renamed; rank 0 only). See `docs/observability.md`.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

/// The `kiln_job` label of `kiln train`'s metrics: the spec's job name (or the `--config`
/// file's stem).
fn job_label(args: &TrainArgs) -> String {
    let stem = |p: &std::path::Path| {
        p.file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    };
    match (&args.config, &args.spec) {
        (Some(c), _) => stem(c),
        (None, Some(s)) => kiln_engine::spec::JobSpec::load(s).map_or_else(|_| stem(s), |j| j.name),
        (None, None) => "model".into(),
    }
}

/// Adds a finished run's metrics (rank 0's report) to `m`.
fn add_report_metrics(
    m: &mut crate::metrics::Exposition,
    job: &str,
    report: &kiln_trainer::TrainReport,
) {
    let l: &[(&str, &str)] = &[("kiln_job", job)];
    m.gauge(
        "kiln_train_examples_per_second",
        "Training examples per second over all workers (step loop wall time).",
        l,
        report.examples_per_sec,
    );
    m.gauge(
        "kiln_train_loss",
        "Mean training loss over the last logging window.",
        l,
        report.train_loss,
    );
    m.gauge(
        "kiln_train_steps",
        "Steps of the run.",
        l,
        report.steps as f64,
    );
    m.gauge(
        "kiln_train_workers",
        "Workers of the run.",
        l,
        report.workers as f64,
    );
    if let Some(e) = &report.metrics {
        m.gauge(
            "kiln_train_eval_log_loss",
            "Held-out log loss of the trained model.",
            l,
            e.logloss,
        );
        if let Some(auc) = e.auc {
            m.gauge(
                "kiln_train_eval_auc",
                "Held-out ROC AUC of the trained model.",
                l,
                auc,
            );
        }
        m.gauge(
            "kiln_train_eval_rows",
            "Held-out rows the model was evaluated on.",
            l,
            e.rows as f64,
        );
    }
}

/// Loads the `[train]` table and the data location.
fn resolve(args: &TrainArgs) -> anyhow::Result<(TrainConfig, String, String)> {
    let (table, data, name) = if let Some(cfg) = &args.config {
        let text =
            std::fs::read_to_string(cfg).with_context(|| format!("reading {}", cfg.display()))?;
        let doc: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))?;
        let t = match doc.get("train") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => bail!("{}: no [train] table", cfg.display()),
        };
        let name = format!(
            "models/{}",
            cfg.file_stem().and_then(|s| s.to_str()).unwrap_or("model")
        );
        (t, None, name)
    } else if let Some(spec_path) = &args.spec {
        let spec = kiln_engine::spec::JobSpec::load(spec_path)?;
        let t = spec
            .train
            .clone()
            .with_context(|| format!("{}: no [train] section", spec_path.display()))?;
        let data = match (&args.data, &args.date) {
            (Some(_), _) => None,
            (None, Some(date)) => {
                let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
                    .with_context(|| format!("--date {date}: expected YYYY-MM-DD"))?;
                let job = spec.render(date, &Default::default())?;
                let out = job
                    .outputs
                    .iter()
                    .find(|o| o.statement == "examples")
                    .or_else(|| (job.outputs.len() == 1).then(|| &job.outputs[0]))
                    .with_context(|| {
                        format!(
                            "{}: no `examples` output to train on; pass --data",
                            spec_path.display()
                        )
                    })?;
                Some(out.location.clone())
            }
            (None, None) => bail!("kiln train SPEC needs --date D (or --data DATASET)"),
        };
        // Models live beside the spec, like its other relative paths: <spec dir>/models/<job>.
        let name = spec
            .base_dir()
            .join("models")
            .join(&spec.name)
            .display()
            .to_string();
        (t, data, name)
    } else {
        bail!("kiln train needs a job spec (SPEC --date D) or --config FILE --data DATASET");
    };
    let mut config: TrainConfig = toml::Value::Table(table).try_into().context("[train]")?;
    if let Some(s) = args.steps {
        config.steps = Some(s);
    }
    if let Some(d) = args.device {
        config.device = d;
    }
    let data = args
        .data
        .clone()
        .or(data)
        .context("no training data: pass --data DATASET")?;
    let model_dir = args.model_dir.clone().unwrap_or_else(|| {
        format!(
            "{name}/{}",
            args.date.clone().unwrap_or_else(|| "latest".into())
        )
    });
    Ok((config, data, model_dir))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = WorldEnv::from_env()?;
    let rank = env.as_ref().map_or(0, |e| e.rank);
    let launcher = env.is_none() && args.workers > 1;
    let mut m = crate::metrics::Exposition::new();
    let result = if launcher {
        launch(&args)
    } else {
        run_rank(&args, env, &mut m)
    };
    // The launcher writes metrics only when a worker failed (rank 0 may not have); rank 0
    // writes them after every run of its own.
    if let Some(path) = &args.metrics_textfile
        && (if launcher { result.is_err() } else { rank == 0 })
    {
        let job = job_label(&args);
        crate::metrics::add_outcome(
            &mut m,
            "train",
            &[("kiln_job", &job)],
            started.elapsed().as_secs_f64(),
            result.is_ok(),
        );
        crate::metrics::write_if_asked(Some(path), &m);
    }
    result
}

/// One rank's training (the whole run with one worker); rank 0 adds the run's metrics to `m`.
fn run_rank(
    args: &TrainArgs,
    env: Option<WorldEnv>,
    m: &mut crate::metrics::Exposition,
) -> anyhow::Result<()> {
    let (config, data, model_dir) = resolve(args)?;
    // Before anything is read or any peer waited for: a rank whose device this build lacks
    // fails at once, naming it (`cuda:1`: the GPU of `LOCAL_RANK` 1).
    kiln_trainer::device::select_device(config.device)
        .with_context(|| format!("rank {}", env.as_ref().map_or(0, |e| e.rank)))?;
    let model_dir = ModelDir::resolve(&model_dir)?;
    let env = env.unwrap_or(WorldEnv {
        rank: 0,
        world: 1,
        master_addr: "127.0.0.1".into(),
        master_port: 0,
    });
    if env.rank == 0 {
        model_dir.prepare_for_training(args.resume)?;
    }
    let source = Arc::new(DatasetSource::open_with(&data, args.skip_corrupt)?);
    let mut comm = Comm::connect(&env, Duration::from_secs(args.rendezvous_timeout))
        .with_context(|| format!("rank {} of {}", env.rank, env.world))?;
    let mut opts = TrainOptions::new(config, source.clone(), model_dir.local.clone());
    opts.resume = args.resume;
    opts.progress = crate::progress::train();
    opts.step_timeout = Duration::from_secs(args.peer_timeout);
    if env.rank == 0 {
        opts.on_checkpoint = model_dir.checkpoint_uploader();
    }
    let report =
        kiln_trainer::train(&opts, &mut comm).with_context(|| format!("rank {}", env.rank))?;
    comm.shutdown();
    let skipped = source.skipped();
    for s in &skipped {
        for r in &s.records {
            eprintln!(
                "kiln train: rank {}: skipped corrupt record {} at offset {} of {} ({:?})",
                env.rank, r.index, r.offset, s.shard, r.reason
            );
        }
        eprintln!(
            "kiln train: rank {}: {} rows of {} were not read (--skip-corrupt)",
            env.rank, s.rows_lost, s.shard
        );
    }
    if env.rank == 0 {
        model_dir.publish()?;
        if args.metrics_textfile.is_some() {
            add_report_metrics(m, &job_label(args), &report);
        }
    }
    if args.json && env.rank == 0 {
        let mut v = serde_json::to_value(&report)?;
        v["data"] = serde_json::Value::String(data);
        v["model_dir"] = serde_json::Value::String(model_dir.display());
        v["skipped"] = serde_json::to_value(&skipped)?;
        v["device"] =
            serde_json::Value::String(kiln_trainer::device::selected_device().to_string());
        println!("{v}");
    }
    Ok(())
}

/// The command of local worker `rank` of `workers` started by `kiln train --workers N`: this
/// binary with the launcher's arguments (less `--workers`) and the rank's environment:
/// `RANK`, `WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, `MASTER_PORT`, and `LOCAL_RANK` (= `RANK`:
/// all ranks are on this host) with `LOCAL_WORLD_SIZE`, so that `--device cuda` (or
/// `[train] device = "cuda"`) puts each rank on its own GPU. Workers started by another
/// launcher (torchrun, a Kubernetes indexed Job, by hand on several hosts) read the
/// `LOCAL_RANK` that launcher sets, or use GPU 0 without it.
fn worker_command(
    exe: &std::path::Path,
    child_args: &[String],
    rank: usize,
    workers: usize,
    port: u16,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(child_args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", workers.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", workers.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    cmd
}

/// `--workers N`: start N copies of this binary as ranks 0..N-1 on this machine and wait.
fn launch(args: &TrainArgs) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let mut child_args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1).peekable();
    while let Some(a) = it.next() {
        if a == "--workers" {
            it.next();
        } else if !a.starts_with("--workers=") {
            child_args.push(a);
        }
    }
    let mut children = Vec::new();
    for rank in 0..args.workers {
        let mut cmd = worker_command(&exe, &child_args, rank, args.workers, port);
        // A worker dies with its launcher (e.g. `kill -9` of `kiln run` or of the launcher):
        // no orphan keeps writing checkpoints that a resumed run is reading.
        kiln_pipeline::proc::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting worker {rank}"))?;
        eprintln!("kiln train: worker rank {rank} pid {}", child.id());
        children.push(Some(child));
    }
    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot
                && let Some(status) = c.try_wait()?
            {
                if !status.success() {
                    failed.push((rank, status.to_string()));
                    first_failure.get_or_insert_with(Instant::now);
                }
                *slot = None;
            }
        }
        // Survivors notice a lost peer within seconds; stop stragglers after a grace period.
        if first_failure.is_some_and(|t| t.elapsed() > Duration::from_secs(args.peer_timeout + 5)) {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(c) = slot.take() {
                    let mut c = c;
                    let _ = c.kill();
                    let _ = c.wait();
                    failed.push((rank, "killed after a peer failed".into()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|(r, s)| format!("rank {r}: {s}"))
            .collect();
        bail!("training failed: {}", list.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_local_worker_gets_its_own_local_rank() {
        let args = vec!["train".to_string(), "--device".into(), "cuda".into()];
        let envs: Vec<std::collections::HashMap<String, String>> = (0..3)
            .map(|rank| {
                worker_command(std::path::Path::new("/bin/kiln"), &args, rank, 3, 4242)
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
                    .collect()
            })
            .collect();
        for (rank, env) in envs.iter().enumerate() {
            assert_eq!(env["RANK"], rank.to_string());
            assert_eq!(env["LOCAL_RANK"], rank.to_string(), "rank {rank}: {env:?}");
            assert_eq!(env["LOCAL_WORLD_SIZE"], "3");
            assert_eq!(env["WORLD_SIZE"], "3");
            assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
            assert_eq!(env["MASTER_PORT"], "4242");
        }
        let cmd = worker_command(std::path::Path::new("/bin/kiln"), &args, 1, 3, 4242);
        let got: Vec<&std::ffi::OsStr> = cmd.get_args().collect();
        assert_eq!(got, ["train", "--device", "cuda"]);
    }
}
