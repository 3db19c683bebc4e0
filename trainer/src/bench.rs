//! Benchmarks: all-reduce bus bandwidth next to a plain loopback TCP copy, training
//! throughput on synthetic CTR data, and the synthetic data itself (also used by tests).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::comm::{Comm, WorldEnv};
use crate::config::{CategoricalFeature, EvalSplit, TrainConfig};
use crate::source::MemorySource;
use crate::train::{TrainOptions, TrainReport, train};
use crate::{Error, Result};

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

/// One all-reduce measurement.
#[derive(Debug, Clone, Serialize)]
pub struct AllreduceFigure {
    /// Buffer size in bytes.
    pub bytes: usize,
    /// Ranks (each with its own TCP ring sockets on loopback).
    pub world: usize,
    /// Seconds per all-reduce (mean within a trial, median over trials).
    pub seconds: f64,
    /// `bytes / seconds` (GB/s = 1e9 bytes/s).
    pub algbw_gbps: f64,
    /// `algbw * 2 (world - 1) / world`: the bytes each link carries per second.
    pub busbw_gbps: f64,
    /// Bus bandwidth over the loopback copy of the same size measured in the same trial,
    /// median over trials.
    pub copy_fraction: f64,
}

/// All-reduce benchmark report.
#[derive(Debug, Clone, Serialize)]
pub struct AllreduceReport {
    /// Plain one-way TCP copy on loopback (GB/s) for each size, median over the trials.
    pub loopback_copy_gbps: Vec<(usize, f64)>,
    /// All-reduce figures.
    pub allreduce: Vec<AllreduceFigure>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Comm(e.to_string()))?
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

fn loopback_copy(bytes: usize, reps: usize) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Comm(e.to_string()))?;
    let addr = l.local_addr().map_err(|e| Error::Comm(e.to_string()))?;
    let data = vec![7u8; bytes];
    let t = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        for _ in 0..reps {
            s.write_all(&data)?;
        }
        Ok(())
    });
    let (mut c, _) = l.accept().map_err(|e| Error::Comm(e.to_string()))?;
    let mut buf = vec![0u8; bytes.min(1 << 20)];
    let t0 = Instant::now();
    let mut left = bytes * reps;
    while left > 0 {
        let n = c.read(&mut buf).map_err(|e| Error::Comm(e.to_string()))?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    let dt = t0.elapsed().as_secs_f64();
    t.join()
        .expect("writer")
        .map_err(|e| Error::Comm(e.to_string()))?;
    Ok((bytes * reps) as f64 / dt / 1e9)
}

/// Repetitions timed for a buffer of `bytes`: about 256 MiB reduced per size, 3 to 50 times.
fn allreduce_reps(bytes: usize) -> usize {
    (256usize << 20).div_ceil(bytes).clamp(3, 50)
}

/// Times all-reduces of each of `sizes` (bytes) on this rank's group, after one warm-up each.
/// Returns the mean seconds per all-reduce of the slowest rank, for every size (the same on
/// every rank).
pub fn time_allreduce(comm: &mut Comm, sizes: &[usize]) -> Result<Vec<f64>> {
    let mut mine = Vec::with_capacity(sizes.len());
    for &bytes in sizes {
        let reps = allreduce_reps(bytes);
        let mut buf = vec![1.0f32; bytes / 4];
        comm.allreduce_sum(&mut buf)?;
        comm.barrier()?;
        let t0 = Instant::now();
        for _ in 0..reps {
            comm.allreduce_sum(&mut buf)?;
        }
        mine.push(t0.elapsed().as_secs_f64() / reps as f64);
    }
    let all = comm.allgather_bytes(&serde_json::to_vec(&mine).expect("json"))?;
    let mut slowest = vec![0.0f64; sizes.len()];
    for bytes in all {
        let times: Vec<f64> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Comm(format!("all-reduce bench: {e}")))?;
        for (s, t) in slowest.iter_mut().zip(times) {
            *s = s.max(t);
        }
    }
    Ok(slowest)
}

/// Runs [`time_allreduce`] on a group of `world` ranks for the given sizes.
pub type RunWorld<'a> = &'a dyn Fn(usize, &[usize]) -> Result<Vec<f64>>;

