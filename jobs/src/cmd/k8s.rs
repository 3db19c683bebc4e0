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
use serde_json::{Value, json};

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
            print!("{}", to_documents(&train_manifests(&args, &spec.name)?)?);
            Ok(())
        }
        K8sCommand::CheckArgs { args } => check_args(&args),
    }
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

/// JSON documents separated by `---` lines: a multi-document YAML stream.
pub fn to_documents(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(d)?);
        out.push('\n');
    }
    Ok(out)
}

/// A DNS-1123 label from `s`: lower case, `[a-z0-9-]`, at most `max` characters.
fn dns_label(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    out.truncate(max);
    out.trim_matches('-').to_string()
}

/// The indexed Job and its headless Service for one training run.
pub fn train_manifests(args: &K8sTrainArgs, job: &str) -> anyhow::Result<Vec<Value>> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let date = args.date.format("%Y-%m-%d").to_string();
    // Pod host names are `<job name>-<index>` and must stay a DNS label (63 characters).
    let name = match &args.name {
        Some(n) => {
            let l = dns_label(n, 56);
            if l != *n {
                bail!("--name {n}: must be a DNS label of at most 56 characters ([a-z0-9-])");
            }
            l
        }
        None => dns_label(&format!("{job}-train-{date}"), 56),
    };
    let service = dns_label(&format!("{name}-ranks"), 63);
    let ns = &args.namespace;
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(|| format!("s3://kiln-models/{job}/train/{date}"));
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| format!("s3://kiln-data/{job}/dt={date}/examples/"));
    let gpus = args.gpus_per_worker;
    let ranks_per_pod = gpus.max(1);
    let world = args.workers * ranks_per_pod;
    let labels = json!({
        "app.kubernetes.io/name": "kiln",
        "app.kubernetes.io/component": "train",
        "kiln.dev/train-run": name,
    });
    let mut train = vec![
        "kiln".to_string(),
        "train".into(),
        "/etc/kiln/job.toml".into(),
        "--date".into(),
        date.clone(),
        "--data".into(),
        data,
        "--model-dir".into(),
        model_dir,
        "--resume".into(),
        "--json".into(),
    ];
    if gpus > 0 {
        train.extend(["--device".into(), "cuda".into()]);
    }
    let mut env = vec![
        json!({"name": "WORLD_SIZE", "value": world.to_string()}),
        json!({"name": "MASTER_ADDR", "value": format!("{name}-0.{service}.{ns}.svc")}),
        json!({"name": "MASTER_PORT", "value": args.master_port.to_string()}),
        json!({"name": "RUST_LOG", "value": "info"}),
        json!({"name": "TMPDIR", "value": "/tmp"}),
    ];
    let command = if ranks_per_pod == 1 {
        // One rank per pod: RANK is the pod's completion index, from the annotation the Job
        // controller sets (the same value as JOB_COMPLETION_INDEX).
        env.insert(
            0,
            json!({"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath":
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}),
        );
        env.insert(1, json!({"name": "LOCAL_RANK", "value": "0"}));
        train
    } else {
        // G ranks per pod, one per GPU: RANK = index * G + LOCAL_RANK. When one rank dies
        // the others fail with `lost rank R` within the peer timeout, so waiting for all of
        // them is enough; the pod fails if any did.
        let quoted: Vec<String> = train.iter().map(|a| shell_quote(a)).collect();
        let script = format!(
            "set -u\npids=\"\"\nfor l in $(seq 0 {last}); do\n  RANK=$((JOB_COMPLETION_INDEX * {g} + l)) LOCAL_RANK=$l {cmd} &\n  pids=\"$pids $!\"\ndone\nrc=0\nfor p in $pids; do wait \"$p\" || rc=1; done\nexit $rc\n",
            last = ranks_per_pod - 1,
            g = ranks_per_pod,
            cmd = quoted.join(" "),
        );
        env.insert(
            0,
            json!({"name": "LOCAL_WORLD_SIZE", "value": ranks_per_pod.to_string()}),
        );
        vec!["/bin/sh".to_string(), "-c".into(), script]
    };
    let mut limits = json!({"cpu": args.cpu, "memory": args.memory});
    let mut requests = json!({"cpu": args.cpu, "memory": args.memory});
    if gpus > 0 {
        limits["nvidia.com/gpu"] = json!(gpus.to_string());
        requests["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let mut pod_spec = json!({
        "subdomain": service,
        "restartPolicy": "Never",
        // On SIGTERM (eviction, preemption) the trainer writes a checkpoint first.
        "terminationGracePeriodSeconds": 120,
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "train",
            "image": args.image,
            "imagePullPolicy": "Always",
            "command": command,
            "env": env,
            "envFrom": [{"secretRef": {"name": args.s3_secret, "optional": true}}],
            "ports": [{"name": "rendezvous", "containerPort": args.master_port}],
            "resources": {"requests": requests, "limits": limits},
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "spec", "mountPath": "/etc/kiln", "readOnly": true},
                {"name": "scratch", "mountPath": "/tmp"},
            ],
        }],
        "volumes": [
            {"name": "spec", "configMap": {"name": args.spec_configmap}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}},
        ],
    });
    if gpus > 0 {
        pod_spec["tolerations"] = json!([
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]);
        pod_spec["nodeSelector"] = json!({"nvidia.com/gpu.present": "true"});
    }
    let job_doc = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": args.workers,
            "parallelism": args.workers,
            // A lost worker is replaced (same index, same host name); every rank of the
            // group then fails with `lost rank R` and is replaced too, and all resume from
            // the model directory's latest checkpoint (`--resume`).
            "backoffLimitPerIndex": args.backoff_limit_per_index,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {"rules": [
                // Evictions, preemptions and node drains do not count against the limit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                // Exit status 2 is a command-line error (clap): retrying cannot help.
                {"action": "FailJob", "onExitCodes": {
                    "containerName": "train", "operator": "In", "values": [2]}},
            ]},
            "ttlSecondsAfterFinished": 604800,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"kubectl.kubernetes.io/default-container": "train"},
                },
                "spec": pod_spec,
            },
        },
    });
    let service_doc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "namespace": ns, "labels": labels},
        "spec": {
            "clusterIP": "None",
            // Rank 0 must be resolvable before it is ready: the others rendezvous with it.
            "publishNotReadyAddresses": true,
            "selector": {"kiln.dev/train-run": name},
            "ports": [{"name": "rendezvous", "port": args.master_port,
                       "targetPort": args.master_port}],
        },
    });
    Ok(vec![service_doc, job_doc])
}

