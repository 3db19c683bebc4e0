//! The training job on one rank: fit the transform (statistics merged across ranks), train
//! with all-reduced gradients, check that ranks agree, checkpoint, evaluate and export.
//!
//! Steps: `steps`, or `epochs * floor(training rows of all ranks / global batch)`. Every rank
//! takes exactly that many steps; its loader wraps into the next epoch when its own shards run
//! out, so uneven shards never deadlock (ranks with fewer rows see theirs slightly more often).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checkpoint::{
    self, Checkpoint, RunIdentity, loader_state_bytes, loader_state_from_bytes,
};
use crate::comm::Comm;
use crate::config::{EvalSplit, TrainConfig};
use crate::device::ComputeDevice;
use crate::eval::{Metrics, metrics};
use crate::events::{self, EventWriter};
use crate::export::{self, ModelFile};
use crate::loader::{Loader, LoaderConfig, LoaderState, assign_shards};
use crate::model::{ModelSpec, Params, SparseGrad, StepGrads, forward_backward};
use crate::optim::Optimizer;
use crate::resident::ResidentModel;
use crate::source::ShardSource;
use crate::transform::{RowFilter, Stats, Transform};
use crate::{Error, Result};

/// What to train and where.
pub struct TrainOptions {
    /// The `[train]` table.
    pub config: TrainConfig,
    /// Training data.
    pub source: Arc<dyn ShardSource>,
    /// Model directory (checkpoints under `checkpoints/`).
    pub model_dir: PathBuf,
    /// Continue from the latest checkpoint if there is one.
    pub resume: bool,
    /// Where rank 0 reports progress ([`StderrProgress`] prints lines); `None`: silent.
    pub progress: Option<Arc<dyn TrainProgress>>,
    /// Stop right after the checkpoint of this step (tests of resuming).
    pub stop_after: Option<u64>,
    /// Socket timeout of collectives during training.
    pub step_timeout: Duration,
    /// Called on rank 0 right after each checkpoint is written, with its path (e.g. to copy
    /// it to an object store); an error stops training. Checkpoints are written and this
    /// hook runs on a background thread, so neither counts against the other ranks' peer
    /// timeout; a checkpoint due while the previous one is still being written replaces any
    /// checkpoint still waiting (the newest is kept; the last one of a run is always written).
    pub on_checkpoint: Option<CheckpointHook>,
}

/// Progress of a training run, reported by rank 0 ([`TrainOptions::progress`]).
pub trait TrainProgress: Send + Sync {
    /// A line about the run: its setup, the summary, the held-out metrics.
    fn line(&self, text: &str);
    /// Training finished `step` of `total`; `log` on logging steps (every `log_every` and
    /// the last).
    fn step(&self, step: u64, total: u64, log: Option<&StepLog>);
}

/// What a logging step reports: the loss, throughput and learning rate since the last one.
#[derive(Debug, Clone, Copy)]
pub struct StepLog {
    /// Mean training loss over the steps since the last logging step.
    pub loss: f64,
    /// Examples per second over those steps.
    pub examples_per_sec: f64,
    /// Learning rate of this step.
    pub lr: f64,
}

/// [`TrainProgress`] as plain stderr lines: each line, and `step N/T  loss L  E examples/s
/// lr R` per logging step.
#[derive(Debug, Default)]
pub struct StderrProgress;

impl TrainProgress for StderrProgress {
    fn line(&self, text: &str) {
        eprintln!("{text}");
    }

    fn step(&self, step: u64, total: u64, log: Option<&StepLog>) {
        if let Some(l) = log {
            eprintln!("{}", step_line(step, total, l));
        }
    }
}

/// `step N/T  loss L  E examples/s  lr R`.
pub fn step_line(step: u64, total: u64, l: &StepLog) -> String {
    format!(
        "step {step}/{total}  loss {:.5}  {:.0} examples/s  lr {:.2e}",
        l.loss, l.examples_per_sec, l.lr
    )
}

/// See [`TrainOptions::on_checkpoint`].
pub type CheckpointHook = Arc<dyn Fn(&std::path::Path) -> Result<()> + Send + Sync>;

