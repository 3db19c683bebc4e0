//! A training run through the Kubernetes API: apply the spec ConfigMap and the headless
//! Service, create the indexed Job (or adopt the one a previous attempt left), wait for it
//! to complete or fail, and collect rank 0's `kiln train --json` report from its pod log.
//!
//! Written against the documented `batch/v1` Job API (Kubernetes 1.33+: `Complete` /
//! `Failed` conditions, `backoffLimitPerIndex`, the `batch.kubernetes.io/job-completion-index`
//! pod annotation). The client is kube's inferred configuration: the in-cluster service
//! account in a pod, `KUBECONFIG` / `~/.kube/config` elsewhere.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::manifests::{CONTAINER, TrainRun, spec_configmap, train_manifests};

/// Field manager of Kiln's server-side applies.
const MANAGER: &str = "kiln";
/// Pod annotation with a pod's completion index (its rank group).
const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Pod label naming its Job.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Lines of a failed rank's log quoted in the error.
const LOG_TAIL: i64 = 20;

/// Where a Job is, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Not finished: pods running, succeeded and failed so far.
    Running {
        /// Pods running now.
        active: i32,
        /// Pods (indexes) that succeeded.
        succeeded: i32,
        /// Pods that failed (each replaced while its index has retries left).
        failed: i32,
    },
    /// Every index succeeded (`Complete`).
    Complete,
    /// The Job failed (`Failed`): no more retries.
    Failed {
        /// The condition's reason (`BackoffLimitExceeded`, `FailedIndexes`, `PodFailurePolicy`,
        /// `DeadlineExceeded`, ...).
        reason: String,
        /// The condition's message.
        message: String,
    },
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobState::Running {
                active,
                succeeded,
                failed,
            } => write!(
                f,
                "running: {active} pods active, {succeeded} succeeded, {failed} failed"
            ),
            JobState::Complete => write!(f, "complete"),
            JobState::Failed { reason, message } => write!(f, "failed ({reason}): {message}"),
        }
    }
}

/// The state of `job` from its status conditions and counts.
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            // `SuccessCriteriaMet` / `FailureTarget` come first, while pods still terminate;
            // the terminal conditions follow once they are gone.
            "Complete" => return JobState::Complete,
            "Failed" => {
                return JobState::Failed {
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                };
            }
            _ => {}
        }
    }
    JobState::Running {
        active: status.active.unwrap_or(0),
        succeeded: status.succeeded.unwrap_or(0),
        failed: status.failed.unwrap_or(0),
    }
}

/// The last line of `log` that is a JSON object: `kiln train --json`'s report is printed last.
pub fn last_json_object(log: &str) -> Option<Value> {
    log.lines().rev().find_map(|l| {
        let l = l.trim();
        if !l.starts_with('{') {
            return None;
        }
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(Value::is_object)
    })
}

/// How [`train`] waits.
pub struct Watch<'a> {
    /// Asked before each look at the Job: `true` deletes the Job (its pods get SIGTERM and
    /// checkpoint) and fails the call.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// Told each new state of the Job.
    pub progress: &'a (dyn Fn(&JobState) + Sync),
    /// Start over: delete a Job of the same name first, whatever its state (a forced run).
    /// Without it a running or completed Job of the same name is adopted, and a failed one
    /// is replaced (its ranks resume from the model directory's checkpoints).
    pub fresh: bool,
}

/// What [`train`] brings back.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Rank 0's `kiln train --json` report.
    pub report: Value,
    /// Whether an existing Job of the same name was adopted instead of created.
    pub adopted: bool,
}

/// Runs `run` on the cluster and waits for it. `files` are the spec's files for its
/// ConfigMap ([`spec_configmap`]). Blocking: it drives its own single-threaded runtime.
pub fn train(
    run: &TrainRun,
    files: &[(String, String)],
    watch: &Watch<'_>,
) -> anyhow::Result<TrainOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Kubernetes client's runtime")?;
    rt.block_on(train_async(run, files, watch))
}

/// `kind/namespace/name` for messages.
fn object(kind: &str, run: &TrainRun, name: &str) -> String {
    format!("{kind} {}/{name}", run.cluster.namespace)
}

