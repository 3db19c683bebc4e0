//! Optimizers on flat buffers: Adam and SGD with momentum for the dense parameters, and their
//! lazy variants for table rows (only the rows a step touched are read or written, like
//! TensorFlow's LazyAdam; bias correction uses the global step). Adam with `lazy = false`
//! updates every table row at every step, like Keras's Adam.

use crate::config::OptimizerConfig;
use crate::model::{Params, SparseGrad};

/// Optimizer state (first and second moments; `v` is empty for SGD).
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    /// Settings.
    pub config: OptimizerConfig,
    /// Dense first moment (Adam) or velocity (SGD).
    pub dense_m: Vec<f32>,
    /// Dense second moment (Adam).
    pub dense_v: Vec<f32>,
    /// Table first moment / velocity.
    pub table_m: Vec<f32>,
    /// Table second moment (Adam).
    pub table_v: Vec<f32>,
}

impl Optimizer {
    /// Zero state for `params`.
    pub fn new(config: &OptimizerConfig, params: &Params) -> Self {
        let adam = matches!(config, OptimizerConfig::Adam { .. });
        Self {
            config: config.clone(),
            dense_m: vec![0.0; params.dense.len()],
            dense_v: if adam {
                vec![0.0; params.dense.len()]
            } else {
                Vec::new()
            },
            table_m: vec![0.0; params.table.len()],
            table_v: if adam {
                vec![0.0; params.table.len()]
            } else {
                Vec::new()
            },
        }
    }

    /// Applies one step (`t` is the 1-based step, `lr` the scheduled rate).
    pub fn step(
        &mut self,
        params: &mut Params,
        dense: &[f32],
        sparse: &SparseGrad,
        lr: f64,
        t: u64,
    ) {
        let width = params.spec.row_width();
        match self.config {
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
                lazy,
                ..
            } => {
                let (b1, b2) = (beta1 as f32, beta2 as f32);
                let lr_t = adam_step_size(lr, beta1, beta2, t);
                let eps = epsilon as f32;
                adam(
                    &mut params.dense,
                    &mut self.dense_m,
                    &mut self.dense_v,
                    dense,
                    b1,
                    b2,
                    lr_t,
                    eps,
                );
                if !lazy && width > 0 {
                    // Every row decays and moves; touched rows get their gradient below, so
                    // untouched rows are first brought forward with a zero gradient.
                    adam_zero_grad_untouched(
                        &mut params.table,
                        &mut self.table_m,
                        &mut self.table_v,
                        width,
                        &sparse.ids,
                        [b1, b2, lr_t, eps],
                    );
                }
                for (k, &id) in sparse.ids.iter().enumerate() {
                    let r = id as usize * width..(id as usize + 1) * width;
                    adam(
                        &mut params.table[r.clone()],
                        &mut self.table_m[r.clone()],
                        &mut self.table_v[r],
                        &sparse.rows[k * width..(k + 1) * width],
                        b1,
                        b2,
                        lr_t,
                        eps,
                    );
                }
            }
            OptimizerConfig::Sgd { momentum, .. } => {
                let (lr, mu) = (lr as f32, momentum as f32);
                sgd(&mut params.dense, &mut self.dense_m, dense, lr, mu);
                for (k, &id) in sparse.ids.iter().enumerate() {
                    let r = id as usize * width..(id as usize + 1) * width;
                    sgd(
                        &mut params.table[r.clone()],
                        &mut self.table_m[r],
                        &sparse.rows[k * width..(k + 1) * width],
                        lr,
                        mu,
                    );
                }
            }
        }
    }
}

/// Adam's bias-corrected step size at the 1-based step `t`:
/// `lr sqrt(1 - beta2^t) / (1 - beta1^t)`.
pub(crate) fn adam_step_size(lr: f64, beta1: f64, beta2: f64, t: u64) -> f32 {
    (lr * (1.0 - beta2.powi(t as i32)).sqrt() / (1.0 - beta1.powi(t as i32))) as f32
}

#[allow(clippy::too_many_arguments)]
fn adam(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    b1: f32,
    b2: f32,
    lr_t: f32,
    eps: f32,
) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *p -= lr_t * *m / (v.sqrt() + eps);
    }
}

/// [`adam`] with a zero gradient (a row the step did not touch, under dense Adam).
fn adam_zero_grad(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    b1: f32,
    b2: f32,
    lr_t: f32,
    eps: f32,
) {
    for ((p, m), v) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()) {
        *m *= b1;
        *v *= b2;
        *p -= lr_t * *m / (v.sqrt() + eps);
    }
}

/// Table rows per parallel task of [`adam_zero_grad_untouched`].
const ZERO_GRAD_CHUNK_ROWS: usize = 8192;

