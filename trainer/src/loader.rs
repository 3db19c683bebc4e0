//! The data loader: balanced shard assignment, seeded shuffling (shard order per epoch plus a
//! bounded shuffle buffer, drained at the end of each epoch), decoding and batching on a
//! background thread with a bounded read-ahead channel, and a position that checkpoints save
//! and restore exactly.
//!
//! Each rank streams its shards epoch after epoch without a break: a batch may span the end
//! of one epoch and the start of the next, so every rank can take any number of steps (the
//! trainer fixes the step count globally, so ranks with fewer rows simply wrap sooner).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::source::ShardSource;
use crate::transform::{Prepared, RowFilter, Transform};
use crate::{Error, Result};

/// Assigns shards to `world` ranks: largest first (ties by index) into the least-loaded rank
/// (ties by rank). No rank ends with more than one shard's worth of rows above another.
/// Each rank's list is sorted by shard index.
pub fn assign_shards(rows: &[u64], world: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[b].cmp(&rows[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; world];
    let mut out = vec![Vec::new(); world];
    for s in order {
        let r = (0..world).min_by_key(|&r| (load[r], r)).expect("world > 0");
        load[r] += rows[s];
        out[r].push(s);
    }
    for o in &mut out {
        o.sort_unstable();
    }
    out
}

/// Where a rank's loader stands, between two batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderPosition {
    /// Epoch being read.
    pub epoch: u64,
    /// Index into this epoch's shard order.
    pub shard_pos: usize,
    /// Rows of that shard already read (all rows, held-out ones included).
    pub rows_in_shard: u64,
    /// Word position of the shuffle RNG (decimal u128).
    pub rng_word_pos: String,
    /// Batches emitted so far.
    pub batches: u64,
}

/// A position plus the shuffle buffer's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderState {
    /// Position.
    pub position: LoaderPosition,
    /// Rows waiting in the shuffle buffer.
    pub buffer: Prepared,
}

/// Settings of one rank's loader.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Seed of shard orders and shuffling.
    pub seed: u64,
    /// This rank (seeds differ per rank).
    pub rank: usize,
    /// Shards of this rank.
    pub shards: Vec<usize>,
    /// Rows per batch.
    pub batch_rows: usize,
    /// Shuffle buffer rows.
    pub shuffle_buffer: usize,
    /// Batches decoded ahead.
    pub read_ahead: usize,
    /// Batch index at which to stop (exclusive).
    pub end_batch: u64,
    /// Attach a [`LoaderState`] to batch `i` when `(i + 1) % snapshot_every == 0` (0: never)
    /// and to the last batch.
    pub snapshot_every: u64,
}

/// One batch of transformed rows.
#[derive(Debug)]
pub struct Batch {
    /// 0-based batch index (= training step).
    pub index: u64,
    /// The rows.
    pub rows: Prepared,
    /// The loader state right after this batch, when a snapshot was requested.
    pub state_after: Option<LoaderState>,
}

/// A running loader: a background thread filling a bounded channel.
pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts reading at `state` (or the beginning).
    pub fn start(
        source: Arc<dyn ShardSource>,
        transform: Arc<Transform>,
        config: LoaderConfig,
        state: Option<LoaderState>,
    ) -> Result<Loader> {
        if config.shards.is_empty() && config.end_batch > 0 {
            return Err(Error::Data(format!(
                "rank {} was assigned no shards: fewer shards than workers",
                config.rank
            )));
        }
        let mut w = Worker::new(source, transform, config, state)?;
        let (tx, rx) = sync_channel(w.cfg.read_ahead);
        let name = format!("kiln-loader-{}", w.cfg.rank);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Err(e) = w.run(&|b| tx.send(Ok(b)).is_ok()) {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|source| Error::Thread { name, source })?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
        })
    }

    /// The next batch (blocks while the background thread decodes).
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.rx
            .as_ref()
            .expect("running")
            .recv()
            .map_err(|_| Error::Data("the loader stopped early".into()))?
    }

    /// The next batch, or `None` if none is ready within `wait` (so that a caller blocked on
    /// slow reads can look at other things, e.g. whether a peer died, and wait again).
    pub fn next_batch_timeout(&mut self, wait: std::time::Duration) -> Result<Option<Batch>> {
        match self.rx.as_ref().expect("running").recv_timeout(wait) {
            Ok(b) => b.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(Error::Data("the loader stopped early".into()))
            }
        }
    }
}

