//! Sharded datasets on the local filesystem: write, commit, read back (both formats), determinism,
//! reruns, refusal of uncommitted / inconsistent directories, and crash safety with a killed
//! writer process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::Int64Type;
use kiln_connectors::codec::example_round_trip;
use kiln_connectors::dataset::{self, ParquetCompression, write_dataset_blocking};
use kiln_connectors::manifest::MANIFEST_FILE;
use kiln_connectors::sample::{training_batch, training_schema};
use kiln_connectors::shard::shard_of_i64;
use kiln_connectors::store::{self, block_on};
use kiln_connectors::{
    Compression, Dataset, DatasetWriter, Error, OpenOptions, ShardFormat, ShardOptions,
};
use serde_json::json;

fn opts(n: u32) -> ShardOptions {
    ShardOptions {
        num_shards: n,
        formats: vec![ShardFormat::TfRecord, ShardFormat::Parquet],
        key_column: Some("event_id".into()),
        ..Default::default()
    }
}

fn input(batches: usize, rows: usize) -> Vec<RecordBatch> {
    (0..batches)
        .map(|b| training_batch(1_000_000 + (b * rows) as i64, rows, 42))
        .collect()
}

fn read_all(ds: &Dataset, format: ShardFormat) -> Vec<RecordBatch> {
    let idx: Vec<usize> = (0..ds.num_shards()).collect();
    ds.read_shards(&idx, Some(format), 500)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn sorted_by_event_id(batches: &[RecordBatch]) -> RecordBatch {
    let all = concat_batches(&training_schema(), batches).unwrap();
    let idx = sort_to_indices(all.column(0), None, None).unwrap();
    take_record_batch(&all, &idx).unwrap()
}

fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn write_and_read_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = tmp.path().join("dt=2026-11-21");
    let url = loc.to_str().unwrap();
    let batches = input(3, 1000);
    let m = write_dataset_blocking(
        url,
        training_schema(),
        &batches,
        opts(4),
        json!({"source": "test"}),
    )
    .unwrap();
    assert_eq!(m.total_rows, 3000);
    assert_eq!(m.shards.len(), 8);
    assert!(loc.join("_SUCCESS").exists());
    assert!(
        m.shards[0]
            .path
            .ends_with("part-00000-of-00004.tfrecord.gz"),
        "{}",
        m.shards[0].path
    );
    assert!(m.shards[1].path.ends_with("part-00000-of-00004.parquet"));

    let ds = Dataset::open_blocking(
        url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    assert_eq!(ds.schema(), training_schema());
    let rows = ds.shard_rows();
    assert_eq!(rows.iter().sum::<u64>(), 3000);
    assert!(rows.iter().all(|r| *r > 500), "{rows:?}");

    // Each shard: TFRecord and Parquet batches are equal, and rows hash to that shard.
    #[allow(clippy::needless_range_loop)]
    for i in 0..4 {
        let tf: Vec<_> = ds
            .read_shards(&[i], Some(ShardFormat::TfRecord), 300)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let pq: Vec<_> = ds
            .read_shards(&[i], Some(ShardFormat::Parquet), 300)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let tf = concat_batches(&training_schema(), &tf).unwrap();
        let pq = concat_batches(&training_schema(), &pq).unwrap();
        assert_eq!(tf.num_rows() as u64, rows[i]);
        // TFRecord carries Float64 as f32 (see the mapping table); everything else is exact.
        assert_eq!(tf, example_round_trip(&pq).unwrap(), "shard {i}");
        let ids = tf.column(0).as_primitive::<Int64Type>();
        assert!(
            ids.values()
                .iter()
                .all(|id| shard_of_i64(*id, 4) == i as u32)
        );
        // Order inside a shard = input order.
        assert!(ids.values().windows(2).all(|w| w[0] < w[1]));
        let s = &ds.manifest().shards_of(ShardFormat::TfRecord)[i];
        assert_eq!(s.key_min, Some(json!(ids.values()[0])));
        assert_eq!(s.key_max, Some(json!(ids.values()[ids.len() - 1])));
    }
    // All rows come back: Parquet exactly, TFRecord with Float64 rounded through f32.
    let want = sorted_by_event_id(&batches);
    let got_pq = sorted_by_event_id(&read_all(&ds, ShardFormat::Parquet));
    let got_tf = sorted_by_event_id(&read_all(&ds, ShardFormat::TfRecord));
    assert_eq!(got_pq.num_rows(), 3000);
    assert_eq!(got_tf, example_round_trip(&got_pq).unwrap());
    // Parquet keeps every value exactly.
    assert_eq!(want, got_pq);
}

#[test]
fn identical_input_gives_identical_bytes_and_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let batches = input(2, 700);
    let mut manifests = Vec::new();
    for name in ["a", "b"] {
        let url = tmp.path().join(name);
        let m = write_dataset_blocking(
            url.to_str().unwrap(),
            training_schema(),
            &batches,
            opts(3),
            json!({"run": name}),
        )
        .unwrap();
        manifests.push(m);
    }
    let strip = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        files_under(d)
            .into_iter()
            .filter(|(k, _)| k.starts_with("run-"))
            .map(|(k, v)| (k.split_once('/').unwrap().1.to_string(), v))
            .collect()
    };
    let a = strip(&tmp.path().join("a"));
    let b = strip(&tmp.path().join("b"));
    // 3 shards x 2 formats and the statistics.
    assert_eq!(a.len(), 7);
    assert!(a.contains_key("_stats.json"), "{:?}", a.keys());
    assert_eq!(
        a, b,
        "shard or statistics bytes differ between identical writes"
    );
    let norm = |m: &kiln_connectors::Manifest| {
        let mut m = m.clone();
        m.run_id = String::new();
        m.lineage = json!(null);
        for s in &mut m.shards {
            s.path = s.path.split_once('/').unwrap().1.to_string();
        }
        if let Some(s) = &mut m.stats {
            s.path = s.path.split_once('/').unwrap().1.to_string();
        }
        m.to_json_bytes()
    };
    assert_eq!(norm(&manifests[0]), norm(&manifests[1]));
}

