//! The daily pipeline's test inputs: generated click logs and a small copy of the example job
//! (`pipeline.rs`, `ui.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

/// 40 000 events over 11 days ending 2026-11-22 under `dir/data/events` (Parquet, Hive
/// `dt=` partitions) from `seed`: run dates 2026-11-19 ..= 2026-11-21 are complete.
pub fn gen_events_seeded(dir: &Path, seed: u64) {
    let seed = seed.to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "gen",
            "events",
            "--rows",
            "40000",
            "--days",
            "11",
            "--end-date",
            "2026-11-22",
            "--seed",
            &seed,
            "--out",
            dir.join("data/events").to_str().unwrap(),
            "--format",
            "parquet",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("kiln runs");
    assert!(
        o.status.success(),
        "kiln gen events failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes `dir/job.toml`: the example job with 4 shards, a small model, `steps` training
/// steps at learning rate `lr`, and `pipeline` as its `[pipeline]` section.
pub fn write_spec(dir: &Path, steps: u64, lr: &str, pipeline: &str) -> PathBuf {
    write_spec_as(dir, "job.toml", steps, lr, pipeline)
}

/// [`write_spec`] to `dir/name`.
pub fn write_spec_as(dir: &Path, name: &str, steps: u64, lr: &str, pipeline: &str) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily_ctr/job.toml");
    let full = std::fs::read_to_string(example).unwrap();
    let base = match full.find("\n[pipeline]") {
        Some(i) => full[..i].rsplit_once("\n#").map_or(&full[..i], |(a, _)| a),
        None => &full[..],
    };
    assert!(base.contains("shards = 16") && base.contains("hidden = [256, 128]"));
    let spec = base
        .replace("shards = 16", "shards = 4")
        .replace("hidden = [256, 128]", "hidden = [16]")
        .replace("hash_buckets = 100000", "hash_buckets = 1000")
        .replace("embedding_dim = 16", "embedding_dim = 4")
        .replace(
            "batch_size = 1024\nepochs = 1",
            &format!("batch_size = 256\nsteps = {steps}\ncheckpoint_every = 10\nlog_every = 10"),
        )
        .replace(
            "optimizer = { kind = \"adam\", lr = 0.001,",
            &format!("optimizer = {{ kind = \"adam\", lr = {lr},"),
        );
    assert!(
        spec.contains(&format!("steps = {steps}")) && spec.contains(&format!("lr = {lr},")),
        "example [train] changed"
    );
    let p = dir.join(name);
    std::fs::write(&p, format!("{spec}\n[pipeline]\n{pipeline}\n")).unwrap();
    p
}

/// A local HTTP server recording POST bodies; answers 500 to the first `fail_first`.
pub struct Hook {
    /// The URL to POST to.
    pub url: String,
    /// The bodies answered 200, in order.
    pub bodies: Arc<Mutex<Vec<Json>>>,
    /// Every request.
    pub hits: Arc<Mutex<usize>>,
}

pub fn hook(fail_first: usize) -> Hook {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/kiln", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(Mutex::new(0));
    let (b, h) = (bodies.clone(), hits.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            assert!(
                request_line.starts_with("POST /hooks/kiln"),
                "{request_line}"
            );
            let n = {
                let mut h = h.lock().unwrap();
                *h += 1;
                *h
            };
            let status = if n <= fail_first {
                "500 Internal Server Error"
            } else {
                b.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                "200 OK"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    Hook { url, bodies, hits }
}
