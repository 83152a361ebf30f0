//! GPUs as the driver sees them, through NVML (`nvml-wrapper`): name, total and free memory,
//! compute capability, and how busy and hot the card is now. Free memory is what the planner
//! compares against, since a desktop's display and other processes already hold part of the
//! card. Utilisation and temperature are optional: some cards and drivers do not report them
//! (NVML's `NotSupported`), and a missing reading is shown as such, never as 0.

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
    /// Percent of the last sample period in which a kernel ran (NVML's GPU utilisation).
    #[serde(default)]
    pub utilization_percent: Option<u32>,
    /// Core temperature in degrees Celsius.
    #[serde(default)]
    pub temperature_c: Option<u32>,
}

impl GpuInfo {
    /// bf16 compute needs Ampere (compute capability 8.0) or newer.
    pub fn supports_bf16(&self) -> bool {
        crate::presets::cc_supports_bf16(&self.compute_capability)
    }

    /// One line for people: `GPU 0 NVIDIA GeForce RTX 2080: 1.2 GiB used of 8.0 GiB, 37% busy,
    /// 64 °C` (`utilisation n/a` and `temperature n/a` where the card does not say).
    pub fn describe(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let busy = self.utilization_percent.map_or("utilisation n/a".to_string(), |u| format!("{u}% busy"));
        let temp = self.temperature_c.map_or("temperature n/a".to_string(), |t| format!("{t} °C"));
        format!("GPU {} {}: {:.1} GiB used of {:.1} GiB, {busy}, {temp}", self.index, self.name, gib(self.used_bytes), gib(self.total_bytes))
    }
}

/// An optional reading: `None` when the card does not support it (or the query fails), so one
/// missing sensor does not hide the whole GPU.
pub(crate) fn optional<T>(r: Result<T, nvml_wrapper::error::NvmlError>) -> Option<T> {
    r.ok()
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
            let utilization_percent = optional(dev.utilization_rates()).map(|u| u.gpu);
            let temperature_c = optional(dev.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu));
            Ok(GpuInfo {
                index,
                name: dev.name().map_err(q)?,
                total_bytes: mem.total,
                free_bytes: mem.free,
                used_bytes: mem.used,
                compute_capability: format!("{}.{}", cc.major, cc.minor),
                driver_version: driver_version.clone(),
                utilization_percent,
                temperature_c,
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
                    assert!(g.utilization_percent.is_none_or(|u| u <= 100), "{g:?}");
                    assert!(g.temperature_c.is_none_or(|t| (1..130).contains(&t)), "{g:?}");
                }
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    fn card(util: Option<u32>, temp: Option<u32>) -> GpuInfo {
        GpuInfo {
            index: 0,
            name: "NVIDIA GeForce RTX 2080".into(),
            total_bytes: 8 << 30,
            free_bytes: (8 << 30) - (3 << 29),
            used_bytes: 3 << 29,
            compute_capability: "7.5".into(),
            driver_version: "550.54".into(),
            utilization_percent: util,
            temperature_c: temp,
        }
    }

    #[test]
    fn describe_shows_load_and_temperature_or_says_they_are_missing() {
        assert_eq!(card(Some(37), Some(64)).describe(), "GPU 0 NVIDIA GeForce RTX 2080: 1.5 GiB used of 8.0 GiB, 37% busy, 64 °C");
        assert_eq!(card(None, None).describe(), "GPU 0 NVIDIA GeForce RTX 2080: 1.5 GiB used of 8.0 GiB, utilisation n/a, temperature n/a");
    }

    #[test]
    fn unsupported_readings_are_none_not_errors() {
        use nvml_wrapper::error::NvmlError;
        assert_eq!(optional::<u32>(Err(NvmlError::NotSupported)), None);
        assert_eq!(optional::<u32>(Err(NvmlError::GpuLost)), None);
        assert_eq!(optional(Ok(42u32)), Some(42));
    }

    #[test]
    fn older_json_without_the_readings_still_parses() {
        let old = r#"{"index":0,"name":"T4","total_bytes":1,"free_bytes":1,"used_bytes":0,"compute_capability":"7.5","driver_version":"1"}"#;
        let g: GpuInfo = serde_json::from_str(old).unwrap();
        assert_eq!((g.utilization_percent, g.temperature_c), (None, None));
    }
}
