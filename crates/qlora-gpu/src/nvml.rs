//! GPUs as the driver sees them, through NVML (`nvml-wrapper`): name, total and free memory,
//! compute capability. Free memory is what the planner compares against, since a desktop's
//! display and other processes already hold part of the card.

use crate::GpuError;
use serde::{Deserialize, Serialize};

/// One NVIDIA GPU and its memory at the time of the query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML device index (the `cuda:N` ordinal when `CUDA_VISIBLE_DEVICES` is unset).
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Compute capability as "major.minor" (e.g. "7.5" for an RTX 2080).
    pub compute_capability: String,
    pub driver_version: String,
}

impl GpuInfo {
    /// bf16 compute needs Ampere (compute capability 8.0) or newer.
    pub fn supports_bf16(&self) -> bool {
        crate::presets::cc_supports_bf16(&self.compute_capability)
    }
}

/// Every NVIDIA GPU the driver reports, or [`GpuError::NoGpu`] with NVML's reason when there is
/// no driver, no library or no device.
pub fn detect_gpus() -> Result<Vec<GpuInfo>, GpuError> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| GpuError::NoGpu { reason: e.to_string() })?;
    let count = nvml.device_count().map_err(|e| GpuError::NoGpu { reason: e.to_string() })?;
    if count == 0 {
        return Err(GpuError::NoGpu { reason: "the driver reports 0 devices".into() });
    }
    let driver_version = nvml.sys_driver_version().unwrap_or_default();
    (0..count)
        .map(|index| {
            let q = |e: nvml_wrapper::error::NvmlError| GpuError::Query { index, reason: e.to_string() };
            let dev = nvml.device_by_index(index).map_err(q)?;
            let mem = dev.memory_info().map_err(q)?;
            let cc = dev.cuda_compute_capability().map_err(q)?;
            Ok(GpuInfo {
                index,
                name: dev.name().map_err(q)?,
                total_bytes: mem.total,
                free_bytes: mem.free,
                used_bytes: mem.used,
                compute_capability: format!("{}.{}", cc.major, cc.minor),
                driver_version: driver_version.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine and CI have no NVIDIA driver: the error must say so in words a user reads,
    /// and carry NVML's own reason. On a GPU machine the devices must be real ones.
    #[test]
    fn detect_says_no_gpu_or_lists_real_devices() {
        match detect_gpus() {
            Err(GpuError::NoGpu { reason }) => {
                let msg = GpuError::NoGpu { reason: reason.clone() }.to_string();
                assert!(msg.starts_with("no NVIDIA GPU found (NVML: "), "{msg}");
                assert!(!reason.is_empty());
            }
            Ok(gpus) => {
                assert!(!gpus.is_empty());
                for g in gpus {
                    assert!(g.total_bytes > 0 && g.free_bytes <= g.total_bytes, "{g:?}");
                    assert!(g.compute_capability.contains('.'));
                }
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}
