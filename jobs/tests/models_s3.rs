//! The model repository on a real S3-compatible server (moto on 127.0.0.1): versions
//! published to `s3://`, labels, rollback and prune through `kiln models`, a tampered version
//! refused by `kiln models verify` and by `kiln serve`, and `kiln serve s3://...` answering
//! `:predict` exactly as the same versions served from a local repository, picking up a new
//! version within a poll; concurrent publishers get distinct versions.
//!
//! Policy (as for every S3 test, `kiln_connectors::testing`): without `moto_server` the test
//! skips with a note, except under `CI=true`, where it fails.

mod common;

use kiln_connectors::testing::Moto;

#[test]
fn model_repository_on_s3_publishes_serves_rolls_back_and_refuses_tampering() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kiln");
    // This test binary has a single test: setting the process environment is race-free here,
    // and lets the in-process object store use the same AWS_* variables as `kiln`.
    for (k, v) in moto.env() {
        unsafe { std::env::set_var(k, v) };
    }
    common::serving::remote_repository_round_trip("s3://kiln/repo");
}
