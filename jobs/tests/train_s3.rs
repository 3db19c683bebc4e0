//! `kiln train --model-dir s3://...` and `kiln predict s3://...` against a real S3-compatible
//! server (moto on 127.0.0.1): checkpoints and the model directory land in the bucket, and
//! predicting from it reproduces the trainer's evaluation.

mod common;

use std::process::Command;

use common::training::{json_of, write_config, write_dataset};
use futures::TryStreamExt;
use kiln_connectors::testing::Moto;
use object_store::ObjectStoreExt;

#[test]
fn model_dir_on_s3_trains_uploads_and_predicts() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln");
    let env = moto.env();
    // This test binary has a single test: setting the process environment is race-free here,
    // and lets the in-process object store use the same AWS_* variables as `kiln`.
    for (k, v) in &env {
        unsafe { std::env::set_var(k, v) };
    }
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 8_000);
    let cfg = write_config(dir.path(), 60, 20);
    let model = "s3://kiln/models/ctr";
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("TMPDIR", dir.path())
            .output()
            .unwrap()
    };
    let cfg = cfg.to_str().unwrap();
    let out = kiln(&[
        "train",
        "--config",
        cfg,
        "--data",
        &data,
        "--json",
        "--model-dir",
        model,
    ]);
    let trained = json_of(&out);
    assert_eq!(trained["model_dir"], model);
    assert_eq!(trained["steps"], 60);
    // Checkpoints reach the bucket as they are written (in the background: one due while
    // the previous is still uploading may be skipped), the last one always.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let uploads = stderr.matches("uploaded checkpoint").count();
    assert!((1..=3).contains(&uploads), "{stderr}");
    assert!(
        stderr.contains("ckpt-0000000060.safetensors"),
        "the last checkpoint is uploaded:\n{stderr}"
    );
    // Not a terminal: the model's upload ends with a plain progress line, every file sent.
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("kiln: uploading the model to {model}: ")))
        .unwrap_or_else(|| panic!("no upload progress line in:\n{stderr}"));
    let counts = line.split(": ").nth(2).unwrap().split(' ').next().unwrap();
    let (sent, total) = counts.split_once('/').unwrap();
    assert_eq!(sent, total, "{line}");
    assert!(total.parse::<usize>().unwrap() >= 4, "{line}");

    // Everything a model directory holds is in the bucket, metrics.json equal to the report.
    let (store, base) = kiln_connectors::store::resolve_url(model).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut names: Vec<String> = rt
        .block_on(store.list(Some(&base)).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.as_ref()[base.as_ref().len() + 1..].to_string())
        .collect();
    names.sort();
    for expected in ["model.json", "metrics.json", "checkpoints/latest"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    // The TensorBoard event file goes with the model (docs/observability.md).
    let event_files: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("logs/events.out.tfevents."))
        .collect();
    assert_eq!(event_files.len(), 1, "{names:?}");
    let event_file = object_store::path::Path::from(format!("models/ctr/{}", event_files[0]));
    // Remote checkpoints are pruned like local ones: the two newest stay.
    let ckpts: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("checkpoints/ckpt-"))
        .collect();
    assert_eq!(ckpts.len(), 2, "{names:?}");
    assert_eq!(ckpts[1], "checkpoints/ckpt-0000000060.safetensors");
    let metrics: serde_json::Value = serde_json::from_slice(
        &rt.block_on(async { store.get(&base.join("metrics.json")).await?.bytes().await })
            .unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["auc"], trained["metrics"]["auc"]);

    // Predicting from the bucket scores the held-out rows exactly as the trainer did, and
    // writes its CSV back to the bucket.
    let predicted = json_of(&kiln(&[
        "predict",
        model,
        "--input",
        &data,
        "--eval-split",
        "--json",
        "--output",
        "s3://kiln/predictions/eval.csv",
    ]));
    assert_eq!(predicted["metrics"]["auc"], trained["metrics"]["auc"]);
    assert_eq!(
        predicted["metrics"]["logloss"],
        trained["metrics"]["logloss"]
    );
    let csv = rt
        .block_on(async {
            store
                .get(&"predictions/eval.csv".into())
                .await?
                .bytes()
                .await
        })
        .unwrap();
    let rows = String::from_utf8_lossy(&csv).lines().count() - 1;
    assert_eq!(rows as u64, predicted["rows"].as_u64().unwrap());
    // A fresh run (no --resume) removes the bucket's `checkpoints/latest` before anything
    // else, so that it cannot be resumed as if it were this run's: here the run fails at
    // once (no such dataset), and a later --resume must not continue the earlier run.
    let latest = object_store::path::Path::from("models/ctr/checkpoints/latest");
    assert!(rt.block_on(store.head(&latest)).is_ok());
    let missing = dir.path().join("no-such-dataset");
    let out = kiln(&[
        "train",
        "--config",
        cfg,
        "--data",
        missing.to_str().unwrap(),
        "--model-dir",
        model,
    ]);
    assert!(!out.status.success());
    assert!(
        matches!(
            rt.block_on(store.head(&latest)),
            Err(object_store::Error::NotFound { .. })
        ),
        "checkpoints/latest is still in the bucket after a fresh run"
    );
    assert!(
        matches!(
            rt.block_on(store.head(&event_file)),
            Err(object_store::Error::NotFound { .. })
        ),
        "an earlier run's event file is still in the bucket after a fresh run"
    );
    // `kiln predict` removed its download of the model; only training's staging is left.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("kiln-models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with("read-")), "{left:?}");
}
