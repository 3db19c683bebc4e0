//! Models: logistic regression, MLP and wide & deep, in one parameterisation.
//!
//! * **Sparse part** (owned by Kiln, plain f32 rows): one table with a row per categorical id
//!   (all columns share it through offsets). A row holds the `embedding_dim` embedding values
//!   (MLP, wide & deep) followed by one wide weight (logistic, wide & deep).
//! * **Dense part** (Burn, autodiff): an MLP over `[embeddings of every column, dense
//!   inputs]` with ReLU hidden layers and one output.
//! * `logit = mlp(x) + sum_f wide[id_f]`; loss: sigmoid binary cross-entropy.
//!
//! The embedding gather and the scatter of its gradient happen outside Burn: the gathered
//! rows enter Burn as an input tensor that requires grad, its gradient is read back and summed
//! per touched row, so optimizers and the all-reduce only see the rows a batch touched.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData, activation::relu};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ModelKind, TrainConfig};
use crate::device::{infer_device, train_device};
use crate::transform::{Prepared, Transform};
use crate::{Error, Result};

/// Shapes of a model, saved as `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model family.
    pub kind: ModelKind,
    /// Categorical columns per row.
    pub categorical: usize,
    /// Rows of the sparse table.
    pub table_rows: u64,
    /// Embedding width (0: no embeddings, logistic).
    pub embedding_dim: usize,
    /// Whether each table row ends with a wide (linear) weight.
    pub wide: bool,
    /// Dense inputs per row.
    pub dense_inputs: usize,
    /// Layer widths of the MLP from its input to the single output (empty: no MLP, only a
    /// bias).
    pub layers: Vec<usize>,
}

impl ModelSpec {
    /// The model `config` describes over the fitted `transform`.
    pub fn new(config: &TrainConfig, transform: &Transform) -> Self {
        let nf = transform.categorical.len();
        let (embedding_dim, wide, hidden) = match config.model {
            ModelKind::Logistic => (0, true, Vec::new()),
            ModelKind::Mlp => (config.embedding_dim, false, config.hidden.clone()),
            ModelKind::WideDeep => (config.embedding_dim, true, config.hidden.clone()),
        };
        let embedding_dim = if nf == 0 { 0 } else { embedding_dim };
        let dense_inputs = transform.dense_width();
        let din = nf * embedding_dim + dense_inputs;
        let layers = if din == 0 {
            Vec::new()
        } else {
            let mut l = vec![din];
            l.extend(hidden);
            l.push(1);
            l
        };
        ModelSpec {
            kind: config.model,
            categorical: nf,
            table_rows: if embedding_dim > 0 || wide {
                transform.table_rows()
            } else {
                0
            },
            embedding_dim,
            wide: wide && nf > 0,
            dense_inputs,
            layers,
        }
    }

    /// Floats per table row.
    pub fn row_width(&self) -> usize {
        self.embedding_dim + usize::from(self.wide)
    }

    /// Width of the MLP input.
    pub fn deep_inputs(&self) -> usize {
        self.categorical * self.embedding_dim + self.dense_inputs
    }

    /// (offset, in, out) of each layer's weight in the dense buffer; its bias follows it.
    pub fn layer_offsets(&self) -> Vec<(usize, usize, usize)> {
        let mut off = 0;
        self.layers
            .windows(2)
            .map(|w| {
                let o = off;
                off += w[0] * w[1] + w[1];
                (o, w[0], w[1])
            })
            .collect()
    }

    /// Length of the dense parameter buffer (a lone bias when there is no MLP).
    pub fn dense_len(&self) -> usize {
        if self.layers.is_empty() {
            1
        } else {
            self.layer_offsets().iter().map(|(_, i, o)| i * o + o).sum()
        }
    }
}

/// All parameters as flat buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Shapes.
    pub spec: ModelSpec,
    /// MLP weights (`[in, out]` row-major) and biases, layer after layer.
    pub dense: Vec<f32>,
    /// `table_rows * row_width` sparse rows.
    pub table: Vec<f32>,
}

