//! The manifests of one multi-node training run: an indexed Job whose pods are the ranks, the
//! headless Service that gives rank 0 a DNS name, and (for runs the pipeline launches) a
//! ConfigMap with the exact spec the ranks train.
//!
//! Plain JSON values (`serde_json`), so that `kiln k8s train` prints them as they are and the
//! API path sends the same documents.

use std::collections::BTreeMap;

use anyhow::bail;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where and how the ranks of a training run run: `[pipeline.kubernetes]` in a spec, and the
/// flags of `kiln k8s train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainCluster {
    /// Namespace of the Job, its Service and ConfigMap.
    pub namespace: String,
    /// The kiln image (deploy/docker/Dockerfile; a GPU run needs a CUDA build).
    pub image: String,
    /// Worker pods; one rank per pod unless `gpus_per_worker` > 1.
    pub workers: usize,
    /// GPUs per worker pod (`nvidia.com/gpu`); 0 trains on the CPU. With G > 1 each pod starts
    /// G ranks, one per GPU (`LOCAL_RANK` 0..G-1): the world is `workers` x G.
    pub gpus_per_worker: usize,
    /// CPU request (and limit) of each worker pod.
    pub cpu: String,
    /// Memory request (and limit) of each worker pod.
    pub memory: String,
    /// Rendezvous port of rank 0.
    pub master_port: u16,
    /// Secret with the object store credentials (`AWS_*`), as the base's other workloads.
    pub s3_secret: String,
    /// Failed pods per index (rank) before the whole Job fails.
    pub backoff_limit_per_index: u32,
    /// Root of the training runs' model directories (`s3://` or `hdfs://`): a run's
    /// checkpoints and model go to `<models_dir>/<job>/train/<date>[/<run>]`.
    pub models_dir: String,
    /// Seconds between two looks at a running Job (pipeline only).
    pub poll_seconds: f64,
}

impl Default for TrainCluster {
    fn default() -> Self {
        TrainCluster {
            namespace: "kiln".into(),
            image: "kiln:latest".into(),
            workers: 1,
            gpus_per_worker: 0,
            cpu: "8".into(),
            memory: "32Gi".into(),
            master_port: 29500,
            s3_secret: "kiln-s3".into(),
            backoff_limit_per_index: 3,
            models_dir: "s3://kiln-models".into(),
            poll_seconds: 10.0,
        }
    }
}

impl TrainCluster {
    /// Ranks per pod: one per GPU, or one on the CPU.
    pub fn ranks_per_pod(&self) -> usize {
        self.gpus_per_worker.max(1)
    }

    /// Ranks in all: the world size.
    pub fn world(&self) -> usize {
        self.workers * self.ranks_per_pod()
    }

    /// Checks the values a Job could not run with; the error names the key.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.workers == 0 {
            bail!("workers must be at least 1");
        }
        if self.image.trim().is_empty() {
            bail!("image must name the kiln image");
        }
        if dns_label(&self.namespace, 63) != self.namespace {
            bail!(
                "namespace `{}`: must be a DNS label ([a-z0-9-], at most 63)",
                self.namespace
            );
        }
        if !(self.poll_seconds.is_finite()
            && self.poll_seconds > 0.0
            && self.poll_seconds <= 3600.0)
        {
            bail!(
                "poll_seconds = {}: must be > 0 and at most 3600",
                self.poll_seconds
            );
        }
        if !self.models_dir.contains("://") || self.models_dir.starts_with("file://") {
            bail!(
                "models_dir `{}`: the pods write there, so it must be shared: an s3:// or \
                 hdfs:// URL",
                self.models_dir
            );
        }
        Ok(())
    }
}

/// One training run on the cluster: what the ranks train, where, under which name.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRun {
    /// The job's name (the spec's `name`).
    pub job: String,
    /// Run date: the examples of this date are trained on.
    pub date: NaiveDate,
    /// Pods and their resources.
    pub cluster: TrainCluster,
    /// Name of the Job; its pods are `<name>-<index>`.
    pub name: String,
    /// The committed examples dataset the ranks read.
    pub data: String,
    /// The model directory (checkpoints under `checkpoints/`, so a replaced rank resumes).
    pub model_dir: String,
    /// ConfigMap holding the spec under the key `job.toml` (mounted at `/etc/kiln`).
    pub spec_configmap: String,
    /// Labels added to every object of the run (e.g. the pipeline's run id).
    pub labels: BTreeMap<String, String>,
}

impl TrainRun {
    /// A run with the default name (`<job>-train-<date>`), examples
    /// (`s3://kiln-data/<job>/dt=<date>/examples/`, where the base's feature CronJob writes
    /// them) and model directory (`<models_dir>/<job>/train/<date>`).
    pub fn new(job: &str, date: NaiveDate, cluster: TrainCluster) -> Self {
        let d = date.format("%Y-%m-%d");
        TrainRun {
            job: job.to_string(),
            date,
            name: dns_label(&format!("{job}-train-{d}"), MAX_NAME),
            data: format!("s3://kiln-data/{job}/dt={d}/examples/"),
            model_dir: format!(
                "{}/{job}/train/{d}",
                cluster.models_dir.trim_end_matches('/')
            ),
            spec_configmap: "kiln-job-spec".into(),
            labels: BTreeMap::new(),
            cluster,
        }
    }

