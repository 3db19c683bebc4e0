//! Optimizers on flat buffers: Adam and SGD with momentum for the dense parameters, and their
//! lazy variants for table rows (only the rows a step touched are read or written, like
//! TensorFlow's LazyAdam; bias correction uses the global step).

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

fn sgd(p: &mut [f32], m: &mut [f32], g: &[f32], lr: f32, mu: f32) {
    for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
        *m = mu * *m + g;
        *p -= lr * *m;
    }
}
