//! `kiln k8s`: Kubernetes manifests Kiln renders itself (see `deploy/k8s/README.md`).
//!
//! `kiln k8s train` prints one multi-node training run — an indexed Job whose pods are the
//! ranks, and the headless Service that gives rank 0 a DNS name — as JSON documents separated
//! by `---` lines (JSON is YAML, so `kubectl apply -f -` takes the output as it is).
//! `kiln k8s check-args -- ARGS...` (hidden) parses a kiln command line with kiln's own parser
//! and runs nothing: the tests pass every command line of `deploy/k8s` through it, so that no
//! manifest drifts from the CLI.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use kiln_k8s::{TrainCluster, TrainRun, to_documents, train_manifests};

/// `kiln k8s ...`.
// Parsed once per process: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug, Clone)]
pub enum K8sCommand {
    /// Print the manifests of one multi-node training run: an indexed Job (one pod per rank)
    /// and its headless Service, as JSON documents separated by `---` (valid YAML).
    Train(K8sTrainArgs),
    /// Parse ARGS as a `kiln` command line and exit 0 if it is valid; runs nothing.
    #[command(hide = true)]
    CheckArgs {
        /// The command line without the program name, e.g. `run SPEC --date 2026-11-20`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Arguments of `kiln k8s train`.
#[derive(clap::Args, Debug, Clone)]
pub struct K8sTrainArgs {
    /// The job spec (TOML) with a `[train]` section; read here for its name. The pods read
    /// the same spec from the ConfigMap `--spec-configmap` (key `job.toml`).
    pub spec: PathBuf,
    /// Run date, YYYY-MM-DD: the examples of this date are trained on.
    #[arg(long)]
    pub date: NaiveDate,
    /// Worker pods (ranks); one rank per pod unless `--gpus-per-worker` > 1.
    #[arg(long)]
    pub workers: usize,
    /// GPUs per worker pod (`nvidia.com/gpu`); 0 trains on the CPU. With G > 1 each pod
    /// starts G ranks, one per GPU (`LOCAL_RANK` 0..G-1), and the world is workers x G.
    #[arg(long, default_value_t = 0)]
    pub gpus_per_worker: usize,
    /// The kiln image (built from deploy/docker/Dockerfile; a GPU run needs a CUDA build).
    #[arg(long, default_value = "kiln:latest")]
    pub image: String,
    /// Namespace of the Job and Service.
    #[arg(long, default_value = "kiln")]
    pub namespace: String,
    /// Model directory (s3:// or a path on a shared volume); checkpoints go to
    /// `<model-dir>/checkpoints/`, so a restarted worker resumes from them.
    /// Default: `s3://kiln-models/<job>/train/<date>`.
    #[arg(long)]
    pub model_dir: Option<String>,
    /// The committed examples dataset. Default: `s3://kiln-data/<job>/dt=<date>/examples/`,
    /// where the base's feature CronJob writes it.
    #[arg(long)]
    pub data: Option<String>,
    /// Name of the Job (and prefix of the Service). Default: `<job>-train-<date>`.
    #[arg(long)]
    pub name: Option<String>,
    /// Rendezvous port of rank 0.
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// ConfigMap holding the spec under the key `job.toml`.
    #[arg(long, default_value = "kiln-job-spec")]
    pub spec_configmap: String,
    /// Secret with the object store credentials (`AWS_*`), as the base's other workloads.
    #[arg(long, default_value = "kiln-s3")]
    pub s3_secret: String,
    /// CPU request (and limit) of each worker pod.
    #[arg(long, default_value = "8")]
    pub cpu: String,
    /// Memory request (and limit) of each worker pod.
    #[arg(long, default_value = "32Gi")]
    pub memory: String,
    /// Failed pods per index (rank) before the whole Job fails.
    #[arg(long, default_value_t = 3)]
    pub backoff_limit_per_index: u32,
    /// Also print the ConfigMap `--spec-configmap` holding SPEC (as `job.toml`) and the files
    /// it names beside it (`expect_file`): the pods then train exactly this spec. The
    /// pipeline's `train_on = "kubernetes"` creates the same three objects.
    #[arg(long)]
    pub include_spec: bool,
}

/// Runs `kiln k8s ...`.
pub fn run(cmd: K8sCommand) -> anyhow::Result<()> {
    match cmd {
        K8sCommand::Train(args) => {
            // The spec the pods will read: it must load and its [train] must parse here,
            // not fail in W pods at once.
            let spec = kiln_engine::spec::JobSpec::load(&args.spec)?;
            let train = spec
                .train
                .clone()
                .with_context(|| format!("{}: no [train] section", args.spec.display()))?;
            let _: kiln_trainer::TrainConfig = toml::Value::Table(train)
                .try_into()
                .with_context(|| format!("{}: [train]", args.spec.display()))?;
            let run = train_run(&args, &spec.name)?;
            let mut docs = Vec::new();
            if args.include_spec {
                let mut files = spec.files()?;
                files[0].0 = kiln_k8s::manifests::SPEC_KEY.to_string();
                docs.push(kiln_k8s::spec_configmap(&run, &files)?);
            }
            docs.extend(train_manifests(&run)?);
            print!("{}", to_documents(&docs)?);
            Ok(())
        }
        K8sCommand::CheckArgs { args } => check_args(&args),
    }
}

/// The training run `args` describe, for job `job`.
pub fn train_run(args: &K8sTrainArgs, job: &str) -> anyhow::Result<TrainRun> {
    let cluster = TrainCluster {
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        workers: args.workers,
        gpus_per_worker: args.gpus_per_worker,
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        master_port: args.master_port,
        s3_secret: args.s3_secret.clone(),
        backoff_limit_per_index: args.backoff_limit_per_index,
        ..TrainCluster::default()
    };
    let mut run = TrainRun::new(job, args.date, cluster);
    if let Some(n) = &args.name {
        run.name = n.clone();
    }
    if let Some(d) = &args.data {
        run.data = d.clone();
    }
    if let Some(m) = &args.model_dir {
        run.model_dir = m.clone();
    }
    run.spec_configmap = args.spec_configmap.clone();
    Ok(run)
}

/// Parses `args` (without the program name) with kiln's own command-line parser.
pub fn check_args(args: &[String]) -> anyhow::Result<()> {
    use clap::Parser;
    let argv = std::iter::once("kiln".to_string()).chain(args.iter().cloned());
    match crate::Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => bail!("`kiln {}` does not parse:\n{e}", args.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> K8sTrainArgs {
        let argv = ["kiln", "k8s", "train", "job.toml", "--date", "2026-11-20"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string());
        match crate::Cli::try_parse_from(argv).expect("parses").command {
            crate::Command::K8s(K8sCommand::Train(a)) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_reach_the_manifests_and_the_command_parses() {
        let run = train_run(
            &args(&[
                "--workers",
                "4",
                "--gpus-per-worker",
                "1",
                "--image",
                "r.example/kiln:1",
                "--model-dir",
                "s3://m/x",
                "--name",
                "nightly",
            ]),
            "daily_ctr",
        )
        .unwrap();
        let docs = train_manifests(&run).unwrap();
        let job = &docs[1];
        assert_eq!(job["metadata"]["name"], "nightly");
        assert_eq!(job["spec"]["completions"], 4);
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "r.example/kiln:1");
        let cmd: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
        assert!(cmd.windows(2).any(|w| w == ["--model-dir", "s3://m/x"]));
        assert_eq!(cmd[0], "kiln");
        check_args(&cmd[1..]).unwrap();
        assert_eq!(
            job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
            "kiln-job-spec"
        );
    }

    #[test]
    fn check_args_rejects_bad_lines() {
        assert!(check_args(&["run".into(), "x.toml".into()]).is_err());
        assert!(check_args(&["train".into(), "--no-such-flag".into()]).is_err());
        let bad = train_run(&args(&["--workers", "2", "--name", "Bad_Name"]), "j").unwrap();
        assert!(train_manifests(&bad).is_err());
    }
}