impl Params {
    /// Deterministic initialisation: Glorot-uniform MLP weights, zero biases, embeddings
    /// uniform in ±0.05 (the Keras defaults), zero wide weights.
    pub fn init(spec: &ModelSpec, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b69_6c6e_696e_6974);
        let mut dense = vec![0.0f32; spec.dense_len()];
        for (off, i, o) in spec.layer_offsets() {
            let limit = (6.0 / (i + o) as f64).sqrt() as f32;
            for w in &mut dense[off..off + i * o] {
                *w = rng.random_range(-limit..limit);
            }
        }
        let width = spec.row_width();
        let mut table = vec![0.0f32; spec.table_rows as usize * width];
        if spec.embedding_dim > 0 {
            for row in table.chunks_exact_mut(width) {
                for v in &mut row[..spec.embedding_dim] {
                    *v = rng.random_range(-0.05f32..0.05);
                }
            }
        }
        Params {
            spec: spec.clone(),
            dense,
            table,
        }
    }

    /// xxh3 of every parameter's bytes (identical parameters <=> identical checksum).
    pub fn checksum(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(crate::comm::as_bytes(&self.dense));
        h.update(crate::comm::as_bytes(&self.table));
        h.digest()
    }

    /// The MLP as a Burn module (for export in Burn's file format).
    pub fn to_burn(&self, device: &Device) -> DeepNet {
        let layers = self
            .spec
            .layer_offsets()
            .into_iter()
            .map(|(off, i, o)| Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(self.dense[off..off + i * o].to_vec(), [i, o]),
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(self.dense[off + i * o..off + i * o + o].to_vec(), [o]),
                    device,
                ))),
            })
            .collect();
        let bias = if self.spec.layers.is_empty() {
            vec![Param::from_tensor(Tensor::from_data(
                TensorData::new(self.dense.clone(), [1]),
                device,
            ))]
        } else {
            Vec::new()
        };
        DeepNet { layers, bias }
    }

    /// Copies the MLP weights out of a Burn module with this model's shapes.
    pub fn load_burn(&mut self, net: &DeepNet) -> Result<()> {
        let offs = self.spec.layer_offsets();
        if net.layers.len() != offs.len() {
            return Err(Error::Burn(format!(
                "module has {} layers, model.json says {}",
                net.layers.len(),
                offs.len()
            )));
        }
        for ((off, i, o), l) in offs.into_iter().zip(&net.layers) {
            let w = to_vec(l.weight.val())?;
            let b = l
                .bias
                .as_ref()
                .map(|b| to_vec(b.val()))
                .transpose()?
                .unwrap_or_else(|| vec![0.0; o]);
            if w.len() != i * o || b.len() != o {
                return Err(Error::Burn(format!(
                    "layer [{i}, {o}] has {} weights and {} biases",
                    w.len(),
                    b.len()
                )));
            }
            self.dense[off..off + i * o].copy_from_slice(&w);
            self.dense[off + i * o..off + i * o + o].copy_from_slice(&b);
        }
        if let Some(b) = net.bias.first() {
            self.dense = to_vec(b.val())?;
        }
        Ok(())
    }
}

/// The dense part as a Burn module: `Linear` layers (ReLU between them), or a lone bias.
#[derive(Module, Debug)]
pub struct DeepNet {
    /// Layers from the input to the single output.
    pub layers: Vec<Linear>,
    /// Output bias when there are no layers (logistic regression over categoricals only).
    pub bias: Vec<Param<Tensor<1>>>,
}

impl DeepNet {
    /// A zero module with `spec`'s shapes (to load a file into).
    pub fn zeros(spec: &ModelSpec, device: &Device) -> Self {
        Params {
            spec: spec.clone(),
            dense: vec![0.0; spec.dense_len()],
            table: Vec::new(),
        }
        .to_burn(device)
    }
}

pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::BurnData(Box::new(e)))
}

/// Sparse gradient: sorted unique table rows and their summed gradients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseGrad {
    /// Sorted unique row ids.
    pub ids: Vec<u32>,
    /// `ids.len() * row_width` gradients.
    pub rows: Vec<f32>,
}