impl Drop for Loader {
    /// Stops the background thread: it ends at its next batch, when it finds the channel
    /// closed. A thread that has finished is joined; one still blocked in a read (a store
    /// that hangs) is left to end on its own, so that dropping a loader never hangs.
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take()
            && h.is_finished()
        {
            let _ = h.join();
        }
    }
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&a.to_le_bytes());
    bytes[16..].copy_from_slice(&b.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// This rank's shard order in `epoch`.
pub fn epoch_order(seed: u64, rank: usize, epoch: u64, shards: &[usize]) -> Vec<usize> {
    let mut order = shards.to_vec();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
        seed,
        rank as u64,
        epoch,
    )));
    order
}

/// The shuffle buffer's RNG of `rank`, at word position 0.
fn shuffle_rng(seed: u64, rank: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed, rank as u64, u64::MAX))
}

impl LoaderPosition {
    /// The shuffle RNG's word position: a decimal `u128` that the RNG can take (ChaCha8's
    /// stream position has 68 bits; a larger value would silently wrap).
    pub fn word_pos(&self) -> std::result::Result<u128, String> {
        let bad = || {
            format!(
                "shuffle RNG position `{}` is not a stream position (a decimal number below 2^68)",
                self.rng_word_pos
            )
        };
        let pos: u128 = self.rng_word_pos.parse().map_err(|_| bad())?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        rng.set_word_pos(pos);
        if rng.get_word_pos() != pos {
            return Err(bad());
        }
        Ok(pos)
    }
}

impl LoaderState {
    /// Checks that this state can continue a loader of `cfg` with `transform` over shards of
    /// `shard_rows` rows (what a corrupt or foreign checkpoint would break): the RNG position,
    /// the shard cursor and the rows read in that shard, and the shuffle buffer's shape, ids
    /// and labels. The message says what is out of range.
    pub fn check(
        &self,
        transform: &Transform,
        cfg: &LoaderConfig,
        shard_rows: &[u64],
    ) -> std::result::Result<(), String> {
        let p = &self.position;
        p.word_pos()?;
        if p.shard_pos > cfg.shards.len() {
            return Err(format!(
                "shard cursor {} is past this rank's {} shards",
                p.shard_pos,
                cfg.shards.len()
            ));
        }
        let in_shard = if p.shard_pos < cfg.shards.len() {
            let order = epoch_order(cfg.seed, cfg.rank, p.epoch, &cfg.shards);
            let shard = order[p.shard_pos];
            let rows = shard_rows.get(shard).copied().ok_or_else(|| {
                format!(
                    "shard {shard} is not in the dataset ({} shards)",
                    shard_rows.len()
                )
            })?;
            Some((shard, rows))
        } else {
            None
        };
        match in_shard {
            Some((shard, rows)) if p.rows_in_shard > rows => {
                return Err(format!(
                    "{} rows read in shard {shard}, which has {rows}",
                    p.rows_in_shard
                ));
            }
            None if p.rows_in_shard > 0 => {
                return Err(format!(
                    "{} rows read past the end of the epoch's shards",
                    p.rows_in_shard
                ));
            }
            _ => {}
        }
        self.buffer
            .check(transform)
            .map_err(|m| format!("shuffle buffer: {m}"))
    }
}

struct Worker {
    source: Arc<dyn ShardSource>,
    transform: Arc<Transform>,
    cfg: LoaderConfig,
    rng: ChaCha8Rng,
    buffer: Prepared,
    pos: LoaderPosition,
}

impl Worker {
    fn new(
        source: Arc<dyn ShardSource>,
        transform: Arc<Transform>,
        cfg: LoaderConfig,
        state: Option<LoaderState>,
    ) -> Result<Self> {
        let mut rng = shuffle_rng(cfg.seed, cfg.rank);
        let nf = transform.categorical.len();
        let nd = transform.dense_width();
        let (buffer, pos) = match state {
            Some(s) => {
                let rows = source.shard_rows();
                s.check(&transform, &cfg, &rows)
                    .map_err(|m| Error::Data(format!("loader state of rank {}: {m}", cfg.rank)))?;
                rng.set_word_pos(s.position.word_pos().map_err(Error::Data)?);
                (s.buffer, s.position)
            }
            None => (
                Prepared::new(nf, nd),
                LoaderPosition {
                    epoch: 0,
                    shard_pos: 0,
                    rows_in_shard: 0,
                    rng_word_pos: "0".into(),
                    batches: 0,
                },
            ),
        };
        Ok(Worker {
            source,
            transform,
            cfg,
            rng,
            buffer,
            pos,
        })
    }

