//! Prometheus text exposition (format 0.0.4) of the server's counters, latency histograms
//! and current versions, kept in a few mutex-guarded maps (requests are counted once each;
//! the lock is held for a map update).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_metrics::Exposition;

use crate::manager::Loaded;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What happened to a version (the `event` label of `kiln_serving_version_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VersionEvent {
    /// Verified, loaded and swapped in.
    Load,
    /// Failed to verify or load; never served.
    LoadFailure,
    /// No longer served (the version policy dropped it).
    Unload,
}

impl VersionEvent {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionEvent::Load => "load",
            VersionEvent::LoadFailure => "load_failure",
            VersionEvent::Unload => "unload",
        }
    }
}

/// Labels of one request series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    /// Model name.
    pub model: String,
    /// Version that answered (empty when none was resolved).
    pub version: String,
    /// Label the request came through (`stable`, `canary`, or empty).
    pub label: String,
    /// API method: `predict`, `classify`, `regress`, `status`, `metadata`.
    pub method: String,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct State {
    requests: BTreeMap<(Series, u16), u64>,
    latency: BTreeMap<Series, Histogram>,
    instances: BTreeMap<Series, u64>,
    events: BTreeMap<(String, u64, VersionEvent), u64>,
    current: BTreeMap<String, Vec<(u64, Vec<&'static str>)>>,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One finished request: its HTTP status, latency and instance count.
    pub fn request(&self, series: Series, status: u16, latency: Duration, instances: usize) {
        let secs = latency.as_secs_f64();
        self.with(|s| {
            *s.requests.entry((series.clone(), status)).or_default() += 1;
            *s.instances.entry(series.clone()).or_default() += instances as u64;
            let h = s.latency.entry(series).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        });
    }

    /// A load, unload or load failure of a version.
    pub fn event(&self, model: &str, version: u64, kind: VersionEvent) {
        self.with(|s| {
            *s.events
                .entry((model.to_string(), version, kind))
                .or_default() += 1
        });
    }

    /// The versions now served by a model and their labels.
    pub fn set_current(
        &self,
        model: &str,
        loaded: &BTreeMap<u64, Arc<Loaded>>,
        labels: &BTreeMap<&'static str, u64>,
    ) {
        let cur = loaded
            .keys()
            .map(|v| {
                let ls = labels
                    .iter()
                    .filter(|(_, lv)| *lv == v)
                    .map(|(l, _)| *l)
                    .collect();
                (*v, ls)
            })
            .collect();
        self.with(|s| s.current.insert(model.to_string(), cur));
    }

    /// Prometheus text (through `kiln-metrics`' [`Exposition`], which checks the names).
    pub fn render(&self) -> String {
        let s = self.with(|s| {
            (
                s.requests.clone(),
                s.latency.clone(),
                s.instances.clone(),
                s.events.clone(),
                s.current.clone(),
            )
        });
        let (requests, latency, instances, events, current) = s;
        let mut m = Exposition::new();
        let lbl = |x: &Series| -> [(&'static str, String); 4] {
            [
                ("model", x.model.clone()),
                ("version", x.version.clone()),
                ("label", x.label.clone()),
                ("method", x.method.clone()),
            ]
        };
        for ((x, code), n) in &requests {
            let mut l = lbl(x).to_vec();
            l.push(("code", code.to_string()));
            m.counter(
                "kiln_serving_requests_total",
                "Requests by model, version, label, method and HTTP status.",
                &borrow(&l),
                *n as f64,
            );
        }
        let mut errors: BTreeMap<&Series, u64> = BTreeMap::new();
        for ((x, code), n) in &requests {
            if *code >= 400 {
                *errors.entry(x).or_default() += n;
            }
        }
        for (x, n) in errors {
            m.counter(
                "kiln_serving_request_errors_total",
                "Requests answered with an error status.",
                &borrow(&lbl(x)),
                n as f64,
            );
        }
        for (x, n) in &instances {
            m.counter(
                "kiln_serving_instances_total",
                "Instances (rows) scored.",
                &borrow(&lbl(x)),
                *n as f64,
            );
        }
        for (x, h) in &latency {
            let buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().zip(h.counts).collect();
            m.histogram(
                "kiln_serving_request_duration_seconds",
                "Request latency.",
                &borrow(&lbl(x)),
                &buckets,
                h.sum,
                h.count,
            );
        }
        for ((model, v, kind), n) in &events {
            m.counter(
                "kiln_serving_version_events_total",
                "Version loads, unloads and load failures.",
                &[
                    ("model", model),
                    ("version", &v.to_string()),
                    ("event", kind.as_str()),
                ],
                *n as f64,
            );
        }
        for (model, vs) in &current {
            for (v, labels) in vs {
                m.gauge(
                    "kiln_serving_version_available",
                    "Versions being served (1), with their labels.",
                    &[
                        ("model", model),
                        ("version", &v.to_string()),
                        ("label", &labels.join(",")),
                    ],
                    1.0,
                );
            }
        }
        m.render()
    }
}

/// `(name, value)` pairs borrowed for [`Exposition`]'s methods.
fn borrow<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new();
        let x = Series {
            model: "ctr".into(),
            version: "2".into(),
            label: "stable".into(),
            method: "predict".into(),
        };
        m.request(x.clone(), 200, Duration::from_micros(300), 64);
        m.request(x, 400, Duration::from_millis(20), 0);
        m.event("ctr", 2, VersionEvent::Load);
        let t = m.render();
        assert!(t.contains("kiln_serving_requests_total{model=\"ctr\",version=\"2\",label=\"stable\",method=\"predict\",code=\"200\"} 1"), "{t}");
        assert!(t.contains("kiln_serving_request_errors_total{model=\"ctr\",version=\"2\",label=\"stable\",method=\"predict\"} 1"), "{t}");
        assert!(t.contains("le=\"0.0005\"} 1"), "{t}");
        assert!(t.contains("le=\"0.025\"} 2"), "{t}");
        assert!(t.contains("kiln_serving_instances_total{model=\"ctr\",version=\"2\",label=\"stable\",method=\"predict\"} 64"), "{t}");
        assert!(
            t.contains(
                "kiln_serving_version_events_total{model=\"ctr\",version=\"2\",event=\"load\"} 1"
            ),
            "{t}"
        );
    }
}