    /// The headless Service's name: rank 0 is `<name>-0.<service>`.
    pub fn service(&self) -> String {
        dns_label(&format!("{}-ranks", self.name), 63)
    }

    /// The labels of every object of the run.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = [
            ("app.kubernetes.io/name", "kiln"),
            ("app.kubernetes.io/component", "train"),
            (RUN_LABEL, self.name.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        l.extend(self.labels.clone());
        l
    }

    /// The `kiln train` command line of one rank.
    pub fn train_command(&self) -> Vec<String> {
        let mut train = vec![
            "kiln".to_string(),
            "train".into(),
            format!("{SPEC_DIR}/{SPEC_KEY}"),
            "--date".into(),
            self.date.format("%Y-%m-%d").to_string(),
            "--data".into(),
            self.data.clone(),
            "--model-dir".into(),
            self.model_dir.clone(),
            "--resume".into(),
            "--json".into(),
        ];
        if self.cluster.gpus_per_worker > 0 {
            train.extend(["--device".into(), "cuda".into()]);
        }
        train
    }
}

/// The longest Job name: pod host names are `<name>-<index>` and must stay a DNS label.
pub const MAX_NAME: usize = 56;
/// Label on every object of a run, valued with the Job's name.
pub const RUN_LABEL: &str = "kiln.dev/train-run";
/// Where the ranks find the spec ConfigMap.
pub const SPEC_DIR: &str = "/etc/kiln";
/// The spec's key in the ConfigMap.
pub const SPEC_KEY: &str = "job.toml";
/// The ranks' container.
pub const CONTAINER: &str = "train";

/// A DNS-1123 label from `s`: lower case, `[a-z0-9-]`, at most `max` characters.
pub fn dns_label(s: &str, max: usize) -> String {
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

/// `s` quoted for a POSIX shell (single quotes; plain words stay as they are).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The headless Service and the indexed Job of `run`, in that order.
pub fn train_manifests(run: &TrainRun) -> anyhow::Result<Vec<Value>> {
    run.cluster.check()?;
    if dns_label(&run.name, MAX_NAME) != run.name {
        bail!(
            "Job name `{}`: must be a DNS label of at most {MAX_NAME} characters ([a-z0-9-])",
            run.name
        );
    }
    let c = &run.cluster;
    let name = &run.name;
    let service = run.service();
    let ns = &c.namespace;
    let labels = json!(run.all_labels());
    let train = run.train_command();
    let mut env = vec![
        json!({"name": "WORLD_SIZE", "value": c.world().to_string()}),
        json!({"name": "MASTER_ADDR", "value": format!("{name}-0.{service}.{ns}.svc")}),
        json!({"name": "MASTER_PORT", "value": c.master_port.to_string()}),
        json!({"name": "RUST_LOG", "value": "info"}),
        json!({"name": "TMPDIR", "value": "/tmp"}),
    ];
    let ranks_per_pod = c.ranks_per_pod();
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
    let mut limits = json!({"cpu": c.cpu, "memory": c.memory});
    let mut requests = json!({"cpu": c.cpu, "memory": c.memory});
    if c.gpus_per_worker > 0 {
        limits["nvidia.com/gpu"] = json!(c.gpus_per_worker.to_string());
        requests["nvidia.com/gpu"] = json!(c.gpus_per_worker.to_string());
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
            "name": CONTAINER,
            "image": c.image,
            "imagePullPolicy": "Always",
            "command": command,
            "env": env,
            "envFrom": [{"secretRef": {"name": c.s3_secret, "optional": true}}],
            "ports": [{"name": "rendezvous", "containerPort": c.master_port}],
            "resources": {"requests": requests, "limits": limits},
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "spec", "mountPath": SPEC_DIR, "readOnly": true},
                {"name": "scratch", "mountPath": "/tmp"},
            ],
        }],
        "volumes": [
            {"name": "spec", "configMap": {"name": run.spec_configmap}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}},
        ],
    });
    if c.gpus_per_worker > 0 {
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
            "completions": c.workers,
            "parallelism": c.workers,
            // A lost worker is replaced (same index, same host name); every rank of the
            // group then fails with `lost rank R` and is replaced too, and all resume from
            // the model directory's latest checkpoint (`--resume`).
            "backoffLimitPerIndex": c.backoff_limit_per_index,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {"rules": [
                // Evictions, preemptions and node drains do not count against the limit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                // Exit status 2 is a command-line error (clap): retrying cannot help.
                {"action": "FailJob", "onExitCodes": {
                    "containerName": CONTAINER, "operator": "In", "values": [2]}},
            ]},
            "ttlSecondsAfterFinished": 604800,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER},
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
            "selector": {RUN_LABEL: name},
            "ports": [{"name": "rendezvous", "port": c.master_port,
                       "targetPort": c.master_port}],
        },
    });
    Ok(vec![service_doc, job_doc])
}

