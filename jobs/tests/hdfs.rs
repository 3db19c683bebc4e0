//! Kiln on a real HDFS: a MiniDFSCluster (`scripts/lib/hdfs.sh`, `kiln_hdfs_start`) whose name
//! node URL is in `KILN_TEST_HDFS` (`hdfs://127.0.0.1:PORT`, permissions off).
//!
//! - the example job reading its events from and committing its examples to HDFS writes
//!   shards byte-identical to the same job on local files, and `kiln inspect` reads them;
//! - the HDFS commit lock (`_kiln_commit.lock`, taken by an atomic rename): a live lock is
//!   waited for and then named in the error, a stale one is removed, concurrent commits keep
//!   the newest run, and older run directories are removed, not left empty;
//! - `kiln train --model-dir hdfs://...` and `kiln predict hdfs://...`;
//! - the model repository on HDFS: publish, labels, rollback, prune through `kiln models`,
//!   `kiln serve hdfs://...` predicting as a local copy, a tampered version refused, and
//!   concurrent publishers getting distinct versions under the rename lock.
//!
//! Policy (as for the PostgreSQL and S3 tests): `KILN_TEST_FAST=1` skips; without
//! `KILN_TEST_HDFS` the tests skip with a note, except under `CI=true`, where they fail. Each
//! test works under its own directory `/kiln-test/<test>-<pid>-<nanos>`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use common::training::{json_of, write_config, write_dataset};
use futures::TryStreamExt;
use kiln_connectors::dataset::commit::{COMMIT_LOCK_FILE, CommitLockTiming, commit_dataset_with};
use kiln_connectors::dataset::{Dataset, OpenOptions, ShardFormat, ShardOptions, new_run_id};
use kiln_connectors::store::{self, Location};
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

/// The name node URL, or `None` when the calling test should skip (see the module docs).
fn hdfs(test: &str) -> Option<String> {
    if std::env::var("KILN_TEST_FAST").as_deref() == Ok("1") {
        eprintln!("KILN_TEST_FAST=1: skipping {test} (it needs an HDFS cluster)");
        return None;
    }
    match std::env::var("KILN_TEST_HDFS") {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().trim_end_matches('/').to_string()),
        _ if std::env::var("CI").is_ok_and(|c| c == "true") => {
            panic!("CI=true but KILN_TEST_HDFS is not set (source scripts/lib/hdfs.sh)")
        }
        _ => {
            eprintln!("note: KILN_TEST_HDFS not set; skipping {test}");
            None
        }
    }
}

/// A directory on HDFS no other test or run uses.
fn unique_dir(base: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{base}/kiln-test/{test}-{}-{nanos}", std::process::id())
}

/// Names (relative to `dir`) of every file under `dir`, sorted.
fn list_names(dir: &Location) -> Vec<String> {
    let prefix_len = dir.path.as_ref().len() + 1;
    let mut names: Vec<String> = store::block_on(dir.store.list(Some(&dir.path)).try_collect())
        .map(|v: Vec<object_store::ObjectMeta>| v)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.url))
        .into_iter()
        .map(|m| m.location.as_ref()[prefix_len..].to_string())
        .collect();
    names.sort();
    names
}

