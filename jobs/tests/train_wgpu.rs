//! `kiln train --device wgpu:cpu`: the device-resident step on Mesa's lavapipe (a software
//! Vulkan device, the GPU kernels run on the CPU) reaches the CPU run's held-out AUC, and
//! `kiln predict` scores the device-trained model on the device it was trained on, matching the
//! trainer's evaluation. Built only with this crate's `wgpu` feature (scripts/test.sh builds the
//! tests with it and installs lavapipe).
#![cfg(feature = "wgpu")]

use std::process::Command;

mod common;

use common::training::{json_of, write_dataset};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The example job's model (wide & deep, 16-wide embeddings, hidden [256, 128], Keras's dense
/// Adam) over the synthetic clicks, for `steps` steps of 256 rows.
fn example_model_config(dir: &std::path::Path, steps: u64) -> std::path::PathBuf {
    let p = dir.join("train.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[train]
model = "wide_deep"
numeric = ["price", "dwell_ms"]
embedding_dim = 16
hidden = [256, 128]
batch_size = 256
steps = {steps}
optimizer = {{ kind = "adam", lr = 0.001, lazy = false }}
checksum_every = 50
log_every = 50
eval = {{ by = "hash", key = "event_id", fraction = 0.2 }}

[[train.categorical]]
column = "user_id"
hash_buckets = 100000

[[train.categorical]]
column = "item_id"
hash_buckets = 100000

[[train.categorical]]
column = "device"
vocabulary = {{ min_count = 1, max_size = 10 }}
"#
        ),
    )
    .unwrap();
    p
}

#[test]
fn the_software_gpu_reaches_the_cpu_runs_auc_and_predict_matches_its_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 30_000);
    let cfg = example_model_config(dir.path(), 300);
    let train = |device: &str| {
        let model = dir
            .path()
            .join(format!("model-{}", device.replace(':', "-")));
        let v = json_of(
            &Command::new(KILN)
                .args(["train", "--config"])
                .arg(&cfg)
                .args(["--data", &data, "--device", device, "--json", "--model-dir"])
                .arg(&model)
                .output()
                .unwrap(),
        );
        assert_eq!(v["device"], device);
        assert_eq!(v["steps"], 300);
        (model, v)
    };
    let (_, cpu) = train("cpu");
    let (model, gpu) = train("wgpu:cpu");
    let auc = |v: &serde_json::Value| v["metrics"]["auc"].as_f64().unwrap();
    let (a_cpu, a_gpu) = (auc(&cpu), auc(&gpu));
    assert!(a_cpu > 0.7, "the CPU run learned nothing: AUC {a_cpu}");
    assert!(
        (a_cpu - a_gpu).abs() <= 0.005,
        "held-out AUC: cpu {a_cpu}, wgpu:cpu {a_gpu}"
    );

    // `kiln predict` scores the model where it was trained and matches the trainer's metrics.
    let out = Command::new(KILN)
        .arg("predict")
        .arg(&model)
        .args(["--input", &data, "--eval-split", "--json"])
        .output()
        .unwrap();
    let p = json_of(&out);
    assert_eq!(
        (p["device"].as_str(), p["train_device"].as_str()),
        (Some("wgpu:cpu"), Some("wgpu:cpu"))
    );
    assert_eq!(p["metrics"]["rows"], gpu["metrics"]["rows"]);
    for m in ["auc", "logloss", "accuracy"] {
        let (a, b) = (
            p["metrics"][m].as_f64().unwrap(),
            gpu["metrics"][m].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-4, "{m}: predict {a}, train {b}");
    }
    // And on the CPU, within the tolerance a GPU-trained model is held to.
    let p = json_of(
        &Command::new(KILN)
            .arg("predict")
            .arg(&model)
            .args([
                "--input",
                &data,
                "--eval-split",
                "--json",
                "--device",
                "cpu",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(p["device"], "cpu");
    let (a, b) = (
        p["metrics"]["auc"].as_f64().unwrap(),
        gpu["metrics"]["auc"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4, "auc on cpu {a}, on wgpu:cpu {b}");
}

#[test]
fn a_wgpu_gpu_that_is_not_there_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 2_000);
    let cfg = example_model_config(dir.path(), 5);
    // lavapipe is a CPU adapter; this machine has no discrete GPU number 7.
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--device", "wgpu:7", "--model-dir"])
        .arg(dir.path().join("model"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device wgpu:7: no usable device of that kind here"),
        "{err}"
    );
}