#[test]
fn rerun_replaces_the_previous_run() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("ds");
    let url = url.to_str().unwrap();
    let m1 =
        write_dataset_blocking(url, training_schema(), &input(1, 100), opts(2), json!({})).unwrap();
    let m2 =
        write_dataset_blocking(url, training_schema(), &input(1, 300), opts(2), json!({})).unwrap();
    assert_ne!(m1.run_id, m2.run_id);
    let runs = || {
        let mut runs: Vec<String> = std::fs::read_dir(tmp.path().join("ds"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("run-"))
            .collect();
        runs.sort();
        runs
    };
    // The replaced run stays until the next commit (readers of the previous manifest).
    assert_eq!(
        runs(),
        vec![format!("run-{}", m1.run_id), format!("run-{}", m2.run_id)]
    );
    let ds = Dataset::open_blocking(url, OpenOptions::default()).unwrap();
    assert_eq!(ds.manifest().total_rows, 300);
    let m3 =
        write_dataset_blocking(url, training_schema(), &input(1, 200), opts(2), json!({})).unwrap();
    assert_eq!(
        runs(),
        vec![format!("run-{}", m2.run_id), format!("run-{}", m3.run_id)]
    );
}

#[test]
fn other_compressions_and_round_robin() {
    let tmp = tempfile::tempdir().unwrap();
    for (c, pc) in [
        (Compression::None, ParquetCompression::Zstd(3)),
        (Compression::Zlib, ParquetCompression::None),
    ] {
        let url = tmp.path().join(format!("{c:?}"));
        let o = ShardOptions {
            num_shards: 3,
            formats: vec![ShardFormat::Parquet, ShardFormat::TfRecord],
            tfrecord_compression: c,
            parquet_compression: pc,
            key_column: None,
            ..Default::default()
        };
        let m = write_dataset_blocking(
            url.to_str().unwrap(),
            training_schema(),
            &input(2, 50),
            o,
            json!({}),
        )
        .unwrap();
        assert_eq!(
            m.shards_of(ShardFormat::TfRecord)
                .iter()
                .map(|s| s.rows)
                .collect::<Vec<_>>(),
            vec![34, 33, 33]
        );
        assert!(m.shards_of(ShardFormat::TfRecord)[0].key_min.is_none());
        let ds = Dataset::open_blocking(
            url.to_str().unwrap(),
            OpenOptions {
                verify_checksums: true,
            },
        )
        .unwrap();
        // Default format = first in the options (Parquet here).
        let a = sorted_by_event_id(&read_all(&ds, ShardFormat::Parquet));
        let b = sorted_by_event_id(
            &ds.read_shards(&[0, 1, 2], None, 7)
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>(),
        );
        let t = sorted_by_event_id(&read_all(&ds, ShardFormat::TfRecord));
        assert_eq!(a, b);
        assert_eq!(example_round_trip(&a).unwrap(), t);
        assert_eq!(a.num_rows(), 100);
    }
}

