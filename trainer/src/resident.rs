//! The device-resident training step, used when `--device` is not `cpu`.
//!
//! The MLP parameters (one flat tensor, laid out as [`ModelSpec::layer_offsets`]), the
//! embedding table (`[table_rows, row_width]`) and the optimizer's moments live on the device
//! for the whole run. A step uploads the batch once (the unique table rows it touches, the
//! slot of each of its ids among them, the dense inputs and the labels), runs the forward and
//! backward passes there ([`crate::model::mlp_forward`], the same architecture as the CPU
//! path), and reads back what the all-reduce needs: one contiguous buffer with the dense
//! gradients and the batch's loss, and the gradients of the touched rows, already summed per
//! row on the device. The reduced gradients go back up and the optimizer update runs on the
//! device too: dense Adam moves the whole table there, lazy Adam and SGD only the touched rows.
//!
//! The update is the CPU path's arithmetic ([`crate::optim`]) in tensor form, so a model trained
//! here scores like one trained on the CPU within [`crate::device::Agreement::Tolerant`]. Every
//! rank applies the same all-reduced gradients with the same elementwise kernels, so ranks stay
//! identical bit for bit. Parameters come back to the host only for checkpoints, the periodic
//! cross-rank checksum and the export ([`ResidentModel::to_host`]).

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::config::OptimizerConfig;
use crate::model::{ModelSpec, Params, SparseGrad, StepGrads, mlp_forward, to_vec};
use crate::optim::{Optimizer, adam_step_size};
use crate::transform::Prepared;
use crate::{Error, Result};

/// Parameters and optimizer state held on a device.
pub struct ResidentModel {
    spec: ModelSpec,
    config: OptimizerConfig,
    device: Device,
    /// MLP weights and biases (`[dense_len]`), or the lone output bias.
    dense: Tensor<1>,
    /// Dense first moment (Adam) or velocity (SGD).
    dense_m: Tensor<1>,
    /// Dense second moment (Adam only).
    dense_v: Option<Tensor<1>>,
    /// The table and its moments; `None` when the model has no table rows.
    table: Option<TableState>,
}

/// The embedding (and wide weight) table with its optimizer moments.
struct TableState {
    /// `[table_rows, row_width]`.
    rows: Tensor<2>,
    /// First moment (Adam) or velocity (SGD), same shape.
    m: Tensor<2>,
    /// Second moment (Adam only).
    v: Option<Tensor<2>>,
}

/// The batch as the device sees it: the touched rows and where each id of the batch sits
/// among them, the dense inputs and the labels.
struct DeviceBatch {
    /// Sorted unique table rows the batch touches (host copy, for the sparse gradient).
    unique: Vec<u32>,
    /// The same rows on the device.
    unique_on_device: Tensor<1, Int>,
    /// For each `(row, column)` id of the batch, its index in `unique`.
    slots: Tensor<1, Int>,
    /// `[rows, dense_inputs]`, when the model has dense inputs.
    dense: Option<Tensor<2>>,
    /// `[rows, 1]`.
    labels: Tensor<2>,
}

