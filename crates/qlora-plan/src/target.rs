//! The machine a plan is judged against: this machine's GPU (free memory from NVML), a GPU
//! preset from `configs/gpus.json`, or — when there is no NVIDIA GPU — system RAM for the CPU.

use crate::PlanError;
use crate::overheads::DeviceKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A GPU of this machine, read through NVML.
    Gpu,
    /// A preset card (planning for a card the user does not have).
    Preset,
    /// No NVIDIA GPU: the CPU and system RAM.
    Cpu,
}

/// Memory to plan against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    pub name: String,
    pub total_bytes: u64,
    /// Free VRAM now (GPU), the whole card (preset), or `MemAvailable` (CPU).
    pub available_bytes: u64,
    pub device: DeviceKind,
    /// The card computes in bf16 (compute capability 8.0+); else fp16.
    pub bf16: bool,
    /// Why this target was chosen when it was not asked for (e.g. no NVIDIA GPU found).
    pub note: Option<String>,
}

impl Target {
    /// A preset card, empty (nothing else on it).
    pub fn preset(id: &str) -> Result<Target, PlanError> {
        let p = qlora_gpu::find_preset(id).map_err(|e| PlanError::Machine { reason: e.to_string() })?;
        Ok(Target {
            kind: TargetKind::Preset,
            name: p.name.clone(),
            total_bytes: p.total_bytes(),
            available_bytes: p.total_bytes(),
            device: DeviceKind::Cuda,
            bf16: p.supports_bf16(),
            note: None,
        })
    }

    /// This machine: the GPU with the most free memory, else the CPU with a note saying why.
    pub fn detect() -> Result<Target, PlanError> {
        match qlora_gpu::detect_gpus() {
            Ok(gpus) => {
                let g = gpus.into_iter().max_by_key(|g| g.free_bytes).ok_or_else(|| PlanError::Machine { reason: "no GPU listed".into() })?;
                Ok(Target {
                    kind: TargetKind::Gpu,
                    name: format!("cuda:{} {}", g.index, g.name),
                    total_bytes: g.total_bytes,
                    available_bytes: g.free_bytes,
                    device: DeviceKind::Cuda,
                    bf16: g.supports_bf16(),
                    note: None,
                })
            }
            Err(e) => {
                let m = qlora_gpu::system_memory().map_err(|e| PlanError::Machine { reason: e.to_string() })?;
                Ok(Target::cpu(m.total_bytes, m.available_bytes, Some(e.to_string())))
            }
        }
    }

    /// The CPU with this much RAM.
    pub fn cpu(total_bytes: u64, available_bytes: u64, note: Option<String>) -> Target {
        Target { kind: TargetKind::Cpu, name: "CPU (system RAM)".into(), total_bytes, available_bytes, device: DeviceKind::Cpu, bf16: true, note }
    }
}
