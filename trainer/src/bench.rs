//! Benchmarks: all-reduce bus bandwidth next to a plain loopback TCP copy, and training
//! throughput on synthetic CTR data (the crate's `fixtures`, public only with the
//! `test-support` feature).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::comm::Comm;
use crate::config::OptimizerConfig;
use crate::device::ComputeDevice;
use crate::fixtures::{synthetic_config, synthetic_ctr, with_local_ring};
use crate::train::{TrainOptions, TrainReport, train};
use crate::{Error, Result};

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

fn loopback_copy(bytes: usize, reps: usize) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(Error::comm_io("loopback copy: binding"))?;
    let addr = l
        .local_addr()
        .map_err(Error::comm_io("loopback copy: the listener's address"))?;
    let data = vec![7u8; bytes];
    let t = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        for _ in 0..reps {
            s.write_all(&data)?;
        }
        Ok(())
    });
    let (mut c, _) = l
        .accept()
        .map_err(Error::comm_io("loopback copy: accepting"))?;
    let mut buf = vec![0u8; bytes.min(1 << 20)];
    let t0 = Instant::now();
    let mut left = bytes * reps;
    while left > 0 {
        // (The context is built only on failure: this loop is timed.)
        let n = c
            .read(&mut buf)
            .map_err(|e| Error::comm_io("loopback copy: receiving")(e))?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    let dt = t0.elapsed().as_secs_f64();
    t.join()
        .expect("writer")
        .map_err(Error::comm_io("loopback copy: sending"))?;
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
        let times: Vec<f64> =
            serde_json::from_slice(&bytes).map_err(Error::comm_failed("all-reduce bench"))?;
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
    /// Where the step ran (`cpu`, `wgpu:cpu`, ...).
    pub device: String,
    /// `dense` (Keras's Adam: every table row at every step) or `lazy` (touched rows only).
    pub adam: &'static str,
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
/// embeddings, 2 numeric columns, MLP 256-128-1, batch 1024, Adam, dense or `lazy`) for
/// `steps` steps on `device` with `workers` ranks as threads of this process, and reports
/// examples/s. (The device is chosen once per process: every call of a process must pass the
/// same one.)
pub fn bench_train(
    workers: usize,
    steps: u64,
    rows: usize,
    device: ComputeDevice,
    lazy: bool,
) -> Result<TrainBench> {
    let data = synthetic_ctr(rows, 8, 1);
    let mut cfg = synthetic_config();
    cfg.device = device;
    if let OptimizerConfig::Adam { lazy: l, .. } = &mut cfg.optimizer {
        *l = lazy;
    }
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
        device: device.to_string(),
        adam: if lazy { "lazy" } else { "dense" },
        workers,
        steps,
        batch_size: cfg.batch_size,
        examples_per_sec: reports[0].examples_per_sec,
        auc: reports[0].metrics.as_ref().and_then(|m| m.auc),
    })
}
