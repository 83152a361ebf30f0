//! The System page's data: GPUs through NVML, system RAM and free disk, from `qlora_gpu`.
//! No GPU is a normal state (the app plans and runs on the CPU), shown as such, not an error.

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
    /// Why there is no GPU (NVML's words) when `gpus` is empty.
    pub no_gpu_reason: Option<String>,
    #[ts(type = "number")]
    pub ram_total_bytes: u64,
    #[ts(type = "number")]
    pub ram_available_bytes: u64,
    /// The disk holding the model cache.
    pub cache_disk: Option<DiskView>,
    pub cpu_threads: u32,
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
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let ram = gpu::system_memory().map_err(core_err)?;
    let cache_disk = gpu::disk_space(cache_dir).ok().map(|d| DiskView {
        path: d.path.to_string_lossy().to_string(),
        total_bytes: d.total_bytes,
        available_bytes: d.available_bytes,
    });
    let cpu_threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    Ok(SystemInfo {
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
