//! What the machine has to plan against: NVIDIA GPUs and their free memory (through NVML),
//! system RAM (for CPU runs and for the case with no GPU), free disk on a folder's filesystem,
//! and GPU presets kept as data (`configs/gpus.json`) to plan for a card the user does not have.
//!
//! The planner never guesses what it can read: `detect_gpus` asks the driver, and when there is
//! no NVIDIA driver or no GPU it says so with NVML's own words instead of inventing a device.
//!
//! ```
//! let presets = qlora_gpu::presets().unwrap();
//! let rtx2080 = presets.iter().find(|p| p.id == "rtx2080").unwrap();
//! assert_eq!(rtx2080.total_bytes(), 8 << 30);
//! assert!(!rtx2080.supports_bf16());
//! ```

mod nvml;
mod presets;
mod system;

pub use nvml::{GpuInfo, detect_gpus};
pub use presets::{GpuPreset, find_preset, presets};
pub use system::{DiskSpace, SystemMemory, disk_space, parse_meminfo, system_memory};

use std::path::PathBuf;

/// Why the machine could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// NVML could not be loaded or reports no device: the machine has no usable NVIDIA GPU.
    #[error("no NVIDIA GPU found (NVML: {reason}); planning against system RAM for the CPU instead")]
    NoGpu { reason: String },
    /// NVML answered, but a query on one device failed.
    #[error("reading NVIDIA GPU {index} through NVML failed: {reason}; check the driver with `nvidia-smi`")]
    Query { index: u32, reason: String },
    /// A system file such as /proc/meminfo could not be read or parsed.
    #[error("reading {path} failed: {reason}")]
    System { path: PathBuf, reason: String },
    /// The free space of a folder's filesystem could not be read.
    #[error("reading free disk space of {path} failed: {source}; check that the folder exists")]
    Disk { path: PathBuf, source: std::io::Error },
    /// The preset data is malformed (a broken edit of configs/gpus.json).
    #[error("GPU presets (configs/gpus.json) are malformed: {reason}")]
    Presets { reason: String },
    /// No preset has the asked id.
    #[error("unknown GPU preset '{id}'; known presets: {known}")]
    UnknownPreset { id: String, known: String },
}
