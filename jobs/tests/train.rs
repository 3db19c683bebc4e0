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

/// Issue 12.6: `kiln train --skip-corrupt` trains past a record with a bad CRC and reports it
/// (shard, record index, rows lost); without the flag the run fails naming the shard.
#[test]
fn skip_corrupt_trains_past_a_bad_record_and_reports_it() {
    use kiln_connectors::dataset::{ShardFormat, ShardOptions};
    let dir = tempfile::tempdir().unwrap();
    let data = common::training::write_dataset_with(
        dir.path(),
        4_000,
        ShardOptions {
            num_shards: 2,
            formats: vec![ShardFormat::TfRecord],
            tfrecord_compression: kiln_connectors::Compression::None,
            key_column: Some("event_id".into()),
            ..Default::default()
        },
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("examples/_manifest.json")).unwrap())
            .unwrap();
    let shard = manifest["shards"][0]["path"].as_str().unwrap().to_string();
    // Flip a byte inside record 3's payload: its data CRC no longer matches.
    let path = dir.path().join("examples").join(&shard);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut start = 0usize;
    for _ in 0..3 {
        let len = u64::from_le_bytes(bytes[start..start + 8].try_into().unwrap()) as usize;
        start += 12 + len + 4;
    }
    bytes[start + 12 + 5] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let cfg = write_config(dir.path(), 20, 10);
    let train = |extra: &[&str], model: &str| {
        Command::new(KILN)
            .args(["train", "--config"])
            .arg(&cfg)
            .args(["--data", &data, "--json", "--model-dir"])
            .arg(dir.path().join(model))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = train(&[], "plain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a corrupt record must fail a plain run"
    );
    assert!(
        stderr.contains(&shard) && stderr.contains("CRC"),
        "{stderr}"
    );

    let out = train(&["--skip-corrupt"], "skipping");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v = json_of(&out);
    assert!(
        stderr.contains("skipped corrupt record 3 at offset") && stderr.contains(&shard),
        "{stderr}"
    );
    let skipped = v["skipped"].as_array().unwrap();
    assert!(!skipped.is_empty(), "{v}");
    for s in skipped {
        assert_eq!(s["rows_lost"], 1, "{s}");
        assert_eq!(s["records"][0]["index"], 3, "{s}");
        assert_eq!(s["records"][0]["reason"], "data_crc_mismatch", "{s}");
        assert!(s["shard"].as_str().unwrap().ends_with(&shard), "{s}");
    }
}
