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
                let lr_t = (lr * (1.0 - beta2.powi(t as i32)).sqrt() / (1.0 - beta1.powi(t as i32)))
                    as f32;
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
                if !lazy {
                    // Every row decays and moves; touched rows get their gradient below, so
                    // untouched rows are first brought forward with a zero gradient.
                    let mut touched = vec![false; params.table.len() / width.max(1)];
                    for &id in &sparse.ids {
                        touched[id as usize] = true;
                    }
                    let rows = params
                        .table
                        .chunks_mut(width)
                        .zip(self.table_m.chunks_mut(width))
                        .zip(self.table_v.chunks_mut(width));
                    for (((p, m), v), _) in rows.zip(&touched).filter(|(_, t)| !**t) {
                        adam_zero_grad(p, m, v, b1, b2, lr_t, eps);
                    }
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
