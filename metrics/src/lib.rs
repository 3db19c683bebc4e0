//! Prometheus' text exposition format (version 0.0.4), written by every Kiln process that
//! exports metrics: `kiln serve`'s and `kiln schedule`'s `/metrics`, and the node-exporter
//! textfiles of batch commands (`--metrics-textfile`).
//!
//! [`Exposition`] collects metric families (`# HELP` / `# TYPE` lines, then
//! `name{label="value"} value` samples) and checks Prometheus' naming rules and Kiln's
//! conventions as they are added: a `kiln_` prefix, base units (`_seconds`, `_bytes`), `_total`
//! for counters and only for counters. [`Exposition::write_atomic`] writes a textfile through
//! `PATH.tmp` and a rename, so the collector never reads a half-written file.
//!
//! Not the `prometheus-client` crate: it writes OpenMetrics (which node-exporter's textfile
//! collector does not read) and adds three crates for what is a few hundred lines here
//! (docs/observability.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that can go up and down (or a value of the last run).
    Gauge,
    /// A count of events; its name ends in `_total`.
    Counter,
    /// Cumulative buckets, a sum and a count (`_bucket{le=...}`, `_sum`, `_count` samples).
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample: the suffix of its name (`_bucket`, `_sum`, `_count` of a histogram; empty
/// otherwise), its labels and its value.
type Sample = (&'static str, Vec<(String, String)>, f64);

/// One metric family: name, help, type and its samples.
#[derive(Debug, Clone)]
struct Family {
    help: String,
    kind: Kind,
    samples: Vec<Sample>,
}

/// Metric families to render in the text exposition format, in name order.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    /// Adds a counter sample (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Counter, labels, value);
    }

    /// Adds a sample of family `name` (a gauge or a counter; histograms through
    /// [`histogram`](Self::histogram)). Names, label names and a family's help and type are
    /// fixed by Kiln's code, so a violation of the naming rules (or a family added twice with
    /// another type or help, or the same label set twice) is a bug and panics.
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)], value: f64) {
        assert!(
            kind != Kind::Histogram,
            "metric `{name}`: histograms are added with Exposition::histogram"
        );
        let labels = owned(labels);
        let family = self.family(name, help, kind, &labels);
        family.samples.push(("", labels, value));
    }

    /// Adds one histogram series: `buckets` are (upper bound, cumulative count) pairs in
    /// increasing order (the `+Inf` bucket, equal to `count`, is added), `sum` the sum of the
    /// observed values.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "metric `{name}`: buckets must increase and counts be cumulative"
        );
        let labels = owned(labels);
        let family = self.family(name, help, Kind::Histogram, &labels);
        let with_le = |le: String| {
            let mut l = labels.clone();
            l.push(("le".to_string(), le));
            l
        };
        for (bound, n) in buckets {
            family
                .samples
                .push(("_bucket", with_le(format_value(*bound)), *n as f64));
        }
        family
            .samples
            .push(("_bucket", with_le("+Inf".into()), count as f64));
        family.samples.push(("_sum", labels.clone(), sum));
        family.samples.push(("_count", labels, count as f64));
    }

    /// The family `name`, created on first use; checks the naming rules and that `labels` is
    /// a new label set of it.
    fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(String, String)],
    ) -> &mut Family {
        assert!(valid_metric_name(name), "invalid metric name `{name}`");
        assert!(
            name.starts_with("kiln_"),
            "metric `{name}` lacks the kiln_ prefix"
        );
        assert_eq!(
            kind == Kind::Counter,
            name.ends_with("_total"),
            "metric `{name}`: counters, and only counters, end in _total"
        );
        for (l, _) in labels {
            assert!(valid_label_name(l), "metric `{name}`: invalid label `{l}`");
            assert!(
                !(kind == Kind::Histogram && l == "le"),
                "metric `{name}`: `le` is the histogram's own label"
            );
        }
        let family = self
            .families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: help.to_string(),
                kind,
                samples: Vec::new(),
            });
        assert!(
            family.kind == kind && family.help == help,
            "metric `{name}` added with another type or help"
        );
        assert!(
            family
                .samples
                .iter()
                .all(|(suffix, l, _)| !matches!(*suffix, "" | "_count") || l.as_slice() != labels),
            "metric `{name}`: label set {labels:?} added twice"
        );
        family
    }

    /// The text exposition format (ends with a newline).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for (suffix, labels, value) in &f.samples {
                out.push_str(name);
                out.push_str(suffix);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }

    /// Writes [`render`](Self::render) to `PATH.tmp`, fsyncs it and renames it onto `path`;
    /// an error names `path`.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(std::io::Error::new(
                e.kind(),
                format!("writing metrics to {}: {e}", path.display()),
            ));
        }
        Ok(())
    }
}

