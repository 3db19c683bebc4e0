//! Shared helpers of the `kiln` end-to-end tests: running the binary, reading datasets, and
//! an independent reference implementation of `shared/specs/daily_ctr.md`.

#![allow(dead_code)]

pub mod cluster;
pub mod pipeline;
pub mod prom;
pub mod reference;
pub mod serving;
pub mod training;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::RecordBatch;
use kiln_connectors::dataset::{Dataset, OpenOptions, ShardFormat};

/// The example job spec.
pub fn example_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml")
}

/// Runs `kiln ARGS`, returning its output (no assertion on the status).
pub fn kiln(args: &[&str]) -> Output {
    kiln_env(args, &[])
}

/// Runs `kiln ARGS` with extra environment variables.
pub fn kiln_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("kiln runs")
}

/// Runs `kiln ARGS` and asserts success; returns stdout.
pub fn kiln_ok(args: &[&str]) -> String {
    kiln_ok_env(args, &[])
}

/// Runs `kiln ARGS` with env and asserts success; returns stdout.
pub fn kiln_ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = kiln_env(args, env);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Generates the example's events: `rows` events over 9 days ending 2026-11-21.
pub fn gen_events(out: &Path, rows: u64, seed: u64) {
    kiln_ok(&[
        "gen",
        "events",
        "--rows",
        &rows.to_string(),
        "--days",
        "9",
        "--end-date",
        "2026-11-21",
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "parquet",
    ]);
}

/// Reads every row of a committed dataset in one format, in shard order.
pub fn read_dataset(url: &str, format: ShardFormat) -> Vec<RecordBatch> {
    let ds = Dataset::open_blocking(
        url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let all: Vec<usize> = (0..ds.manifest().options.num_shards as usize).collect();
    ds.read_shards(&all, Some(format), 8192)
        .expect("read shards")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches")
}

/// `(shard, format, sha256, rows, bytes)` of every shard in a committed dataset's manifest.
pub fn shard_sums(url: &str) -> Vec<(u32, String, String, u64, u64)> {
    let ds = Dataset::open_blocking(
        url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap_or_else(|e| panic!("open {url}: {e}"));
    ds.manifest()
        .shards
        .iter()
        .map(|s| {
            (
                s.index,
                format!("{:?}", s.format),
                s.sha256.clone(),
                s.rows,
                s.bytes,
            )
        })
        .collect()
}
