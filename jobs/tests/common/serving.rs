//! `kiln serve` and `kiln models` against a model repository on an object store (`s3://`,
//! `hdfs://`), compared with the same versions in a local repository: the round trip the S3
//! (`models_s3.rs`) and HDFS (`hdfs.rs`) tests share.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_registry::{Label, Repo};
use kiln_trainer::ShardSource;
use object_store::ObjectStoreExt;
use serde_json::{Value, json};

use super::training::{json_of, write_config, write_dataset};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Seconds between the servers' polls of the repository.
pub const POLL_SECONDS: f64 = 1.0;

/// One HTTP/1.1 request (`Connection: close`): status, `x-kiln-model-version`, JSON body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Option<u64>, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut version = None;
    let mut chunked = false;
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        match k.trim().to_ascii_lowercase().as_str() {
            "x-kiln-model-version" => version = v.trim().parse().ok(),
            "transfer-encoding" => chunked = v.trim() == "chunked",
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, version, json)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// A `kiln serve` process; killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    /// Serves `target` (a path or URL) on a free port.
    pub fn start(target: &str, cache: &Path) -> Server {
        let mut child = Command::new(KILN)
            .args(["serve", target, "--bind", "127.0.0.1:0"])
            .args(["--poll-seconds", &POLL_SECONDS.to_string()])
            .arg("--cache-dir")
            .arg(cache)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        Server {
            child,
            addr: v["listening"].as_str().unwrap().to_string(),
        }
    }

    /// `:predict` on `path` (default version, a label or a version).
    pub fn predict(&self, path: &str, body: &Value) -> (u16, Option<u64>, Value) {
        request(&self.addr, "POST", path, Some(body))
    }

    /// Polls until the default version is `want`; returns how long it took.
    pub fn wait_for(&self, body: &Value, want: u64, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let (code, v, _) = self.predict("/v1/models/ctr:predict", body);
            if code == 200 && v == Some(want) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "{}: version {want} not served within {within:?} (last: {code}, {v:?})",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `n` rows of a dataset's first batch as raw JSON instances.
pub fn instances(data: &str, n: usize) -> Vec<Value> {
    use arrow::array::{Array, AsArray};
    use arrow::compute::cast;
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    let src = kiln_trainer::source::DatasetSource::open(data).unwrap();
    let batch = src.read_shard(0).unwrap().next().unwrap().unwrap();
    let schema = batch.schema();
    (0..n.min(batch.num_rows()))
        .map(|r| {
            let mut o = serde_json::Map::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                let dt = col.data_type();
                let v = if col.is_null(r) {
                    Value::Null
                } else if dt.is_integer() {
                    let c = cast(col, &DataType::Int64).unwrap();
                    json!(c.as_primitive::<Int64Type>().value(r))
                } else if dt.is_floating() {
                    let c = cast(col, &DataType::Float64).unwrap();
                    json!(c.as_primitive::<Float64Type>().value(r))
                } else {
                    let c = cast(col, &DataType::Utf8).unwrap();
                    json!(c.as_string::<i32>().value(r))
                };
                o.insert(f.name().clone(), v);
            }
            Value::Object(o)
        })
        .collect()
}

/// Runs `kiln ARGS`.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(KILN).args(args).output().unwrap()
}

