//! End-to-end tests of `kiln features` on the example job and on bad input.

mod common;

use std::path::Path;

use common::reference;
use kiln_connectors::dataset::{Dataset, OpenOptions, ShardFormat};

const DATE: &str = "2026-11-20";
/// 2026-11-20T00:00:00Z in microseconds.
const D0_US: i64 = 1_795_132_800_000_000;

fn file_url(p: &Path) -> String {
    format!("file://{}", std::path::absolute(p).unwrap().display())
}

fn run_example(events: &Path, out: &Path) -> serde_json::Value {
    let stdout = common::kiln_ok(&[
        "features",
        common::example_spec().to_str().unwrap(),
        "--date",
        DATE,
        "--source",
        &format!("events={}", events.display()),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

#[test]
fn example_job_matches_the_reference_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 150_000, 7);

    let out1 = dir.path().join("out1");
    let report = run_example(&events, &out1);
    let dataset = format!("{}/examples/", file_url(&out1));
    assert_eq!(report["outputs"][0]["location"], dataset);

    // Every value, recomputed from the raw events by the reference implementation.
    let expected = reference::examples(&reference::read_events(&events), D0_US);
    assert!(expected.len() > 1000, "enough examples: {}", expected.len());
    let positives = expected
        .values()
        .filter(|r| r[28] == reference::Value::Int(1))
        .count();
    assert!(positives > 10, "some positive labels: {positives}");
    let from_parquet =
        reference::rows_from_batches(&common::read_dataset(&dataset, ShardFormat::Parquet));
    reference::assert_same(&expected, &from_parquet);
    let from_tfrecord =
        reference::rows_from_batches(&common::read_dataset(&dataset, ShardFormat::TfRecord));
    assert_eq!(from_tfrecord.len(), expected.len());
    for (id, row) in &from_tfrecord {
        // TFRecord stores floats as float32; integers and text are exact.
        let want = &expected[id];
        for (c, (w, g)) in want.iter().zip(row).enumerate() {
            match (w, g) {
                (reference::Value::Float(a), reference::Value::Float(b)) => {
                    assert_eq!(*a as f32, *b as f32, "event {id} {}", reference::COLUMNS[c])
                }
                _ => assert_eq!(w, g, "event {id} {}", reference::COLUMNS[c]),
            }
        }
    }
    assert_eq!(report["outputs"][0]["rows"], expected.len() as u64);

    // Manifest: 16 shards per format, rows reconcile, shards ordered by event_id.
    let ds = Dataset::open_blocking(
        &dataset,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    let m = ds.manifest();
    assert_eq!(m.options.num_shards, 16);
    assert_eq!(m.total_rows, expected.len() as u64);
    assert_eq!(m.shards.len(), 32);
    let shard_sum: u64 = ds.shard_rows().iter().sum();
    assert_eq!(shard_sum, expected.len() as u64);
    for shard in 0..16 {
        let batches: Vec<_> = ds
            .read_shards(&[shard], Some(ShardFormat::Parquet), 4096)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "shard {shard} ordered by event_id"
        );
        for id in ids {
            assert_eq!(kiln_connectors::shard::shard_of_i64(id, 16), shard as u32);
        }
    }
    let lineage = &m.lineage;
    assert_eq!(lineage["date"], DATE);
    let files = lineage["inputs"][0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 9, "D-7 ..= D+1 day partitions, one file each");
    assert!(files.iter().all(|f| f["size"].as_u64().unwrap() > 0));
    assert_eq!(lineage["spec_sha256"].as_str().unwrap().len(), 64);

    // Same input, same bytes: a second run writes identical shards.
    let out2 = dir.path().join("out2");
    run_example(&events, &out2);
    let m2 = Dataset::open_blocking(
        &format!("{}/examples/", file_url(&out2)),
        OpenOptions::default(),
    )
    .unwrap()
    .manifest()
    .clone();
    let sums = |m: &kiln_connectors::dataset::Manifest| {
        m.shards
            .iter()
            .map(|s| (s.index, format!("{:?}", s.format), s.sha256.clone(), s.rows))
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(m), sums(&m2));
}

#[test]
fn rerun_replaces_output_and_removes_the_old_run() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 40_000, 3);
    let out = dir.path().join("out");
    let first = run_example(&events, &out);
    let second = run_example(&events, &out);
    assert_ne!(first["run_id"], second["run_id"]);
    let runs = || {
        let mut runs: Vec<String> = std::fs::read_dir(out.join("examples"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("run-"))
            .collect();
        runs.sort();
        runs
    };
    let run_dir = |r: &serde_json::Value| format!("run-{}", r["run_id"].as_str().unwrap());
    // The replaced run stays for readers still streaming the previous manifest; the next
    // commit removes it.
    assert_eq!(runs(), vec![run_dir(&first), run_dir(&second)]);
    let third = run_example(&events, &out);
    assert_eq!(runs(), vec![run_dir(&second), run_dir(&third)]);
    let ds = Dataset::open_blocking(
        &format!("{}/examples/", file_url(&out)),
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    assert_eq!(
        ds.manifest().total_rows,
        third["outputs"][0]["rows"].as_u64().unwrap()
    );
}

/// Two `kiln features` processes writing the same output at once, several rounds: every
/// committed manifest's shards exist with the recorded sizes and checksums, whoever wins.
#[test]
fn concurrent_runs_of_one_output_never_leave_a_broken_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 40_000, 5);
    let out = dir.path().join("out");
    let dataset = format!("{}/examples/", file_url(&out));
    let args = |out: &Path| -> Vec<String> {
        vec![
            "features".into(),
            common::example_spec().display().to_string(),
            "--date".into(),
            DATE.into(),
            "--source".into(),
            format!("events={}", events.display()),
            "--out".into(),
            out.display().to_string(),
            "--json".into(),
        ]
    };
    for round in 0..4 {
        let children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                    .args(args(&out))
                    .env("RUST_LOG", "warn")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut run_ids = Vec::new();
        for c in children {
            let o = c.wait_with_output().unwrap();
            if o.status.success() {
                let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                run_ids.push(r["run_id"].as_str().unwrap().to_string());
            } else {
                // The only acceptable failure: a newer run committed first, and this one
                // refuses to roll the dataset back.
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.contains("which started later, committed this dataset"),
                    "round {round}: {err}"
                );
            }
        }
        assert!(!run_ids.is_empty(), "round {round}: no run committed");
        // Opening with checksums reads every listed shard: present, complete, unchanged.
        let ds = Dataset::open_blocking(
            &dataset,
            OpenOptions {
                verify_checksums: true,
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let m = ds.manifest();
        assert!(
            run_ids.contains(&m.run_id),
            "round {round}: {} not in {run_ids:?}",
            m.run_id
        );
        for s in &m.shards {
            let len = std::fs::metadata(out.join("examples").join(&s.path))
                .unwrap_or_else(|e| panic!("round {round}: {}: {e}", s.path))
                .len();
            assert_eq!(len, s.bytes, "round {round}: {}", s.path);
        }
        let rows: usize = common::read_dataset(&dataset, ShardFormat::Parquet)
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows as u64, m.total_rows, "round {round}");
    }
}

