//! Test support (cargo feature `test-support`; not library API): the one launcher of a real
//! S3-compatible server for every test in the workspace.
//!
//! [`Moto::start`] runs `moto_server` on 127.0.0.1 and a free port, waits until it answers
//! HTTP, and stops it when dropped. Policy for tests that need it:
//! * `KILN_TEST_FAST=1`: S3 tests skip (they print why and return);
//! * `moto_server` missing: under `CI=true` the test panics (CI must run every test), otherwise
//!   it prints a skip message naming `bash scripts/test.sh`, which installs it.
//!
//! `moto_server` is looked up on `PATH`, then in the test virtual environment that
//! `scripts/test.sh` creates (`${KILN_CACHE:-~/.cache/kiln}/venv/bin`).
//!
//! ```no_run
//! # use kiln_connectors::testing::Moto;
//! let Some(moto) = Moto::start() else { return };
//! moto.create_bucket("kiln");
//! let loc = moto.location("kiln", "some/prefix");
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;

use crate::store::Location;

/// Access key id the clients of [`Moto`] use (moto accepts any).
pub const ACCESS_KEY_ID: &str = "testing";
/// Secret access key the clients of [`Moto`] use.
pub const SECRET_ACCESS_KEY: &str = "testing";
/// Region the clients of [`Moto`] use.
pub const REGION: &str = "us-east-1";

/// How long moto may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`, killed when dropped.
pub struct Moto {
    child: Child,
    port: u16,
    endpoint: String,
}

fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| "this S3 test".to_string(), |n| format!("S3 test {n}"))
}

/// `moto_server` on `PATH`, then the one `scripts/test.sh` installs into its virtual
/// environment.
fn candidates() -> Vec<PathBuf> {
    let mut c = vec![PathBuf::from("moto_server")];
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln")));
    if let Some(cache) = cache {
        c.push(cache.join("venv/bin/moto_server"));
    }
    c
}

/// The server is not installed: panic under `CI=true`, else print why the test skips.
fn missing(detail: &str) -> Option<Moto> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "moto_server is not installed ({detail}) and CI=true, so the S3 tests must run: \
             `bash scripts/test.sh` installs it (scripts/requirements-test.txt)"
        );
    }
    eprintln!(
        "skipping {}: moto_server is not installed ({detail}); `bash scripts/test.sh` installs \
         it and runs every test",
        test_name()
    );
    None
}

fn http(port: u16, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

impl Moto {
    /// Starts `moto_server` on 127.0.0.1 and a free port and waits until it answers, or
    /// returns `None` (after printing why) when the calling test should skip: see the module
    /// docs for the policy. Panics if the server is installed but does not come up.
    pub fn start() -> Option<Moto> {
        if std::env::var("KILN_TEST_FAST").as_deref() == Ok("1") {
            eprintln!(
                "KILN_TEST_FAST=1: skipping {} (it starts an S3-compatible server)",
                test_name()
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let mut spawned = None;
        for program in candidates() {
            match Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(child) => {
                    spawned = Some(child);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot start {}: {e}", program.display()),
            }
        }
        let Some(child) = spawned else {
            return missing("not on PATH or in the test virtual environment");
        };
        let mut moto = Moto {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let probe =
                format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
            if http(port, &probe).is_ok_and(|r| r.starts_with("HTTP/1.")) {
                return Some(moto);
            }
            match moto.child.try_wait() {
                // A version-manager shim (pyenv) without the command exits 127.
                Ok(Some(status)) if status.code() == Some(127) => {
                    return missing("its launcher exited with status 127");
                }
                Ok(Some(status)) => {
                    panic!("moto_server exited with {status} before answering on port {port}")
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for moto_server: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a bucket (an unsigned PUT, which moto accepts); panics unless it answers 200.
    pub fn create_bucket(&self, bucket: &str) {
        let resp = http(
            self.port,
            &format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            ),
        )
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {resp}"
        );
    }

    /// The standard `AWS_*` environment that points a client (a `kiln` process, or
    /// [`crate::store::resolve`] of an `s3://` URL) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// An object store for `bucket` on this server, configured explicitly (independent of the
    /// process environment).
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .with_region(REGION)
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap_or_else(|e| panic!("configuring S3 client for {}: {e}", self.endpoint));
        Arc::new(store)
    }

    /// Keys of the multipart uploads in progress in `bucket` (an unsigned
    /// `ListMultipartUploads`, which moto accepts): what an aborted writer must not leave.
    pub fn multipart_uploads(&self, bucket: &str) -> Vec<String> {
        let resp = http(
            self.port,
            &format!(
                "GET /{bucket}?uploads HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            ),
        )
        .unwrap_or_else(|e| panic!("listing multipart uploads of {bucket}: {e}"));
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "listing multipart uploads of {bucket}: {resp}"
        );
        resp.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// `s3://bucket/prefix` on this server, through [`store`](Self::store).
    pub fn location(&self, bucket: &str, prefix: &str) -> Location {
        Location::new(
            self.store(bucket),
            Path::from(prefix),
            format!("s3://{bucket}/{prefix}"),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
