//! Test fixtures, also what the benchmarks in [`crate::bench`] run on: synthetic click data
//! with a known click probability, a wide & deep `[train]` config for it, and a process group
//! of threads. Public only with the `test-support` cargo feature (the crate's own tests and
//! `kiln-jobs`'s tests enable it): not library API.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;
use crate::comm::{Comm, WorldEnv};
use crate::config::{CategoricalFeature, EvalSplit, TrainConfig};
use crate::source::MemorySource;

/// Synthetic click data with a known click probability.
pub struct Synthetic {
    /// The rows as in-memory shards.
    pub source: MemorySource,
    /// True click probability of every row (shard by shard, in row order).
    pub true_prob: Vec<f64>,
    /// The rows' batches (shard -> batches), e.g. to write them as a dataset.
    pub shards: Vec<Vec<RecordBatch>>,
}

type SyntheticColumns = (
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    Vec<&'static str>,
    Vec<Option<f64>>,
    Vec<i32>,
    Vec<i32>,
);

/// `rows` rows over `shards` shards: `event_id, user_id, item_id, device, price (nullable),
/// dwell_ms, label`. The click logit is a user effect + an item effect + a device effect +
/// a price slope, so a wide & deep model can learn it; generated deterministically from `seed`.
pub fn synthetic_ctr(rows: usize, shards: usize, seed: u64) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let users = 2_000i64;
    let items = 500i64;
    let ue: Vec<f64> = (0..users).map(|_| rng.random_range(-1.5..1.5)).collect();
    let ie: Vec<f64> = (0..items).map(|_| rng.random_range(-1.5..1.5)).collect();
    let devices = ["ios", "android", "web"];
    let de = [0.4, -0.2, -0.6];
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("price", DataType::Float64, true),
        Field::new("dwell_ms", DataType::Int32, false),
        Field::new("label", DataType::Int32, false),
    ]));
    let mut out = vec![Vec::new(); shards];
    let mut probs = vec![Vec::new(); shards];
    let per = rows.div_ceil(shards);
    let mut next_id = 0i64;
    for (s, shard) in out.iter_mut().enumerate() {
        // Uneven shards: the last ones are smaller.
        let n = per.min(rows.saturating_sub(s * per)).max(1);
        let mut cols: SyntheticColumns = Default::default();
        for _ in 0..n {
            let u = (rng.random_range(0.0f64..1.0).powi(2) * users as f64) as i64;
            let i = rng.random_range(0..items);
            let d = rng.random_range(0..3usize);
            let price = (rng.random_range(0.0..1.0) < 0.9).then(|| rng.random_range(1.0f64..100.0));
            let dwell = rng.random_range(0..5000);
            let z = -1.0 + ue[u as usize] + ie[i as usize] + de[d] - 0.01 * price.unwrap_or(50.0)
                + 0.0002 * dwell as f64;
            let p = 1.0 / (1.0 + (-z).exp());
            let y = i32::from(rng.random_range(0.0..1.0) < p);
            cols.0.push(next_id);
            next_id += 1;
            cols.1.push(u * 7919 + 13);
            cols.2.push(i * 104_729 + 7);
            cols.3.push(devices[d]);
            cols.4.push(price);
            cols.5.push(dwell);
            cols.6.push(y);
            probs[s].push(p);
        }
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(cols.0)),
                Arc::new(Int64Array::from(cols.1)),
                Arc::new(Int64Array::from(cols.2)),
                Arc::new(StringArray::from(cols.3)),
                Arc::new(Float64Array::from(cols.4)),
                Arc::new(Int32Array::from(cols.5)),
                Arc::new(Int32Array::from(cols.6)),
            ],
        )
        .expect("valid batch");
        // Several record batches per shard, as a reader would give.
        let mut off = 0;
        while off < b.num_rows() {
            let len = 1000.min(b.num_rows() - off);
            shard.push(b.slice(off, len));
            off += len;
        }
    }
    Synthetic {
        source: MemorySource::new(schema, out.clone()).expect("schema"),
        true_prob: probs.into_iter().flatten().collect(),
        shards: out,
    }
}

/// A wide & deep `[train]` config for [`synthetic_ctr`] data.
pub fn synthetic_config() -> TrainConfig {
    TrainConfig {
        categorical: vec![
            CategoricalFeature {
                column: "user_id".into(),
                hash_buckets: Some(100_000),
                vocabulary: None,
            },
            CategoricalFeature {
                column: "item_id".into(),
                hash_buckets: Some(100_000),
                vocabulary: None,
            },
            CategoricalFeature {
                column: "device".into(),
                hash_buckets: None,
                vocabulary: Some(crate::config::VocabularyConfig {
                    min_count: 1,
                    max_size: 100,
                }),
            },
        ],
        numeric: vec!["price".into(), "dwell_ms".into()],
        eval: EvalSplit::Hash {
            key: "event_id".into(),
            fraction: 0.2,
        },
        ..TrainConfig::default()
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(crate::Error::comm_io("finding a free port"))?
        .port())
}

/// Connects `world` ranks as threads of this process and runs `f` on each.
pub fn with_local_ring<T: Send>(
    world: usize,
    f: impl Fn(&mut Comm) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let port = free_port()?;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..world)
            .map(|rank| {
                let f = &f;
                s.spawn(move || {
                    let env = WorldEnv {
                        rank,
                        world,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    let mut c = Comm::connect(&env, Duration::from_secs(30))?;
                    let r = f(&mut c);
                    c.shutdown();
                    r
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}
