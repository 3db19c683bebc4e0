//! Where training runs: Burn's `flex` CPU backend (always built), or a GPU through Burn's CUDA
//! or wgpu backend when the `cuda` / `wgpu` cargo feature is on. On the CPU the dense network
//! runs in Burn and the embedding table and optimizers on host buffers; on any other device the
//! whole step is device-resident ([`crate::resident`]). Both share one model definition.
//!
//! The choice is process-wide (one rank = one process = one device), set once by
//! [`select_device`] before training; multi-GPU nodes run one rank per GPU
//! (`cuda` without an index picks the GPU numbered `LOCAL_RANK`).

use std::str::FromStr;
use std::sync::OnceLock;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A compute device for the dense network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ComputeDevice {
    /// Burn `flex` on the CPU (the default, always available).
    #[default]
    Cpu,
    /// CUDA GPU with this index (`cuda:N`; `cuda` alone: `LOCAL_RANK`, else 0).
    Cuda(usize),
    /// wgpu discrete GPU with this index (`wgpu:N`; `wgpu` alone: `LOCAL_RANK`, else 0).
    Wgpu(usize),
    /// wgpu's CPU adapter (`wgpu:cpu`): a software Vulkan device such as Mesa's lavapipe,
    /// which runs the same GPU kernels on the CPU (for tests on machines without a GPU).
    WgpuCpu,
}

impl FromStr for ComputeDevice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "wgpu:cpu" {
            return Ok(ComputeDevice::WgpuCpu);
        }
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => {
                let i = i.parse::<usize>().map_err(|_| {
                    Error::Config(format!("device `{s}`: `{i}` is not a device index"))
                })?;
                (k, Some(i))
            }
            None => (s, None),
        };
        let pick = || index.unwrap_or_else(local_rank);
        match kind {
            "cpu" if index.is_none() => Ok(ComputeDevice::Cpu),
            "cuda" => Ok(ComputeDevice::Cuda(pick())),
            "wgpu" => Ok(ComputeDevice::Wgpu(pick())),
            _ => Err(Error::Config(format!(
                "device `{s}`: expected cpu, cuda, cuda:N, wgpu, wgpu:N or wgpu:cpu"
            ))),
        }
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComputeDevice::Cpu => write!(f, "cpu"),
            ComputeDevice::Cuda(i) => write!(f, "cuda:{i}"),
            ComputeDevice::Wgpu(i) => write!(f, "wgpu:{i}"),
            ComputeDevice::WgpuCpu => write!(f, "wgpu:cpu"),
        }
    }
}

