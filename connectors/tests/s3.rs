//! The commit protocol against a real S3-compatible server (moto) started on 127.0.0.1 by
//! [`kiln_connectors::testing::Moto`] (skipped under `KILN_TEST_FAST=1`; see its policy).

use std::process::Command;

use arrow::compute::concat_batches;
use futures::StreamExt;
use kiln_connectors::dataset::ShardBatches;
use kiln_connectors::sample::{training_batch, training_schema};
use kiln_connectors::store::block_on;
use kiln_connectors::testing::Moto;
use kiln_connectors::{
    Compression, Dataset, DatasetWriter, Error, OpenOptions, ShardFormat, ShardOptions,
};
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;

fn collect(it: ShardBatches) -> arrow::array::RecordBatch {
    let b: Vec<_> = it.map(|b| b.unwrap()).collect();
    concat_batches(&training_schema(), &b).unwrap()
}

#[test]
fn dataset_on_s3_compatible_server() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln-test");
    let loc = moto.location("kiln-test", "ctr/examples/dt=2026-11-21");

    // Not yet written: refused.
    let e = block_on(Dataset::open_location(loc.clone(), OpenOptions::default())).unwrap_err();
    assert!(matches!(e, Error::NotCommitted { .. }), "{e}");

    let options = ShardOptions {
        num_shards: 2,
        formats: vec![ShardFormat::TfRecord, ShardFormat::Parquet],
        tfrecord_compression: Compression::None,
        key_column: Some("event_id".into()),
        ..Default::default()
    };
    // ~60k rows x ~630 bytes: the TFRecord shards exceed the 16 MiB buffer -> multipart upload.
    let batches: Vec<_> = (0..6)
        .map(|i| training_batch(i * 10_000, 10_000, 3))
        .collect();
    let mut w = DatasetWriter::new(
        loc.clone(),
        training_schema(),
        options.clone(),
        Some("one".into()),
    )
    .unwrap();
    for b in &batches {
        w.write_blocking(b).unwrap();
    }
    let m = w.finish_blocking(json!({"where": "moto"})).unwrap();
    assert_eq!(m.total_rows, 60_000);
    assert!(
        m.shards.iter().any(|s| s.bytes > 16 << 20),
        "expected a multipart-sized shard"
    );

    let ds = block_on(Dataset::open_location(
        loc.clone(),
        OpenOptions {
            verify_checksums: true,
        },
    ))
    .unwrap();
    assert_eq!(ds.manifest(), &m);
    for i in 0..2 {
        let tf = collect(
            ds.read_shards(&[i], Some(ShardFormat::TfRecord), 4096)
                .unwrap(),
        );
        let pq = collect(
            ds.read_shards(&[i], Some(ShardFormat::Parquet), 4096)
                .unwrap(),
        );
        assert_eq!(
            tf.num_rows() as u64,
            m.shards_of(ShardFormat::TfRecord)[i].rows
        );
        assert_eq!(tf, kiln_connectors::codec::example_round_trip(&pq).unwrap());
    }

    // Later runs replace the first. The run a commit replaced stays for readers of its
    // manifest until the next commit (a conditional put on moto), which deletes it.
    let list = || -> Vec<String> {
        block_on(async {
            loc.store
                .list(Some(&loc.path))
                .map(|m| m.unwrap().location.to_string())
                .collect::<Vec<_>>()
                .await
        })
    };
    let count = |names: &[String], run: &str| {
        names
            .iter()
            .filter(|n| n.contains(&format!("run-{run}/")))
            .count()
    };
    for (run, kept, gone) in [("two", "one", None), ("two2", "two", Some("one"))] {
        let mut w = DatasetWriter::new(
            loc.clone(),
            training_schema(),
            options.clone(),
            Some(run.into()),
        )
        .unwrap();
        w.write_blocking(&batches[0]).unwrap();
        w.finish_blocking(json!({})).unwrap();
        let names = list();
        // The shard files and `_stats.json`.
        assert_eq!(count(&names, run), 5, "{names:?}");
        assert_eq!(count(&names, kept), 5, "{names:?}");
        if let Some(gone) = gone {
            assert_eq!(count(&names, gone), 0, "{names:?}");
        }
    }
    // An older run than the committed one cannot replace it.
    let mut w =
        DatasetWriter::new(loc.clone(), training_schema(), options, Some("one".into())).unwrap();
    w.write_blocking(&batches[0]).unwrap();
    let e = w.finish_blocking(json!({})).unwrap_err().to_string();
    assert!(e.contains("run two2, which started later"), "{e}");
    let ds = block_on(Dataset::open_location(
        loc,
        OpenOptions {
            verify_checksums: true,
        },
    ))
    .unwrap();
    assert_eq!(ds.manifest().total_rows, 10_000);

    // The same dataset through an s3:// URL and the standard AWS_* environment variables, in a
    // child process (the environment is process-wide).
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "s3_url_child", "--nocapture", "--test-threads=1"])
        .env(
            "KILN_S3_CHILD_URL",
            "s3://kiln-test/ctr/examples/dt=2026-11-21",
        )
        .envs(moto.env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("S3 URL ROWS 10000"), "{stdout}");
}