fn kiln_ok(args: &[&str]) -> String {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Trains a small model into `dir/<name>` (`steps` steps).
fn train(dir: &Path, data: &str, steps: u64, name: &str) -> PathBuf {
    let cfg = write_config(dir, steps, 1000);
    let model = dir.join(name);
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", data, "--json", "--model-dir"])
        .arg(&model)
        .output()
        .unwrap();
    json_of(&out);
    model
}

/// Replaces one object of the store (the tampering an attacker or a broken copy does).
fn overwrite(url: &str, bytes: &[u8]) {
    let loc = kiln_connectors::store::resolve(url).unwrap();
    kiln_connectors::store::block_on(loc.store.put(&loc.path, bytes.to_vec().into()))
        .unwrap_or_else(|e| panic!("writing {url}: {e}"));
}

/// The round trip on a repository at `base` (`s3://bucket/prefix` or `hdfs://host:port/dir`,
/// unused): the model `ctr` is published there and into a local repository; `kiln serve` on
/// both answers `:predict` identically; a new version is served within a poll of its
/// promotion; `kiln models rollback` returns; a tampered version is refused by `kiln models
/// verify` and by the server; concurrent publishers get distinct versions; `kiln models
/// prune` keeps the labelled and newest versions.
pub fn remote_repository_round_trip(base: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 4_000);
    let model_a = train(dir.path(), &data, 30, "model-a");
    let model_b = train(dir.path(), &data, 60, "model-b");
    let url = format!("{}/models/ctr", base.trim_end_matches('/'));
    let remote = Repo::open(&url).unwrap();
    assert!(remote.is_remote(), "{url}");
    let local = Repo::new(dir.path().join("models/ctr"));
    let publish = |repo: &Repo, model: &Path, tag: &str| {
        repo.publish(model, &json!({ "test": tag }), |_| Ok(()))
            .unwrap_or_else(|e| panic!("publishing to {repo}: {e}"))
    };

    // Version 1 (model A) in both repositories, labelled stable (remote: through the CLI).
    assert_eq!(publish(&local, &model_a, "a"), 1);
    assert_eq!(publish(&remote, &model_a, "a"), 1);
    local.promote(1, Label::Stable, false).unwrap();
    let out = kiln_ok(&["models", "promote", &url, "1"]);
    assert!(out.contains(&format!("{url}: stable -> 1")), "{out}");

    let local_server = Server::start(
        &local.dir.display().to_string(),
        &dir.path().join("cache-l"),
    );
    let remote_server = Server::start(&url, &dir.path().join("cache-r"));
    let body = json!({ "instances": instances(&data, 64) });
    let (code, v, local_preds) = local_server.predict("/v1/models/ctr:predict", &body);
    assert_eq!((code, v), (200, Some(1)), "{local_preds}");
    let (code, v, remote_preds) = remote_server.predict("/v1/models/ctr:predict", &body);
    assert_eq!((code, v), (200, Some(1)), "{remote_preds}");
    assert_eq!(remote_preds["predictions"].as_array().unwrap().len(), 64);
    assert_eq!(remote_preds, local_preds);
    // The version was downloaded, verified, into the cache.
    let cached = std::fs::read_dir(dir.path().join("cache-r"))
        .unwrap()
        .count();
    assert_eq!(cached, 1, "one repository cached");

    // Version 2 (model B): served within a poll of its promotion, same predictions as local.
    assert_eq!(publish(&local, &model_b, "b"), 2);
    assert_eq!(publish(&remote, &model_b, "b"), 2);
    local.promote(2, Label::Stable, false).unwrap();
    kiln_ok(&["models", "promote", &url, "2"]);
    let poll = Duration::from_secs_f64(POLL_SECONDS);
    // One poll interval, plus the download and load of the version.
    let took = remote_server.wait_for(&body, 2, poll + Duration::from_secs(10));
    eprintln!("remote version 2 served {took:?} after its promotion");
    local_server.wait_for(&body, 2, poll + Duration::from_secs(10));
    let (_, _, local2) = local_server.predict("/v1/models/ctr:predict", &body);
    let (_, _, remote2) = remote_server.predict("/v1/models/ctr:predict", &body);
    assert_eq!(remote2, local2);
    assert_ne!(remote2, remote_preds, "models A and B predict differently");

    let listed: Value =
        serde_json::from_str(&kiln_ok(&["models", "list", &url, "--json"])).unwrap();
    assert_eq!(listed["repository"], url);
    let versions: Vec<u64> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(listed["labels"]["stable"], 2);
    assert_eq!(listed["labels"]["stable_history"], json!([1, 2]));

    // Rollback through the CLI: served within a poll.
    let out = kiln_ok(&["models", "rollback", &url]);
    assert!(out.contains(&format!("{url}: stable 2 -> 1")), "{out}");
    remote_server.wait_for(&body, 1, poll + Duration::from_secs(10));
    let (_, _, back) = remote_server.predict("/v1/models/ctr:predict", &body);
    assert_eq!(back, local_preds);
    // The cache holds the served version only: 2 was deleted when unloaded, 1 downloaded again.
    let repo_cache = std::fs::read_dir(dir.path().join("cache-r"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut cached: Vec<String> = std::fs::read_dir(&repo_cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(cached, ["1"], "{}", repo_cache.display());

    // A tampered version: refused by `kiln models verify` and by the server.
    assert_eq!(publish(&remote, &model_a, "tampered"), 3);
    let show = kiln_ok(&["models", "show", &url, "3"]);
    assert!(show.contains("  model.json"), "{show}");
    let out = kiln_ok(&["models", "verify", &url, "3"]);
    assert!(out.contains("version 3: ok"), "{out}");
    let target = format!("{url}/3/model.json");
    let mut bytes = std::fs::read(model_a.join("model.json")).unwrap();
    bytes.extend_from_slice(b" ");
    overwrite(&target, &bytes);
    let out = kiln(&["models", "verify", &url]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("version 1: ok") && stdout.contains("version 2: ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("version 3: FAILED: {target}: SHA-256 mismatch")),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verification failed for versions [3]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kiln_ok(&["models", "promote", &url, "3", "--label", "canary"]);
    let t0 = Instant::now();
    let status = loop {
        let (code, _, st) = request(
            &remote_server.addr,
            "GET",
            "/v1/models/ctr/versions/3",
            None,
        );
        // Until the poll that found it has finished verifying it.
        if code == 200 && st["model_version_status"][0]["state"] != "LOADING" {
            break st;
        }
        assert!(
            t0.elapsed() < poll + Duration::from_secs(10),
            "no status for version 3"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let st = &status["model_version_status"][0];
    assert_eq!(st["state"], "END", "{status}");
    let msg = st["status"]["error_message"].as_str().unwrap();
    assert!(
        msg.contains("SHA-256 mismatch") && msg.contains(&format!("{url}/3")),
        "{msg}"
    );
    let (code, _, e) = remote_server.predict("/v1/models/ctr/labels/canary:predict", &body);
    assert_eq!(code, 404, "{e}");
    let (code, v, still) = remote_server.predict("/v1/models/ctr:predict", &body);
    assert_eq!((code, v), (200, Some(1)));
    assert_eq!(still, local_preds);

    // Concurrent publishers (separate repository handles, as separate hosts would be) get
    // distinct versions.
    let got: BTreeSet<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let (url, model) = (url.clone(), model_a.clone());
                s.spawn(move || {
                    Repo::open(&url)
                        .unwrap()
                        .publish(&model, &json!({ "writer": i }), |_| Ok(()))
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, BTreeSet::from([4, 5, 6, 7]));
    assert_eq!(remote.versions().unwrap(), [1, 2, 3, 4, 5, 6, 7]);

    // Retention: the newest and the labelled (1 stable, 3 canary) stay.
    let pruned: Value = serde_json::from_str(&kiln_ok(&[
        "models", "prune", &url, "--keep", "1", "--json",
    ]))
    .unwrap();
    assert_eq!(pruned["removed"], json!([2, 4, 5, 6]));
    assert_eq!(pruned["versions"], json!([1, 3, 7]));
    assert_eq!(remote.versions().unwrap(), [1, 3, 7]);
    drop(remote_server);
    drop(local_server);
}
