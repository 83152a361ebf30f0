//! The System page's data: GPUs through NVML (memory, utilisation, temperature), system RAM
//! and free disk, from `qlora_gpu`, and the compute devices Settings may offer. No GPU is a
//! normal state (the app plans and runs on the CPU), shown as such, not an error.

use crate::error::{AppError, CmdResult, ErrorCode};
use qlora_gpu as gpu;
use serde::Serialize;
use ts_rs::TS;

/// One NVIDIA GPU as NVML reports it.
#[derive(Debug, Clone, Serialize, TS)]
pub struct GpuView {
    pub index: u32,
    pub name: String,
    #[ts(type = "number")]
    pub total_bytes: u64,
    #[ts(type = "number")]
    pub free_bytes: u64,
    #[ts(type = "number")]
    pub used_bytes: u64,
    pub compute_capability: String,
    pub driver_version: String,
    pub supports_bf16: bool,
    /// Percent busy over NVML's last sample period; None when the card does not report it.
    pub utilization_percent: Option<u32>,
    /// Degrees Celsius; None when the card does not report it.
    pub temperature_c: Option<u32>,
}

impl From<&gpu::GpuInfo> for GpuView {
    fn from(g: &gpu::GpuInfo) -> Self {
        Self {
            index: g.index,
            name: g.name.clone(),
            total_bytes: g.total_bytes,
            free_bytes: g.free_bytes,
            used_bytes: g.used_bytes,
            compute_capability: g.compute_capability.clone(),
            driver_version: g.driver_version.clone(),
            supports_bf16: g.supports_bf16(),
            utilization_percent: g.utilization_percent,
            temperature_c: g.temperature_c,
        }
    }
}

/// Free space of one folder's filesystem.
#[derive(Debug, Clone, Serialize, TS)]
pub struct DiskView {
    pub path: String,
    #[ts(type = "number")]
    pub total_bytes: u64,
    #[ts(type = "number")]
    pub available_bytes: u64,
}

/// Everything the System page shows.
#[derive(Debug, Clone, Serialize, TS)]
pub struct SystemInfo {
    pub gpus: Vec<GpuView>,
    /// Why there is no GPU, in NVML's words (e.g. the driver library is missing), when `gpus`
    /// is empty.
    pub no_gpu_reason: Option<String>,
    #[ts(type = "number")]
    pub ram_total_bytes: u64,
    #[ts(type = "number")]
    pub ram_available_bytes: u64,
    /// The disk holding the model cache.
    pub cache_disk: Option<DiskView>,
    pub cpu_threads: u32,
    /// The compute devices Settings offers: `auto`, `cpu`, and `cuda:N` for each GPU when this
    /// build has CUDA.
    pub devices: Vec<String>,
    /// This build can run on CUDA (built with the `cuda` feature).
    pub cuda_built: bool,
}

/// What Settings offers: only devices that exist here.
pub fn device_choices(gpus: &[GpuView], cuda_built: bool) -> Vec<String> {
    let mut out = vec!["auto".to_string(), "cpu".to_string()];
    if cuda_built {
        out.extend(gpus.iter().map(|g| format!("cuda:{}", g.index)));
    }
    out
}

/// A GPU to plan for without having it.
#[derive(Debug, Clone, Serialize, TS)]
pub struct GpuPresetView {
    pub id: String,
    pub name: String,
    #[ts(type = "number")]
    pub total_bytes: u64,
    pub compute_capability: String,
    pub supports_bf16: bool,
}

fn core_err(e: gpu::GpuError) -> AppError {
    AppError::new(ErrorCode::Internal, e.to_string())
}

/// Reads GPUs, RAM and the cache disk.
pub fn read(cache_dir: &std::path::Path) -> CmdResult<SystemInfo> {
    let (gpus, no_gpu_reason) = match gpu::detect_gpus() {
        Ok(g) => (g.iter().map(GpuView::from).collect(), None),
        // NVML's own words; the page says the rest.
        Err(gpu::GpuError::NoGpu { reason }) => (Vec::new(), Some(reason)),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let ram = gpu::system_memory().map_err(core_err)?;
    let cache_disk = gpu::disk_space(cache_dir).ok().map(|d| DiskView {
        path: d.path.to_string_lossy().to_string(),
        total_bytes: d.total_bytes,
        available_bytes: d.available_bytes,
    });
    let cpu_threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let cuda_built = qlora_engine::device::CUDA_BUILT;
    let devices = device_choices(&gpus, cuda_built);
    Ok(SystemInfo {
        devices,
        cuda_built,
        gpus,
        no_gpu_reason,
        ram_total_bytes: ram.total_bytes,
        ram_available_bytes: ram.available_bytes,
        cache_disk,
        cpu_threads,
    })
}

/// The GPU presets from `configs/gpus.json`.
pub fn presets() -> CmdResult<Vec<GpuPresetView>> {
    Ok(gpu::presets()
        .map_err(core_err)?
        .iter()
        .map(|p| GpuPresetView {
            id: p.id.clone(),
            name: p.name.clone(),
            total_bytes: p.total_bytes(),
            compute_capability: p.compute_capability.clone(),
            supports_bf16: p.supports_bf16(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32) -> GpuView {
        GpuView::from(&gpu::GpuInfo {
            index,
            name: "NVIDIA GeForce RTX 2080".into(),
            total_bytes: 8 << 30,
            free_bytes: 6 << 30,
            used_bytes: 2 << 30,
            compute_capability: "7.5".into(),
            driver_version: "550.54".into(),
            utilization_percent: Some(37),
            temperature_c: None,
        })
    }

    #[test]
    fn readings_reach_the_page_and_a_missing_one_stays_missing() {
        let g = gpu(0);
        assert_eq!((g.utilization_percent, g.temperature_c), (Some(37), None));
        assert!(!g.supports_bf16);
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["temperature_c"], serde_json::Value::Null, "null, not 0");
    }

    #[test]
    fn only_devices_that_exist_are_offered() {
        assert_eq!(device_choices(&[], false), ["auto", "cpu"]);
        assert_eq!(device_choices(&[gpu(0), gpu(1)], false), ["auto", "cpu"], "no CUDA in the build: no GPU choice");
        assert_eq!(device_choices(&[gpu(0), gpu(1)], true), ["auto", "cpu", "cuda:0", "cuda:1"]);
    }

    /// This machine (and CI) has no NVIDIA GPU: the page gets an empty list and NVML's reason,
    /// not an error, and the CPU choices.
    #[test]
    fn no_gpu_is_a_state_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let info = read(dir.path()).unwrap();
        if info.gpus.is_empty() {
            let reason = info.no_gpu_reason.unwrap();
            assert!(!reason.is_empty() && !reason.starts_with("no NVIDIA GPU found"), "NVML's reason alone: {reason}");
            assert_eq!(info.devices, ["auto", "cpu"]);
        }
        assert!(info.ram_total_bytes > 0 && info.cpu_threads >= 1);
        assert!(info.cache_disk.is_some());
    }
}
