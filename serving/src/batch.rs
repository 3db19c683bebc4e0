//! Server-side batching (off by default): concurrent requests to one version are scored
//! together by that version's batching thread. A row's logit depends on the row alone
//! ([`kiln_trainer::export::SCORE_CHUNK_ROWS`]), so batching never changes a prediction.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use kiln_trainer::export::Model;

use crate::{Result, ServeError};

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// A batch closes once it holds this many rows.
    pub max_rows: usize,
    /// ... or this long after its first request arrived.
    pub max_wait: Duration,
}

struct Job {
    batch: RecordBatch,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>>>,
}

/// The sending end of a version's batching thread; the thread ends when this is dropped
/// (the version is unloaded and its last request is done).
#[derive(Debug)]
pub struct Batcher {
    tx: Sender<Job>,
}

impl Batcher {
    /// Starts the batching thread of `model`.
    pub fn start(model: Arc<Model>, settings: Batching, name: String) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || run(&model, settings, &rx))?;
        Ok(Batcher { tx })
    }

    /// Scores `batch` as part of the next batch.
    pub async fn score(&self, batch: RecordBatch) -> Result<Vec<f32>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Job { batch, reply }).map_err(|_| {
            ServeError::Unavailable("the version's batching thread has ended".into())
        })?;
        rx.await
            .map_err(|_| ServeError::Internal("the batching thread dropped the request".into()))?
    }
}

fn run(model: &Model, s: Batching, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + s.max_wait;
        let mut rows = first.batch.num_rows();
        let mut jobs = vec![first];
        while rows < s.max_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    rows += j.batch.num_rows();
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // Requests whose columns have the same types are concatenated; others run apart.
        while !jobs.is_empty() {
            let schema = jobs[0].batch.schema();
            let (same, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.batch.schema() == schema);
            jobs = rest;
            score_group(model, same);
        }
    }
}

fn score_group(model: &Model, jobs: Vec<Job>) {
    let batches: Vec<&RecordBatch> = jobs.iter().map(|j| &j.batch).collect();
    let all = arrow::compute::concat_batches(&batches[0].schema(), batches.iter().copied())
        .map_err(|e| ServeError::Internal(format!("batching requests: {e}")))
        .and_then(|b| crate::input::score(model, &b));
    match all {
        Ok(logits) => {
            let mut at = 0;
            for j in jobs {
                let n = j.batch.num_rows();
                let _ = j.reply.send(Ok(logits[at..at + n].to_vec()));
                at += n;
            }
        }
        Err(e) if jobs.len() == 1 => {
            if let Some(j) = jobs.into_iter().next() {
                let _ = j.reply.send(Err(e));
            }
        }
        Err(_) => {
            // One bad request (a non-finite number) must not fail the others: score apart.
            for j in jobs {
                let r = crate::input::score(model, &j.batch);
                let _ = j.reply.send(r);
            }
        }
    }
}
