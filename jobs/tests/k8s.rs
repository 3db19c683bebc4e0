//! The Kubernetes manifests against the CLI: every `kiln` command line in `deploy/k8s` and in
//! `kiln k8s train`'s output parses with kiln's own parser (`kiln k8s check-args`), shell
//! scripts included (run with a `kiln` shim), the spec copies and the CronJob's schedule
//! agree with `examples/daily_ctr/job.toml`, and the rendered training Job's command lines
//! and environment train as local processes: two ranks, one killed, both restarted, resumed
//! from the checkpoint to the same weights as an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::training::{write_config, write_dataset};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// `kiln k8s check-args -- ARGS`: panics with kiln's parse error naming `what`.
fn check_args(what: &str, args: &[String]) {
    let out = Command::new(kiln_bin())
        .args(["k8s", "check-args", "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every manifest file of the base and the overlays.
fn manifest_files() -> Vec<PathBuf> {
    let k8s = root().join("deploy/k8s");
    let mut dirs = vec![k8s.join("base")];
    for e in std::fs::read_dir(k8s.join("overlays")).unwrap() {
        dirs.push(e.unwrap().path());
    }
    let mut files = Vec::new();
    for d in dirs {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The container environment a file declares: `{ name: N, value: V }` as written, anything
/// from a Secret, ConfigMap or field reference as `placeholder-N`.
fn declared_env(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("- { name: ") {
            if let Some((n, v)) = rest.split_once(", value: ") {
                let v = v.trim_end_matches('}').trim().trim_matches('"');
                env.insert(n.to_string(), v.to_string());
            }
        } else if let Some(n) = t.strip_prefix("- name: ")
            && n.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            env.insert(n.to_string(), format!("placeholder-{n}"));
        }
    }
    env
}

/// Kubernetes' `$(VAR)` expansion in args, from `env` (unknown names stay as written).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// A directory with a `kiln` shim that appends `RANK LOCAL_RANK ARGS...` to `log`, then
/// checks the arguments with `kiln k8s check-args`, and a no-op `cp`.
fn shims(dir: &Path, log: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("shims");
    std::fs::create_dir_all(&bin).unwrap();
    let kiln = format!(
        "#!/bin/sh\necho \"${{RANK:-}} ${{LOCAL_RANK:-}} $*\" >> '{}'\nexec '{}' k8s check-args -- \"$@\"\n",
        log.display(),
        kiln_bin()
    );
    for (name, body) in [("kiln", kiln.as_str()), ("cp", "#!/bin/sh\nexit 0\n")] {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// Runs `script` with `sh -c`, the shims first on PATH and `env`; returns the shim's log.
fn run_script(what: &str, script: &str, env: &BTreeMap<String, String>, dir: &Path) -> Vec<String> {
    let log = dir.join(format!("{}.log", what.replace(['/', ' ', ':'], "_")));
    let _ = std::fs::remove_file(&log);
    let bin = shims(dir, &log);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .envs(env)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: the script failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_manifest_command_line_parses() {
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let env = declared_env(&text);
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            // Containers without `command` run the image's ENTRYPOINT, `kiln`; their `args`
            // are one-line JSON arrays.
            if let Some(json) = t.strip_prefix("args: [") {
                let args: Vec<String> = serde_json::from_str(&format!("[{json}")).unwrap();
                let args: Vec<String> = args.iter().map(|a| expand(a, &env)).collect();
                check_args(&format!("{name}:{}", i + 1), &args);
                checked.push(format!("{name}: kiln {}", args[0]));
            }
            // Shell containers: `command: ["/bin/sh", "-c"]`, `args:`, `- |` and the script.
            if t == r#"command: ["/bin/sh", "-c"]"# {
                let mut j = i + 1;
                while lines[j].trim().starts_with('#') {
                    j += 1;
                }
                assert_eq!(lines[j].trim(), "args:", "{name}:{}", j + 1);
                assert_eq!(lines[j + 1].trim(), "- |", "{name}:{}", j + 2);
                let indent = lines[j + 1].len() - lines[j + 1].trim_start().len();
                let script: Vec<&str> = lines[j + 2..]
                    .iter()
                    .take_while(|l| l.len() - l.trim_start().len() > indent)
                    .map(|l| l.trim())
                    .collect();
                let what = format!("{name}:{}", i + 1);
                let calls = run_script(&what, &script.join("\n"), &env, tmp.path());
                assert_eq!(calls.len(), 1, "{what}: one kiln call expected: {calls:?}");
                checked.push(format!("{name}: {}", calls[0]));
            }
        }
    }
    let all = checked.join("\n");
    for expected in [
        "kiln scheduler",
        "kiln executor",
        "kiln serve",
        " run /var/lib/kiln/",
    ] {
        assert!(all.contains(expected), "no `{expected}` among\n{all}");
    }
    // The pipeline's run date: the spec's offset (-2 days) in its time zone.
    let run = checked.iter().find(|c| c.contains(" run ")).unwrap();
    let date = run
        .split("--date ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    let days = (chrono::Utc::now().date_naive() - date).num_days();
    assert!((1..=3).contains(&days), "{run}");
    assert!(
        run.contains(&format!("--out s3://kiln-data/daily_ctr/dt={date}")),
        "{run}"
    );
}

#[test]
fn spec_copies_and_schedule_match_the_example() {
    let example = std::fs::read_to_string(root().join("examples/daily_ctr/job.toml")).unwrap();
    let base = std::fs::read_to_string(root().join("deploy/k8s/base/job.toml")).unwrap();
    assert!(
        base == example,
        "deploy/k8s/base/job.toml differs from examples/daily_ctr/job.toml: \
         cp examples/daily_ctr/job.toml deploy/k8s/base/job.toml"
    );
    let gpu = std::fs::read_to_string(root().join("deploy/k8s/overlays/gpu/job.toml")).unwrap();
    let extra: Vec<&str> = gpu
        .lines()
        .filter(|l| !example.lines().any(|e| e == *l))
        .collect();
    assert_eq!(extra.len(), 1, "gpu/job.toml: {extra:?}");
    assert!(extra[0].starts_with("device = \"cuda\""), "{extra:?}");
    assert_eq!(gpu.lines().count(), example.lines().count() + 1);
    let spec: toml::Table = toml::from_str(&gpu).unwrap();
    assert_eq!(spec["train"]["device"].as_str(), Some("cuda"));
    // gpu-multinode: the gpu spec plus train_on and the appended [pipeline.kubernetes].
    let multi_path = root().join("deploy/k8s/overlays/gpu-multinode/job.toml");
    let multi = std::fs::read_to_string(&multi_path).unwrap();
    let section = multi
        .find("\n\n# gpu-multinode overlay: the pipeline pod creates")
        .expect("gpu-multinode/job.toml: the [pipeline.kubernetes] section at the end");
    let inserted: Vec<&str> = multi[..section]
        .lines()
        .filter(|l| !gpu.lines().any(|e| e == *l))
        .collect();
    assert_eq!(inserted.len(), 1, "gpu-multinode/job.toml: {inserted:?}");
    assert!(
        inserted[0].starts_with("train_on = \"kubernetes\""),
        "{inserted:?}"
    );
    assert_eq!(
        multi[..section].lines().count(),
        gpu.trim_end_matches('\n').lines().count() + 1
    );
    // The pipeline reads it as training on the cluster, one GPU per pod.
    let loaded = kiln_engine::JobSpec::load(&multi_path).unwrap();
    let pipeline = kiln_pipeline::config::Pipeline::from_spec(&loaded).unwrap();
    assert_eq!(
        pipeline.config.train_on,
        kiln_pipeline::config::TrainOn::Kubernetes
    );
    let k = pipeline.config.kubernetes.unwrap();
    assert_eq!((k.workers, k.gpus_per_worker), (2, 1));
    // kiln loads it: the spec and its [train] (device included) parse.
    let gpu_spec = root().join("deploy/k8s/overlays/gpu/job.toml");
    let docs = render_train(&[
        gpu_spec.to_str().unwrap(),
        "--date",
        "2026-11-20",
        "--workers",
        "1",
    ]);
    assert_eq!(docs.len(), 2);

    // The CronJob fires when `kiln schedule` would, for the same date.
    let doc: toml::Table = toml::from_str(&example).unwrap();
    let sched = &doc["pipeline"]["schedule"];
    let cron =
        std::fs::read_to_string(root().join("deploy/k8s/base/pipeline-cronjob.yaml")).unwrap();
    let tz = sched["timezone"].as_str().unwrap();
    let offset = sched["date_offset_days"].as_integer().unwrap();
    for needle in [
        format!("schedule: \"{}\"", sched["cron"].as_str().unwrap()),
        format!("timeZone: \"{tz}\""),
        format!("{{ name: KILN_TIMEZONE, value: {tz} }}"),
        format!("{{ name: KILN_DATE_OFFSET_DAYS, value: \"{offset}\" }}"),
    ] {
        assert!(
            cron.contains(&needle),
            "pipeline-cronjob.yaml lacks `{needle}`"
        );
    }
}

/// The documents of `kiln k8s train ARGS` (JSON separated by `---` lines).
fn render_train(args: &[&str]) -> Vec<Value> {
    let out = Command::new(kiln_bin())
        .args(["k8s", "train"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn job_container(docs: &[Value]) -> &Value {
    let job = docs.iter().find(|d| d["kind"] == "Job").expect("a Job");
    &job["spec"]["template"]["spec"]["containers"][0]
}

/// The container's environment for completion index `index` (as the Job controller and
/// the kubelet would set it); `fieldRef`s to the completion index resolve to it.
fn pod_env(c: &Value, index: usize) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("JOB_COMPLETION_INDEX".to_string(), index.to_string());
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
            assert!(
                path.contains("batch.kubernetes.io/job-completion-index"),
                "{path}"
            );
            index.to_string()
        };
        env.insert(name, value);
    }
    env
}

#[test]
fn k8s_train_command_lines_parse() {
    let spec = root().join("examples/daily_ctr/job.toml");
    let spec = spec.to_str().unwrap();
    let docs = render_train(&[
        spec,
        "--date",
        "2026-11-20",
        "--workers",
        "4",
        "--gpus-per-worker",
        "1",
    ]);
    assert_eq!(docs.len(), 2);
    let c = job_container(&docs);
    let cmd: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
    assert_eq!(cmd[0], "kiln");
    check_args("kiln k8s train (1 GPU per worker)", &cmd[1..]);
    let env = pod_env(c, 3);
    assert_eq!(env["RANK"], "3");
    assert_eq!(env["WORLD_SIZE"], "4");
    assert_eq!(env["LOCAL_RANK"], "0");

    // 4 GPUs per pod: the pod of index 1 starts ranks 4..7 on GPUs 0..3.
    let docs = render_train(&[
        spec,
        "--date",
        "2026-11-20",
        "--workers",
        "2",
        "--gpus-per-worker",
        "4",
    ]);
    let c = job_container(&docs);
    let cmd: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
    assert_eq!(&cmd[..2], ["/bin/sh", "-c"]);
    let tmp = tempfile::tempdir().unwrap();
    let env = pod_env(c, 1);
    assert_eq!(env["WORLD_SIZE"], "8");
    let mut calls = run_script("k8s train 2x4", &cmd[2], &env, tmp.path());
    calls.sort();
    let ranks: Vec<&str> = calls.iter().map(|c| &c[..3]).collect();
    assert_eq!(ranks, ["4 0", "5 1", "6 2", "7 3"], "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.contains(" --resume ") && c.contains("--device cuda"))
    );

    // A spec the pods could not train with is refused before any manifest is printed.
    let example = std::fs::read_to_string(root().join("examples/daily_ctr/job.toml")).unwrap();
    let no_train = tmp.path().join("no_train.toml");
    std::fs::write(&no_train, &example[..example.find("\n[train]").unwrap()]).unwrap();
    let out = Command::new(kiln_bin())
        .args([
            "k8s",
            "train",
            no_train.to_str().unwrap(),
            "--date",
            "2026-11-20",
        ])
        .args(["--workers", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [train] section"), "{err}");
}

/// A spec for the fixture dataset: the example's sources and statements (unused: `--data`
/// points at the fixture) with the fixture's `[train]` table.
fn fixture_spec(dir: &Path, steps: u64, checkpoint_every: u64) -> PathBuf {
    let example = std::fs::read_to_string(root().join("examples/daily_ctr/job.toml")).unwrap();
    let head = &example[..example.find("\n[train]").expect("[train]")];
    let train = std::fs::read_to_string(write_config(dir, steps, checkpoint_every)).unwrap();
    let p = dir.join("job.toml");
    std::fs::write(&p, format!("{head}\n{train}")).unwrap();
    p
}

/// Starts the rendered Job's pods as local processes (index 0..W), with the ConfigMap's mount
/// path replaced by `spec` and rank 0's address by 127.0.0.1.
fn start_pods(docs: &[Value], spec: &Path, logs: &Path, attempt: &str) -> Vec<std::process::Child> {
    let c = job_container(docs);
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    let workers = job["spec"]["completions"].as_u64().unwrap() as usize;
    let cmd: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
    assert_eq!(cmd[0], "kiln");
    (0..workers)
        .map(|i| {
            let mut env = pod_env(c, i);
            env.insert("MASTER_ADDR".into(), "127.0.0.1".into());
            env.insert(
                "TMPDIR".into(),
                logs.join(format!("tmp-{attempt}-{i}"))
                    .display()
                    .to_string(),
            );
            std::fs::create_dir_all(&env["TMPDIR"]).unwrap();
            let args: Vec<String> = cmd[1..]
                .iter()
                .map(|a| a.replace("/etc/kiln/job.toml", spec.to_str().unwrap()))
                .collect();
            let log = std::fs::File::create(logs.join(format!("{attempt}-{i}.log"))).unwrap();
            let out = std::fs::File::create(logs.join(format!("{attempt}-{i}.json"))).unwrap();
            Command::new(kiln_bin())
                .args(&args)
                .envs(&env)
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap()
        })
        .collect()
}

fn wait_all(children: &mut [std::process::Child]) -> Vec<bool> {
    children
        .iter_mut()
        .map(|c| c.wait().unwrap().success())
        .collect()
}

fn checksum(logs: &Path, attempt: &str) -> Value {
    let text = std::fs::read_to_string(logs.join(format!("{attempt}-0.json"))).unwrap();
    let v: Value = serde_json::from_str(text.lines().last().expect("rank 0's JSON")).unwrap();
    v["param_checksum"].clone()
}

#[test]
fn rendered_job_trains_as_local_processes_and_resumes_after_a_lost_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = write_dataset(dir, 4000);
    let spec = fixture_spec(dir, 60, 5);
    let render = |model: &str| {
        let port = common::cluster::free_port().to_string();
        render_train(&[
            spec.to_str().unwrap(),
            "--date",
            "2026-11-20",
            "--workers",
            "2",
            "--data",
            &data,
            "--model-dir",
            &dir.join(model).display().to_string(),
            "--master-port",
            &port,
        ])
    };

    // Uninterrupted: both pods succeed.
    let docs = render("model-a");
    let mut pods = start_pods(&docs, &spec, dir, "a");
    assert_eq!(
        wait_all(&mut pods),
        [true, true],
        "logs in {}",
        dir.display()
    );
    let expected = checksum(dir, "a");

    // Rank 1 is lost after the first checkpoint: rank 0 fails too; the Job controller would
    // start both indexes again with the same command (`--resume`).
    let docs = render("model-b");
    let latest = dir.join("model-b/checkpoints/latest");
    let mut pods = start_pods(&docs, &spec, dir, "b1");
    let t0 = Instant::now();
    while !latest.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        assert!(
            pods[1].try_wait().unwrap().is_none(),
            "rank 1 ended before a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    pods[1].kill().unwrap();
    let ok = wait_all(&mut pods);
    assert_eq!(ok, [false, false], "both ranks fail after losing rank 1");
    let log0 = std::fs::read_to_string(dir.join("b1-0.log")).unwrap();
    assert!(log0.contains("lost rank 1"), "{log0}");
    let mut pods = start_pods(&docs, &spec, dir, "b2");
    assert_eq!(
        wait_all(&mut pods),
        [true, true],
        "logs in {}",
        dir.display()
    );
    let log = std::fs::read_to_string(dir.join("b2-0.log")).unwrap();
    assert!(log.to_lowercase().contains("resum"), "{log}");
    assert_eq!(
        checksum(dir, "b2"),
        expected,
        "resumed weights differ from uninterrupted"
    );
}