async fn train_async(
    run: &TrainRun,
    files: &[(String, String)],
    watch: &Watch<'_>,
) -> anyhow::Result<TrainOutcome> {
    let docs = train_manifests(run)?;
    let (service_doc, job_doc) = (&docs[0], &docs[1]);
    let configmap_doc = spec_configmap(run, files)?;
    let client = kube::Client::try_default().await.context(
        "connecting to the Kubernetes API (the pod's service account, or KUBECONFIG / \
         ~/.kube/config)",
    )?;
    let ns = run.cluster.namespace.as_str();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job_name = run.name.as_str();
    let job_ref = object("Job", run, job_name);

    let mut adopted = false;
    if let Some(existing) = jobs
        .get_opt(job_name)
        .await
        .with_context(|| format!("reading {job_ref}"))?
    {
        let state = job_state(&existing);
        if existing.metadata.deletion_timestamp.is_some() {
            // Being deleted (an earlier attempt's timeout, or by hand): start anew once gone.
            wait_gone(&jobs, &job_ref, job_name).await?;
        } else if watch.fresh || matches!(state, JobState::Failed { .. }) {
            delete_job(&jobs, &job_ref, job_name).await?;
            wait_gone(&jobs, &job_ref, job_name).await?;
        } else {
            adopted = true;
        }
    }
    if !adopted {
        // The ConfigMap is immutable (the exact spec of this run): replace it.
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm_name = run.spec_configmap.as_str();
        if configmaps.get_opt(cm_name).await?.is_some() {
            configmaps
                .delete(cm_name, &DeleteParams::default())
                .await
                .with_context(|| format!("replacing {}", object("ConfigMap", run, cm_name)))?;
        }
        configmaps
            .create(
                &PostParams::default(),
                &serde_json::from_value(configmap_doc)?,
            )
            .await
            .with_context(|| format!("creating {}", object("ConfigMap", run, cm_name)))?;
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        let svc_name = run.service();
        services
            .patch(
                &svc_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(service_doc),
            )
            .await
            .with_context(|| format!("applying {}", object("Service", run, &svc_name)))?;
        let job: Job = serde_json::from_value(job_doc.clone())?;
        match jobs.create(&PostParams::default(), &job).await {
            Ok(created) => {
                // The ConfigMap and the Service go with the Job (garbage collection).
                let owner = json!({"metadata": {"ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                    "uid": created.metadata.uid.clone().unwrap_or_default(),
                }]}});
                configmaps
                    .patch(cm_name, &PatchParams::default(), &Patch::Merge(&owner))
                    .await
                    .with_context(|| format!("owning {}", object("ConfigMap", run, cm_name)))?;
                services
                    .patch(&svc_name, &PatchParams::default(), &Patch::Merge(&owner))
                    .await
                    .with_context(|| format!("owning {}", object("Service", run, &svc_name)))?;
            }
            // Another pipeline process created it in between: wait on that one.
            Err(kube::Error::Api(s)) if s.code == 409 => adopted = true,
            Err(e) => return Err(e).with_context(|| format!("creating {job_ref}")),
        }
    }

    let poll = Duration::from_secs_f64(run.cluster.poll_seconds);
    let mut last: Option<JobState> = None;
    loop {
        if (watch.cancelled)() {
            delete_job(&jobs, &job_ref, job_name).await?;
            wait_gone(&jobs, &job_ref, job_name).await?;
            bail!("stopped: {job_ref} deleted (its ranks checkpoint on SIGTERM)");
        }
        let job = match jobs.get_status(job_name).await {
            Ok(j) => j,
            Err(kube::Error::Api(s)) if s.code == 404 => bail!(
                "{job_ref} was deleted while this attempt waited for it (by hand, or by the \
                 timeout of an earlier attempt)"
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {job_ref}")),
        };
        let state = job_state(&job);
        if last.as_ref() != Some(&state) {
            (watch.progress)(&state);
            last = Some(state.clone());
        }
        match state {
            JobState::Complete => break,
            JobState::Failed { .. } => {
                let pods = failed_pods_report(&client, run).await;
                bail!("{job_ref} {state}{pods}");
            }
            JobState::Running { .. } => tokio::time::sleep(poll).await,
        }
    }
    let report = rank0_report(&client, run).await?;
    Ok(TrainOutcome { report, adopted })
}

async fn delete_job(jobs: &Api<Job>, job_ref: &str, name: &str) -> anyhow::Result<()> {
    match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting {job_ref}")),
    }
}

/// Waits (at most two minutes) until the deleted Job is gone, so that one of the same name
/// can be created.
async fn wait_gone(jobs: &Api<Job>, job_ref: &str, name: &str) -> anyhow::Result<()> {
    for _ in 0..120 {
        if jobs.get_opt(name).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{job_ref} was deleted but is still there after 120 s (finalizers?)")
}

/// The pods of `run`'s Job.
async fn pods(client: &kube::Client, run: &TrainRun) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &run.cluster.namespace);
    let lp = ListParams::default().labels(&format!("{JOB_NAME_LABEL}={}", run.name));
    Ok(api
        .list(&lp)
        .await
        .with_context(|| format!("listing the pods of {}", object("Job", run, &run.name)))?
        .items)
}