/// Trials of [`bench_allreduce`]. Each trial measures the copy and then every all-reduce, so
/// a machine whose speed drifts (a shared VM) slows both sides of a trial's ratio alike.
pub const ALLREDUCE_TRIALS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures all-reduce of `sizes` (bytes) for each world size next to a plain loopback copy,
/// in [`ALLREDUCE_TRIALS`] paired trials. `run_world(world, sizes)` runs [`time_allreduce`] on
/// a group of `world` ranks (processes in `kiln bench allreduce`, threads in
/// [`threads_world`]) and returns its result.
pub fn bench_allreduce(
    sizes: &[usize],
    worlds: &[usize],
    run_world: RunWorld<'_>,
) -> Result<AllreduceReport> {
    // copy[trial][size] (GB/s) and secs[trial][world][size].
    let mut copy = Vec::new();
    let mut secs = Vec::new();
    for _ in 0..ALLREDUCE_TRIALS {
        copy.push(
            sizes
                .iter()
                .map(|&b| loopback_copy(b, allreduce_reps(b)))
                .collect::<Result<Vec<f64>>>()?,
        );
        secs.push(
            worlds
                .iter()
                .map(|&w| run_world(w, sizes))
                .collect::<Result<Vec<Vec<f64>>>>()?,
        );
    }
    let busbw = |b: usize, w: usize, t: f64| b as f64 / t / 1e9 * 2.0 * (w - 1) as f64 / w as f64;
    let mut out = Vec::new();
    for (wi, &w) in worlds.iter().enumerate() {
        for (si, &b) in sizes.iter().enumerate() {
            let seconds = median((0..ALLREDUCE_TRIALS).map(|t| secs[t][wi][si]).collect());
            let algbw = b as f64 / seconds / 1e9;
            out.push(AllreduceFigure {
                bytes: b,
                world: w,
                seconds,
                algbw_gbps: algbw,
                busbw_gbps: algbw * 2.0 * (w - 1) as f64 / w as f64,
                copy_fraction: median(
                    (0..ALLREDUCE_TRIALS)
                        .map(|t| busbw(b, w, secs[t][wi][si]) / copy[t][si])
                        .collect(),
                ),
            });
        }
    }
    Ok(AllreduceReport {
        loopback_copy_gbps: sizes
            .iter()
            .enumerate()
            .map(|(si, &b)| (b, median(copy.iter().map(|c| c[si]).collect())))
            .collect(),
        allreduce: out,
    })
}

/// Runs [`time_allreduce`] on `world` ranks that are threads of this process.
pub fn threads_world(world: usize, sizes: &[usize]) -> Result<Vec<f64>> {
    let mut all = with_local_ring(world, |c| time_allreduce(c, sizes))?;
    Ok(all.swap_remove(0))
}

/// Training throughput report.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    /// Ranks (threads of this process).
    pub workers: usize,
    /// Steps timed.
    pub steps: u64,
    /// Global batch.
    pub batch_size: usize,
    /// Training examples per second (all ranks).
    pub examples_per_sec: f64,
    /// Held-out AUC after the run.
    pub auc: Option<f64>,
}

/// Trains the synthetic wide & deep model (user and item ids hashed to 100k buckets, 16-dim
/// embeddings, 2 numeric columns, MLP 256-128-1, batch 1024, Adam) for `steps` steps with
/// `workers` ranks as threads of this process, and reports examples/s.
pub fn bench_train(workers: usize, steps: u64, rows: usize) -> Result<TrainBench> {
    let data = synthetic_ctr(rows, 8, 1);
    let mut cfg = synthetic_config();
    cfg.steps = Some(steps);
    cfg.log_every = 0;
    cfg.checkpoint_every = 0;
    let dir = std::env::temp_dir().join(format!("kiln-bench-train-{}", std::process::id()));
    let source: Arc<dyn crate::ShardSource> = Arc::new(data.source);
    let reports: Vec<TrainReport> = if workers == 1 {
        vec![train(
            &TrainOptions::new(cfg.clone(), source, &dir),
            &mut Comm::single(),
        )?]
    } else {
        with_local_ring(workers, |c| {
            train(&TrainOptions::new(cfg.clone(), source.clone(), &dir), c)
        })?
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(TrainBench {
        workers,
        steps,
        batch_size: cfg.batch_size,
        examples_per_sec: reports[0].examples_per_sec,
        auc: reports[0].metrics.as_ref().map(|m| m.auc),
    })
}
