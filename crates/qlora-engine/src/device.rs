//! Which device a model runs on: `auto`, `cpu` or `cuda:N`, as the CLI's `--device` and the
//! app's settings spell it. One parser for both, so a bad choice gets the same message
//! everywhere: it names what was asked and what this build can do instead.

use crate::error::{Error, Result};
use candle_core::Device;

/// A device as the user asked for it, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum DeviceChoice {
    /// The first CUDA GPU when this build has CUDA and a GPU answers, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CUDA GPU with this ordinal (as `nvidia-smi` numbers them, unless
    /// `CUDA_VISIBLE_DEVICES` says otherwise).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidOption(format!("unknown device '{s}' (use auto, cpu, cuda or cuda:N such as cuda:0)"));
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" | "gpu" => DeviceChoice::Cuda(0),
            other => match other.strip_prefix("cuda:") {
                Some(n) => DeviceChoice::Cuda(n.parse().map_err(|_| bad())?),
                None => return Err(bad()),
            },
        })
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build can run on CUDA at all (built with the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

impl DeviceChoice {
    /// Opens the device. `Auto` never fails: without CUDA support or a working GPU it is the
    /// CPU. An explicit `cuda:N` fails with the reason and the fix.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(if CUDA_BUILT { Device::new_cuda(0).unwrap_or(Device::Cpu) } else { Device::Cpu }),
            DeviceChoice::Cuda(n) if !CUDA_BUILT => Err(Error::InvalidOption(format!(
                "device cuda:{n} asked for, but this build has no CUDA support: rebuild with `--features cuda` \
                 (see ../shared/gpu/README.md for the toolkit) or use --device cpu"
            ))),
            DeviceChoice::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                Error::InvalidOption(format!(
                    "cannot open device cuda:{n} ({e}): check `nvidia-smi` lists GPU {n} and its driver loads, or use --device cpu"
                ))
            }),
        }
    }
}

/// How a device is named to the user: `cpu` or `cuda:N`.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match d.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            other => format!("{other:?}"),
        },
        other => format!("{:?}", other.location()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_cli_and_app_accept() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
        for (c, s) in [(DeviceChoice::Auto, "auto"), (DeviceChoice::Cpu, "cpu"), (DeviceChoice::Cuda(1), "cuda:1")] {
            assert_eq!(c.to_string(), s);
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), c);
        }
    }

    #[test]
    fn bad_names_say_what_is_accepted() {
        for bad in ["", "gpu0", "cuda:", "cuda:x", "metal", "cuda:-1"] {
            let msg = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(msg.contains(&format!("'{bad}'")) && msg.contains("cuda:N"), "{bad}: {msg}");
        }
    }

    #[test]
    fn cpu_and_auto_open_here() {
        assert!(matches!(DeviceChoice::Cpu.open().unwrap(), Device::Cpu));
        assert_eq!(device_name(&DeviceChoice::Cpu.open().unwrap()), "cpu");
        // Without CUDA in the build, auto is the CPU and an explicit GPU is a clear error.
        if !CUDA_BUILT {
            assert!(matches!(DeviceChoice::Auto.open().unwrap(), Device::Cpu));
            let msg = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(msg.contains("cuda:0") && msg.contains("--features cuda") && msg.contains("--device cpu"), "{msg}");
        }
    }

    #[test]
    fn serializes_for_the_app_settings() {
        assert_eq!(serde_json::to_string(&DeviceChoice::Cuda(1)).unwrap(), r#"{"kind":"cuda","index":1}"#);
        assert_eq!(serde_json::to_string(&DeviceChoice::Auto).unwrap(), r#"{"kind":"auto"}"#);
        let back: DeviceChoice = serde_json::from_str(r#"{"kind":"cpu"}"#).unwrap();
        assert_eq!(back, DeviceChoice::Cpu);
    }
}