/// Names of the directories directly under `dir` (HDFS lists directories as common prefixes).
fn list_dirs(dir: &Location) -> Vec<String> {
    let l = store::block_on(dir.store.list_with_delimiter(Some(&dir.path)))
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.url));
    let mut v: Vec<String> = l
        .common_prefixes
        .iter()
        .map(|p| p.filename().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_all(loc: &Location) -> Vec<u8> {
    store::block_on(async { loc.store.get(&loc.path).await?.bytes().await })
        .unwrap_or_else(|e| panic!("reading {}: {e}", loc.url))
        .to_vec()
}

/// `kiln inspect URL --limit N`: the summary line and the record lines.
fn inspect(url: &str, limit: usize) -> (serde_json::Value, Vec<String>) {
    let out = common::kiln_ok(&["inspect", url, "--limit", &limit.to_string()]);
    let mut lines = out.lines();
    let summary = serde_json::from_str(lines.next().expect("a summary line")).unwrap();
    (summary, lines.map(str::to_string).collect())
}

#[test]
fn example_job_on_hdfs_matches_local_run() {
    let Some(base) = hdfs("example_job_on_hdfs_matches_local_run") else {
        return;
    };
    let root = unique_dir(&base, "example-job");
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 60_000, 11);
    let raw_url = format!("{root}/raw/events");
    let raw = store::resolve(&raw_url).unwrap();
    let uploaded = store::upload_dir(&events, &raw, &[]).unwrap();
    assert!(uploaded >= 9, "{uploaded} files uploaded");

    let spec = common::example_spec();
    let spec = spec.to_str().unwrap();
    let local_out = dir.path().join("out");
    common::kiln_ok(&[
        "features",
        spec,
        "--date",
        "2026-11-20",
        "--source",
        &format!("events={}", events.display()),
        "--out",
        local_out.to_str().unwrap(),
    ]);
    let out_url = format!("{root}/features");
    let stdout = common::kiln_ok(&[
        "features",
        spec,
        "--date",
        "2026-11-20",
        "--source",
        &format!("events={raw_url}"),
        "--out",
        &out_url,
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let examples_url = format!("{out_url}/examples/");
    assert_eq!(report["outputs"][0]["location"], examples_url.as_str());

    // The manifests agree shard by shard (SHA-256, rows, bytes) ...
    let local_url = format!("{}/examples/", local_out.display());
    let local = common::shard_sums(&local_url);
    assert_eq!(
        common::shard_sums(&examples_url),
        local,
        "HDFS shards are byte-identical to the local run"
    );
    // ... and so do the bytes in the store, which hash to the manifest's checksums.
    let ds = Dataset::open_blocking(
        &examples_url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    let local_ds = Dataset::open_blocking(&local_url, OpenOptions::default()).unwrap();
    let hdfs_loc = store::resolve(&examples_url).unwrap();
    assert!(!ds.manifest().shards.is_empty());
    for s in &ds.manifest().shards {
        let remote = read_all(&hdfs_loc.child(&s.path));
        assert_eq!(sha256_hex(&remote), s.sha256, "{}", s.path);
        // The local run has its own run id: its shard of the same index and format.
        let twin = local_ds
            .manifest()
            .shards
            .iter()
            .find(|l| l.index == s.index && l.format == s.format)
            .unwrap();
        let local_shard = local_out.join("examples").join(&twin.path);
        let local_bytes = std::fs::read(&local_shard).unwrap_or_else(|e| {
            panic!("{}: {e}", local_shard.display());
        });
        assert_eq!(remote, local_bytes, "{} differs from the local run", s.path);
    }
    // Lineage names the HDFS input files, with ETags.
    let files = ds.manifest().lineage["inputs"][0]["files"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files.len(), 9, "{files:?}");
    assert!(
        files.iter().all(|f| f["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{raw_url}/dt="))),
        "{files:?}"
    );
    // The commit left nothing behind: no lock, no temporary files.
    let names = list_names(&hdfs_loc);
    assert!(names.iter().any(|n| n == "_manifest.json"), "{names:?}");
    assert!(names.iter().any(|n| n == "_SUCCESS"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.contains(COMMIT_LOCK_FILE) && !n.contains(".tmp")),
        "{names:?}"
    );
    let rows: usize = common::read_dataset(&examples_url, ShardFormat::Parquet)
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let local_rows: u64 = local.iter().filter(|s| s.1 == "Parquet").map(|s| s.3).sum();
    assert_eq!(rows as u64, local_rows);

    // `kiln inspect` on the HDFS dataset prints the same records as on the local one.
    let (summary, records) = inspect(&examples_url, 5);
    let (_, local_records) = inspect(&local_url, 5);
    assert_eq!(records.len(), 5, "{records:?}");
    assert_eq!(records, local_records);
    assert_eq!(
        summary["total_rows"].as_u64(),
        Some(local_rows),
        "{summary}"
    );
    // ... and on one shard file.
    let first = ds
        .manifest()
        .shards
        .iter()
        .find(|s| s.format == ShardFormat::TfRecord && s.rows > 0)
        .unwrap();
    let out = common::kiln_ok(&[
        "inspect",
        &format!("{}{}", examples_url, first.path),
        "--limit",
        "2",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
}

fn schema() -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
}

fn options() -> ShardOptions {
    ShardOptions {
        num_shards: 2,
        formats: vec![ShardFormat::Parquet],
        ..Default::default()
    }
}

/// Commits run `run_id` (empty shards) to `loc` with the given lock timing.
async fn commit(
    loc: &Location,
    run_id: &str,
    timing: &CommitLockTiming,
) -> kiln_connectors::Result<()> {
    commit_dataset_with(
        loc,
        run_id,
        schema(),
        &options(),
        Vec::new(),
        serde_json::json!({}),
        true,
        timing,
    )
    .await
    .map(drop)
}

fn committed_run(loc: &Location) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&read_all(&loc.child("_manifest.json"))).unwrap();
    m["run_id"].as_str().unwrap().to_string()
}

/// A lock file as another host's commit would hold it.
fn put_foreign_lock(loc: &Location, holder_run: &str) {
    let lock = loc.child(COMMIT_LOCK_FILE);
    let body = serde_json::json!({
        "run_id": holder_run,
        "host": "another-host",
        "pid": 4242,
        "token": format!("another-host-4242-{holder_run}"),
    });
    store::block_on(
        lock.store
            .put(&lock.path, body.to_string().into_bytes().into()),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", lock.url));
}

fn lock_files(loc: &Location) -> Vec<String> {
    list_names(loc)
        .into_iter()
        .filter(|n| n.starts_with(COMMIT_LOCK_FILE) || n.contains(".tmp"))
        .collect()
}

#[test]
fn commit_lock_on_hdfs() {
    let Some(base) = hdfs("commit_lock_on_hdfs") else {
        return;
    };
    let root = unique_dir(&base, "commit-lock");
    let loc = store::resolve(&format!("{root}/ds")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default = CommitLockTiming::default();

    // A first commit: no lock left behind.
    let run_a = new_run_id();
    rt.block_on(commit(&loc, &run_a, &default)).unwrap();
    assert_eq!(committed_run(&loc), run_a);
    assert!(list_names(&loc).iter().any(|n| n == "_SUCCESS"));
    assert_eq!(lock_files(&loc), Vec::<String>::new());

    // A live lock of another commit: waited for, then the commit fails naming the lock and
    // its holder, and leaves the lock (and the dataset) alone.
    put_foreign_lock(&loc, "holder-run-1");
    let run_b = new_run_id();
    let short_wait = CommitLockTiming {
        stale_after: Duration::from_secs(600),
        wait: Duration::from_secs(2),
    };
    let t = Instant::now();
    let e = rt
        .block_on(commit(&loc, &run_b, &short_wait))
        .unwrap_err()
        .to_string();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    let lock_url = format!("{root}/ds/{COMMIT_LOCK_FILE}");
    assert!(e.contains(&lock_url), "{e}");
    assert!(e.contains("holder-run-1"), "{e}");
    assert!(e.contains("another-host"), "{e}");
    assert_eq!(committed_run(&loc), run_a);
    assert_eq!(lock_files(&loc), vec![COMMIT_LOCK_FILE.to_string()]);

    // The same lock past a (short) stale limit: removed, and the commit goes through.
    std::thread::sleep(Duration::from_millis(3_500));
    let stale_after_3s = CommitLockTiming {
        stale_after: Duration::from_secs(3),
        wait: Duration::from_secs(30),
    };
    rt.block_on(commit(&loc, &run_b, &stale_after_3s)).unwrap();
    assert_eq!(committed_run(&loc), run_b);
    assert_eq!(lock_files(&loc), Vec::<String>::new());

    // A live lock released while a commit waits: the commit proceeds after the release.
    put_foreign_lock(&loc, "holder-run-2");
    let run_c = new_run_id();
    let t = Instant::now();
    let releaser = {
        let lock = loc.child(COMMIT_LOCK_FILE);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1_500));
            store::block_on(lock.store.delete(&lock.path)).unwrap();
        })
    };
    rt.block_on(commit(&loc, &run_c, &default)).unwrap();
    releaser.join().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1_500));
    assert_eq!(committed_run(&loc), run_c);
    // run-a, older than the replaced run-b, is gone: files and directory.
    let dirs = list_dirs(&loc);
    assert_eq!(dirs, vec![format!("run-{run_b}"), format!("run-{run_c}")]);

    // Two concurrent commits: the newer run's manifest stays; the older one either committed
    // first or fails naming the newer run; the lock is released either way.
    let run_d = new_run_id();
    let run_e = new_run_id();
    let (d, e) = rt.block_on(async {
        tokio::join!(
            commit(&loc, &run_d, &default),
            commit(&loc, &run_e, &default)
        )
    });
    e.unwrap();
    if let Err(d) = d {
        assert!(d.to_string().contains("started later"), "{d}");
    }
    assert_eq!(committed_run(&loc), run_e);
    assert_eq!(lock_files(&loc), Vec::<String>::new());
    // Only the committed run and at most the two before it are left (no empty directories).
    let dirs = list_dirs(&loc);
    assert!(
        dirs.iter()
            .all(|d| d.as_str() >= format!("run-{run_c}").as_str()),
        "{dirs:?}"
    );
    let ds = Dataset::open_blocking(
        &loc.url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    assert_eq!(ds.manifest().run_id, run_e);
}

