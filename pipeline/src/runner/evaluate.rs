//! `evaluate`: `kiln predict MODEL --input DATA --eval-split --json`, which must reproduce
//! the trainer's held-out metrics; writes the held-out predictions for `publish` to check.
//!
//! `kiln predict` scores on the kind of device the model was trained on (see
//! `kiln_trainer::device::scoring_device`). Its metrics must equal training's bit for bit
//! when both scored on the CPU, and agree within
//! [`METRIC_TOLERANCE`](kiln_trainer::device::METRIC_TOLERANCE) when a GPU scored either side
//! (GPU kernels do not promise the CPU's bits, nor their own from run to run); the row count
//! must be equal either way.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

use kiln_trainer::device::{Agreement, ComputeDevice};

use super::ctx::{Ctx, Upstream, output, sha};
use crate::dag::{Attempt, Task};
use crate::task::{TaskId, TaskKind, TaskPolicy};

const KIND: TaskKind = TaskKind::Evaluate;
/// The `kiln` subcommand the task runs.
const COMMAND: &str = "predict";

/// `evaluate`: after `train`.
pub(super) struct EvaluateTask {
    /// The run.
    pub ctx: Arc<Ctx>,
}

impl Task<TaskId> for EvaluateTask {
    fn name(&self) -> TaskId {
        KIND.into()
    }
    fn deps(&self) -> Vec<TaskId> {
        vec![TaskKind::Train.into()]
    }
    fn policy(&self) -> TaskPolicy {
        self.ctx.policy(KIND)
    }
    fn fingerprint(&self, up: &Upstream) -> anyhow::Result<String> {
        Ok(sha(&[
            KIND.as_str(),
            output(up, TaskKind::Train)["model_sha256"]
                .as_str()
                .unwrap_or(""),
            output(up, TaskKind::Features)["manifest_sha256"]
                .as_str()
                .unwrap_or(""),
        ]))
    }
    fn still_valid(&self, out: &Json) -> bool {
        out["predictions"]
            .as_str()
            .is_some_and(|p| Path::new(p).is_file())
    }
    fn run(&mut self, a: &Attempt, up: &Upstream) -> anyhow::Result<Json> {
        let data = output(up, TaskKind::Features)["examples"]
            .as_str()
            .context("features output without the examples location")?;
        let preds = self.ctx.staging.join("eval_predictions.csv");
        let args = vec![
            COMMAND.to_string(),
            self.ctx.model_dir().display().to_string(),
            "--input".into(),
            data.to_string(),
            "--eval-split".into(),
            "--json".into(),
            "--output".into(),
            preds.display().to_string(),
        ];
        let p = self.ctx.child(KIND, args, a)?;
        let agreement = check_reproduces(output(up, TaskKind::Train), &p)?;
        Ok(json!({
            "metrics": p["metrics"],
            "predictions": preds.display().to_string(),
            "rows": p["rows"],
            "device": p["device"].as_str().unwrap_or("cpu"),
            "compared": agreement.to_string(),
        }))
    }
}

/// A device named in a task's JSON output (`cpu` when absent: outputs of older versions).
fn device_of(v: &Json, what: &str) -> anyhow::Result<ComputeDevice> {
    match v.as_str() {
        None => Ok(ComputeDevice::Cpu),
        Some(d) => d.parse().with_context(|| format!("{what}: device `{d}`")),
    }
}

