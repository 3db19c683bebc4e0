//! End-to-end tests of `kiln train` / `kiln predict` driving the binary on a committed dataset
//! of synthetic clicks (written with kiln-connectors' DatasetWriter).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::training::{json_of, write_config, write_dataset};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

#[test]
fn two_workers_train_and_predict_reproduces_the_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 20_000);
    let cfg = write_config(dir.path(), 120, 50);
    let model = dir.path().join("model");
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--workers", "2", "--json", "--model-dir"])
        .arg(&model)
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["workers"], 2);
    assert_eq!(v["steps"], 120);
    let auc = v["metrics"]["auc"].as_f64().unwrap();
    assert!(auc > 0.65, "AUC {auc}");
    assert!(v["examples_per_sec"].as_f64().unwrap() > 0.0);

    let out = Command::new(KILN)
        .arg("predict")
        .arg(&model)
        .args(["--input", &data, "--eval-split", "--json"])
        .output()
        .unwrap();
    let p = json_of(&out);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(p["metrics"]["auc"], saved["auc"]);
    assert_eq!(p["metrics"]["logloss"], saved["logloss"]);
    assert_eq!(p["metrics"]["rows"], saved["rows"]);
}

#[test]
fn a_killed_worker_fails_the_other_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 20_000);
    let cfg = write_config(dir.path(), 1500, 20);
    let model = dir.path().join("model");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = |rank: usize| {
        Command::new(KILN)
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--data", &data, "--model-dir"])
            .arg(&model)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut r0 = spawn(0);
    let mut r1 = spawn(1);
    // Wait for a checkpoint, then kill rank 1.
    let t = Instant::now();
    while !model.join("checkpoints/latest").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    r1.kill().unwrap();
    r1.wait().unwrap();
    let killed = Instant::now();
    let status = r0.wait().unwrap();
    let took = killed.elapsed();
    let mut err = String::new();
    for l in BufReader::new(r0.stderr.take().unwrap()).lines() {
        err.push_str(&l.unwrap());
        err.push('\n');
    }
    assert!(!status.success());
    assert!(took < Duration::from_secs(10), "survivor took {took:?}");
    assert!(err.contains("lost rank 1"), "{err}");

    // `--resume` continues the same run from the latest checkpoint and finishes it.
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args([
            "--data",
            &data,
            "--workers",
            "2",
            "--resume",
            "--json",
            "--model-dir",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(v["steps"], 1500);
    assert!(v["start_step"].as_u64().unwrap() >= 20);
}

#[test]
fn four_workers_every_survivor_names_the_killed_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 20_000);
    let cfg = write_config(dir.path(), 3000, 20);
    let model = dir.path().join("model");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut ranks: Vec<_> = (0..4)
        .map(|rank| {
            Command::new(KILN)
                .args(["train", "--config"])
                .arg(&cfg)
                .args(["--data", &data, "--model-dir"])
                .arg(&model)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "4")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    while !model.join("checkpoints/latest").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ranks[2].kill().unwrap();
    ranks[2].wait().unwrap();
    let killed = Instant::now();
    for (rank, child) in ranks.iter_mut().enumerate() {
        if rank == 2 {
            continue;
        }
        let status = child.wait().unwrap();
        let took = killed.elapsed();
        let mut err = String::new();
        for l in BufReader::new(child.stderr.take().unwrap()).lines() {
            err.push_str(&l.unwrap());
            err.push('\n');
        }
        assert!(!status.success(), "rank {rank} succeeded:\n{err}");
        assert!(took < Duration::from_secs(20), "rank {rank} took {took:?}");
        assert!(err.contains("lost rank 2"), "rank {rank}:\n{err}");
        for other in [0, 1, 3] {
            assert!(
                !err.contains(&format!("lost rank {other}")),
                "rank {rank} names rank {other}:\n{err}"
            );
        }
    }
}

#[test]
fn resume_refuses_a_checkpoint_of_another_dataset() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let a = write_dataset(dir.path(), 8_000);
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let b = write_dataset(&b_dir, 9_000);
    let cfg = write_config(dir.path(), 60, 20);
    let model = dir.path().join("model");
    let train = |data: &str, extra: &[&str]| {
        Command::new(KILN)
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--data", data, "--model-dir"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = train(&a, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = |url: &str| {
        let path = url.strip_prefix("file://").unwrap();
        let bytes = std::fs::read(format!("{path}_manifest.json")).unwrap();
        format!("{:x}", sha2::Sha256::digest(bytes))
    };
    let out = train(&b, &["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "resumed on another dataset:\n{err}");
    assert!(
        err.contains(&format!("trained on dataset sha256 {}", sha(&a))),
        "{err}"
    );
    assert!(
        err.contains(&format!("this run reads {}", sha(&b))),
        "{err}"
    );
    assert!(err.contains("start fresh without --resume"), "{err}");
    assert!(err.contains("ckpt-0000000060.safetensors"), "{err}");
    // The same dataset resumes (the run is complete: it ends at once).
    let out = train(&a, &["--resume", "--json"]);
    assert_eq!(json_of(&out)["start_step"], 60);
}