    fn run(&mut self, emit: &dyn Fn(Batch) -> bool) -> Result<()> {
        let nf = self.transform.categorical.len();
        let nd = self.transform.dense_width();
        let mut out = Prepared::new(nf, nd);
        let mut chunk = Prepared::new(nf, nd);
        let mut rows_this_epoch_pass = 0u64;
        while self.pos.batches < self.cfg.end_batch {
            let order = epoch_order(
                self.cfg.seed,
                self.cfg.rank,
                self.pos.epoch,
                &self.cfg.shards,
            );
            let whole_pass = self.pos.shard_pos == 0 && self.pos.rows_in_shard == 0;
            while self.pos.shard_pos < order.len() {
                let shard = order[self.pos.shard_pos];
                let skip = self.pos.rows_in_shard;
                let mut start = 0u64;
                for batch in self.source.read_shard(shard)? {
                    let batch = batch?;
                    let len = batch.num_rows() as u64;
                    if start + len <= skip {
                        start += len;
                        continue;
                    }
                    let mut rows = self.transform.rows(&batch, RowFilter::Train)?;
                    rows.retain(|&r| start + r as u64 >= skip);
                    chunk.clear();
                    self.transform
                        .prepare(&batch, &rows, &mut chunk)
                        .map_err(|e| e.in_shard(shard, start))?;
                    rows_this_epoch_pass += chunk.len() as u64;
                    for k in 0..chunk.len() {
                        let consumed = start + chunk.source_rows[k] as u64 + 1;
                        if self.buffer.len() < self.cfg.shuffle_buffer {
                            self.buffer.push_row(&chunk, k);
                        } else {
                            let j = self.rng.random_range(0..self.buffer.len());
                            out.push_row(&self.buffer, j);
                            self.buffer.set_row(j, &chunk, k);
                        }
                        if out.len() == self.cfg.batch_rows {
                            self.pos.rows_in_shard = consumed;
                            if !self.emit_batch(&mut out, emit) {
                                return Ok(());
                            }
                            if self.pos.batches >= self.cfg.end_batch {
                                return Ok(());
                            }
                        }
                    }
                    start += len;
                }
                self.pos.shard_pos += 1;
                self.pos.rows_in_shard = 0;
            }
            if whole_pass && rows_this_epoch_pass == 0 && self.buffer.is_empty() {
                return Err(Error::Data(format!(
                    "rank {}: a full pass over shards {:?} yielded no training rows",
                    self.cfg.rank, self.cfg.shards
                )));
            }
            // Drain the shuffle buffer in random order: every epoch yields each of its rows
            // exactly once (a batch may still span two epochs).
            while !self.buffer.is_empty() {
                let j = self.rng.random_range(0..self.buffer.len());
                out.push_row(&self.buffer, j);
                self.buffer.swap_remove_row(j);
                if out.len() == self.cfg.batch_rows {
                    if !self.emit_batch(&mut out, emit) {
                        return Ok(());
                    }
                    if self.pos.batches >= self.cfg.end_batch {
                        return Ok(());
                    }
                }
            }
            rows_this_epoch_pass = 0;
            self.pos.epoch += 1;
            self.pos.shard_pos = 0;
            self.pos.rows_in_shard = 0;
        }
        Ok(())
    }

    fn emit_batch(&mut self, out: &mut Prepared, emit: &dyn Fn(Batch) -> bool) -> bool {
        let index = self.pos.batches;
        self.pos.batches += 1;
        let snap = (self.cfg.snapshot_every > 0
            && self.pos.batches.is_multiple_of(self.cfg.snapshot_every))
            || self.pos.batches == self.cfg.end_batch;
        let state_after = snap.then(|| {
            let mut position = self.pos.clone();
            position.rng_word_pos = self.rng.get_word_pos().to_string();
            LoaderState {
                position,
                buffer: self.buffer.clone(),
            }
        });
        let rows = std::mem::replace(out, Prepared::new(out.nf, out.nd));
        emit(Batch {
            index,
            rows,
            state_after,
        })
    }
}