impl SparseGrad {
    /// Serialises as `[n u64][ids u32...][rows f32...]`, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.ids.len() * 4 + self.rows.len() * 4);
        b.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        for id in &self.ids {
            b.extend_from_slice(&id.to_le_bytes());
        }
        b.extend_from_slice(crate::comm::as_bytes(&self.rows));
        b
    }

    /// Parses [`to_bytes`](Self::to_bytes) output.
    pub fn from_bytes(b: &[u8], width: usize) -> Result<Self> {
        let bad = || Error::Comm("malformed sparse gradient message".into());
        let n = u64::from_le_bytes(b.get(..8).ok_or_else(bad)?.try_into().expect("8")) as usize;
        let ids_end = 8 + n * 4;
        if b.len() != ids_end + n * width * 4 {
            return Err(bad());
        }
        let ids = b[8..ids_end]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        let rows = b[ids_end..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        Ok(Self { ids, rows })
    }

    /// Sums several ranks' gradients, in rank order (the same bits on every rank).
    pub fn merge(parts: &[SparseGrad], width: usize) -> SparseGrad {
        let mut ids: Vec<u32> = parts.iter().flat_map(|p| p.ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = vec![0.0f32; ids.len() * width];
        for p in parts {
            for (k, id) in p.ids.iter().enumerate() {
                let slot = ids.binary_search(id).expect("merged id");
                for (d, s) in rows[slot * width..(slot + 1) * width]
                    .iter_mut()
                    .zip(&p.rows[k * width..(k + 1) * width])
                {
                    *d += *s;
                }
            }
        }
        SparseGrad { ids, rows }
    }
}

/// Gradients and loss of one local batch.
#[derive(Debug, Clone, Default)]
pub struct StepGrads {
    /// Sum of the per-example losses of the local batch.
    pub loss_sum: f64,
    /// Dense gradients (already scaled by `1 / global_batch`).
    pub dense: Vec<f32>,
    /// Sparse gradients (already scaled by `1 / global_batch`).
    pub sparse: SparseGrad,
}

/// Binary cross-entropy of a logit, stable for any magnitude.
pub fn bce_with_logit(z: f32, y: f32) -> f64 {
    let z = z as f64;
    z.max(0.0) - z * y as f64 + (-z.abs()).exp().ln_1p()
}

/// Logistic function.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn gather(params: &Params, rows: &Prepared) -> (Vec<f32>, Vec<f32>) {
    let spec = &params.spec;
    let (nf, d, w, nd) = (
        spec.categorical,
        spec.embedding_dim,
        spec.row_width(),
        spec.dense_inputs,
    );
    let din = spec.deep_inputs();
    let n = rows.len();
    let mut x = vec![0.0f32; n * din];
    let mut wide = vec![0.0f32; n];
    for i in 0..n {
        let xi = &mut x[i * din..(i + 1) * din];
        for f in 0..nf {
            let id = rows.ids[i * nf + f] as usize;
            let row = &params.table[id * w..(id + 1) * w];
            xi[f * d..(f + 1) * d].copy_from_slice(&row[..d]);
            if spec.wide {
                wide[i] += row[d];
            }
        }
        xi[nf * d..].copy_from_slice(&rows.dense[i * nd..(i + 1) * nd]);
    }
    (x, wide)
}

/// The MLP over `x` (`[n, deep_inputs]`): `h = relu(h W + b)` layer after layer, no ReLU
/// after the last. `layer(offset, in, out)` gives a layer's weight (`[in, out]`) and bias
/// (`[1, out]`) from wherever the parameters live: host buffers uploaded for this step
/// ([`forward_backward`]) or views of the device-resident parameter tensor
/// ([`crate::resident`]). Returns the output (`[n, 1]`) and the layers used.
pub(crate) fn mlp_forward(
    spec: &ModelSpec,
    x: Tensor<2>,
    mut layer: impl FnMut(usize, usize, usize) -> (Tensor<2>, Tensor<2>),
) -> (Tensor<2>, Vec<(Tensor<2>, Tensor<2>)>) {
    let mut h = x;
    let mut ws = Vec::new();
    let offs = spec.layer_offsets();
    for (k, &(off, i, o)) in offs.iter().enumerate() {
        let (w, b) = layer(off, i, o);
        h = h.matmul(w.clone()) + b.clone();
        if k + 1 < offs.len() {
            h = relu(h);
        }
        ws.push((w, b));
    }
    (h, ws)
}

/// [`mlp_forward`] with the layers uploaded from the host buffer `dense` (leaves that require
/// grad when `grad`).
fn mlp(
    spec: &ModelSpec,
    dense: &[f32],
    x: Tensor<2>,
    device: &Device,
    grad: bool,
) -> (Tensor<2>, Vec<(Tensor<2>, Tensor<2>)>) {
    mlp_forward(spec, x, |off, i, o| {
        let mut w = Tensor::<2>::from_data(
            TensorData::new(dense[off..off + i * o].to_vec(), [i, o]),
            device,
        );
        let mut b = Tensor::<2>::from_data(
            TensorData::new(dense[off + i * o..off + i * o + o].to_vec(), [1, o]),
            device,
        );
        if grad {
            w = w.require_grad();
            b = b.require_grad();
        }
        (w, b)
    })
}