impl From<ComputeDevice> for String {
    fn from(d: ComputeDevice) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for ComputeDevice {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// `LOCAL_RANK` (torchrun, one rank per GPU of a node), or 0.
fn local_rank() -> usize {
    std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The device to score a model on that was trained on `trained_on`: the same kind of device
/// (`cuda` / `wgpu` at GPU `LOCAL_RANK`, else 0) when this build has its backend, else the CPU.
/// Scoring where the model was trained keeps the held-out metrics comparable with the
/// trainer's; [`Agreement::between`] says how closely they must agree.
pub fn scoring_device(trained_on: ComputeDevice) -> ComputeDevice {
    let same_kind = match trained_on {
        ComputeDevice::Cpu => ComputeDevice::Cpu,
        ComputeDevice::Cuda(_) => ComputeDevice::Cuda(local_rank()),
        ComputeDevice::Wgpu(_) => ComputeDevice::Wgpu(local_rank()),
        ComputeDevice::WgpuCpu => ComputeDevice::WgpuCpu,
    };
    if backend_device(same_kind).is_ok() {
        same_kind
    } else {
        ComputeDevice::Cpu
    }
}

/// Largest difference allowed between two held-out metrics (AUC, log loss) of one model on
/// the same rows when a GPU scored either side. GPU kernels sum in another order than the
/// CPU (and may use fused multiply-adds or reduced-precision matrix units), so logits differ
/// in their last bits; averaged over the held-out rows that moves a metric by well under
/// 1e-5, while a different model or different rows move it by far more than 1e-4.
pub const METRIC_TOLERANCE: f64 = 1e-4;

/// Largest difference allowed between two logits of one model for the same row when a GPU
/// scored either side, relative to `max(1, |logit|)`.
pub const LOGIT_TOLERANCE: f32 = 1e-3;

/// How two scorings of the same model on the same rows must agree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agreement {
    /// Bit for bit: both scored on the CPU, where Burn `flex` is deterministic.
    Exact,
    /// Within [`METRIC_TOLERANCE`] (metrics) and [`LOGIT_TOLERANCE`] (logits): a GPU scored
    /// one side or both (GPU kernels may be chosen by autotuning, so even two runs on the same
    /// GPU are not promised the same bits).
    Tolerant,
}

impl Agreement {
    /// How scores computed on `a` and on `b` must agree: [`Agreement::Exact`] when both are
    /// the CPU, else [`Agreement::Tolerant`].
    pub fn between(a: ComputeDevice, b: ComputeDevice) -> Self {
        if a == ComputeDevice::Cpu && b == ComputeDevice::Cpu {
            Agreement::Exact
        } else {
            Agreement::Tolerant
        }
    }

    /// Whether two values of a held-out metric agree.
    pub fn metric_agrees(self, a: f64, b: f64) -> bool {
        match self {
            Agreement::Exact => a.to_bits() == b.to_bits() || a == b,
            Agreement::Tolerant => (a - b).abs() <= METRIC_TOLERANCE || a == b,
        }
    }

    /// Whether two logits of the same row agree (two NaNs agree).
    pub fn logit_agrees(self, a: f32, b: f32) -> bool {
        if a.is_nan() || b.is_nan() {
            return a.is_nan() && b.is_nan();
        }
        match self {
            Agreement::Exact => a.to_bits() == b.to_bits(),
            Agreement::Tolerant => (a - b).abs() <= LOGIT_TOLERANCE * a.abs().max(b.abs()).max(1.0),
        }
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Agreement::Exact => write!(f, "bit for bit"),
            Agreement::Tolerant => write!(
                f,
                "within {METRIC_TOLERANCE:e} per metric and {LOGIT_TOLERANCE:e} x max(1, |logit|) per logit"
            ),
        }
    }
}

static SELECTED: OnceLock<ComputeDevice> = OnceLock::new();

/// Chooses this process's device; fails if the binary was built without the backend, or if a
/// different device was already chosen.
pub fn select_device(device: ComputeDevice) -> Result<()> {
    let backend = backend_device(device)?;
    if device != ComputeDevice::Cpu && SELECTED.get().is_none() {
        probe(device, &backend)?;
    }
    let chosen = *SELECTED.get_or_init(|| device);
    if chosen != device {
        return Err(Error::Config(format!(
            "device {device} requested, but this process already trains on {chosen}"
        )));
    }
    Ok(())
}

/// Runs one tiny kernel on `backend`, so that a GPU that is not there (no CUDA device of that
/// index, no wgpu adapter of that kind) is a clear error when training starts, not a panic in
/// the middle of a step.
fn probe(device: ComputeDevice, backend: &Device) -> Result<()> {
    let backend = backend.clone();
    std::panic::catch_unwind(move || {
        burn::tensor::Tensor::<1>::from_data([1.0f32], &backend)
            .into_data()
            .try_to_vec::<f32>()
            .ok()
    })
    .ok()
    .flatten()
    .filter(|v| v == &[1.0])
    .map(|_| ())
    .ok_or_else(|| {
        Error::Config(format!(
            "device {device}: no usable device of that kind here (for wgpu: a Vulkan driver, \
             e.g. Debian's mesa-vulkan-drivers for `wgpu:cpu`; for cuda: the NVIDIA driver)"
        ))
    })
}

/// The selected device (CPU unless [`select_device`] chose another).
pub fn selected_device() -> ComputeDevice {
    SELECTED.get().copied().unwrap_or_default()
}

/// The Burn device of `device`, or why this build cannot use it.
fn backend_device(device: ComputeDevice) -> Result<Device> {
    // Unused when the build has every GPU feature (the CI type-check).
    #[cfg_attr(all(feature = "cuda", feature = "wgpu"), allow(unused_variables))]
    let missing = |feature: &str| {
        Error::Config(format!(
            "device {device}: this kiln was built without the `{feature}` feature \
             (build with `cargo build --release -p kiln-jobs --features kiln-trainer/{feature}`)"
        ))
    };
    match device {
        ComputeDevice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda(i) => Ok(Device::cuda(i)),
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda(_) => Err(missing("cuda")),
        #[cfg(feature = "wgpu")]
        ComputeDevice::Wgpu(i) => Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i))),
        #[cfg(feature = "wgpu")]
        ComputeDevice::WgpuCpu => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
        #[cfg(not(feature = "wgpu"))]
        ComputeDevice::Wgpu(_) | ComputeDevice::WgpuCpu => Err(missing("wgpu")),
    }
}