/// `s` quoted for a POSIX shell (single quotes; plain words stay as they are).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
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

    fn container(docs: &[Value]) -> &Value {
        &docs[1]["spec"]["template"]["spec"]["containers"][0]
    }

    fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    }

    #[test]
    fn one_rank_per_pod() {
        let docs = train_manifests(
            &args(&["--workers", "4", "--gpus-per-worker", "1"]),
            "daily_ctr",
        )
        .unwrap();
        let job = &docs[1];
        assert_eq!(job["spec"]["completions"], 4);
        assert_eq!(job["spec"]["parallelism"], 4);
        assert_eq!(job["spec"]["completionMode"], "Indexed");
        assert_eq!(job["metadata"]["name"], "daily-ctr-train-2026-11-20");
        let svc = &docs[0];
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(
            job["spec"]["template"]["spec"]["subdomain"],
            svc["metadata"]["name"]
        );
        let c = container(&docs);
        assert_eq!(
            env(c, "MASTER_ADDR")["value"],
            "daily-ctr-train-2026-11-20-0.daily-ctr-train-2026-11-20-ranks.kiln.svc"
        );
        assert_eq!(env(c, "WORLD_SIZE")["value"], "4");
        assert_eq!(env(c, "LOCAL_RANK")["value"], "0");
        assert!(
            env(c, "RANK")["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .unwrap()
                .contains("job-completion-index")
        );
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        let cmd: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
        assert!(cmd.contains(&"--resume".to_string()));
        assert_eq!(cmd[0], "kiln");
        check_args(&cmd[1..]).unwrap();
    }

    #[test]
    fn several_gpus_per_pod_start_one_rank_each() {
        let docs =
            train_manifests(&args(&["--workers", "2", "--gpus-per-worker", "4"]), "j").unwrap();
        let c = container(&docs);
        assert_eq!(env(c, "WORLD_SIZE")["value"], "8");
        let script = c["command"][2].as_str().unwrap();
        assert!(
            script.contains("RANK=$((JOB_COMPLETION_INDEX * 4 + l))"),
            "{script}"
        );
        assert!(script.contains("$(seq 0 3)"), "{script}");
    }

    #[test]
    fn cpu_runs_have_no_gpu_and_check_args_rejects_bad_lines() {
        let docs = train_manifests(&args(&["--workers", "2"]), "j").unwrap();
        let c = container(&docs);
        assert!(c["resources"]["limits"].get("nvidia.com/gpu").is_none());
        assert!(
            docs[1]["spec"]["template"]["spec"]
                .get("tolerations")
                .is_none()
        );
        assert!(check_args(&["run".into(), "x.toml".into()]).is_err());
        assert!(check_args(&["train".into(), "--no-such-flag".into()]).is_err());
        assert!(train_manifests(&args(&["--workers", "0"]), "j").is_err());
        assert!(train_manifests(&args(&["--workers", "2", "--name", "Bad_Name"]), "j").is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote("s3://b/x/dt=2026-11-20/"),
            "s3://b/x/dt=2026-11-20/"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
