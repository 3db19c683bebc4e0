//! `kiln bench features --peers PYTHON`: the example job run by Kiln (Parquet output), DuckDB
//! and Polars (bench/peers/duckdb_ctr.py, bench/peers/polars_ctr.py) on the same generated
//! events. Each engine runs as a child process measured the same way: wall time from spawn to
//! exit, and peak RSS as `wait4`'s `ru_maxrss` of the child (its largest process, the child
//! itself or a descendant it waited for). Before timing, each engine runs once and the peers'
//! examples tables are checked equal to Kiln's row for row (bench/peers/check_equal.py); the
//! timed runs are then interleaved (Kiln, DuckDB, Polars, Kiln, ...), `--repeat` rounds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// The engines compared, in the order each round runs them.
pub const ENGINES: [&str; 3] = ["kiln", "duckdb", "polars"];

/// What one `kiln bench features --peers` run needs.
pub struct PeerBench<'a> {
    /// The `kiln` binary.
    pub exe: &'a Path,
    /// A Python with duckdb, polars and pyarrow.
    pub python: &'a Path,
    /// Directory of the peer scripts (bench/peers of this source tree).
    pub scripts: PathBuf,
    /// The generated events (`dt=YYYY-MM-DD/*.parquet`).
    pub events: &'a Path,
    /// The example job with Parquet output only (job-parquet.toml).
    pub spec: &'a Path,
    /// Working directory: outputs go to `peers/<engine>` under it.
    pub work: &'a Path,
    /// The run date.
    pub date: &'a str,
    /// Generated events (for the report).
    pub rows: u64,
    /// Timed rounds.
    pub repeat: usize,
    /// Print one JSON object instead of text.
    pub json: bool,
}

/// One measured child process.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Wall time from spawn to exit, seconds.
    pub seconds: f64,
    /// `ru_maxrss` of the child as `wait4` reports it, bytes.
    pub peak_rss_bytes: u64,
    /// Its standard output.
    pub stdout: Vec<u8>,
}

/// Runs `cmd` to its end; fails (with its stderr) when it exits unsuccessfully.
pub fn measure(cmd: &mut Command) -> anyhow::Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut out = child.stdout.take().context("child stdout")?;
    let mut err = child.stderr.take().context("child stderr")?;
    let out_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).map(|_| b)
    });
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).map(|_| b)
    });
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our unwaited child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let seconds = t0.elapsed().as_secs_f64();
    if waited != pid {
        bail!("wait4 on {cmd:?}: {}", std::io::Error::last_os_error());
    }
    let stdout = out_thread.join().expect("stdout reader")?;
    let stderr = err_thread.join().expect("stderr reader")?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{cmd:?} failed (wait status {status}): {}",
            String::from_utf8_lossy(&stderr)
        );
    }
    // Linux reports ru_maxrss in KiB, macOS in bytes.
    let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
    Ok(Measured {
        seconds,
        peak_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * unit,
        stdout,
    })
}