/// `PATH.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    !s.starts_with("__")
        && c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// HELP text: `\` and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values: `\`, `"` and newline escaped.
fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Owned label pairs.
fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A sample value as Go's `ParseFloat` reads it: `NaN`, `+Inf`, `-Inf` or a decimal.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_escaped_samples() {
        let mut m = Exposition::new();
        m.gauge("kiln_b_seconds", "B\\ help\nline", &[], 1.5);
        m.counter(
            "kiln_a_rows_total",
            "Rows.",
            &[("source", "ev\"ents\\\n")],
            3.0,
        );
        m.counter("kiln_a_rows_total", "Rows.", &[("source", "x")], 0.0);
        m.gauge("kiln_c", "C.", &[("k", "v"), ("l", "w")], f64::NAN);
        m.gauge("kiln_d", "D.", &[], f64::INFINITY);
        m.gauge("kiln_e", "E.", &[], f64::NEG_INFINITY);
        m.gauge("kiln_f", "F.", &[], 1e-7);
        let want = "\
# HELP kiln_a_rows_total Rows.
# TYPE kiln_a_rows_total counter
kiln_a_rows_total{source=\"ev\\\"ents\\\\\\n\"} 3
kiln_a_rows_total{source=\"x\"} 0
# HELP kiln_b_seconds B\\\\ help\\nline
# TYPE kiln_b_seconds gauge
kiln_b_seconds 1.5
# HELP kiln_c C.
# TYPE kiln_c gauge
kiln_c{k=\"v\",l=\"w\"} NaN
# HELP kiln_d D.
# TYPE kiln_d gauge
kiln_d +Inf
# HELP kiln_e E.
# TYPE kiln_e gauge
kiln_e -Inf
# HELP kiln_f F.
# TYPE kiln_f gauge
kiln_f 0.0000001
";
        assert_eq!(m.render(), want);
    }

    #[test]
    #[should_panic(expected = "end in _total")]
    fn counters_end_in_total() {
        Exposition::new().counter("kiln_rows", "Rows.", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "end in _total")]
    fn gauges_do_not_end_in_total() {
        Exposition::new().gauge("kiln_rows_total", "Rows.", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "another type or help")]
    fn one_family_one_help() {
        let mut m = Exposition::new();
        m.gauge("kiln_x", "X.", &[("a", "1")], 1.0);
        m.gauge("kiln_x", "Y.", &[("a", "2")], 1.0);
    }

    #[test]
    #[should_panic(expected = "added twice")]
    fn no_duplicate_samples() {
        let mut m = Exposition::new();
        m.gauge("kiln_x", "X.", &[("a", "1")], 1.0);
        m.gauge("kiln_x", "X.", &[("a", "1")], 2.0);
    }

    #[test]
    fn names_and_labels_are_checked() {
        assert!(valid_metric_name("kiln_a:b_1"));
        assert!(!valid_metric_name("1kiln"));
        assert!(!valid_metric_name("kiln-a"));
        assert!(!valid_metric_name(""));
        assert!(valid_label_name("kiln_job"));
        assert!(!valid_label_name("__name"));
        assert!(!valid_label_name("a:b"));
        assert!(!valid_label_name(""));
    }

    #[test]
    fn writes_atomically_through_a_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.prom");
        std::fs::write(&p, "old").unwrap();
        let mut m = Exposition::new();
        m.gauge(
            "kiln_train_duration_seconds",
            "D.",
            &[("kiln_job", "ctr")],
            2.5,
        );
        m.write_atomic(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("kiln_train_duration_seconds{kiln_job=\"ctr\"} 2.5\n"),
            "{text}"
        );
        assert!(!dir.path().join("kiln.prom.tmp").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // An unwritable path fails, naming it, and leaves no temporary file.
        let bad = dir.path().join("missing/kiln.prom");
        let e = m.write_atomic(&bad).unwrap_err();
        assert!(e.to_string().contains("missing/kiln.prom"), "{e}");
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let mut m = Exposition::new();
        m.histogram(
            "kiln_x_seconds",
            "X.",
            &[("model", "ctr")],
            &[(0.001, 1), (0.01, 3)],
            0.02,
            4,
        );
        assert_eq!(
            m.render(),
            "# HELP kiln_x_seconds X.\n# TYPE kiln_x_seconds histogram\n\
             kiln_x_seconds_bucket{model=\"ctr\",le=\"0.001\"} 1\n\
             kiln_x_seconds_bucket{model=\"ctr\",le=\"0.01\"} 3\n\
             kiln_x_seconds_bucket{model=\"ctr\",le=\"+Inf\"} 4\n\
             kiln_x_seconds_sum{model=\"ctr\"} 0.02\n\
             kiln_x_seconds_count{model=\"ctr\"} 4\n"
        );
    }
}
