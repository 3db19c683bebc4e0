//! Where the dense network runs: Burn's `flex` CPU backend (always built), or a GPU through
//! Burn's CUDA or wgpu backend when the `cuda` / `wgpu` cargo feature is on. The same model
//! code runs on every device; embeddings and the lazy Adam stay in host memory.
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
}

impl FromStr for ComputeDevice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
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
                "device `{s}`: expected cpu, cuda, cuda:N, wgpu or wgpu:N"
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

static SELECTED: OnceLock<ComputeDevice> = OnceLock::new();

/// Chooses this process's device; fails if the binary was built without the backend, or if a
/// different device was already chosen.
pub fn select_device(device: ComputeDevice) -> Result<()> {
    backend_device(device)?;
    let chosen = *SELECTED.get_or_init(|| device);
    if chosen != device {
        return Err(Error::Config(format!(
            "device {device} requested, but this process already trains on {chosen}"
        )));
    }
    Ok(())
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
        #[cfg(not(feature = "wgpu"))]
        ComputeDevice::Wgpu(_) => Err(missing("wgpu")),
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
        let e = "tpu".parse::<ComputeDevice>().unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda"), "{e}");
        let e = "cuda:x".parse::<ComputeDevice>().unwrap_err().to_string();
        assert!(e.contains("`x` is not a device index"), "{e}");
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