fn upload_1d(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

fn upload_2d(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

fn upload_ids(ids: impl IntoIterator<Item = u32>, device: &Device) -> Tensor<1, Int> {
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let n = ids.len();
    Tensor::from_data(TensorData::new(ids, [n]), device)
}

/// The sorted unique ids of `ids` and, for each id, its index among them.
fn unique_slots(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let slots = ids
        .iter()
        .map(|id| unique.binary_search(id).expect("id present") as u32)
        .collect();
    (unique, slots)
}

impl ResidentModel {
    /// Uploads `params` and `opt` to `device` (a device without autodiff; the step adds it).
    pub fn upload(params: &Params, opt: &Optimizer, device: &Device) -> Result<Self> {
        let spec = params.spec.clone();
        // Table row ids travel as the device's integers (i32 on wgpu).
        if spec.table_rows > i32::MAX as u64 {
            return Err(Error::Config(format!(
                "the model's table has {} rows; the device step indexes at most {} (train on the cpu)",
                spec.table_rows,
                i32::MAX
            )));
        }
        let adam = matches!(opt.config, OptimizerConfig::Adam { .. });
        let width = spec.row_width();
        let rows = spec.table_rows as usize;
        let table = (width > 0 && rows > 0).then(|| TableState {
            rows: upload_2d(params.table.clone(), rows, width, device),
            m: upload_2d(opt.table_m.clone(), rows, width, device),
            v: adam.then(|| upload_2d(opt.table_v.clone(), rows, width, device)),
        });
        Ok(Self {
            config: opt.config.clone(),
            device: device.clone(),
            dense: upload_1d(params.dense.clone(), device),
            dense_m: upload_1d(opt.dense_m.clone(), device),
            dense_v: adam.then(|| upload_1d(opt.dense_v.clone(), device)),
            table,
            spec,
        })
    }

    /// The parameters and optimizer state, read back to host buffers.
    pub fn to_host(&self) -> Result<(Params, Optimizer)> {
        let flat = |t: &Tensor<1>| to_vec(t.clone());
        let flat2 = |t: &Tensor<2>| to_vec(t.clone());
        let (table, table_m, table_v) = match &self.table {
            Some(t) => (
                flat2(&t.rows)?,
                flat2(&t.m)?,
                t.v.as_ref().map(flat2).transpose()?.unwrap_or_default(),
            ),
            // No table rows (or zero-width rows): the host buffers are empty too.
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let params = Params {
            spec: self.spec.clone(),
            dense: flat(&self.dense)?,
            table,
        };
        let opt = Optimizer {
            config: self.config.clone(),
            dense_m: flat(&self.dense_m)?,
            dense_v: self
                .dense_v
                .as_ref()
                .map(flat)
                .transpose()?
                .unwrap_or_default(),
            table_m,
            table_v,
        };
        Ok((params, opt))
    }

    fn upload_batch(&self, rows: &Prepared) -> DeviceBatch {
        let n = rows.len();
        let (unique, slots) = unique_slots(&rows.ids);
        DeviceBatch {
            unique_on_device: upload_ids(unique.iter().copied(), &self.device),
            unique,
            slots: upload_ids(slots, &self.device),
            dense: (rows.nd > 0).then(|| upload_2d(rows.dense.clone(), n, rows.nd, &self.device)),
            labels: upload_2d(rows.labels.clone(), n, 1, &self.device),
        }
    }

    /// Forward and backward of one local batch on the device; gradients are of
    /// `sum(loss) * scale`, as [`crate::model::forward_backward`] computes them on the CPU.
    pub fn forward_backward(&self, rows: &Prepared, scale: f32) -> Result<StepGrads> {
        let spec = &self.spec;
        let n = rows.len();
        let (nf, d) = (spec.categorical, spec.embedding_dim);
        let batch = self.upload_batch(rows);

        // The touched rows are the leaf whose gradient is the sparse gradient: the gather of
        // each id from them sums, in its backward, the gradients of every use of a row.
        let touched = self.table.as_ref().map(|t| {
            t.rows
                .clone()
                .select(0, batch.unique_on_device.clone())
                .autodiff()
                .require_grad()
        });
        let per_id = touched
            .as_ref()
            .map(|t| t.clone().select(0, batch.slots.clone()));
        let mut inputs = Vec::new();
        if d > 0 {
            let per_id = per_id.clone().expect("a model with embeddings has a table");
            inputs.push(per_id.narrow(1, 0, d).reshape([n, nf * d]));
        }
        if let Some(x) = &batch.dense {
            inputs.push(x.clone().autodiff());
        }
        let flat = self.dense.clone().autodiff().require_grad();
        let mut z = if spec.layers.is_empty() {
            flat.clone().reshape([1, 1])
        } else {
            let x = if inputs.len() == 1 {
                inputs.pop().expect("one input")
            } else {
                Tensor::cat(inputs, 1)
            };
            mlp_forward(spec, x, |off, i, o| {
                (
                    flat.clone().narrow(0, off, i * o).reshape([i, o]),
                    flat.clone().narrow(0, off + i * o, o).reshape([1, o]),
                )
            })
            .0
        };
        if spec.wide {
            let per_id = per_id.expect("a wide model has a table");
            let wide = per_id.narrow(1, d, 1).reshape([n, nf]).sum_dim(1);
            z = z + wide;
        }
        // Binary cross-entropy with logits, stable for any magnitude:
        // max(z, 0) - z y + log(1 + exp(-|z|)).
        let y = batch.labels.autodiff();
        let loss = z.clone().clamp_min(0.0) - z.clone() * y + z.abs().neg().exp().log1p();
        let loss_sum = loss.sum();
        let grads = (loss_sum.clone() * scale).backward();
        let dense_grad = flat
            .grad(&grads)
            .ok_or_else(|| Error::Burn("missing dense gradient".into()))?;
        // One read-back: the dense gradients with the loss appended.
        let mut dense = to_vec(Tensor::cat(
            vec![dense_grad, loss_sum.without_autodiff()],
            0,
        ))?;
        let loss_sum = f64::from(dense.pop().expect("the loss"));
        let sparse = match &touched {
            Some(t) => SparseGrad {
                rows: to_vec(
                    t.grad(&grads)
                        .ok_or_else(|| Error::Burn("missing table row gradient".into()))?,
                )?,
                ids: batch.unique,
            },
            None => SparseGrad::default(),
        };
        Ok(StepGrads {
            loss_sum,
            dense,
            sparse,
        })
    }

    /// Applies one optimizer step with the (all-reduced) gradients; `t` is the 1-based step and
    /// `lr` the scheduled rate, as in [`Optimizer::step`].
    pub fn apply(&mut self, dense: &[f32], sparse: &SparseGrad, lr: f64, t: u64) {
        let g = upload_1d(dense.to_vec(), &self.device);
        let width = self.spec.row_width();
        let touched = self
            .table
            .as_ref()
            .filter(|_| !sparse.ids.is_empty())
            .map(|_| {
                (
                    upload_ids(sparse.ids.iter().copied(), &self.device),
                    upload_2d(sparse.rows.clone(), sparse.ids.len(), width, &self.device),
                )
            });
        match self.config {
            OptimizerConfig::Adam {
                beta1,
                beta2,
                epsilon,
                lazy,
                ..
            } => {
                let adam = Adam {
                    b1: beta1 as f32,
                    b2: beta2 as f32,
                    lr_t: adam_step_size(lr, beta1, beta2, t),
                    eps: epsilon as f32,
                };
                let v = self.dense_v.take().expect("Adam has a second moment");
                let (p, m, v) = adam.update(self.dense.clone(), self.dense_m.clone(), v, g);
                (self.dense, self.dense_m, self.dense_v) = (p, m, Some(v));
                let Some(table) = self.table.as_mut() else {
                    return;
                };
                let v = table.v.take().expect("Adam has a second moment");
                if !lazy {
                    // Every row moves; untouched rows with a zero gradient.
                    let mut g = table.rows.zeros_like();
                    if let Some((ids, rows)) = touched {
                        g = g.select_assign(0, ids, rows, IndexingUpdateOp::Add);
                    }
                    let (p, m, v) = adam.update(table.rows.clone(), table.m.clone(), v, g);
                    (table.rows, table.m, table.v) = (p, m, Some(v));
                } else if let Some((ids, g)) = touched {
                    let pick = |t: &Tensor<2>| t.clone().select(0, ids.clone());
                    let (p, m, v2) = adam.update(pick(&table.rows), pick(&table.m), pick(&v), g);
                    table.rows = assign_rows(&table.rows, &ids, p);
                    table.m = assign_rows(&table.m, &ids, m);
                    table.v = Some(assign_rows(&v, &ids, v2));
                } else {
                    table.v = Some(v);
                }
            }
            OptimizerConfig::Sgd { momentum, .. } => {
                let (lr, mu) = (lr as f32, momentum as f32);
                let (p, m) = sgd(self.dense.clone(), self.dense_m.clone(), g, lr, mu);
                (self.dense, self.dense_m) = (p, m);
                if let (Some(table), Some((ids, g))) = (self.table.as_mut(), touched) {
                    let pick = |t: &Tensor<2>| t.clone().select(0, ids.clone());
                    let (p, m) = sgd(pick(&table.rows), pick(&table.m), g, lr, mu);
                    table.rows = assign_rows(&table.rows, &ids, p);
                    table.m = assign_rows(&table.m, &ids, m);
                }
            }
        }
    }
}

/// `target` with the rows `ids` (unique) replaced by `rows`.
fn assign_rows(target: &Tensor<2>, ids: &Tensor<1, Int>, rows: Tensor<2>) -> Tensor<2> {
    target
        .clone()
        .select_assign(0, ids.clone(), rows, IndexingUpdateOp::Assign)
}

/// Adam's constants for one step.
#[derive(Clone, Copy)]
struct Adam {
    b1: f32,
    b2: f32,
    lr_t: f32,
    eps: f32,
}

impl Adam {
    /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g²`, `p -= lr_t m / (sqrt(v) + eps)`
    /// elementwise (the CPU path's `adam`).
    fn update<const D: usize>(
        self,
        p: Tensor<D>,
        m: Tensor<D>,
        v: Tensor<D>,
        g: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
        let m = m * self.b1 + g.clone() * (1.0 - self.b1);
        let v = v * self.b2 + g.clone() * g * (1.0 - self.b2);
        let p = p - m.clone() * self.lr_t / (v.clone().sqrt() + self.eps);
        (p, m, v)
    }
}

/// `m = mu m + g`, `p -= lr m` elementwise (the CPU path's `sgd`).
fn sgd<const D: usize>(
    p: Tensor<D>,
    m: Tensor<D>,
    g: Tensor<D>,
    lr: f32,
    mu: f32,
) -> (Tensor<D>, Tensor<D>) {
    let m = m * mu + g;
    let p = p - m.clone() * lr;
    (p, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelKind;
    use crate::model::forward_backward;

    /// A model of `kind` over a table of 10 rows and two categorical columns.
    fn model(kind: ModelKind) -> Params {
        let (embedding_dim, wide, layers) = match kind {
            ModelKind::Logistic => (0, true, vec![]),
            ModelKind::Mlp => (3, false, vec![2 * 3 + 2, 4, 1]),
            ModelKind::WideDeep => (3, true, vec![2 * 3 + 2, 4, 1]),
        };
        let spec = ModelSpec {
            kind,
            categorical: 2,
            table_rows: 10,
            embedding_dim,
            wide,
            dense_inputs: if layers.is_empty() { 0 } else { 2 },
            layers,
        };
        let mut params = Params::init(&spec, 5);
        for (k, v) in params.table.iter_mut().enumerate() {
            *v += (k % 7) as f32 * 0.01;
        }
        params
    }

    /// The batch of step `t`: three rows whose ids repeat within the batch and shift from
    /// step to step (so that under dense Adam rows touched earlier move while untouched);
    /// row 0 is never touched.
    fn batch(spec: &ModelSpec, t: u64) -> Prepared {
        let nd = spec.dense_inputs;
        Prepared {
            nf: 2,
            nd,
            ids: [3u32, 7, 3, 1, 0, 3]
                .map(|id| (id + 2 * t as u32) % 10)
                .to_vec(),
            dense: (0..3 * nd)
                .map(|k| k as f32 * 0.3 - 0.5 + t as f32 * 0.1)
                .collect(),
            labels: vec![1.0, 0.0, 1.0],
            source_rows: vec![0, 1, 2],
        }
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{what}[{k}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn the_device_step_computes_the_cpu_steps_gradients_and_updates() {
        let device = Device::flex();
        for kind in [ModelKind::Logistic, ModelKind::Mlp, ModelKind::WideDeep] {
            for optimizer in [
                OptimizerConfig::default(),
                OptimizerConfig::Adam {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-7,
                    lazy: false,
                },
                OptimizerConfig::Sgd {
                    lr: 0.1,
                    momentum: 0.9,
                },
            ] {
                let what = format!("{kind:?} {optimizer:?}");
                let mut params = model(kind);
                let mut opt = Optimizer::new(&optimizer, &params);
                let mut resident = ResidentModel::upload(&params, &opt, &device).unwrap();
                for t in 1..=4 {
                    let rows = batch(&params.spec, t);
                    let host = forward_backward(&params, &rows, 0.5).unwrap();
                    let dev = resident.forward_backward(&rows, 0.5).unwrap();
                    assert!((host.loss_sum - dev.loss_sum).abs() < 1e-5, "{what}");
                    close(&host.dense, &dev.dense, &format!("{what} dense gradient"));
                    assert_eq!(host.sparse.ids, dev.sparse.ids, "{what}");
                    close(&host.sparse.rows, &dev.sparse.rows, &format!("{what} rows"));
                    opt.step(&mut params, &host.dense, &host.sparse, 0.05, t);
                    resident.apply(&host.dense, &host.sparse, 0.05, t);
                }
                let (p, o) = resident.to_host().unwrap();
                close(&params.dense, &p.dense, &format!("{what} dense"));
                close(&params.table, &p.table, &format!("{what} table"));
                close(&opt.dense_m, &o.dense_m, &format!("{what} dense m"));
                close(&opt.dense_v, &o.dense_v, &format!("{what} dense v"));
                close(&opt.table_m, &o.table_m, &format!("{what} table m"));
                close(&opt.table_v, &o.table_v, &format!("{what} table v"));
                // The table moved; row 0, which no batch touched, did not (Adam or SGD alike).
                let init = model(kind).table;
                assert_ne!(p.table, init, "{what}");
                let w = p.spec.row_width();
                assert_eq!(p.table[..w], init[..w], "{what}");
            }
        }
    }
}