/// [`adam_zero_grad`] on every row of a `width`-wide table except the sorted unique `touched`
/// rows. The rows between two touched ones are one contiguous run (one vectorised loop), and
/// chunks of the table run in parallel on Rayon's pool; every element gets the same
/// operations as one row-by-row loop, so the result is the same bits.
fn adam_zero_grad_untouched(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    width: usize,
    touched: &[u32],
    [b1, b2, lr_t, eps]: [f32; 4],
) {
    use rayon::prelude::*;
    let chunk = ZERO_GRAD_CHUNK_ROWS * width;
    p.par_chunks_mut(chunk)
        .zip(m.par_chunks_mut(chunk))
        .zip(v.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(k, ((p, m), v))| {
            let first = k * ZERO_GRAD_CHUNK_ROWS;
            let end = first + p.len() / width;
            let lo = touched.partition_point(|&id| (id as usize) < first);
            let hi = touched.partition_point(|&id| (id as usize) < end);
            let mut run = |from: usize, to: usize| {
                let r = (from - first) * width..(to - first) * width;
                adam_zero_grad(
                    &mut p[r.clone()],
                    &mut m[r.clone()],
                    &mut v[r],
                    b1,
                    b2,
                    lr_t,
                    eps,
                );
            };
            let mut start = first;
            for &id in &touched[lo..hi] {
                run(start, id as usize);
                start = id as usize + 1;
            }
            run(start, end);
        });
}

fn sgd(p: &mut [f32], m: &mut [f32], g: &[f32], lr: f32, mu: f32) {
    for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
        *m = mu * *m + g;
        *p -= lr * *m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelKind;
    use crate::model::ModelSpec;

    /// Two table rows of width 2; step 1 touches both, step 2 only row 1.
    fn two_steps(lazy: bool) -> Params {
        let spec = ModelSpec {
            kind: ModelKind::Mlp,
            categorical: 1,
            table_rows: 2,
            embedding_dim: 2,
            wide: false,
            dense_inputs: 0,
            layers: vec![],
        };
        let mut params = Params {
            spec,
            dense: vec![0.0],
            table: vec![1.0; 4],
        };
        let config = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            lazy,
        };
        let mut opt = Optimizer::new(&config, &params);
        let both = SparseGrad {
            ids: vec![0, 1],
            rows: vec![1.0; 4],
        };
        let one = SparseGrad {
            ids: vec![1],
            rows: vec![1.0; 2],
        };
        opt.step(&mut params, &[0.0], &both, 0.1, 1);
        opt.step(&mut params, &[0.0], &one, 0.1, 2);
        params
    }

    #[test]
    fn the_parallel_zero_gradient_pass_is_the_row_by_row_loop_bit_for_bit() {
        let (rows, width) = (3 * ZERO_GRAD_CHUNK_ROWS + 17, 5);
        let start: Vec<f32> = (0..rows * width)
            .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        // Touched rows: both ends of the table, chunk edges, neighbours, and a scatter.
        let mut touched: Vec<u32> = vec![0, 1, 5, 8191, 8192, 8193, 16_383, (rows - 1) as u32];
        touched.extend((0..rows as u32).step_by(997));
        touched.sort_unstable();
        touched.dedup();
        let consts = [0.9f32, 0.999, 0.01, 1e-7];
        let (mut p, mut m, mut v) = (
            start.clone(),
            start.clone(),
            start.iter().map(|x| x * x).collect::<Vec<f32>>(),
        );
        adam_zero_grad_untouched(&mut p, &mut m, &mut v, width, &touched, consts);
        let (mut p2, mut m2, mut v2) = (
            start.clone(),
            start.clone(),
            start.iter().map(|x| x * x).collect::<Vec<f32>>(),
        );
        for row in 0..rows {
            if touched.binary_search(&(row as u32)).is_err() {
                let r = row * width..(row + 1) * width;
                let [b1, b2, lr_t, eps] = consts;
                adam_zero_grad(
                    &mut p2[r.clone()],
                    &mut m2[r.clone()],
                    &mut v2[r],
                    b1,
                    b2,
                    lr_t,
                    eps,
                );
            }
        }
        assert!(p.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(m.iter().zip(&m2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(v.iter().zip(&v2).all(|(a, b)| a.to_bits() == b.to_bits()));
        // Touched rows are left alone; the others moved.
        for &id in &touched {
            let r = id as usize * width..(id as usize + 1) * width;
            assert_eq!(p[r.clone()], start[r]);
        }
        assert_ne!(p[2 * width..3 * width], start[2 * width..3 * width]);
    }

    #[test]
    fn lazy_adam_leaves_untouched_rows_and_dense_adam_moves_them() {
        let lazy = two_steps(true);
        let dense = two_steps(false);
        // Step 1 moves every row by lr (Adam's first step is lr * sign(g)); lazily, row 0
        // then sits out step 2. Dense: its decayed momentum moves it again.
        assert!((lazy.table[0] - 0.9).abs() < 1e-6, "{:?}", lazy.table);
        assert!(dense.table[0] < lazy.table[0] - 1e-3, "{:?}", dense.table);
        // Row 1 had the same gradients either way.
        assert_eq!(lazy.table[2..], dense.table[2..]);
    }
}