#[test]
fn missing_day_partition_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    common::gen_events(&events, 20_000, 3);
    // 2026-11-21 needs dt=2026-11-22 (clicks after midnight), which does not exist.
    let out = common::kiln(&[
        "features",
        common::example_spec().to_str().unwrap(),
        "--date",
        "2026-11-21",
        "--source",
        &format!("events={}", events.display()),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("source `events`"), "{err}");
    assert!(
        err.contains(&format!("{}/dt=2026-11-22/", file_url(&events))),
        "{err}"
    );
    assert!(
        !dir.path()
            .join("out")
            .join("examples")
            .join("_manifest.json")
            .exists()
    );
}

const CSV_SPEC: &str = r#"
name = "csv_job"
on_bad_rows = "POLICY"
rejects_location = "rejects/dt={{ ds }}/"
[[sources]]
name = "clicks"
url = "input"
format = "csv"
partition_column = "dt"
days = [0, 0]
schema = ["id int64", "user string", "amount float64"]
[[features]]
name = "totals"
sql = "SELECT id, user, amount * 2 AS doubled FROM clicks"
[[outputs]]
statement = "totals"
location = "out/totals/dt={{ ds }}/"
key = "id"
shards = 2
formats = ["parquet"]
"#;

fn csv_job(dir: &Path, policy: &str) -> std::path::PathBuf {
    let day = dir.join("input").join("dt=2026-11-20");
    std::fs::create_dir_all(&day).unwrap();
    std::fs::write(
        day.join("part-0.csv"),
        "id,user,amount\n1,ann,1.5\n2,bob,2.0\n3,cat,oops\n4,dan\n5,eve,0.25\n",
    )
    .unwrap();
    let spec = dir.join("job.toml");
    std::fs::write(&spec, CSV_SPEC.replace("POLICY", policy)).unwrap();
    spec
}