impl TrainOptions {
    /// Options with defaults for everything but the essentials.
    pub fn new(
        config: TrainConfig,
        source: Arc<dyn ShardSource>,
        model_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            config,
            source,
            model_dir: model_dir.into(),
            resume: false,
            progress: None,
            stop_after: None,
            step_timeout: Duration::from_secs(30),
            on_checkpoint: None,
        }
    }
}

/// Outcome of a training run on one rank.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Held-out metrics (rank 0, when there is a split).
    pub metrics: Option<Metrics>,
    /// Training examples per second over all ranks (wall time of the step loop).
    pub examples_per_sec: f64,
    /// Number of workers.
    pub workers: usize,
    /// Steps of the run.
    pub steps: u64,
    /// Step the run started at (non-zero when resumed).
    pub start_step: u64,
    /// Model directory.
    pub model_dir: String,
    /// Mean training loss over the last logging window.
    pub train_loss: f64,
    /// Checksum of the final parameters (identical on every rank).
    pub param_checksum: String,
    /// This rank.
    pub rank: usize,
    /// Whether the run stopped early (`stop_after`).
    pub stopped_early: bool,
    /// Held-out logits in evaluation order (rank 0).
    #[serde(skip)]
    pub eval_logits: Vec<f32>,
    /// Final parameters.
    #[serde(skip)]
    pub params: Option<Params>,
}

fn fit_transform(
    config: &TrainConfig,
    source: &Arc<dyn ShardSource>,
    shards: &[usize],
    comm: &mut Comm,
) -> Result<Transform> {
    let mut stats = Stats::new(config);
    for &s in shards {
        let mut start = 0u64;
        for b in source.read_shard(s)? {
            let b = b?;
            comm.check_peers()?;
            stats.add(config, &b).map_err(|e| e.in_shard(s, start))?;
            start += b.num_rows() as u64;
        }
    }
    let mine = serde_json::to_vec(&stats).expect("json");
    let all = comm.allgather_bytes(&mine)?;
    let mut merged = Stats::new(config);
    for (r, b) in all.iter().enumerate() {
        let s: Stats = serde_json::from_slice(b)
            .map_err(Error::comm_failed(format!("statistics from rank {r}")))?;
        merged.merge(&s);
    }
    merged.finish(config)
}

/// Where the parameters and the optimizer state live while training: host buffers (the CPU
/// path: the MLP in Burn `flex`, the table and the optimizers on the host), or a device
/// ([`ResidentModel`]: everything on the GPU).
// One value per run, made once and never moved in the step loop: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Trainable {
    Host { params: Params, opt: Optimizer },
    Device(ResidentModel),
}

impl Trainable {
    /// Keeps the state on the host for the CPU, else uploads it to `device` (selected).
    fn place(params: Params, opt: Optimizer, device: ComputeDevice) -> Result<Self> {
        Ok(match device {
            ComputeDevice::Cpu => Trainable::Host { params, opt },
            _ => Trainable::Device(ResidentModel::upload(
                &params,
                &opt,
                &crate::device::infer_device(),
            )?),
        })
    }

    fn forward_backward(&self, rows: &crate::transform::Prepared, scale: f32) -> Result<StepGrads> {
        match self {
            Trainable::Host { params, .. } => forward_backward(params, rows, scale),
            Trainable::Device(m) => m.forward_backward(rows, scale),
        }
    }

    fn apply(&mut self, dense: &[f32], sparse: &SparseGrad, lr: f64, t: u64) {
        match self {
            Trainable::Host { params, opt } => opt.step(params, dense, sparse, lr, t),
            Trainable::Device(m) => m.apply(dense, sparse, lr, t),
        }
    }

    /// The parameters (read back from the device there).
    fn params(&self) -> Result<std::borrow::Cow<'_, Params>> {
        Ok(match self {
            Trainable::Host { params, .. } => std::borrow::Cow::Borrowed(params),
            Trainable::Device(m) => std::borrow::Cow::Owned(m.to_host()?.0),
        })
    }

    /// Copies of the parameters and optimizer state, for a checkpoint.
    fn state(&self) -> Result<(Params, Optimizer)> {
        match self {
            Trainable::Host { params, opt } => Ok((params.clone(), opt.clone())),
            Trainable::Device(m) => m.to_host(),
        }
    }

    fn into_params(self) -> Result<Params> {
        match self {
            Trainable::Host { params, .. } => Ok(params),
            Trainable::Device(m) => Ok(m.to_host()?.0),
        }
    }
}

