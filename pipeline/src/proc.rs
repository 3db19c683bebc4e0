//! Child processes of the pipeline: tasks run as `kiln` subcommands of the same binary with
//! stdout/stderr captured to per-attempt files, a real timeout, and death with the parent (so
//! `kill -9` of `kiln run` leaves no orphan writing files; Linux only, where
//! `PR_SET_PDEATHSIG` exists).
//!
//! Each child leads its own process group, so a timeout reaches everything it started
//! (training workers included): SIGTERM to the group, a grace period (the trainer writes a
//! checkpoint on SIGTERM), then SIGKILL to the group.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The default grace between SIGTERM and SIGKILL when a task times out (`[pipeline]
/// term_grace_seconds` overrides it).
pub const TERM_GRACE: Duration = Duration::from_secs(30);

/// Makes the child receive SIGKILL when the thread that spawned it (this process's main
/// thread, for the pipeline) dies, including on `kill -9`. Linux only (`PR_SET_PDEATHSIG`);
/// elsewhere a no-op.
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Sends `sig` to every process of group `pgid` (ignoring "no such group").
fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Stops a timed-out child and its process group: SIGTERM, up to `grace` for it to exit,
/// then SIGKILL (to the group, so nothing it started survives). Returns whether it exited
/// within the grace period.
fn terminate_group(child: &mut Child, grace: Duration) -> bool {
    let pgid = child.id();
    signal_group(pgid, libc::SIGTERM);
    let start = Instant::now();
    let mut exited = false;
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever is left of the group (the leader, or workers it left behind) is killed.
    signal_group(pgid, libc::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
    exited
}

/// Progress callback: (elapsed, stderr log file).
pub type Tick<'a> = &'a dyn Fn(Duration, &Path);

/// What a finished child left behind.
#[derive(Debug)]
pub struct ChildResult {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout.
    pub stdout: String,
    /// The stderr log file.
    pub log_path: PathBuf,
}

/// Why a child did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// It ran longer than the timeout and was stopped (SIGTERM to its process group, then
    /// SIGKILL after the grace period).
    #[error(
        "timed out after {seconds:.0} s: sent SIGTERM to its process group, {}; log: {log}",
        if *exited_on_term { "and it exited within the grace period".to_string() } else { format!("then SIGKILL after {grace:.0} s") }
    )]
    Timeout {
        /// The timeout, seconds.
        seconds: f64,
        /// The grace period, seconds.
        grace: f64,
        /// Whether it exited on SIGTERM within the grace period.
        exited_on_term: bool,
        /// The log file.
        log: String,
    },
    /// It exited unsuccessfully.
    #[error("{status}; last log lines:\n{tail}\n(log: {log})")]
    Failed {
        /// Exit status.
        status: ExitStatus,
        /// The end of its stderr.
        tail: String,
        /// The log file.
        log: String,
    },
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `exe args` in its own process group with stdout to `<log_base>.out` and stderr to
/// `<log_base>.log`; after `timeout` the group gets SIGTERM, then SIGKILL `grace` later;
/// `tick(elapsed, stderr log)` is called about once a second while it runs (progress
/// display). Returns the captured stdout on success.
pub fn run_logged(
    exe: &Path,
    args: &[String],
    log_base: &Path,
    timeout: Option<Duration>,
    grace: Duration,
    tick: Option<Tick<'_>>,
) -> anyhow::Result<ChildResult> {
    if let Some(dir) = log_base.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let out_path = log_base.with_extension("out");
    let log_path = log_base.with_extension("log");
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    let mut err = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    {
        use std::io::Write;
        writeln!(err, "$ kiln {}", args.join(" "))?;
    }
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let start = Instant::now();
    let mut ticked = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Some(f) = tick
            && ticked.elapsed() >= Duration::from_secs(1)
        {
            ticked = Instant::now();
            f(start.elapsed(), &log_path);
        }
        if let Some(t) = timeout
            && start.elapsed() > t
        {
            let exited_on_term = terminate_group(&mut child, grace);
            return Err(ChildError::Timeout {
                seconds: t.as_secs_f64(),
                grace: grace.as_secs_f64(),
                exited_on_term,
                log: log_path.display().to_string(),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        return Err(ChildError::Failed {
            status,
            tail: tail(&log_path, 15),
            log: log_path.display().to_string(),
        }
        .into());
    }
    Ok(ChildResult {
        status,
        stdout,
        log_path,
    })
}

/// The last line of a child's stdout parsed as JSON (the `--json` result of a command).
pub fn json_result(r: &ChildResult) -> anyhow::Result<serde_json::Value> {
    let Some(line) = r
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
    else {
        bail!(
            "no JSON result on stdout (exit {}); log: {}",
            r.status,
            r.log_path.display()
        );
    };
    serde_json::from_str(line).with_context(|| format!("parsing the JSON result: {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_kills_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Path::new("/bin/sh");
        let r = run_logged(
            sh,
            &["-c".into(), "echo '{\"a\": 1}'; echo progress >&2".into()],
            &dir.path().join("t.1"),
            Some(Duration::from_secs(10)),
            TERM_GRACE,
            None,
        )
        .unwrap();
        assert_eq!(json_result(&r).unwrap()["a"], 1);
        assert!(
            std::fs::read_to_string(&r.log_path)
                .unwrap()
                .contains("progress")
        );

        let t = Instant::now();
        let e = run_logged(
            sh,
            &["-c".into(), "sleep 30".into()],
            &dir.path().join("t.2"),
            Some(Duration::from_millis(300)),
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("timed out after"), "{e}");

        let e = run_logged(
            sh,
            &["-c".into(), "echo boom >&2; exit 3".into()],
            &dir.path().join("t.3"),
            None,
            TERM_GRACE,
            None,
        )
        .unwrap_err();
        let e = e.to_string();
        assert!(e.contains("exit status: 3") && e.contains("boom"), "{e}");
    }

    /// A timeout reaches the whole process group: SIGTERM first (a handler may checkpoint and
    /// exit), and a grandchild does not survive.
    #[test]
    fn timeout_terminates_the_process_group_with_a_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Path::new("/bin/sh");
        let marker = dir.path().join("checkpointed");
        let pidfile = dir.path().join("grandchild.pid");
        // A child that starts a grandchild and checkpoints on SIGTERM.
        let script = format!(
            "trap 'echo saved > {m}; exit 0' TERM; sleep 1000 & echo $! > {p}; while :; do sleep 0.05; done",
            m = marker.display(),
            p = pidfile.display()
        );
        let t = Instant::now();
        let e = run_logged(
            sh,
            &["-c".into(), script],
            &dir.path().join("g.1"),
            Some(Duration::from_millis(500)),
            Duration::from_secs(10),
            None,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sent SIGTERM to its process group"), "{msg}");
        assert!(msg.contains("exited within the grace period"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "saved");
        let grandchild: i64 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while kiln_registry::process_alive(grandchild) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !kiln_registry::process_alive(grandchild),
            "grandchild {grandchild} survived the timeout"
        );

        // A child that ignores SIGTERM is killed after the grace period.
        let t = Instant::now();
        let e = run_logged(
            sh,
            &["-c".into(), "trap '' TERM; sleep 1000".into()],
            &dir.path().join("g.2"),
            Some(Duration::from_millis(300)),
            Duration::from_millis(700),
            None,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("then SIGKILL after 1 s"), "{msg}");
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
