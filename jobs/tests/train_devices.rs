//! Devices of `kiln train` and `kiln predict`, and `kiln bench train --data`: each local worker
//! of `kiln train --workers N --device cuda` asks for its own GPU (`LOCAL_RANK`), `kiln
//! predict` reports where the model was trained and where it scored, and the benchmark trains
//! a `[train]` table on a committed dataset with 1 and 2 workers (the test build has no CUDA
//! backend, so CUDA requests end in the "built without" error that names the device; the wgpu
//! path is tested in train_wgpu.rs).

use std::process::Command;

mod common;

use common::training::{json_of, write_config, write_dataset};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

#[test]
fn each_local_worker_asks_for_the_gpu_of_its_local_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 2_000);
    let cfg = write_config(dir.path(), 5, 0);
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--workers", "2", "--device", "cuda"])
        .arg("--model-dir")
        .arg(dir.path().join("model"))
        .env_remove("LOCAL_RANK")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // (The two workers share the launcher's stderr, so their lines may interleave; each
    // device message is written in one piece.)
    for rank in 0..2 {
        assert!(
            err.contains(&format!(
                "device cuda:{rank}: this kiln was built without the `cuda` feature"
            )),
            "rank {rank} should ask for GPU {rank}:\n{err}"
        );
    }

    // A worker started by another launcher (torchrun, a multi-node Job) reads its LOCAL_RANK.
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--device", "cuda"])
        .arg("--model-dir")
        .arg(dir.path().join("model"))
        .env("LOCAL_RANK", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device cuda:3: this kiln was built without"),
        "{err}"
    );
}

#[test]
fn predict_reports_the_training_device_and_scores_where_this_build_can() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 4_000);
    let cfg = write_config(dir.path(), 20, 0);
    let model = dir.path().join("model");
    let t = json_of(
        &Command::new(KILN)
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--data", &data, "--json", "--model-dir"])
            .arg(&model)
            .output()
            .unwrap(),
    );
    assert_eq!(t["device"], "cpu");
    let predict = |extra: &[&str]| {
        Command::new(KILN)
            .arg("predict")
            .arg(&model)
            .args(["--input", &data, "--eval-split", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let p = json_of(&predict(&[]));
    assert_eq!(
        (p["device"].as_str(), p["train_device"].as_str()),
        (Some("cpu"), Some("cpu"))
    );
    assert_eq!(
        p["metrics"], t["metrics"],
        "CPU scores reproduce training bit for bit"
    );

    // A model trained on a GPU: this CPU-only build scores it on the CPU and says so.
    let path = model.join("model.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["config"]["device"] = "cuda:0".into();
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let out = predict(&[]);
    let p = json_of(&out);
    assert_eq!(p["device"], "cpu");
    assert_eq!(p["train_device"], "cuda:0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the model was trained on cuda:0; scoring on cpu") && err.contains("within"),
        "{err}"
    );
    // Asking for the GPU explicitly names what this build lacks.
    let out = predict(&["--device", "cuda:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device cuda:0: this kiln was built without"),
        "{err}"
    );
}

#[test]
fn bench_train_on_a_dataset_runs_dense_and_lazy_adam_with_1_and_2_workers() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 6_000);
    let cfg = write_config(dir.path(), 1000, 0);
    // A stand-in for the Keras reference: prints the figures bench/keras_ctr.py prints, after
    // checking the arguments it is given.
    let script = dir.path().join("keras.sh");
    std::fs::write(
        &script,
        r#"case "$*" in *"--config "*"--steps 6"*) ;; *) echo "bad args: $*" >&2; exit 1;; esac
test -f "$1/_manifest.json" || { echo "no dataset at $1" >&2; exit 1; }
echo 'log line'
echo '{"framework": "stand-in", "from_shards": {"examples_per_sec": 1000.0}, "input_only": {"examples_per_sec": 5000.0}, "model_step": {"examples_per_sec": 2000.0}, "input_pipeline": "batched"}'
"#,
    )
    .unwrap();
    let out = Command::new(KILN)
        .args(["bench", "train", "--data", &data, "--steps", "6", "--json"])
        .arg("--spec")
        .arg(&cfg)
        .args(["--keras", "sh", "--keras-script"])
        .arg(&script)
        .output()
        .unwrap();
    let v = json_of(&out);
    let runs = v["kiln"].as_array().unwrap();
    let got: Vec<(&str, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["optimizer"].as_str().unwrap(),
                r["workers"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("dense", 1), ("dense", 2), ("lazy", 1), ("lazy", 2)]);
    for r in runs {
        assert_eq!(r["steps"], 6, "{r}");
        assert_eq!(r["batch_size"], 256, "{r}");
        assert!(r["examples_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(v["keras"]["framework"], "stand-in");
    let ratios = v["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 4);
    let first = ratios[0]["kiln_over_keras_from_shards"].as_f64().unwrap();
    let want = runs[0]["examples_per_sec"].as_f64().unwrap() / 1000.0;
    assert!((first - want).abs() < 1e-9 * want, "{first} vs {want}");

    // The text report names every run and the ratio.
    let out = Command::new(KILN)
        .args([
            "bench",
            "train",
            "--data",
            &data,
            "--steps",
            "6",
            "--workers",
            "1",
        ])
        .arg("--spec")
        .arg(&cfg)
        .args(["--keras", "sh", "--keras-script"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Adam dense 1 worker(s): 6 steps of 256",
        "Adam lazy  1 worker(s)",
        "fed from the shards:",
        "Kiln Adam dense 1 worker(s) / Keras from the shards:",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}
