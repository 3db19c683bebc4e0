//! Progress of long commands on stderr: `indicatif` bars on a terminal, plain log lines
//! otherwise (a log file, a pod's log, a pipeline task's attempt log), nothing with `--quiet`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_connectors::store::Transfer;
use kiln_engine::progress::{ProgressHook, WriteProgress};
use kiln_trainer::train::step_line;
use kiln_trainer::{StderrProgress, StepLog, TrainProgress};

/// `--quiet`, set once from the command line.
static QUIET: AtomicBool = AtomicBool::new(false);

/// How often a feature write's plain progress line is printed when stderr is not a terminal.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(10);

/// Sets `--quiet` (no progress output at all).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `--quiet`: nowhere.
    Off,
    /// Bars redrawn in place.
    Bars,
    /// A log line now and then.
    Lines,
}

fn output() -> Output {
    if quiet() {
        Output::Off
    } else if std::io::stderr().is_terminal() {
        Output::Bars
    } else {
        Output::Lines
    }
}

/// The progress reporter of `kiln features`' writes: one bar per output (shards written of
/// its shard count, rows, rows/s), or a line every ten seconds and one when the output is
/// written.
pub fn features() -> Option<ProgressHook> {
    match output() {
        Output::Off => None,
        Output::Bars => {
            let bars = FeatureBars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(BTreeMap::new()),
            };
            Some(ProgressHook::new(move |p| bars.report(p)))
        }
        Output::Lines => {
            let lines = FeatureLines {
                last: Mutex::new(BTreeMap::new()),
            };
            Some(ProgressHook::new(move |p| lines.report(p)))
        }
    }
}

/// Rows per second of the write so far.
fn rate(p: &WriteProgress) -> f64 {
    p.rows as f64 / p.elapsed.as_secs_f64().max(1e-3)
}

/// `N rows, S/T shards written, B MiB, R rows/s`.
fn write_summary(p: &WriteProgress) -> String {
    format!(
        "{} rows, {}/{} shards written, {:.1} MiB, {:.0} rows/s",
        p.rows,
        p.shards_written,
        p.shards,
        p.bytes as f64 / (1024.0 * 1024.0),
        rate(p)
    )
}

/// Feature write bars, one per output statement.
struct FeatureBars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl FeatureBars {
    fn report(&self, p: &WriteProgress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(p.statement.clone()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(u64::from(p.shards)));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} shards  {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(format!("features `{}`", p.statement));
            bar
        });
        bar.set_message(format!("{} rows  {:.0} rows/s", p.rows, rate(p)));
        bar.set_position(p.shards_written);
        if p.done {
            bar.finish_with_message(write_summary(p));
        }
    }
}

/// Feature write lines: one per output every [`PLAIN_LINE_EVERY`] and one at its end.
struct FeatureLines {
    /// Per statement: when its last line was printed.
    last: Mutex<BTreeMap<String, Instant>>,
}

impl FeatureLines {
    fn report(&self, p: &WriteProgress) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let printed = last.entry(p.statement.clone()).or_insert(now);
        if p.done || printed.elapsed() >= PLAIN_LINE_EVERY {
            *printed = now;
            let state = if p.done { "written" } else { "writing" };
            eprintln!(
                "kiln features: `{}` {state}: {}",
                p.statement,
                write_summary(p)
            );
        }
    }
}

/// The progress reporter of `kiln train` (rank 0): a bar of steps with loss, examples/s and
/// ETA, or the `step N/T  loss ...` lines of [`StderrProgress`].
pub fn train() -> Option<Arc<dyn TrainProgress>> {
    match output() {
        Output::Off => None,
        Output::Bars => Some(Arc::new(TrainBar {
            bar: Mutex::new(None),
        })),
        Output::Lines => Some(Arc::new(StderrProgress)),
    }
}

/// A training bar, created at the first step (when the step count is known).
struct TrainBar {
    bar: Mutex<Option<ProgressBar>>,
}

impl TrainProgress for TrainBar {
    fn line(&self, text: &str) {
        match &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn step(&self, step: u64, total: u64, log: Option<&StepLog>) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "train [{elapsed_precise}] {wide_bar} step {pos}/{len}  ETA {eta}  {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        bar.set_position(step);
        if let Some(l) = log {
            bar.set_message(format!(
                "loss {:.5}  {:.0} examples/s  lr {:.2e}",
                l.loss, l.examples_per_sec, l.lr
            ));
            // Keep the logged steps in the scrollback, as the plain output does.
            bar.println(step_line(step, total, l));
        }
        if step >= total {
            bar.finish();
        }
    }
}

/// The progress reporter of a directory upload or download (`what`: e.g. `uploading the
/// model to s3://...`): a bar of bytes with the rate and ETA, or a line every ten seconds and
/// one at the end.
pub fn transfer(what: String) -> Box<dyn Fn(&Transfer) + Send + Sync> {
    let started = Instant::now();
    match output() {
        Output::Off => Box::new(|_| {}),
        Output::Bars => {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes}  {bytes_per_sec}  ETA {eta}  {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(what);
            Box::new(move |t: &Transfer| {
                bar.set_length(t.bytes);
                bar.set_message(format!("{}/{} files", t.files_done, t.files));
                bar.set_position(t.bytes_done);
                if t.files_done == t.files {
                    bar.finish();
                }
            })
        }
        Output::Lines => {
            let printed = Mutex::new(started);
            Box::new(move |t: &Transfer| {
                let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
                let done = t.files_done == t.files;
                if done || printed.elapsed() >= PLAIN_LINE_EVERY {
                    *printed = Instant::now();
                    eprintln!(
                        "kiln: {what}: {}/{} files, {:.1}/{:.1} MiB in {:.1} s",
                        t.files_done,
                        t.files,
                        t.bytes_done as f64 / (1024.0 * 1024.0),
                        t.bytes as f64 / (1024.0 * 1024.0),
                        started.elapsed().as_secs_f64()
                    );
                }
            })
        }
    }
}