/// The ConfigMap `run.spec_configmap` with the spec's files: `files` are (file name, text)
/// pairs, the spec itself under [`SPEC_KEY`], beside it the files it names relatively
/// (`expect_file`). A name that is not a plain file name is an error.
pub fn spec_configmap(run: &TrainRun, files: &[(String, String)]) -> anyhow::Result<Value> {
    let mut data = serde_json::Map::new();
    for (name, text) in files {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            bail!(
                "`{name}`: a file the ranks read beside the spec must be a plain file name in \
                 the spec's directory (a ConfigMap key: [A-Za-z0-9-_.])"
            );
        }
        if data.insert(name.clone(), json!(text)).is_some() {
            bail!("`{name}`: given twice");
        }
    }
    if !data.contains_key(SPEC_KEY) {
        bail!("the spec must be among the files, as `{SPEC_KEY}`");
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": run.spec_configmap, "namespace": run.cluster.namespace,
                     "labels": run.all_labels()},
        "immutable": true,
        "data": data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workers: usize, gpus: usize) -> TrainRun {
        TrainRun::new(
            "daily_ctr",
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            TrainCluster {
                workers,
                gpus_per_worker: gpus,
                ..TrainCluster::default()
            },
        )
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
        let docs = train_manifests(&run(4, 1)).unwrap();
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
        assert_eq!(
            cmd,
            [
                "kiln",
                "train",
                "/etc/kiln/job.toml",
                "--date",
                "2026-11-20",
                "--data",
                "s3://kiln-data/daily_ctr/dt=2026-11-20/examples/",
                "--model-dir",
                "s3://kiln-models/daily_ctr/train/2026-11-20",
                "--resume",
                "--json",
                "--device",
                "cuda"
            ]
        );
    }

    #[test]
    fn several_gpus_per_pod_start_one_rank_each() {
        let docs = train_manifests(&run(2, 4)).unwrap();
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
    fn cpu_runs_have_no_gpu_and_bad_settings_are_refused() {
        let docs = train_manifests(&run(2, 0)).unwrap();
        let c = container(&docs);
        assert!(c["resources"]["limits"].get("nvidia.com/gpu").is_none());
        assert!(
            docs[1]["spec"]["template"]["spec"]
                .get("tolerations")
                .is_none()
        );
        let e = train_manifests(&run(0, 0)).unwrap_err().to_string();
        assert_eq!(e, "workers must be at least 1");
        let mut bad = run(2, 0);
        bad.name = "Bad_Name".into();
        assert!(
            train_manifests(&bad)
                .unwrap_err()
                .to_string()
                .contains("Job name `Bad_Name`")
        );
        let mut slow = run(2, 0);
        slow.cluster.poll_seconds = 1e30;
        assert_eq!(
            train_manifests(&slow).unwrap_err().to_string(),
            "poll_seconds = 1000000000000000000000000000000: must be > 0 and at most 3600"
        );
        let mut local = run(2, 0);
        local.cluster.models_dir = "/var/models".into();
        assert!(
            train_manifests(&local)
                .unwrap_err()
                .to_string()
                .contains("must be shared")
        );
    }

    #[test]
    fn labels_and_spec_configmap() {
        let mut r = run(2, 0);
        r.labels.insert("kiln.dev/run-id".into(), "42".into());
        r.spec_configmap = format!("{}-spec", r.name);
        let docs = train_manifests(&r).unwrap();
        for d in &docs {
            assert_eq!(d["metadata"]["labels"]["kiln.dev/run-id"], "42");
            assert_eq!(d["metadata"]["labels"][RUN_LABEL], r.name);
        }
        let files = vec![
            ("job.toml".to_string(), "name = \"x\"\n".to_string()),
            ("expect_users.toml".to_string(), "[[expect]]\n".to_string()),
        ];
        let cm = spec_configmap(&r, &files).unwrap();
        assert_eq!(cm["metadata"]["name"], "daily-ctr-train-2026-11-20-spec");
        assert_eq!(cm["data"]["job.toml"], "name = \"x\"\n");
        assert_eq!(cm["data"]["expect_users.toml"], "[[expect]]\n");
        assert_eq!(
            docs[1]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
            cm["metadata"]["name"]
        );
        let nested = vec![("sub/x.toml".to_string(), String::new())];
        assert!(
            spec_configmap(&r, &nested)
                .unwrap_err()
                .to_string()
                .contains("`sub/x.toml`: a file the ranks read beside the spec")
        );
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