/// Logits of `rows` (no gradients). Used by evaluation and `kiln predict` alike.
pub fn predict_logits(params: &Params, rows: &Prepared) -> Result<Vec<f32>> {
    let spec = &params.spec;
    let n = rows.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let (x, wide) = gather(params, rows);
    let deep: Vec<f32> = if spec.layers.is_empty() {
        vec![params.dense[0]; n]
    } else {
        let device = infer_device();
        let xt = Tensor::<2>::from_data(TensorData::new(x, [n, spec.deep_inputs()]), &device);
        let (z, _) = mlp(spec, &params.dense, xt, &device, false);
        to_vec(z)?
    };
    Ok(deep.iter().zip(&wide).map(|(a, b)| a + b).collect())
}

/// Forward and backward of one local batch. Gradients are of `sum(loss) * scale`.
pub fn forward_backward(params: &Params, rows: &Prepared, scale: f32) -> Result<StepGrads> {
    let spec = &params.spec;
    let n = rows.len();
    let (nf, d, w) = (spec.categorical, spec.embedding_dim, spec.row_width());
    let din = spec.deep_inputs();
    let (x, wide) = gather(params, rows);
    let mut dense_grad = vec![0.0f32; spec.dense_len()];
    let mut g = vec![0.0f32; n];
    let mut loss_sum = 0.0f64;
    let mut dx: Option<Vec<f32>> = None;
    if spec.layers.is_empty() {
        for i in 0..n {
            let z = params.dense[0] + wide[i];
            loss_sum += bce_with_logit(z, rows.labels[i]);
            g[i] = (sigmoid(z) - rows.labels[i]) * scale;
        }
        dense_grad[0] = g.iter().sum();
    } else {
        let device = train_device();
        let mut xt = Tensor::<2>::from_data(TensorData::new(x, [n, din]), &device);
        let need_dx = d > 0;
        if need_dx {
            xt = xt.require_grad();
        }
        let (z, ws) = mlp(spec, &params.dense, xt.clone(), &device, true);
        let zv = to_vec(z.clone())?;
        for i in 0..n {
            let zi = zv[i] + wide[i];
            loss_sum += bce_with_logit(zi, rows.labels[i]);
            g[i] = (sigmoid(zi) - rows.labels[i]) * scale;
        }
        let gt = Tensor::<2>::from_data(TensorData::new(g.clone(), [n, 1]), &device);
        let grads = (z * gt).sum().backward();
        for ((off, i, o), (wt, bt)) in spec.layer_offsets().into_iter().zip(&ws) {
            let gw = wt
                .grad(&grads)
                .ok_or_else(|| Error::Burn("missing weight gradient".into()))?;
            let gb = bt
                .grad(&grads)
                .ok_or_else(|| Error::Burn("missing bias gradient".into()))?;
            dense_grad[off..off + i * o].copy_from_slice(&to_vec(gw)?);
            dense_grad[off + i * o..off + i * o + o].copy_from_slice(&to_vec(gb)?);
        }
        if need_dx {
            let gx = xt
                .grad(&grads)
                .ok_or_else(|| Error::Burn("missing input gradient".into()))?;
            dx = Some(to_vec(gx)?);
        }
    }
    // Scatter into touched rows.
    let mut ids: Vec<u32> = rows.ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let mut srows = vec![0.0f32; ids.len() * w];
    if w > 0 {
        for i in 0..n {
            for f in 0..nf {
                let id = rows.ids[i * nf + f];
                let slot = ids.binary_search(&id).expect("id present");
                let dst = &mut srows[slot * w..(slot + 1) * w];
                if let Some(dx) = &dx {
                    for (a, b) in dst[..d]
                        .iter_mut()
                        .zip(&dx[i * din + f * d..i * din + (f + 1) * d])
                    {
                        *a += *b;
                    }
                }
                if spec.wide {
                    dst[d] += g[i];
                }
            }
        }
    } else {
        ids.clear();
    }
    Ok(StepGrads {
        loss_sum,
        dense: dense_grad,
        sparse: SparseGrad { ids, rows: srows },
    })
}