#[test]
fn reader_refuses_uncommitted_and_inconsistent_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let url = dir.to_str().unwrap().to_string();

    // Shards written, never committed.
    let loc = store::resolve(&url).unwrap();
    let mut w =
        DatasetWriter::new(loc.clone(), training_schema(), opts(2), Some("r1".into())).unwrap();
    w.write_blocking(&training_batch(0, 100, 1)).unwrap();
    drop(w);
    let files = block_on(async {
        let mut shard_files = Vec::new();
        for i in 0..2 {
            let mut sw =
                kiln_connectors::ShardWriter::new(&loc, "r1", i, training_schema(), &opts(2))
                    .unwrap();
            sw.write_batch(&training_batch(i as i64 * 1000, 10, 1))
                .await
                .unwrap();
            shard_files.extend(sw.finish().await.unwrap());
        }
        shard_files
    });
    assert!(dir.join("run-r1").exists());
    let e = Dataset::open_blocking(&url, OpenOptions::default()).unwrap_err();
    assert!(matches!(e, Error::NotCommitted { .. }), "{e}");
    assert!(e.to_string().contains("no _manifest.json"), "{e}");
    assert!(e.to_string().contains("interrupted write"), "{e}");

    // Now damage it in various ways.
    let m = block_on(dataset::commit_dataset(
        &loc,
        "r1",
        training_schema(),
        &opts(2),
        files.clone(),
        json!({}),
        false,
    ))
    .unwrap();
    let shard = dir.join(&m.shards[0].path);
    let good = std::fs::read(&shard).unwrap();
    // Same size, one flipped byte: opens without verification, refused with it.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&shard, &bad).unwrap();
    Dataset::open_blocking(&url, OpenOptions::default()).unwrap();
    let e = Dataset::open_blocking(
        &url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    // Short file.
    std::fs::write(&shard, &good[..good.len() - 5]).unwrap();
    let e = Dataset::open_blocking(&url, OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("bytes, the manifest says"), "{e}");
    // Missing file.
    std::fs::remove_file(&shard).unwrap();
    let e = Dataset::open_blocking(&url, OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    std::fs::write(&shard, &good).unwrap();
    Dataset::open_blocking(
        &url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    // Unknown format version.
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(
        &mpath,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    let e = Dataset::open_blocking(&url, OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("format_version 99"), "{e}");
    // Commit refuses a missing shard unless asked to fill it (in a second location).
    let url2 = tmp.path().join("ds2").to_str().unwrap().to_string();
    let loc2 = store::resolve(&url2).unwrap();
    let files: Vec<_> = block_on(async {
        let mut v = Vec::new();
        for i in 0..2 {
            let mut sw =
                kiln_connectors::ShardWriter::new(&loc2, "r2", i, training_schema(), &opts(2))
                    .unwrap();
            sw.write_batch(&training_batch(i as i64 * 1000, 10, 1))
                .await
                .unwrap();
            v.extend(sw.finish().await.unwrap());
        }
        v
    });
    let only0: Vec<_> = files.iter().filter(|f| f.index == 0).cloned().collect();
    let e = block_on(dataset::commit_dataset(
        &loc2,
        "r2",
        training_schema(),
        &opts(2),
        only0.clone(),
        json!({}),
        false,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    let dup: Vec<_> = files.iter().chain(files.iter().take(1)).cloned().collect();
    let e = block_on(dataset::commit_dataset(
        &loc2,
        "r2",
        training_schema(),
        &opts(2),
        dup,
        json!({}),
        false,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let m = block_on(dataset::commit_dataset(
        &loc2,
        "r2",
        training_schema(),
        &opts(2),
        only0,
        json!({}),
        true,
    ))
    .unwrap();
    assert_eq!(m.total_rows, 10);
    let ds = Dataset::open_blocking(
        &url2,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    assert_eq!(ds.shard_rows(), vec![10, 0]);
    assert_eq!(ds.read_shards(&[1], None, 10).unwrap().count(), 0);
}

#[test]
fn inspect_dataset_prints_summary_then_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("ds");
    let url = url.to_str().unwrap();
    write_dataset_blocking(
        url,
        training_schema(),
        &input(1, 40),
        opts(2),
        json!({"k": 1}),
    )
    .unwrap();
    let mut out = Vec::new();
    kiln_connectors::inspect::inspect(url, 5, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["total_rows"], 40);
    assert_eq!(lines[0]["lineage"], json!({"k": 1}));
    assert!(lines[1]["event_id"].is_i64());
    // A Parquet shard file directly.
    let ds = Dataset::open_blocking(url, OpenOptions::default()).unwrap();
    let pq = &ds.manifest().shards_of(ShardFormat::Parquet)[0].path;
    let mut out = Vec::new();
    kiln_connectors::inspect::inspect(&format!("{url}/{pq}"), 3, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    // An uncommitted directory is refused.
    std::fs::remove_file(tmp.path().join("ds").join(MANIFEST_FILE)).unwrap();
    let e = kiln_connectors::inspect::inspect(url, 3, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, Error::NotCommitted { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Crash safety: a writer process killed with SIGKILL mid-dataset.
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "KILN_CRASH_CHILD_DIR";

/// Not a test on its own: the body of the child process of `killed_writer_leaves_no_manifest`.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut w =
        DatasetWriter::create(&dir, training_schema(), opts(4), Some("crashing".into())).unwrap();
    for b in 0.. {
        w.write_blocking(&training_batch(b * 20_000, 20_000, 7))
            .unwrap();
        println!("BATCH {b}");
    }
}

fn spawn_and_kill(dir: &Path, after_batches: usize) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    for line in out.lines() {
        if line.unwrap().starts_with("BATCH") {
            seen += 1;
            if seen >= after_batches {
                break;
            }
        }
    }
    assert_eq!(seen, after_batches, "child writer died early");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn killed_writer_leaves_no_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    spawn_and_kill(&dir, 6);
    // The child got far enough to stage data (multipart parts) but never committed.
    assert!(!dir.join(MANIFEST_FILE).exists());
    assert!(!dir.join("_SUCCESS").exists());
    let e = Dataset::open_blocking(dir.to_str().unwrap(), OpenOptions::default()).unwrap_err();
    assert!(matches!(e, Error::NotCommitted { .. }), "{e}");

    // With a committed previous run, a killed rerun leaves the previous run readable.
    let url = dir.to_str().unwrap();
    let m =
        write_dataset_blocking(url, training_schema(), &input(1, 200), opts(4), json!({})).unwrap();
    spawn_and_kill(&dir, 3);
    let ds = Dataset::open_blocking(
        url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    assert_eq!(ds.manifest().run_id, m.run_id);
    let n: usize = read_all(&ds, ShardFormat::TfRecord)
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(n, 200);
}

/// Shard bytes depend on the rows only, not on how the writer's input was split into batches.
#[test]
fn shard_bytes_do_not_depend_on_batch_boundaries() {
    let rows = concat_batches(&training_schema(), &input(3, 9_000)).unwrap();
    let split_evenly = vec![rows.clone()];
    let mut split_unevenly = Vec::new();
    let mut start = 0;
    for len in [1, 7_000, 3, 12_345, 999].into_iter().cycle() {
        if start >= rows.num_rows() {
            break;
        }
        let len = len.min(rows.num_rows() - start);
        split_unevenly.push(rows.slice(start, len));
        start += len;
    }
    let dir = tempfile::tempdir().unwrap();
    let sums = |name: &str, batches: &[RecordBatch]| {
        let url = dir.path().join(name).display().to_string();
        let m =
            write_dataset_blocking(&url, training_schema(), batches, opts(3), json!({})).unwrap();
        m.shards
            .iter()
            .map(|s| (s.index, s.format, s.sha256.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(sums("a", &split_evenly), sums("b", &split_unevenly));
}

/// Flips one byte inside record `record`'s payload in an uncompressed TFRecord file.
fn corrupt_tfrecord_payload(path: &Path, record: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut start = 0usize;
    for _ in 0..record {
        let len = u64::from_le_bytes(bytes[start..start + 8].try_into().unwrap()) as usize;
        start += 12 + len + 4;
    }
    bytes[start + 12 + 5] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Issue 12.6: `skip_corrupt` is reachable from `Dataset`: a record with a bad CRC fails a
/// plain read naming the shard, and is skipped and reported (index, offset, rows lost) with it.
#[test]
fn dataset_skip_corrupt_skips_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap();
    let options = ShardOptions {
        num_shards: 1,
        formats: vec![ShardFormat::TfRecord],
        tfrecord_compression: Compression::None,
        ..Default::default()
    };
    let m =
        write_dataset_blocking(url, training_schema(), &input(2, 50), options, json!({})).unwrap();
    let shard = dir.path().join(&m.shards[0].path);
    corrupt_tfrecord_payload(&shard, 3);

    let ds = Dataset::open_blocking(url, OpenOptions::default()).unwrap();
    let e = ds
        .read_shards(&[0], None, 16)
        .unwrap()
        .find_map(|b| b.err())
        .expect("the corrupt record fails a plain read")
        .to_string();
    assert!(e.contains(&m.shards[0].path) && e.contains("CRC"), "{e}");
    assert!(ds.skipped().is_empty());

    let ds = ds.with_skip_corrupt(true);
    let rows: Vec<RecordBatch> = ds
        .read_shards(&[0], None, 16)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let rows = concat_batches(&training_schema(), &rows).unwrap();
    assert_eq!(rows.num_rows(), 99);
    let ids = rows
        .column_by_name("event_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let want: Vec<i64> = input(2, 50)
        .iter()
        .flat_map(|b| {
            b.column_by_name("event_id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(ids.values().to_vec(), want, "every other record, in order");
    let skipped = ds.skipped();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].shard.ends_with(&m.shards[0].path), "{skipped:?}");
    assert_eq!(skipped[0].rows_lost, 1);
    assert_eq!(skipped[0].records.len(), 1);
    assert_eq!(skipped[0].records[0].index, 3);
    assert_eq!(
        skipped[0].records[0].reason,
        kiln_connectors::tfrecord::SkipReason::DataCrcMismatch
    );
}
