//! `kiln serve` end to end over real HTTP on 127.0.0.1: train a small model, publish it into
//! a repository, serve it, and check TF Serving's REST API, train/serve consistency (every
//! held-out row scores bit for bit as `kiln predict`), hot reload without failed requests,
//! rollback, a tampered version refused, metrics, health and graceful shutdown.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use common::training::{json_of, write_config, write_dataset};
use kiln_registry::{Label, Repo};
use kiln_trainer::ShardSource;
use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const POLL: f64 = 0.3;

/// One HTTP/1.1 request (`Connection: close`): status, headers (lowercase names), body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
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
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, headers, body)
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

fn post(addr: &str, path: &str, body: &Value) -> (u16, Option<u64>, Value) {
    let (code, h, b) = http(addr, "POST", path, Some(&body.to_string()));
    let v = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {e}: {b}"));
    (
        code,
        h.get("x-kiln-model-version").map(|v| v.parse().unwrap()),
        v,
    )
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (code, _, b) = http(addr, "GET", path, None);
    (
        code,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {e}: {b}")),
    )
}

/// The server process; killed if a test fails before it is stopped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(repo: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(KILN)
            .arg("serve")
            .arg(repo)
            .args(["--bind", "127.0.0.1:0", "--poll-seconds", &POLL.to_string()])
            .args(extra)
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

    /// SIGTERM; the server must exit successfully.
    fn terminate(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "kiln serve exited with {status} on SIGTERM"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every row of the dataset as raw JSON instances, by (shard, row in shard), read in the same
/// order `kiln predict` reads them.
fn instances(data: &str) -> HashMap<(u32, u64), Value> {
    let src = kiln_trainer::source::DatasetSource::open(data).unwrap();
    let mut out = HashMap::new();
    for shard in 0..src.shard_rows().len() {
        let mut start = 0u64;
        for b in src.read_shard(shard).unwrap() {
            let b = b.unwrap();
            let schema = b.schema();
            for r in 0..b.num_rows() {
                let mut o = serde_json::Map::new();
                for (f, col) in schema.fields().iter().zip(b.columns()) {
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
                out.insert((shard as u32, start + r as u64), Value::Object(o));
            }
            start += b.num_rows() as u64;
        }
    }
    out
}

fn publish(repo: &Repo, model: &Path, tag: &str) -> u64 {
    repo.publish(model, &json!({"test": tag}), |_| Ok(()))
        .unwrap()
}

/// Polls until the default version answering `:predict` is `want` (or the deadline).
fn wait_for_version(addr: &str, body: &Value, want: u64, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (code, v, _) = post(addr, "/v1/models/ctr:predict", body);
        if code == 200 && v == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "version {want} not served within {within:?} (last: {code}, {v:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_answers_tf_serving_api_matches_predict_and_hot_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 8_000);
    let cfg = write_config(dir.path(), 60, 1000);
    let model = dir.path().join("model");
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--json", "--model-dir"])
        .arg(&model)
        .output()
        .unwrap();
    json_of(&out);
    let preds = dir.path().join("preds.csv");
    let out = Command::new(KILN)
        .arg("predict")
        .arg(&model)
        .args(["--input", &data, "--eval-split", "--json", "--output"])
        .arg(&preds)
        .output()
        .unwrap();
    json_of(&out);
    let expected =
        kiln_trainer::predictions::logits_by_row(&std::fs::read(&preds).unwrap(), "preds").unwrap();
    assert!(expected.len() > 500, "{} held-out rows", expected.len());

    let repo_dir = dir.path().join("models/ctr");
    let repo = Repo::new(&repo_dir);
    assert_eq!(publish(&repo, &model, "v1"), 1);
    repo.promote(1, Label::Stable, false).unwrap();

    let server = Server::start(&repo_dir, &["--max-body-bytes", "1000000"]);
    let addr = server.addr.clone();

    // Health and readiness.
    assert_eq!(http(&addr, "GET", "/healthz", None).0, 200);
    assert_eq!(http(&addr, "GET", "/readyz", None).0, 200);

    // Version status: TF Serving's model_version_status.
    let (code, st) = get_json(&addr, "/v1/models/ctr");
    assert_eq!(code, 200);
    assert_eq!(
        st,
        json!({"model_version_status": [{"version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})
    );
    assert_eq!(
        get_json(&addr, "/v1/models/ctr/versions/1"),
        (200, st.clone())
    );
    assert_eq!(
        get_json(&addr, "/v1/models/ctr/labels/stable"),
        (200, st.clone())
    );
    let (code, e) = get_json(&addr, "/v1/models/ctr/versions/7");
    assert_eq!(code, 404, "{e}");
    let (code, e) = get_json(&addr, "/v1/models/nope");
    assert_eq!(code, 404);
    assert!(e["error"].as_str().unwrap().contains("nope"), "{e}");

    // Metadata: the signature's inputs are the transform's columns.
    let (code, md) = get_json(&addr, "/v1/models/ctr/metadata");
    assert_eq!(code, 200);
    assert_eq!(md["model_spec"]["version"], "1");
    let sig = &md["metadata"]["signature_def"]["signature_def"]["serving_default"];
    let mut names: Vec<&str> = sig["inputs"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["device", "dwell_ms", "item_id", "price", "user_id"]);
    assert_eq!(sig["inputs"]["device"]["dtype"], "DT_STRING");
    assert_eq!(sig["inputs"]["user_id"]["dtype"], "DT_INT64");
    assert_eq!(sig["inputs"]["price"]["dtype"], "DT_DOUBLE");
    assert_eq!(get_json(&addr, "/v1/models/ctr/versions/1/metadata").0, 200);
    assert_eq!(
        get_json(&addr, "/v1/models/ctr/labels/stable/metadata").0,
        200
    );

    // Train/serve consistency: every held-out row, raw values (ids, strings, numbers, the
    // label and event id too), in one row-format request and one columnar request.
    let rows = instances(&data);
    let mut keys: Vec<(u32, u64)> = expected.keys().copied().collect();
    keys.sort();
    let insts: Vec<Value> = keys.iter().map(|k| rows[k].clone()).collect();
    let want: Vec<f32> = keys
        .iter()
        .map(|k| kiln_trainer::model::sigmoid(expected[k]))
        .collect();
    let check = |got: &Value, what: &str| {
        let got = got.as_array().unwrap_or_else(|| panic!("{what}: {got}"));
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let g = g.as_f64().unwrap() as f32;
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}: row {:?}: served {g}, kiln predict {w}",
                keys[i]
            );
        }
    };
    let (code, v, p) = post(
        &addr,
        "/v1/models/ctr:predict",
        &json!({"instances": insts}),
    );
    assert_eq!((code, v), (200, Some(1)), "{p}");
    check(&p["predictions"], "rows");
    let mut columns = serde_json::Map::new();
    for name in ["user_id", "item_id", "device", "price", "dwell_ms"] {
        columns.insert(name.into(), insts.iter().map(|i| i[name].clone()).collect());
    }
    let (code, _, p) = post(
        &addr,
        "/v1/models/ctr/versions/1:predict",
        &json!({"inputs": columns}),
    );
    assert_eq!(code, 200, "{p}");
    check(&p["outputs"], "columns");
    // One instance per request, and a few odd sizes, give the same bits as the big batch.
    for k in [2usize, 7, 100, 513] {
        let (code, _, p) = post(
            &addr,
            "/v1/models/ctr:predict",
            &json!({"instances": insts[..k].to_vec()}),
        );
        assert_eq!(code, 200, "{p}");
        for i in 0..k {
            let g = p["predictions"][i].as_f64().unwrap() as f32;
            assert_eq!(
                g.to_bits(),
                want[i].to_bits(),
                "batch of {k}: row {:?}",
                keys[i]
            );
        }
    }
    for (i, inst) in insts.iter().enumerate().take(40) {
        let (code, _, p) = post(
            &addr,
            "/v1/models/ctr/labels/stable:predict",
            &json!({"instances": [inst]}),
        );
        assert_eq!(code, 200, "{p}");
        let g = p["predictions"][0].as_f64().unwrap() as f32;
        assert_eq!(g.to_bits(), want[i].to_bits(), "single row {:?}", keys[i]);
    }
    // :regress and :classify (examples + context).
    let one = json!({"examples": [{"user_id": insts[0]["user_id"], "item_id": insts[0]["item_id"]}],
        "context": {"device": insts[0]["device"], "price": insts[0]["price"], "dwell_ms": insts[0]["dwell_ms"]}});
    let (code, _, r) = post(&addr, "/v1/models/ctr:regress", &one);
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["result"][0].as_f64().unwrap() as f32).to_bits(),
        want[0].to_bits()
    );
    let (code, _, c) = post(&addr, "/v1/models/ctr:classify", &one);
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["result"][0][1][0], "1");

    // Errors: {"error": ...} naming the feature and the instance.
    let mut missing = insts[1].clone();
    missing.as_object_mut().unwrap().remove("price");
    let (code, _, e) = post(
        &addr,
        "/v1/models/ctr:predict",
        &json!({"instances": [insts[0], missing]}),
    );
    assert_eq!(code, 400);
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("instance 1") && msg.contains("`price`"),
        "{msg}"
    );
    let mut typed = insts[0].clone();
    typed["dwell_ms"] = json!("slow");
    let (code, _, e) = post(
        &addr,
        "/v1/models/ctr:predict",
        &json!({"instances": [typed]}),
    );
    assert_eq!(code, 400);
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("instance 0") && msg.contains("`dwell_ms`"),
        "{msg}"
    );
    for bad in [
        json!({}),
        json!({"instances": [], "inputs": {}}),
        json!([1]),
    ] {
        let (code, _, e) = post(&addr, "/v1/models/ctr:predict", &bad);
        assert_eq!(code, 400, "{bad}: {e}");
        assert!(e["error"].is_string());
    }
    let (code, _, e) = http(&addr, "POST", "/v1/models/ctr:predict", Some("{not json"));
    assert_eq!(code, 400, "{e}");
    let (code, _, e) = post(&addr, "/v1/models/ctr:explain", &json!({}));
    assert_eq!(code, 400, "{e}");
    let (code, _, e) = post(
        &addr,
        "/v1/models/ctr/labels/gold:predict",
        &json!({"instances": [insts[0]]}),
    );
    assert_eq!(code, 404, "{e}");
    let (code, _, e) = post(
        &addr,
        "/v1/models/other:predict",
        &json!({"instances": [insts[0]]}),
    );
    assert_eq!(code, 404, "{e}");

    // Hot reload: version 2 published and labelled stable while a client loops; no request
    // fails, and version 2 answers within a poll (plus its load).
    let body = json!({"instances": insts[..64].to_vec()});
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (stop, addr, body) = (stop.clone(), addr.clone(), body.clone());
        std::thread::spawn(move || {
            let (mut ok, mut versions) = (0u64, std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                let (code, v, p) = post(&addr, "/v1/models/ctr:predict", &body);
                assert_eq!(code, 200, "a request failed during the swap: {p}");
                versions.insert(v.unwrap());
                ok += 1;
            }
            (ok, versions)
        })
    };
    assert_eq!(publish(&repo, &model, "v2"), 2);
    repo.promote(2, Label::Stable, false).unwrap();
    let took = wait_for_version(&addr, &body, 2, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs_f64(POLL + 3.0),
        "swap took {took:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, versions) = looper.join().unwrap();
    assert!(ok > 0);
    assert!(versions.contains(&2), "{versions:?}");

    // Rollback (the CLI) takes effect within one poll.
    let out = Command::new(KILN)
        .args(["models", "rollback"])
        .arg(&repo_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_version(&addr, &body, 1, Duration::from_secs(10));

    // A tampered version is refused: never served, reported in the status.
    let v3 = publish(&repo, &model, "v3");
    let t = repo.version_dir(v3).join("transform.json");
    let mut text = std::fs::read_to_string(&t).unwrap();
    text.push(' ');
    std::fs::write(&t, text).unwrap();
    repo.promote(v3, Label::Canary, false).unwrap();
    let t0 = Instant::now();
    let status = loop {
        let (_, st) = get_json(&addr, "/v1/models/ctr");
        let s3 = st["model_version_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["version"].as_str() == Some(v3.to_string().as_str()))
            .cloned();
        if let Some(s) = s3.filter(|s| s["state"] == "END") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["status"]["error_code"], "DATA_LOSS", "{status}");
    assert!(
        status["status"]["error_message"]
            .as_str()
            .unwrap()
            .contains("transform.json"),
        "{status}"
    );
    let (code, _, e) = post(
        &addr,
        &format!("/v1/models/ctr/versions/{v3}:predict"),
        &body,
    );
    assert_eq!(code, 404, "{e}");
    let (code, _, e) = post(&addr, "/v1/models/ctr/labels/canary:predict", &body);
    assert_eq!(code, 404, "{e}");
    let (code, v, _) = post(&addr, "/v1/models/ctr:predict", &body);
    assert_eq!((code, v), (200, Some(1)));

    // Metrics: per model, version and label; load events; current versions.
    let (code, _, m) = http(&addr, "GET", "/metrics", None);
    assert_eq!(code, 200);
    for needle in [
        "kiln_serving_requests_total{model=\"ctr\",version=\"1\",label=\"stable\",method=\"predict\",code=\"200\"}",
        "kiln_serving_request_duration_seconds_bucket{model=\"ctr\",version=\"2\",label=\"stable\",method=\"predict\",le=\"+Inf\"}",
        "kiln_serving_request_errors_total{model=\"ctr\"",
        "kiln_serving_version_events_total{model=\"ctr\",version=\"2\",event=\"load\"} 1",
        "kiln_serving_version_events_total{model=\"ctr\",version=\"3\",event=\"load_failure\"} 1",
        "kiln_serving_version_available{model=\"ctr\",version=\"1\",label=\"stable\"} 1",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    common::prom::promtool_check("kiln serve's /metrics", &m);

    // Request size limit.
    let big = format!("{{\"instances\": [\"{}\"]}}", "x".repeat(2 << 20));
    let (code, _, e) = http(&addr, "POST", "/v1/models/ctr:predict", Some(&big));
    assert_eq!(code, 413);
    assert!(e.contains("\"error\""), "{e}");

    server.terminate();
}

#[test]
fn latest_policy_serves_the_newest_unrejected_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), 3_000);
    let cfg = write_config(dir.path(), 10, 1000);
    let model = dir.path().join("model");
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--json", "--model-dir"])
        .arg(&model)
        .output()
        .unwrap();
    json_of(&out);
    let repo_dir = dir.path().join("models/ctr");
    let repo = Repo::new(&repo_dir);
    for tag in ["a", "b", "c"] {
        publish(&repo, &model, tag);
    }
    let server = Server::start(&repo_dir, &["--policy", "latest:2"]);
    let (code, st) = get_json(&server.addr, "/v1/models/ctr");
    assert_eq!(code, 200);
    let versions: Vec<&str> = st["model_version_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["3", "2"], "{st}");
    // No label: the newest loaded version answers.
    let inst = json!({"instances": [{"user_id": 1, "item_id": 2, "device": "ios", "price": null, "dwell_ms": 5}]});
    let (code, v, p) = post(&server.addr, "/v1/models/ctr:predict", &inst);
    assert_eq!((code, v), (200, Some(3)), "{p}");
    let (code, v, _) = post(&server.addr, "/v1/models/ctr/versions/2:predict", &inst);
    assert_eq!((code, v), (200, Some(2)));
    let (code, _, _) = post(&server.addr, "/v1/models/ctr/versions/1:predict", &inst);
    assert_eq!(code, 404);
    // A fourth version: the window moves, version 2 is unloaded.
    publish(&repo, &model, "d");
    let t0 = Instant::now();
    loop {
        let (_, st) = get_json(&server.addr, "/v1/models/ctr");
        let state = |v: &str| {
            st["model_version_status"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["version"] == v)
                .map(|e| e["state"].as_str().unwrap().to_string())
        };
        if state("4").as_deref() == Some("AVAILABLE") {
            assert_eq!(state("2").as_deref(), Some("END"), "{st}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.terminate();
}

#[test]
fn batched_concurrent_requests_score_as_kiln_predict() {
    let dir = tempfile::tempdir().unwrap();
    // 3,000 rows: `kiln predict` scores ~150 held-out rows per dataset batch, batching sends
    // up to 64 per pass; both score in the trainer's fixed 512-row chunks, so they agree bit
    // for bit (docs/serving.md, bit-exactness).
    let data = write_dataset(dir.path(), 3_000);
    let cfg = write_config(dir.path(), 20, 1000);
    let model = dir.path().join("model");
    let out = Command::new(KILN)
        .args(["train", "--config"])
        .arg(&cfg)
        .args(["--data", &data, "--json", "--model-dir"])
        .arg(&model)
        .output()
        .unwrap();
    json_of(&out);
    let preds = dir.path().join("preds.csv");
    let out = Command::new(KILN)
        .arg("predict")
        .arg(&model)
        .args(["--input", &data, "--eval-split", "--json", "--output"])
        .arg(&preds)
        .output()
        .unwrap();
    json_of(&out);
    let expected =
        kiln_trainer::predictions::logits_by_row(&std::fs::read(&preds).unwrap(), "preds").unwrap();
    let repo_dir = dir.path().join("models/ctr");
    let repo = Repo::new(&repo_dir);
    publish(&repo, &model, "v1");
    repo.promote(1, Label::Stable, false).unwrap();
    let server = Server::start(
        &repo_dir,
        &["--batch-max-rows", "64", "--batch-wait-micros", "3000"],
    );
    let rows = instances(&data);
    let mut keys: Vec<(u32, u64)> = expected.keys().copied().collect();
    keys.sort();
    let keys = Arc::new(keys);
    let (rows, expected) = (Arc::new(rows), Arc::new(expected));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (addr, keys, rows, expected) = (
                server.addr.clone(),
                keys.clone(),
                rows.clone(),
                expected.clone(),
            );
            std::thread::spawn(move || {
                for round in 0..5 {
                    let chunk: Vec<(u32, u64)> = keys
                        .iter()
                        .skip((t * 5 + round) * 5)
                        .take(5)
                        .copied()
                        .collect();
                    let insts: Vec<Value> = chunk.iter().map(|k| rows[k].clone()).collect();
                    let (code, _, p) = post(
                        &addr,
                        "/v1/models/ctr:predict",
                        &json!({"instances": insts}),
                    );
                    assert_eq!(code, 200, "{p}");
                    for (i, k) in chunk.iter().enumerate() {
                        let g = p["predictions"][i].as_f64().unwrap() as f32;
                        let w = kiln_trainer::model::sigmoid(expected[k]);
                        assert_eq!(g.to_bits(), w.to_bits(), "row {k:?}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A bad request batched with good ones fails alone, naming its own instance.
    let (code, _, e) = post(
        &server.addr,
        "/v1/models/ctr:predict",
        &json!({"instances": [{"user_id": 1, "item_id": 2, "device": "ios", "dwell_ms": 3}]}),
    );
    assert_eq!(code, 400, "{e}");
    server.terminate();
}

#[test]
fn a_model_without_a_loadable_version_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("models/broken");
    std::fs::create_dir_all(repo_dir.join("1")).unwrap();
    std::fs::write(repo_dir.join("1/model.json"), "{}").unwrap();
    std::fs::write(repo_dir.join("1/SHA256SUMS"), "").unwrap();
    let server = Server::start(&dir.path().join("models"), &["--policy", "latest"]);
    assert_eq!(http(&server.addr, "GET", "/healthz", None).0, 200);
    let (code, _, body) = http(&server.addr, "GET", "/readyz", None);
    assert_eq!(code, 503);
    assert!(body.contains("broken"), "{body}");
    let (code, st) = get_json(&server.addr, "/v1/models/broken/versions/1");
    assert_eq!(code, 200);
    let s = &st["model_version_status"][0];
    assert_eq!(s["state"], "END", "{st}");
    assert_eq!(s["status"]["error_code"], "DATA_LOSS", "{st}");
    assert!(
        s["status"]["error_message"]
            .as_str()
            .unwrap()
            .contains("model.json"),
        "{st}"
    );
    let (code, _, e) = post(
        &server.addr,
        "/v1/models/broken:predict",
        &json!({"instances": [{}]}),
    );
    assert_eq!(code, 404, "{e}");
    let (code, _, e) = http(&server.addr, "GET", "/v2/other", None);
    assert_eq!(code, 404, "{e}");
    server.terminate();
}