/// Checks that `kiln predict`'s held-out metrics (`predicted`, its `--json` output) reproduce
/// those `kiln train` reported (`trained`, its `--json` output): the row count exactly, AUC
/// and log loss bit for bit when both scored on the CPU, else within the tolerance of
/// [`Agreement::Tolerant`]. The training device is the one the model records
/// (`train_device` in `kiln predict`'s output), else the one `kiln train` reported. Returns
/// how the metrics were compared; a mismatch names both values and both devices.
fn check_reproduces(trained: &Json, predicted: &Json) -> anyhow::Result<Agreement> {
    let metrics = &trained["metrics"];
    if metrics.is_null() {
        bail!("training reported no held-out metrics: set [train] eval (hash or time split)");
    }
    let train_device = if predicted["train_device"].is_string() {
        device_of(&predicted["train_device"], "the model's training device")?
    } else {
        device_of(&trained["device"], "kiln train's device")?
    };
    let predict_device = device_of(&predicted["device"], "kiln predict's device")?;
    let agreement = Agreement::between(train_device, predict_device);
    for k in ["rows", "auc", "logloss"] {
        let (got, want) = (&predicted["metrics"][k], &metrics[k]);
        let agrees = match (k, got.as_f64(), want.as_f64()) {
            ("rows", _, _) => got == want,
            (_, Some(a), Some(b)) => agreement.metric_agrees(a, b),
            _ => got == want,
        };
        if !agrees {
            bail!(
                "evaluation does not reproduce training: {k} {got} from kiln predict (on \
                 {predict_device}) vs {want} from kiln train (on {train_device}); they must \
                 agree {agreement}"
            );
        }
    }
    Ok(agreement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained(device: Option<&str>) -> Json {
        let mut v = json!({"metrics": {"rows": 1000, "auc": 0.715_312_345_678_9, "logloss": 0.229_812_345_678}});
        if let Some(d) = device {
            v["device"] = json!(d);
        }
        v
    }

    fn predicted(device: &str, train_device: &str, auc_delta: f64, logloss_delta: f64) -> Json {
        json!({
            "device": device,
            "train_device": train_device,
            "rows": 1000,
            "metrics": {
                "rows": 1000,
                "auc": 0.715_312_345_678_9 + auc_delta,
                "logloss": 0.229_812_345_678 + logloss_delta,
            },
        })
    }

    #[test]
    fn a_gpu_trained_model_reproduces_its_metrics_within_the_tolerance() {
        let t = trained(Some("cuda:0"));
        let got = check_reproduces(&t, &predicted("cuda:0", "cuda:0", 1e-7, -1e-7)).unwrap();
        assert_eq!(got, Agreement::Tolerant);
        // Scored on the CPU (a build without the GPU backend): also within the tolerance.
        let got = check_reproduces(&t, &predicted("cpu", "cuda:0", -3e-6, 2e-6)).unwrap();
        assert_eq!(got, Agreement::Tolerant);
        // The model's own record of its device counts, even when the train output has none.
        check_reproduces(&trained(None), &predicted("cpu", "wgpu:1", 1e-7, 0.0)).unwrap();
    }

    #[test]
    fn a_mismatch_beyond_the_tolerance_fails_naming_both_values() {
        let t = trained(Some("cuda:0"));
        let p = predicted("cuda:0", "cuda:0", 0.0, 5e-3);
        let e = check_reproduces(&t, &p).unwrap_err().to_string();
        let got = &p["metrics"]["logloss"];
        assert!(
            e.contains(&format!("logloss {got} from kiln predict (on cuda:0)"))
                && e.contains("vs 0.229812345678 from kiln train (on cuda:0)")
                && e.contains("within 1e-4"),
            "{e}"
        );
        let mut p = predicted("cuda:0", "cuda:0", 0.0, 0.0);
        p["metrics"]["rows"] = json!(999);
        let e = check_reproduces(&t, &p).unwrap_err().to_string();
        assert!(e.contains("rows 999 from kiln predict"), "{e}");
    }

    #[test]
    fn cpu_scores_must_agree_bit_for_bit() {
        let t = trained(Some("cpu"));
        let got = check_reproduces(&t, &predicted("cpu", "cpu", 0.0, 0.0)).unwrap();
        assert_eq!(got, Agreement::Exact);
        let p = predicted("cpu", "cpu", 1e-7, 0.0);
        let e = check_reproduces(&t, &p).unwrap_err().to_string();
        let got = &p["metrics"]["auc"];
        assert!(
            e.contains(&format!("auc {got} from kiln predict (on cpu)"))
                && e.contains("vs 0.7153123456789 from kiln train (on cpu)")
                && e.contains("bit for bit"),
            "{e}"
        );
        // Outputs without devices (older versions) are CPU runs.
        let mut p = predicted("cpu", "cpu", 0.0, 0.0);
        p.as_object_mut().unwrap().remove("device");
        p.as_object_mut().unwrap().remove("train_device");
        assert_eq!(
            check_reproduces(&trained(None), &p).unwrap(),
            Agreement::Exact
        );
        let e = check_reproduces(&json!({"metrics": null}), &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no held-out metrics"), "{e}");
    }
}
