//! Child processes of the pipeline: tasks run as `kiln` subcommands of the same binary with
//! stdout/stderr captured to per-attempt files, a real timeout (the child is killed), and
//! death with the parent (so `kill -9` of `kiln run` leaves no orphan writing files).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Makes the child receive SIGKILL when the thread that spawned it (this process's main
/// thread, for the pipeline) dies, including on `kill -9`.
pub fn die_with_parent(cmd: &mut Command) {
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
    /// It ran longer than the timeout and was killed.
    #[error("timed out after {0:.0} s (killed); log: {1}")]
    Timeout(f64, String),
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

/// Runs `exe args` with stdout to `<log_base>.out` and stderr to `<log_base>.log`, killing
/// it after `timeout`; `tick(elapsed, stderr log)` is called about once a second while it
/// runs (progress display). Returns the captured stdout on success.
pub fn run_logged(
    exe: &Path,
    args: &[String],
    log_base: &Path,
    timeout: Option<Duration>,
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
        .stderr(Stdio::from(err));
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
            let _ = child.kill();
            let _ = child.wait();
            return Err(
                ChildError::Timeout(t.as_secs_f64(), log_path.display().to_string()).into(),
            );
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
            None,
        )
        .unwrap_err();
        let e = e.to_string();
        assert!(e.contains("exit status: 3") && e.contains("boom"), "{e}");
    }
}
