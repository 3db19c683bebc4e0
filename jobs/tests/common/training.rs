//! Training fixtures: a small committed dataset of synthetic clicks and a `[train]` config.

use std::path::Path;

use kiln_connectors::dataset::{DatasetWriter, ShardOptions};

/// Writes a committed dataset of `rows` synthetic clicks (4 shards) under `dir`; returns its URL.
pub fn write_dataset(dir: &Path, rows: usize) -> String {
    write_dataset_with(
        dir,
        rows,
        ShardOptions {
            num_shards: 4,
            key_column: Some("event_id".into()),
            ..Default::default()
        },
    )
}

/// [`write_dataset`] with explicit shard options; returns the dataset's URL.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn write_dataset_with(dir: &Path, rows: usize, options: ShardOptions) -> String {
    let data = kiln_trainer::fixtures::synthetic_ctr(rows, 4, 11);
    let url = format!("file://{}/examples/", dir.display());
    let schema = data.source.clone();
    let schema = kiln_trainer::ShardSource::schema(&schema);
    let mut w = DatasetWriter::create(&url, schema, options, None).unwrap();
    for b in data.shards.iter().flatten() {
        w.write_blocking(b).unwrap();
    }
    w.finish_blocking(serde_json::json!({"test": "train"}))
        .unwrap();
    url
}

/// Writes a `[train]` config (wide & deep, batch 256, `steps` steps) to `dir/train.toml`.
pub fn write_config(dir: &Path, steps: u64, checkpoint_every: u64) -> std::path::PathBuf {
    let p = dir.join("train.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[train]
model = "wide_deep"
numeric = ["price", "dwell_ms"]
hidden = [64, 32]
batch_size = 256
steps = {steps}
checkpoint_every = {checkpoint_every}
checksum_every = 10
log_every = 10
eval = {{ by = "hash", key = "event_id", fraction = 0.2 }}

[[train.categorical]]
column = "user_id"
hash_buckets = 100000

[[train.categorical]]
column = "item_id"
hash_buckets = 100000

[[train.categorical]]
column = "device"
vocabulary = {{ min_count = 1, max_size = 10 }}
"#
        ),
    )
    .unwrap();
    p
}

/// The last stdout line of a successful `kiln ... --json` run, parsed.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kiln failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a JSON line")).unwrap()
}