/// The training device (with autodiff) of this process.
pub fn train_device() -> Device {
    infer_device().autodiff()
}

/// The inference device of this process.
pub fn infer_device() -> Device {
    backend_device(selected_device()).expect("checked by select_device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<ComputeDevice>().unwrap(), ComputeDevice::Cpu);
        assert_eq!(
            "cuda:3".parse::<ComputeDevice>().unwrap(),
            ComputeDevice::Cuda(3)
        );
        assert_eq!(
            "wgpu:1".parse::<ComputeDevice>().unwrap(),
            ComputeDevice::Wgpu(1)
        );
        for d in ["cpu", "cuda:2", "wgpu:0", "wgpu:cpu"] {
            assert_eq!(d.parse::<ComputeDevice>().unwrap().to_string(), d);
        }
        let e = "tpu".parse::<ComputeDevice>().unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda"), "{e}");
        let e = "cuda:x".parse::<ComputeDevice>().unwrap_err().to_string();
        assert!(e.contains("`x` is not a device index"), "{e}");
    }

    #[test]
    fn cpu_scores_agree_bit_for_bit_and_gpu_scores_within_the_tolerance() {
        let (cpu, gpu) = (ComputeDevice::Cpu, ComputeDevice::Cuda(0));
        assert_eq!(Agreement::between(cpu, cpu), Agreement::Exact);
        assert_eq!(Agreement::between(gpu, cpu), Agreement::Tolerant);
        assert_eq!(
            Agreement::between(cpu, ComputeDevice::Wgpu(1)),
            Agreement::Tolerant
        );
        assert_eq!(Agreement::between(gpu, gpu), Agreement::Tolerant);
        let auc = 0.715_312_345_f64;
        assert!(Agreement::Exact.metric_agrees(auc, auc));
        assert!(!Agreement::Exact.metric_agrees(auc, auc + 1e-7));
        assert!(Agreement::Tolerant.metric_agrees(auc, auc + 1e-7));
        assert!(Agreement::Tolerant.metric_agrees(auc, auc - 0.9e-4));
        assert!(!Agreement::Tolerant.metric_agrees(auc, auc + 2e-4));
        let z = 2.5_f32;
        let next = f32::from_bits(z.to_bits() + 1);
        assert!(!Agreement::Exact.logit_agrees(z, next));
        assert!(Agreement::Tolerant.logit_agrees(z, next));
        assert!(Agreement::Tolerant.logit_agrees(20.0, 20.01));
        assert!(!Agreement::Tolerant.logit_agrees(0.1, 0.1021));
        assert!(Agreement::Exact.logit_agrees(f32::NAN, f32::NAN));
        assert!(!Agreement::Tolerant.logit_agrees(f32::NAN, 0.0));
        assert!(Agreement::Tolerant.to_string().contains("1e-4"));
    }

    #[test]
    fn a_model_is_scored_on_the_kind_of_device_it_was_trained_on_when_built_in() {
        assert_eq!(scoring_device(ComputeDevice::Cpu), ComputeDevice::Cpu);
        let gpu = scoring_device(ComputeDevice::Cuda(3));
        if cfg!(feature = "cuda") {
            assert!(matches!(gpu, ComputeDevice::Cuda(_)), "{gpu}");
        } else {
            assert_eq!(
                gpu,
                ComputeDevice::Cpu,
                "a CPU-only build scores on the CPU"
            );
        }
        let gpu = scoring_device(ComputeDevice::Wgpu(0));
        if cfg!(feature = "wgpu") {
            assert!(matches!(gpu, ComputeDevice::Wgpu(_)), "{gpu}");
        } else {
            assert_eq!(gpu, ComputeDevice::Cpu);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_without_feature_is_a_clear_error() {
        let e = select_device(ComputeDevice::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("built without the `cuda` feature"), "{e}");
        assert_eq!(selected_device(), ComputeDevice::Cpu);
    }
}