#[test]
fn malformed_csv_row_fails_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv_job(dir.path(), "fail");
    let out = common::kiln(&["features", spec.to_str().unwrap(), "--date", DATE]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = format!("{}/input/dt=2026-11-20/part-0.csv", file_url(dir.path()));
    assert!(
        err.contains(&format!("{file}:4")) || err.contains(&format!("{file}:5")),
        "{err}"
    );
    assert!(
        !dir.path()
            .join("out/totals/dt=2026-11-20/_manifest.json")
            .exists()
    );
}

#[test]
fn rejected_rows_are_written_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv_job(dir.path(), "reject");
    let stdout = common::kiln_ok(&["features", spec.to_str().unwrap(), "--date", DATE, "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["bad_rows"]["clicks"]["rows_in"], 5);
    assert_eq!(report["bad_rows"]["clicks"]["rows_out"], 3);
    assert_eq!(report["bad_rows"]["clicks"]["rows_rejected"], 2);
    assert_eq!(report["outputs"][0]["rows"], 3);
    let rejects = std::fs::read_to_string(
        dir.path()
            .join("rejects/dt=2026-11-20/rejects-2026-11-20.jsonl"),
    )
    .unwrap();
    let lines: Vec<serde_json::Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["line"].as_u64(), lines[0]["raw"].as_str()),
        (Some(4), Some("3,cat,oops"))
    );
    assert_eq!(
        (lines[1]["line"].as_u64(), lines[1]["raw"].as_str()),
        (Some(5), Some("4,dan"))
    );
    // Human output prints the reconciliation.
    let human = common::kiln_ok(&["features", spec.to_str().unwrap(), "--date", DATE]);
    assert!(
        human.contains("clicks: rows_in 5 = rows_out 3 + rows_rejected 2"),
        "{human}"
    );
}

/// Two statements reading the same CSV source: its rows are counted and rejected once.
#[test]
fn a_source_read_by_two_statements_is_accounted_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv_job(dir.path(), "reject");
    let text = std::fs::read_to_string(&spec).unwrap();
    let text = text.replace(
        "[[outputs]]",
        "[[features]]\nname = \"ids\"\nsql = \"SELECT id FROM clicks\"\n\n[[outputs]]\nstatement = \"ids\"\nlocation = \"out/ids/dt={{ ds }}/\"\nkey = \"id\"\nshards = 1\nformats = [\"parquet\"]\n\n[[outputs]]",
    );
    std::fs::write(&spec, text).unwrap();
    let stdout = common::kiln_ok(&["features", spec.to_str().unwrap(), "--date", DATE, "--json"]);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let c = &report["bad_rows"]["clicks"];
    assert_eq!(
        (&c["rows_in"], &c["rows_out"], &c["rows_rejected"]),
        (&5.into(), &3.into(), &2.into())
    );
    assert_eq!(report["outputs"][0]["rows"], 3);
    assert_eq!(report["outputs"][1]["rows"], 3);
    let rejects = std::fs::read_to_string(
        dir.path()
            .join("rejects/dt=2026-11-20/rejects-2026-11-20.jsonl"),
    )
    .unwrap();
    assert_eq!(rejects.lines().count(), 2, "{rejects}");
}