/// Child of `dataset_on_s3_compatible_server`: opens a dataset by s3:// URL from the environment.
#[test]
fn s3_url_child() {
    let Ok(url) = std::env::var("KILN_S3_CHILD_URL") else {
        return;
    };
    let ds = Dataset::open_blocking(
        &url,
        OpenOptions {
            verify_checksums: true,
        },
    )
    .unwrap();
    let rows: usize = ds
        .read_shards(&[0, 1], None, 1000)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    let mut out = Vec::new();
    kiln_connectors::inspect::inspect(&url, 1, &mut out).unwrap();
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("\"total_rows\":10000")
    );
    println!("S3 URL ROWS {rows}");
}

/// Issue 12.8: a failed or abandoned shard writer leaves no multipart upload (its parts are
/// billed storage on S3 and invisible to listings), and the next commit removes stray objects
/// under its run prefix.
#[test]
fn failed_shard_writers_abort_their_multipart_uploads() {
    use kiln_connectors::ShardWriter;
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln-abort");
    let loc = moto.location("kiln-abort", "ctr/examples/dt=2026-11-22");
    let options = ShardOptions {
        num_shards: 1,
        formats: vec![ShardFormat::TfRecord, ShardFormat::Parquet],
        tfrecord_compression: Compression::None,
        ..Default::default()
    };
    // ~60k rows x ~630 bytes: past the 16 MiB buffer, so the TFRecord upload is multipart.
    let fill = |w: &mut ShardWriter| {
        for i in 0..6 {
            block_on(w.write_batch(&training_batch(i * 10_000, 10_000, 3))).unwrap();
        }
    };
    let objects = || -> Vec<String> {
        block_on(async {
            loc.store
                .list(Some(&loc.path))
                .map(|m| m.unwrap().location.to_string())
                .collect::<Vec<_>>()
                .await
        })
    };

    // An explicit abort (a failed task) removes the started upload at once.
    let mut w = ShardWriter::new(&loc, "aborted", 0, training_schema(), &options).unwrap();
    fill(&mut w);
    let started = moto.multipart_uploads("kiln-abort");
    assert_eq!(
        started.len(),
        1,
        "expected one multipart upload: {started:?}"
    );
    assert!(started[0].ends_with(".tfrecord"), "{started:?}");
    block_on(w.abort()).unwrap();
    assert_eq!(moto.multipart_uploads("kiln-abort"), Vec::<String>::new());
    assert_eq!(objects(), Vec::<String>::new());

    // A writer dropped unfinished (a cancelled task) aborts in the background.
    let mut w = ShardWriter::new(&loc, "dropped", 0, training_schema(), &options).unwrap();
    fill(&mut w);
    assert_eq!(moto.multipart_uploads("kiln-abort").len(), 1);
    drop(w);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !moto.multipart_uploads("kiln-abort").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped writer's upload was not aborted: {:?}",
            moto.multipart_uploads("kiln-abort")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A stray object under the committing run's prefix (a killed attempt's complete file that
    // no shard names) is removed by the commit; the committed shards stay.
    let stray = loc.child("run-kept/part-00007-of-00009.tfrecord");
    block_on(
        stray
            .store
            .put(&stray.path, bytes::Bytes::from_static(b"junk").into()),
    )
    .unwrap();
    let mut w =
        DatasetWriter::new(loc.clone(), training_schema(), options, Some("kept".into())).unwrap();
    w.write_blocking(&training_batch(0, 100, 3)).unwrap();
    let m = w.finish_blocking(json!({})).unwrap();
    let mut want: Vec<String> = m
        .shards
        .iter()
        .map(|s| loc.child(&s.path).path.to_string())
        .collect();
    want.extend(["_SUCCESS", "_manifest.json"].map(|f| loc.child(f).path.to_string()));
    want.extend(m.stats.iter().map(|s| loc.child(&s.path).path.to_string()));
    want.sort();
    let mut got = objects();
    got.sort();
    assert_eq!(got, want);
}