#[test]
fn model_dir_on_hdfs_trains_and_predicts() {
    let Some(base) = hdfs("model_dir_on_hdfs_trains_and_predicts") else {
        return;
    };
    let root = unique_dir(&base, "model-dir");
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 8_000);
    let cfg = write_config(dir.path(), 60, 20);
    let cfg = cfg.to_str().unwrap();
    let model = format!("{root}/models/ctr");
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("TMPDIR", dir.path())
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let out = kiln(&[
        "train",
        "--config",
        cfg,
        "--data",
        &data,
        "--json",
        "--model-dir",
        &model,
    ]);
    let trained = json_of(&out);
    assert_eq!(trained["model_dir"], model.as_str());
    assert_eq!(trained["steps"], 60);

    let remote = store::resolve(&model).unwrap();
    let names = list_names(&remote);
    for expected in ["model.json", "metrics.json", "checkpoints/latest"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&read_all(&remote.child("metrics.json"))).unwrap();
    assert_eq!(metrics["auc"], trained["metrics"]["auc"]);

    // Predicting from HDFS scores the held-out rows exactly as the trainer did, and writes
    // its CSV to HDFS.
    let predictions = format!("{root}/predictions/eval.csv");
    let predicted = json_of(&kiln(&[
        "predict",
        &model,
        "--input",
        &data,
        "--eval-split",
        "--json",
        "--output",
        &predictions,
    ]));
    assert_eq!(predicted["metrics"]["auc"], trained["metrics"]["auc"]);
    assert_eq!(
        predicted["metrics"]["logloss"],
        trained["metrics"]["logloss"]
    );
    let csv = read_all(&store::resolve(&predictions).unwrap());
    let rows = String::from_utf8_lossy(&csv).lines().count() - 1;
    assert_eq!(rows as u64, predicted["rows"].as_u64().unwrap());
}

#[test]
fn model_repository_on_hdfs_publishes_serves_and_rolls_back() {
    let Some(base) = hdfs("model_repository_on_hdfs_publishes_serves_and_rolls_back") else {
        return;
    };
    let dir = unique_dir(&base, "model-repository");
    common::serving::remote_repository_round_trip(&dir);
    // The repository lock is released after every change.
    let model = store::resolve(&format!("{dir}/models/ctr")).unwrap();
    let names = list_names(&model);
    assert!(!names.iter().any(|n| n.starts_with(".lock")), "{names:?}");
    assert!(names.contains(&"labels.json".to_string()), "{names:?}");
}