/// The rejects file is written before any dataset commits: when it cannot be written,
/// nothing is committed.
#[test]
fn rejects_are_written_before_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv_job(dir.path(), "reject");
    // A file where the rejects directory should be: writing the rejects fails.
    std::fs::write(dir.path().join("rejects"), "not a directory").unwrap();
    let out = common::kiln(&["features", spec.to_str().unwrap(), "--date", DATE]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rejects"), "{err}");
    assert!(
        !dir.path()
            .join("out/totals/dt=2026-11-20/_manifest.json")
            .exists()
    );
}

/// A CSV file whose columns are in another order than the schema is refused, naming both.
#[test]
fn csv_header_must_match_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv_job(dir.path(), "reject");
    std::fs::write(
        dir.path().join("input/dt=2026-11-20/part-0.csv"),
        "user,id,amount\nann,1,1.5\n",
    )
    .unwrap();
    let out = common::kiln(&["features", spec.to_str().unwrap(), "--date", DATE]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "part-0.csv: CSV header [user, id, amount] does not match the schema [id, user, amount]"
        ),
        "{err}"
    );
}

#[test]
fn spec_mistakes_are_reported_before_reading_data() {
    let dir = tempfile::tempdir().unwrap();
    let spec = csv_job(dir.path(), "fail");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("amount * 2", "amout * 2")).unwrap();
    let out = common::kiln(&["features", spec.to_str().unwrap(), "--date", DATE]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&spec.display().to_string()), "{err}");
    assert!(
        err.contains("features `totals`") && err.contains("amout"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
    assert!(!dir.path().join("rejects").exists());
}

/// Issue 12.10: rows sharing a key (and null keys) are ordered by all their columns, so the
/// shards are byte-identical whatever order the input arrives in.
#[test]
fn equal_and_null_keys_give_identical_shards_whatever_the_input_order() {
    let rows: Vec<String> = (0..400)
        .map(|i| {
            let user = match i % 7 {
                0 => String::new(), // a null key
                k => format!("u{k}"),
            };
            format!("{i},{user},{}.25", (i * 37) % 101)
        })
        .collect();
    let run = |files: Vec<Vec<String>>| -> Vec<(u32, String, String, u64, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("input").join("dt=2026-11-20");
        std::fs::create_dir_all(&day).unwrap();
        for (i, f) in files.iter().enumerate() {
            std::fs::write(
                day.join(format!("part-{i}.csv")),
                format!("id,user,amount\n{}\n", f.join("\n")),
            )
            .unwrap();
        }
        let spec = dir.path().join("job.toml");
        let text = CSV_SPEC
            .replace("POLICY", "fail")
            .replace("SELECT id, user, amount * 2", "SELECT user, id, amount * 2")
            .replace("key = \"id\"", "key = \"user\"");
        std::fs::write(&spec, text).unwrap();
        common::kiln_ok(&["features", spec.to_str().unwrap(), "--date", DATE]);
        common::shard_sums(&file_url(&dir.path().join("out/totals/dt=2026-11-20")))
    };
    let forward = run(vec![rows.clone()]);
    let mut reversed = rows.clone();
    reversed.reverse();
    let split = run(vec![reversed[..150].to_vec(), reversed[150..].to_vec()]);
    assert_eq!(forward.iter().map(|s| s.3).sum::<u64>(), 400);
    assert_eq!(forward, split);
}