impl PeerBench<'_> {
    /// The output directory of `engine`.
    fn out_dir(&self, engine: &str) -> PathBuf {
        self.work.join("peers").join(engine)
    }

    /// The command that runs the job with `engine`.
    fn command(&self, engine: &str) -> Command {
        let out = self.out_dir(engine);
        if engine == "kiln" {
            let mut c = Command::new(self.exe);
            c.arg("features")
                .arg(self.spec)
                .args(["--date", self.date, "--json", "--source"])
                .arg(format!("events={}", self.events.display()))
                .arg("--out")
                .arg(out)
                .env("RUST_LOG", "warn");
            c
        } else {
            let mut c = Command::new(self.python);
            c.arg(self.scripts.join(format!("{engine}_ctr.py")))
                .arg(self.events)
                .args(["--date", self.date, "--out"])
                .arg(out);
            c
        }
    }

    /// Runs every engine once and checks the peers' examples equal to Kiln's; returns the
    /// checker's reports and the engines' versions (in [`ENGINES`] order).
    fn check(&self) -> anyhow::Result<(Vec<serde_json::Value>, Vec<String>)> {
        let mut versions = Vec::new();
        for engine in ENGINES {
            eprintln!("kiln bench features --peers: {engine}, untimed run for the equality check");
            let m = measure(&mut self.command(engine))?;
            let v: serde_json::Value = serde_json::from_slice(&m.stdout)
                .with_context(|| format!("{engine}: its JSON report"))?;
            let version = if engine == "kiln" {
                env!("CARGO_PKG_VERSION").to_string()
            } else {
                v["version"].as_str().unwrap_or("?").to_string()
            };
            versions.push(version);
        }
        let mut reports = Vec::new();
        for engine in &ENGINES[1..] {
            let out = Command::new(self.python)
                .arg(self.scripts.join("check_equal.py"))
                .arg(self.out_dir("kiln").join("examples"))
                .arg(self.out_dir(engine).join("examples.parquet"))
                .args(["--name", engine])
                .output()
                .context("running check_equal.py")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "{engine}'s examples differ from Kiln's: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            reports.push(
                serde_json::from_str(stdout.trim())
                    .with_context(|| format!("check_equal.py ({engine}): its JSON"))?,
            );
        }
        Ok((reports, versions))
    }

    /// The check, then `repeat` interleaved rounds; prints the figures.
    pub fn run(&self) -> anyhow::Result<()> {
        if self.repeat == 0 {
            bail!("--repeat: give 1 or more");
        }
        let (checks, versions) = self.check()?;
        let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); ENGINES.len()];
        for round in 0..self.repeat {
            for (i, engine) in ENGINES.iter().enumerate() {
                eprintln!(
                    "kiln bench features --peers: round {}/{}, {engine}",
                    round + 1,
                    self.repeat
                );
                runs[i].push(measure(&mut self.command(engine))?);
            }
        }
        let stats: Vec<serde_json::Value> = ENGINES
            .iter()
            .zip(&runs)
            .zip(&versions)
            .map(|((engine, r), version)| {
                let mut secs: Vec<f64> = r.iter().map(|m| m.seconds).collect();
                secs.sort_by(f64::total_cmp);
                serde_json::json!({
                    "engine": engine,
                    "version": version,
                    "best_seconds": secs[0],
                    "median_seconds": secs[secs.len() / 2],
                    "peak_rss_bytes": r.iter().map(|m| m.peak_rss_bytes).max().unwrap_or(0),
                })
            })
            .collect();
        let f = |i: usize, k: &str| stats[i][k].as_f64().unwrap_or(f64::NAN);
        let ratios: Vec<serde_json::Value> = (1..ENGINES.len())
            .map(|i| {
                serde_json::json!({
                    "kiln_over": ENGINES[i],
                    "best_seconds": f(0, "best_seconds") / f(i, "best_seconds"),
                    "median_seconds": f(0, "median_seconds") / f(i, "median_seconds"),
                    "peak_rss": f(0, "peak_rss_bytes") / f(i, "peak_rss_bytes"),
                })
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "input_rows": self.rows, "date": self.date, "cores": cores,
                    "repeat": self.repeat, "equality": checks, "engines": stats,
                    "ratios": ratios,
                })
            );
            return Ok(());
        }
        println!(
            "example job on {} events (9 days), run date {}, {cores} cores; each engine a child \
             process, {} interleaved round(s), peak RSS = wait4 ru_maxrss",
            self.rows, self.date, self.repeat
        );
        for c in &checks {
            println!(
                "  equal: {} examples = kiln's, {} rows x {} columns (floats to {} relative)",
                c["peer"].as_str().unwrap_or("?"),
                c["rows_kiln"],
                c["columns"],
                c["rel_tol"]
            );
        }
        for s in &stats {
            let label = format!(
                "{} {}",
                s["engine"].as_str().unwrap_or("?"),
                s["version"].as_str().unwrap_or("?")
            );
            println!(
                "  {label:<16} {:>8.2} s best ({:.2} median)  peak RSS {}",
                s["best_seconds"].as_f64().unwrap_or(0.0),
                s["median_seconds"].as_f64().unwrap_or(0.0),
                super::human_bytes(s["peak_rss_bytes"].as_u64().unwrap_or(0))
            );
        }
        for r in &ratios {
            println!(
                "  kiln/{:<7} wall time {:.2}x best ({:.2}x median), peak RSS {:.2}x",
                r["kiln_over"].as_str().unwrap_or("?"),
                r["best_seconds"].as_f64().unwrap_or(f64::NAN),
                r["median_seconds"].as_f64().unwrap_or(f64::NAN),
                r["peak_rss"].as_f64().unwrap_or(f64::NAN)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_reports_the_childs_time_and_peak_rss() {
        let m = measure(Command::new("sh").args(["-c", "echo hi; sleep 0.1"])).unwrap();
        assert_eq!(m.stdout, b"hi\n");
        assert!(m.seconds >= 0.1, "{}", m.seconds);
        assert!(m.peak_rss_bytes > 0);
        let e = measure(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("oops"), "{e}");
    }
}