fn check_same(comm: &mut Comm, step: u64, params: &Params) -> Result<u64> {
    let c = params.checksum();
    let all = comm.allgather_bytes(&c.to_le_bytes())?;
    for (r, b) in all.iter().enumerate() {
        let theirs = u64::from_le_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| Error::Comm("bad checksum message".into()))?,
        );
        if theirs != c {
            return Err(Error::Divergence {
                step,
                message: format!(
                    "rank {r} has parameter checksum {theirs:016x}, rank {} has {c:016x}",
                    comm.rank()
                ),
            });
        }
    }
    Ok(c)
}

/// Trains on this rank. `comm` connects the ranks (use [`Comm::single`] for one process).
pub fn train(opts: &TrainOptions, comm: &mut Comm) -> Result<TrainReport> {
    let cfg = &opts.config;
    cfg.validate()?;
    crate::device::select_device(cfg.device)?;
    let (rank, world) = (comm.rank(), comm.world());
    if !cfg.batch_size.is_multiple_of(world) {
        return Err(Error::Config(format!(
            "batch_size {} is not divisible by {world} workers",
            cfg.batch_size
        )));
    }
    let local_batch = cfg.batch_size / world;
    let shard_rows = opts.source.shard_rows();
    let assignment = assign_shards(&shard_rows, world);
    let my_shards = assignment[rank].clone();
    comm.set_keepalive(opts.step_timeout)?;
    let identity = RunIdentity::new(cfg, opts.source.as_ref());

    // The latest checkpoint, read by rank 0 and sent to every rank; each checks that it
    // continues this run (same data, seed, config, workers).
    let ckpt = if opts.resume {
        read_checkpoint(opts, comm)?
    } else {
        if rank == 0 {
            checkpoint::clear_latest(&opts.model_dir)?;
            // A fresh run's TensorBoard curves do not mix with an earlier run's.
            events::clear(&opts.model_dir.join(events::LOGS_DIR))?;
        }
        None
    };
    if let Some((path, c)) = &ckpt {
        let refuse = |message: String| Error::Resume {
            checkpoint: path.clone(),
            message,
        };
        match &c.run {
            Some(run) => {
                if let Some(m) = run.resume_mismatch(&identity) {
                    return Err(refuse(m));
                }
            }
            None => tracing::warn!(
                "{}: written by an older Kiln, without its dataset, seed and config: they are not checked",
                path.display()
            ),
        }
        if c.loaders.len() != world {
            return Err(refuse(format!(
                "the checkpoint was written by {} workers; resume with --workers {}",
                c.loaders.len(),
                c.loaders.len()
            )));
        }
    }

    let t_fit = Instant::now();
    comm.set_timeout(Duration::from_secs(3600))?;
    let transform = match &ckpt {
        Some((_, c)) => c.transform.clone(),
        None => fit_transform(cfg, &opts.source, &my_shards, comm)?,
    };
    comm.set_timeout(opts.step_timeout)?;
    if transform.train_rows == 0 {
        return Err(Error::Data(format!(
            "no training rows in {}",
            opts.source.describe()
        )));
    }
    let total_steps = match cfg.steps {
        Some(s) => s,
        None => (cfg.epochs.unwrap_or(1) * (transform.train_rows / cfg.batch_size as u64)).max(1),
    };
    let spec = ModelSpec::new(cfg, &transform);
    let loader_config = |r: usize| LoaderConfig {
        seed: cfg.seed,
        rank: r,
        shards: assignment[r].clone(),
        batch_rows: local_batch,
        shuffle_buffer: cfg.shuffle_buffer,
        read_ahead: cfg.read_ahead,
        end_batch: total_steps,
        snapshot_every: cfg.checkpoint_every,
    };
    let (params, opt, start_step, loader_state) = match ckpt {
        Some((path, c)) => {
            if c.total_steps != total_steps || c.params.spec != spec {
                return Err(Error::Resume {
                    checkpoint: path,
                    message: format!(
                        "the checkpoint is of a different run ({} steps, spec {:?}); this config gives {total_steps} steps; start fresh without --resume",
                        c.total_steps, c.params.spec
                    ),
                });
            }
            // Every rank checks every rank's loader state, so that all fail alike.
            for (r, state) in c.loaders.iter().enumerate() {
                state
                    .check(&transform, &loader_config(r), &shard_rows)
                    .map_err(|m| Error::Resume {
                        checkpoint: path.clone(),
                        message: format!("corrupt checkpoint: loader state of rank {r}: {m}"),
                    })?;
            }
            let state = c.loaders.into_iter().nth(rank);
            (c.params, c.optimizer, c.step, state)
        }
        None => {
            let p = Params::init(&spec, cfg.seed);
            let o = Optimizer::new(&cfg.optimizer, &p);
            (p, o, 0, None)
        }
    };
    // Rank 0 reports; the other ranks are silent.
    let progress = opts.progress.as_deref().filter(|_| rank == 0);
    if let Some(p) = progress {
        p.line(&format!(
            "kiln train: {} workers, {} training rows ({} held out), {total_steps} steps of {} rows, model {:?} ({} dense + {} table floats){}; transform in {:.1}s",
            world,
            transform.train_rows,
            transform.eval_rows,
            cfg.batch_size,
            cfg.model,
            params.dense.len(),
            params.table.len(),
            if start_step > 0 {
                format!(", resuming at step {start_step}")
            } else {
                String::new()
            },
            t_fit.elapsed().as_secs_f64()
        ));
    }

    let transform = Arc::new(transform);
    let mut loader = Loader::start(
        opts.source.clone(),
        transform.clone(),
        loader_config(rank),
        loader_state,
    )?;
    let run = CheckpointRun {
        identity,
        total_steps,
        transform: transform.clone(),
        writer: if rank == 0 {
            Some(CheckpointWriter::start(
                opts.model_dir.clone(),
                opts.on_checkpoint.clone(),
            )?)
        } else {
            None
        },
    };

    // TensorBoard event file of this run (rank 0): `<model dir>/logs/events.out.tfevents.*`.
    let mut event_log = if rank == 0 {
        Some(EventWriter::create(&opts.model_dir.join(events::LOGS_DIR))?)
    } else {
        None
    };

    let scale = 1.0 / cfg.batch_size as f32;
    let width = spec.row_width();
    let mut dense_buf = vec![0.0f32; params.dense.len() + 1];
    let mut model = Trainable::place(params, opt, cfg.device)?;
    let t0 = Instant::now();
    let mut window = (0.0f64, 0u64, Instant::now());
    let mut last_loss = f64::NAN;
    let mut step = start_step;
    let mut stopped_early = false;
    while step < total_steps {
        let batch = next_batch(&mut loader, comm)?;
        debug_assert_eq!(batch.index, step);
        let g = model.forward_backward(&batch.rows, scale)?;
        dense_buf[..g.dense.len()].copy_from_slice(&g.dense);
        dense_buf[g.dense.len()] = g.loss_sum as f32;
        comm.allreduce_sum(&mut dense_buf)?;
        let sparse = if world > 1 {
            let parts = comm.allgather_bytes(&g.sparse.to_bytes())?;
            let parts: Vec<SparseGrad> = parts
                .iter()
                .map(|b| SparseGrad::from_bytes(b, width))
                .collect::<Result<_>>()?;
            SparseGrad::merge(&parts, width)
        } else {
            g.sparse
        };
        let lr = cfg.optimizer.lr() * cfg.lr_schedule.factor(step, total_steps);
        let n = dense_buf.len() - 1;
        model.apply(&dense_buf[..n], &sparse, lr, step + 1);
        window.0 += dense_buf[n] as f64;
        window.1 += cfg.batch_size as u64;
        step += 1;

        if cfg.checksum_every > 0 && step.is_multiple_of(cfg.checksum_every) && world > 1 {
            check_same(comm, step, model.params()?.as_ref())?;
        }
        if let Some(state) = batch.state_after {
            write_checkpoint(&run, comm, step, &model, state)?;
        }
        let logging =
            cfg.log_every > 0 && (step.is_multiple_of(cfg.log_every) || step == total_steps);
        if logging {
            last_loss = window.0 / window.1.max(1) as f64;
            let window_eps = window.1 as f64 / window.2.elapsed().as_secs_f64().max(1e-9);
            if let Some(p) = progress {
                let log = StepLog {
                    loss: last_loss,
                    examples_per_sec: window_eps,
                    lr,
                };
                p.step(step, total_steps, Some(&log));
            }
            if let Some(ev) = event_log.as_mut() {
                ev.scalars(
                    step,
                    &[
                        (events::tags::TRAIN_LOSS, last_loss),
                        (events::tags::LEARNING_RATE, lr),
                        (events::tags::EXAMPLES_PER_SEC, window_eps),
                    ],
                )?;
            }
            window = (0.0, 0, Instant::now());
        } else if let Some(p) = progress {
            p.step(step, total_steps, None);
        }
        if opts.stop_after == Some(step) {
            stopped_early = true;
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    drop(loader);
    let params = model.into_params()?;
    let checksum = check_same(comm, step, &params)?;
    // Every checkpoint is on disk (and through the hook) before the model is exported.
    if let Some(w) = run.writer {
        w.finish()?;
    }
    let examples_per_sec = (step - start_step) as f64 * cfg.batch_size as f64 / elapsed.max(1e-9);
    if let Some(p) = progress {
        p.line(&format!(
            "trained {} steps in {elapsed:.1}s: {examples_per_sec:.0} examples/s",
            step - start_step
        ));
    }
    let mut report = TrainReport {
        metrics: None,
        examples_per_sec,
        workers: world,
        steps: step,
        start_step,
        model_dir: opts.model_dir.display().to_string(),
        train_loss: last_loss,
        param_checksum: format!("{checksum:016x}"),
        rank,
        stopped_early,
        eval_logits: Vec::new(),
        params: None,
    };
    if stopped_early {
        report.params = Some(params);
        return Ok(report);
    }
    if rank == 0 {
        if cfg.eval != EvalSplit::None {
            let (logits, labels, _) =
                export::score(&params, &transform, &opts.source, RowFilter::Eval)?;
            let m = metrics(&logits, &labels);
            if let Some(p) = progress {
                p.line(&format!(
                    "held-out: {} rows  auc {}  logloss {:.4}  accuracy {:.4}  mean prediction {:.4} vs label {:.4}",
                    m.rows,
                    m.auc
                        .map_or_else(|| "undefined (one class)".into(), |a| format!("{a:.4}")),
                    m.logloss,
                    m.accuracy,
                    m.mean_prediction,
                    m.mean_label
                ));
            }
            if let Some(ev) = event_log.as_mut() {
                let mut scalars = vec![
                    (events::tags::EVAL_LOG_LOSS, m.logloss),
                    (events::tags::EVAL_ACCURACY, m.accuracy),
                ];
                if let Some(auc) = m.auc {
                    scalars.insert(0, (events::tags::EVAL_AUC, auc));
                }
                ev.scalars(step, &scalars)?;
            }
            report.metrics = Some(m);
            report.eval_logits = logits;
        }
        // The event file is complete (and synced) before the export moves `logs/` into the
        // new model directory.
        if let Some(ev) = event_log.take() {
            ev.finish()?;
        }
        let file = ModelFile {
            format: "kiln-model-v1".into(),
            spec: spec.clone(),
            config: cfg.clone(),
            steps: step,
            workers: world,
        };
        export::export(
            &opts.model_dir,
            &file,
            &transform,
            &params,
            report.metrics.as_ref(),
        )?;
    }
    report.params = Some(params);
    Ok(report)
}

/// The next batch of the loader. With peers, it waits in slices and asks the group between
/// them whether a rank was lost, so that a rank blocked on slow reads still fails promptly,
/// naming the rank that died.
fn next_batch(loader: &mut Loader, comm: &Comm) -> Result<crate::loader::Batch> {
    if comm.world() == 1 {
        return loader.next_batch();
    }
    loop {
        if let Some(b) = loader.next_batch_timeout(Duration::from_millis(100))? {
            return Ok(b);
        }
        comm.check_peers()?;
    }
}

/// The latest checkpoint of `opts.model_dir`: rank 0 reads it and sends its path and bytes
/// to every rank; every rank parses and checks it.
fn read_checkpoint(opts: &TrainOptions, comm: &mut Comm) -> Result<Option<(PathBuf, Checkpoint)>> {
    let mut msg = Vec::new();
    if comm.rank() == 0
        && let Some((path, bytes)) = checkpoint::latest_bytes(&opts.model_dir)?
    {
        let p = path.to_string_lossy();
        msg.extend_from_slice(&(p.len() as u64).to_le_bytes());
        msg.extend_from_slice(p.as_bytes());
        msg.extend_from_slice(&bytes);
    }
    if comm.world() > 1 {
        comm.set_timeout(Duration::from_secs(600))?;
        msg = comm.allgather_bytes(&msg)?.swap_remove(0);
    }
    if msg.is_empty() {
        return Ok(None);
    }
    let bad = || Error::Comm("rank 0 sent a malformed checkpoint message".into());
    let n = u64::from_le_bytes(msg.get(..8).ok_or_else(bad)?.try_into().expect("8")) as usize;
    let path =
        PathBuf::from(std::str::from_utf8(msg.get(8..8 + n).ok_or_else(bad)?).map_err(|_| bad())?);
    let c = Checkpoint::from_bytes(&msg[8 + n..], &path)?;
    Ok(Some((path, c)))
}

/// What every checkpoint of a run shares, and rank 0's writer.
struct CheckpointRun {
    identity: RunIdentity,
    total_steps: u64,
    transform: Arc<Transform>,
    writer: Option<CheckpointWriter>,
}

fn write_checkpoint(
    run: &CheckpointRun,
    comm: &mut Comm,
    step: u64,
    model: &Trainable,
    mine: LoaderState,
) -> Result<()> {
    let states = comm.allgather_bytes(&loader_state_bytes(&mine))?;
    if let Some(w) = &run.writer {
        let (params, optimizer) = model.state()?;
        let loaders = states
            .iter()
            .map(|b| loader_state_from_bytes(b))
            .collect::<Result<Vec<_>>>()?;
        w.submit(Checkpoint {
            run: Some(run.identity.clone()),
            step,
            total_steps: run.total_steps,
            transform: (*run.transform).clone(),
            params,
            optimizer,
            loaders,
        })?;
    }
    Ok(())
}

/// Rank 0's checkpoint writer: a thread that writes each submitted checkpoint and runs the
/// hook (an upload, say), so that neither holds up the step loop, whose peers are waiting in
/// the next collective with their peer timeout. At most one checkpoint waits: a newer one
/// replaces it. The first failure is returned by the next [`submit`](Self::submit) or by
/// [`finish`](Self::finish).
struct CheckpointWriter {
    slot: Arc<(Mutex<WriterSlot>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WriterSlot {
    pending: Option<Checkpoint>,
    closed: bool,
    error: Option<Error>,
}

impl CheckpointWriter {
    fn start(model_dir: PathBuf, hook: Option<CheckpointHook>) -> Result<Self> {
        let slot = Arc::new((Mutex::new(WriterSlot::default()), Condvar::new()));
        let s = slot.clone();
        let name = "kiln-checkpoint-writer".to_string();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || write_loop(&s, &model_dir, hook.as_ref()))
            .map_err(|source| Error::Thread { name, source })?;
        Ok(Self {
            slot,
            handle: Some(handle),
        })
    }

    fn submit(&self, c: Checkpoint) -> Result<()> {
        let (m, cv) = &*self.slot;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = g.error.take() {
            return Err(e);
        }
        if let Some(old) = g.pending.replace(c) {
            tracing::info!(
                "checkpoint of step {} not written: the previous checkpoint is still being written, and a newer one is due",
                old.step
            );
        }
        cv.notify_all();
        Ok(())
    }

    /// Writes what is waiting, stops the thread and returns the first failure.
    fn finish(mut self) -> Result<()> {
        self.close();
        let (m, _) = &*self.slot;
        match m.lock().unwrap_or_else(|p| p.into_inner()).error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn close(&mut self) {
        let (m, cv) = &*self.slot;
        m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for CheckpointWriter {
    /// A run that fails still finishes writing the checkpoint it had taken (resumable).
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    slot: &(Mutex<WriterSlot>, Condvar),
    model_dir: &Path,
    hook: Option<&CheckpointHook>,
) {
    let (m, cv) = slot;
    loop {
        let c = {
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            while g.pending.is_none() && !g.closed {
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            match g.pending.take() {
                Some(c) => c,
                None => return,
            }
        };
        let r = c.write(model_dir).and_then(|path| {
            tracing::debug!("checkpoint {}", path.display());
            hook.map_or(Ok(()), |h| h(&path))
        });
        if let Err(e) = r {
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            g.error = Some(e);
            g.pending = None;
            return;
        }
    }
}
