//! The pipeline and the server together, end to end: `kiln run` publishes version 1, a
//! running `kiln serve SPEC` answers with it; the next day's run publishes version 2, served
//! within one poll while a client loops without a single failed request; `kiln models
//! rollback` brings version 1 back within one poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::pipeline::{gen_events_seeded, write_spec};
use common::serving::{POLL_SECONDS, Server, instances, request};

const PREDICT: &str = "/v1/models/daily_ctr:predict";

/// What the looping client saw: the status code and the version that answered.
type Answer = (u16, Option<u64>);

fn run(spec: &str, date: &str) -> Value {
    let o = common::kiln(&["run", spec, "--date", date, "--json"]);
    assert!(
        o.status.success(),
        "kiln run {date}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Waits until `addr` serves `want` by default; returns how long it took.
fn wait_for(addr: &str, body: &Value, want: u64, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (code, v, _) = request(addr, "POST", PREDICT, Some(body));
        if code == 200 && v == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "version {want} not served within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pipeline_publishes_and_the_running_server_swaps_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gen_events_seeded(d, 7);
    let spec = write_spec(
        d,
        20,
        "0.01",
        "keep_versions = 5\n[pipeline.gate]\nrules = [\"auc >= 0.0\"]\n",
    );
    let spec = spec.to_str().unwrap();
    let first = run(spec, "2026-11-19");
    assert_eq!(first["model_version"], 1, "{first}");

    let server = Server::start(spec, &d.join("cache"));
    let data = d.join("out/daily_ctr/examples/dt=2026-11-19");
    let body = json!({"instances": instances(data.to_str().unwrap(), 16)});
    let (code, v, preds) = request(&server.addr, "POST", PREDICT, Some(&body));
    assert_eq!((code, v), (200, Some(1)), "{preds}");
    assert_eq!(preds["predictions"].as_array().unwrap().len(), 16);

    // A client loops while the next day's run trains and publishes version 2.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let client = {
        let (stop, seen, addr, body) = (
            stop.clone(),
            seen.clone(),
            server.addr.clone(),
            body.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (code, v, _) = request(&addr, "POST", PREDICT, Some(&body));
                seen.lock().unwrap().push((code, v));
            }
        })
    };
    let second = run(spec, "2026-11-20");
    assert_eq!(second["model_version"], 2, "{second}");
    assert_eq!(second["status"], "success");
    let poll = Duration::from_secs_f64(POLL_SECONDS);
    let took = wait_for(&server.addr, &body, 2, poll + Duration::from_secs(10));
    eprintln!("version 2 served {took:?} after `kiln run` returned");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 20, "{} requests", seen.len());
    assert!(
        seen.iter().all(|(code, _)| *code == 200),
        "failed requests during the swap: {:?}",
        seen.iter().filter(|(c, _)| *c != 200).collect::<Vec<_>>()
    );
    let versions: Vec<u64> = seen.iter().map(|(_, v)| v.unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "never back to 1");
    assert_eq!((versions[0], *versions.last().unwrap()), (1, 2));

    // Rollback through the CLI: version 1 again within a poll.
    let repo = d.join("models/daily_ctr");
    let out = common::kiln_ok(&["models", "rollback", repo.to_str().unwrap()]);
    assert!(out.contains("stable 2 -> 1"), "{out}");
    wait_for(&server.addr, &body, 1, poll + Duration::from_secs(10));
    let (_, _, back) = request(&server.addr, "POST", PREDICT, Some(&body));
    assert_eq!(back, preds, "version 1 predicts as before");
}
