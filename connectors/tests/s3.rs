//! The commit protocol against a real S3-compatible server (moto) started on 127.0.0.1.
//!
//! Needs `moto_server` (`pip install "moto[server]"`); set `KILN_SKIP_S3=1` to skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::compute::concat_batches;
use futures::StreamExt;
use kiln_connectors::dataset::ShardBatches;
use kiln_connectors::sample::{training_batch, training_schema};
use kiln_connectors::store::{Location, block_on};
use kiln_connectors::{
    Compression, Dataset, DatasetWriter, Error, OpenOptions, ShardFormat, ShardOptions,
};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use serde_json::json;

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn start_moto() -> Option<Moto> {
    if std::env::var("KILN_SKIP_S3").as_deref() == Ok("1") {
        eprintln!("KILN_SKIP_S3=1: skipping the S3 test");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = match Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot start moto_server ({e}): install it with `pip install \"moto[server]\"`, or set KILN_SKIP_S3=1 to skip this test"
        ),
    };
    let moto = Moto { child, port };
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "moto_server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

fn create_bucket(port: u16, bucket: &str) {
    let resp = http(
        port,
        &format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "creating bucket: {resp}");
}

fn location(port: u16, bucket: &str, prefix: &str) -> Location {
    let store = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_access_key_id("kiln")
        .with_secret_access_key("kiln")
        .with_region("us-east-1")
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    Location::new(
        Arc::new(store),
        Path::from(prefix),
        format!("s3://{bucket}/{prefix}"),
    )
}

fn collect(it: ShardBatches) -> arrow::array::RecordBatch {
    let b: Vec<_> = it.map(|b| b.unwrap()).collect();
    concat_batches(&training_schema(), &b).unwrap()
}

#[test]
fn dataset_on_s3_compatible_server() {
    let Some(moto) = start_moto() else { return };
    create_bucket(moto.port, "kiln-test");
    let loc = location(moto.port, "kiln-test", "ctr/examples/dt=2026-11-21");

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

    // A second run replaces the first; its objects are deleted after the commit.
    let mut w =
        DatasetWriter::new(loc.clone(), training_schema(), options, Some("two".into())).unwrap();
    w.write_blocking(&batches[0]).unwrap();
    w.finish_blocking(json!({})).unwrap();
    let names: Vec<String> = block_on(async {
        loc.store
            .list(Some(&loc.path))
            .map(|m| m.unwrap().location.to_string())
            .collect::<Vec<_>>()
            .await
    });
    assert!(names.iter().all(|n| !n.contains("run-one/")), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.contains("run-two/")).count(),
        4,
        "{names:?}"
    );
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
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", moto.port),
        )
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "kiln")
        .env("AWS_SECRET_ACCESS_KEY", "kiln")
        .env("AWS_REGION", "us-east-1")
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