fn pod_index(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_ANNOTATION))
        .map(String::as_str)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn log_tail(
    client: &kube::Client,
    run: &TrainRun,
    pod: &str,
    lines: Option<i64>,
) -> anyhow::Result<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &run.cluster.namespace);
    let lp = LogParams {
        container: Some(CONTAINER.into()),
        tail_lines: lines,
        ..LogParams::default()
    };
    api.logs(pod, &lp)
        .await
        .with_context(|| format!("reading the log of {}", object("Pod", run, pod)))
}

/// Rank 0's report: the last JSON line of the succeeded index-0 pod's log.
async fn rank0_report(client: &kube::Client, run: &TrainRun) -> anyhow::Result<Value> {
    let pods = pods(client, run).await?;
    let Some(pod) = pods
        .iter()
        .filter(|p| pod_index(p) == Some("0") && phase(p) == "Succeeded")
        .max_by_key(|p| p.metadata.creation_timestamp.clone())
    else {
        bail!(
            "{} completed, but its index-0 pod is gone (ttlSecondsAfterFinished?): no report \
             from rank 0",
            object("Job", run, &run.name)
        );
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let log = log_tail(client, run, &name, Some(200)).await?;
    last_json_object(&log).with_context(|| {
        format!(
            "{}: rank 0's log has no `kiln train --json` report",
            object("Pod", run, &name)
        )
    })
}

/// For the error of a failed Job: the newest failed pod, how its container ended, and the
/// end of its log. Best effort: a failure to read them is said, not raised.
async fn failed_pods_report(client: &kube::Client, run: &TrainRun) -> String {
    let pods = match pods(client, run).await {
        Ok(p) => p,
        Err(e) => return format!("\n(the pods could not be listed: {e:#})"),
    };
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count();
    let Some(pod) = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .max_by_key(|p| p.metadata.creation_timestamp.clone())
    else {
        return String::new();
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ended = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            format!(
                "exit status {}{}",
                t.exit_code,
                t.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "no container status".into());
    let log = match log_tail(client, run, &name, Some(LOG_TAIL)).await {
        Ok(l) => l,
        Err(e) => format!("(no log: {e:#})"),
    };
    format!(
        "\n{failed} pods failed; the newest, {name} (rank group {}), ended with {ended}; its \
         log ends:\n{log}",
        pod_index(pod).unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: Value) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j"}, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn states_from_conditions() {
        assert_eq!(
            job_state(&job(json!({}))),
            JobState::Running {
                active: 0,
                succeeded: 0,
                failed: 0
            }
        );
        assert_eq!(
            job_state(&job(json!({"active": 3, "succeeded": 1, "failed": 2}))),
            JobState::Running {
                active: 3,
                succeeded: 1,
                failed: 2
            }
        );
        // SuccessCriteriaMet alone: pods still terminating; not complete yet.
        let s = job(json!({"succeeded": 4, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"}]}));
        assert!(matches!(
            job_state(&s),
            JobState::Running { succeeded: 4, .. }
        ));
        let s = job(json!({"succeeded": 4, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}));
        assert_eq!(job_state(&s), JobState::Complete);
        let f = job(json!({"failed": 4, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "FailedIndexes"},
            {"type": "Failed", "status": "True", "reason": "FailedIndexes",
             "message": "Job has failed indexes"}]}));
        assert_eq!(
            job_state(&f),
            JobState::Failed {
                reason: "FailedIndexes".into(),
                message: "Job has failed indexes".into()
            }
        );
        assert_eq!(
            job_state(&f).to_string(),
            "failed (FailedIndexes): Job has failed indexes"
        );
        let not_yet = job(json!({"conditions": [
            {"type": "Failed", "status": "False"}]}));
        assert!(matches!(job_state(&not_yet), JobState::Running { .. }));
    }

    #[test]
    fn report_is_the_last_json_object_line() {
        let log = "2026-11-20T02:30:00Z INFO kiln: step 100\n{\"a\": 1}\nnot json {\n\
                   {\"auc\": 0.71, \"examples\": 10}\n[1, 2]\n";
        assert_eq!(
            last_json_object(log).unwrap(),
            json!({"auc": 0.71, "examples": 10})
        );
        assert!(last_json_object("INFO only\n{broken").is_none());
    }
}
