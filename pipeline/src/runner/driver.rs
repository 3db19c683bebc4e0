//! The run driver: checks the spec, takes the run lock, records the run, builds the DAG
//! (sensors, then the fixed tasks), runs it, decides the run's status, alerts, and records
//! how it ended.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_engine::Overrides;
use serde_json::json;

use super::ctx::Ctx;
use super::evaluate::EvaluateTask;
use super::features::FeaturesTask;
use super::gate::GateTask;
use super::lock::{LockCheck, LockGuard};
use super::publish::PublishTask;
use super::recorder::StoreRecorder;
use super::sensor::SensorTask;
use super::train::TrainTask;
use super::validate::{ANOMALIES_FOUND, ValidateTask};
use super::{AlreadyRunning, Request, Summary};
use crate::alert;
use crate::config;
use crate::dag::{Dag, Task};
use crate::gate::{Decision, RuleOutcome};
use crate::metastore::{
    LockOutcome, LockOwner, LostLock, NewRun, RunOutcome, Store, hostname, now_text,
};
use crate::status::{EventKind, RunStatus, TaskStatus};
use crate::task::{TaskId, TaskKind};

/// Runs the pipeline for one date.
pub fn run(req: &Request) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (spec, pipeline) = config::load(&req.spec)?;
    if spec.train.is_none() {
        bail!(
            "{}: kiln run needs a [train] section (see docs/training.md)",
            spec.path.display()
        );
    }
    let date = req.date.to_string();
    // Spec and override mistakes surface before anything runs.
    let rendered = spec.render(
        req.date,
        &Overrides {
            sources: req.sources.clone(),
            out: req.out.clone(),
            ..Default::default()
        },
    )?;
    // Sensors on a source wait where this run reads it (overrides applied).
    let sensors = pipeline
        .sensors
        .iter()
        .map(|s| {
            Ok((
                s.clone(),
                super::sensor::resolve(&spec, &rendered, s)?,
                super::sensor::kafka_wait(&spec, &rendered, s)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut store = Store::open(&pipeline.metastore)?;
    let owner = LockOwner::this_process();
    let stale = Duration::from_secs(pipeline.config.lock_stale_seconds.max(1));
    let (took_over, fence) = match store.try_lock(&spec.name, &date, &owner, stale)? {
        LockOutcome::Held(holder) => {
            return Err(AlreadyRunning {
                job: spec.name.clone(),
                date,
                holder,
                store: store.describe.clone(),
            }
            .into());
        }
        LockOutcome::Acquired { took_over, fence } => (took_over, fence),
    };
    // Every record of this run checks, in its transaction, that the lock is still ours.
    store.fence_writes(&spec.name, &date, &owner, fence);
    // Held (and heartbeating) until this function returns.
    let grace = crate::dag::seconds(pipeline.config.term_grace_seconds);
    let guard = LockCheck::open(&pipeline.metastore, &spec.name, &date, &owner, fence)
        .map(Arc::new)
        .and_then(|check| {
            LockGuard::start(&pipeline.metastore, &owner, stale, check.clone(), grace)
                .map(|g| (check, g))
        });
    let (lock, _guard) = match guard {
        Ok(g) => g,
        Err(e) => {
            let _ = store.unlock(&spec.name, &date, &owner);
            return Err(e);
        }
    };

    let log_dir = pipeline
        .work_dir
        .join("logs")
        .join(&spec.name)
        .join(&date)
        .join(format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
            std::process::id()
        ));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let overrides = if req.accept.is_empty() {
        json!({"sources": req.sources, "out": req.out})
    } else {
        json!({"sources": req.sources, "out": req.out, "accept": req.accept})
    };
    let hyperparams = serde_json::to_value(&spec.train)?;
    let run_id = store.start_run(&NewRun {
        job: spec.name.clone(),
        run_date: date.clone(),
        trigger: req.trigger,
        spec_path: spec.path.display().to_string(),
        spec_sha256: spec.sha256.clone(),
        overrides: overrides.clone(),
        log_dir: log_dir.display().to_string(),
        hyperparams,
    })?;
    store.set_lock_run(&spec.name, &date, &owner, run_id)?;
    let run_log_path = log_dir.join("run.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run_log_path)
        .with_context(|| format!("creating {}", run_log_path.display()))?;
    let mut rec = StoreRecorder {
        store,
        run_id,
        job: spec.name.clone(),
        date: date.clone(),
        log,
    };
    rec.say(&format!(
        "kiln run {} {date}: run {run_id}, logs {}",
        spec.name,
        log_dir.display()
    ));
    if let Some(h) = &took_over {
        let msg = format!("took over a stale run lock ({h})");
        rec.say(&format!("  {msg}"));
        rec.store.add_event(run_id, EventKind::Lock, &msg)?;
        if let Some(old) = h.run_id {
            rec.store.abandon_run(
                old,
                &format!(
                    "abandoned: process {} on {} stopped without finishing; run {run_id} took over",
                    h.pid, h.host
                ),
            )?;
        }
    }

    let staging = pipeline
        .work_dir
        .join("staging")
        .join(&spec.name)
        .join(&date);
    let ctx = Arc::new(Ctx {
        exe: std::env::current_exe().context("locating the kiln binary")?,
        spec: spec.clone(),
        pipeline: pipeline.clone(),
        date: req.date,
        sources: req.sources.clone(),
        out: req.out.clone(),
        staging,
        run_id,
        tty: !req.quiet && std::io::stderr().is_terminal(),
        accept: req.accept.clone(),
    });
    let mut tasks: Vec<Box<dyn Task<TaskId>>> = Vec::new();
    let mut sensor_names = Vec::new();
    for (sensor, url, kafka) in sensors {
        let t = SensorTask { sensor, url, kafka };
        sensor_names.push(t.name());
        tasks.push(Box::new(t));
    }
    tasks.push(Box::new(FeaturesTask {
        ctx: ctx.clone(),
        deps: sensor_names,
    }));
    tasks.push(Box::new(ValidateTask { ctx: ctx.clone() }));
    tasks.push(Box::new(TrainTask { ctx: ctx.clone() }));
    tasks.push(Box::new(EvaluateTask { ctx: ctx.clone() }));
    tasks.push(Box::new(GateTask { ctx: ctx.clone() }));
    tasks.push(Box::new(PublishTask {
        ctx: ctx.clone(),
        lock: lock.clone(),
    }));
    let outcomes = Dag::new(tasks).and_then(|mut dag| dag.run(&mut rec, &log_dir, req.force));
    // A run that lost its lock stops here: it records nothing more (another run owns this
    // job and date now) and sends no alert.
    let lost = match &outcomes {
        Err(e) => e
            .chain()
            .find_map(|c| c.downcast_ref::<LostLock>())
            .cloned(),
        Ok(_) => None,
    }
    .or_else(|| lock.lost())
    .or_else(|| {
        lock.check()
            .err()
            .and_then(|e| e.downcast_ref::<LostLock>().cloned())
    });
    if let Some(l) = lost {
        rec.log_line(&format!("error: {l}"));
        return Err(l.into());
    }
    let (outcomes, dag_error) = match outcomes {
        Ok(o) => (o, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let out_of = |kind: TaskKind| {
        outcomes
            .iter()
            .find(|t| t.name == TaskId::Step(kind))
            .and_then(|t| t.output.clone())
    };
    let failed = outcomes.iter().find(|t| t.status == TaskStatus::Failed);
    let error = dag_error.or_else(|| {
        failed.map(|t| {
            format!(
                "task `{}` failed after {} attempt(s): {}",
                t.name,
                t.attempts,
                t.error.as_deref().unwrap_or("")
            )
        })
    });
    let gate: Option<Decision> =
        out_of(TaskKind::Gate).and_then(|g| serde_json::from_value(g).ok());
    let publish = out_of(TaskKind::Publish);
    let found_anomalies = failed.is_some_and(|t| {
        t.name == TaskId::Step(TaskKind::Validate)
            && t.error
                .as_deref()
                .is_some_and(|e| e.starts_with(ANOMALIES_FOUND))
    });
    // Every anomaly recorded for the day's outputs, accepted or not (also on success).
    let anomalies: Vec<serde_json::Value> = match out_of(TaskKind::Features) {
        Some(f) => super::validate::anomalies(&f)
            .unwrap_or_default()
            .into_iter()
            .map(|(statement, a)| {
                json!({
                    "statement": statement,
                    "column": a.column,
                    "check": a.check,
                    "expected": a.expected,
                    "actual": a.actual,
                    "accepted": a.accepted_by(&req.accept),
                    "message": a.to_string(),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    if !req.accept.is_empty() {
        let accepted: Vec<&serde_json::Value> =
            anomalies.iter().filter(|a| a["accepted"] == true).collect();
        let msg = format!(
            "--accept {}: {} anomal{} accepted{}",
            req.accept.join(","),
            accepted.len(),
            if accepted.len() == 1 { "y" } else { "ies" },
            accepted
                .iter()
                .map(|a| format!(
                    "; {}: {}",
                    a["statement"].as_str().unwrap_or(""),
                    a["message"].as_str().unwrap_or("")
                ))
                .collect::<String>()
        );
        rec.say(&format!("  {msg}"));
        rec.store.add_event(run_id, EventKind::Accept, &msg)?;
    }
    let status = if found_anomalies {
        RunStatus::Anomalies
    } else if error.is_some() {
        RunStatus::Failed
    } else if gate.as_ref().is_some_and(|g| !g.passed) {
        RunStatus::Rejected
    } else {
        RunStatus::Success
    };
    let model_version = publish.as_ref().and_then(|p| p["version"].as_u64());
    let metrics = out_of(TaskKind::Evaluate).map(|e| e["metrics"].clone());
    let features = out_of(TaskKind::Features);
    let lineage = json!({
        "spec_sha256": spec.sha256,
        "examples": features.as_ref().map(|f| f["examples"].clone()),
        "examples_manifest_sha256": features.as_ref().map(|f| f["manifest_sha256"].clone()),
        "inputs": features.as_ref().map(|f| f["inputs"].clone()),
        "model_sha256": out_of(TaskKind::Train).map(|t| t["model_sha256"].clone()),
        "overrides": overrides,
        "anomalies": anomalies,
    });
    match status {
        RunStatus::Success => rec.say(&format!(
            "{} {date}: success{}",
            spec.name,
            model_version
                .map(|v| format!(", model version {v} published"))
                .unwrap_or_default()
        )),
        RunStatus::Rejected => rec.say(&format!(
            "{} {date}: gate REJECTED version {}: {}",
            spec.name,
            model_version.map_or("-".into(), |v| v.to_string()),
            gate.as_ref().map(|g| g.failures()).unwrap_or_default()
        )),
        RunStatus::Anomalies => rec.say(&format!(
            "{} {date}: ANOMALIES in the data, nothing trained: {}",
            spec.name,
            error.as_deref().unwrap_or("")
        )),
        RunStatus::Failed | RunStatus::Running => rec.say(&format!(
            "{} {date}: FAILED: {}",
            spec.name,
            error.as_deref().unwrap_or("")
        )),
    }

    let mut alert_result = None;
    if status != RunStatus::Success {
        let payload = json!({
            "kind": match status {
                RunStatus::Rejected => "rejected",
                RunStatus::Anomalies => "anomalies",
                _ => "failure",
            },
            "anomalies": anomalies.iter().filter(|a| a["accepted"] == false).collect::<Vec<_>>(),
            "job": spec.name,
            "date": date,
            "run_id": run_id,
            "status": status,
            "failed_task": failed.map(|t| t.name.clone()),
            "error": error,
            "gate_failures": gate.as_ref().map(|g| g.rules.iter().filter(|r| r.outcome == RuleOutcome::Fail).map(|r| r.detail.clone()).collect::<Vec<_>>()),
            "model": pipeline.model_name,
            "model_version": model_version,
            "stable_version": gate.as_ref().and_then(|g| g.stable_version),
            "host": hostname(),
            "kiln_version": env!("CARGO_PKG_VERSION"),
            "log_dir": log_dir.display().to_string(),
            "at": now_text(),
        });
        let line = match &pipeline.config.alerts {
            Some(cfg) => alert::send(cfg, &payload).1,
            None => "no [pipeline.alerts] webhook configured; alert not sent".to_string(),
        };
        rec.log_line(&format!("alert payload: {payload}"));
        rec.say(&format!("  {line}"));
        rec.store.add_event(run_id, EventKind::Alert, &line)?;
        alert_result = Some(line);
    }
    rec.store.finish_run(
        run_id,
        &RunOutcome {
            status,
            lineage,
            metrics: metrics.clone(),
            gate: gate.as_ref().map(serde_json::to_value).transpose()?,
            model_version: model_version.map(|v| v as i64),
            error: error.clone(),
        },
    )?;
    Ok(Summary {
        run_id,
        job: spec.name.clone(),
        date,
        status,
        anomalies,
        model_version,
        model_path: publish.and_then(|p| p["path"].as_str().map(String::from)),
        metrics,
        gate,
        tasks: outcomes,
        log_dir: log_dir.display().to_string(),
        metastore: rec.store.describe.clone(),
        error,
        alert: alert_result,
        seconds: started.elapsed().as_secs_f64(),
    })
}
