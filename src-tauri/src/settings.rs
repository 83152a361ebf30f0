//! The app's settings: Hub token, cache folder, endpoint, offline mode, the compute device and
//! the folders where ready-to-use local models live (the starter model among them). Kept as JSON in the app's
//! home folder, written atomically; the token file is readable only by the user.

use crate::error::{AppError, CmdResult};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use ts_rs::TS;

/// The default Hub endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What the user can change on the Settings page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(default)]
pub struct Settings {
    /// Hugging Face access token, for gated models (Gemma, Mistral). `None`: anonymous.
    pub hub_token: Option<String>,
    /// The Hugging Face cache folder; `None`: the standard one (`$HF_HOME/hub`).
    pub cache_dir: Option<String>,
    /// The Hub endpoint (a mirror, or the local test server).
    pub endpoint: String,
    /// Never touch the network: only cached and local models are listed and used.
    pub offline: bool,
    /// Folders holding Hub-style model folders (config.json, tokenizer.json, safetensors)
    /// that are ready to use without the Hub.
    pub local_model_dirs: Vec<String>,
    /// Where models load and train: `auto` (the first GPU when this build has CUDA and one
    /// answers, else the CPU), `cpu` or `cuda:N`.
    pub device: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hub_token: None,
            cache_dir: None,
            endpoint: DEFAULT_ENDPOINT.to_string(),
            offline: false,
            local_model_dirs: Vec::new(),
            device: "auto".to_string(),
        }
    }
}

impl Settings {
    /// Checks what the user typed; the message names the field and the fix.
    pub fn validate(&self) -> CmdResult<()> {
        let ep = self.endpoint.trim();
        if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.len() < 10 {
            return Err(AppError::invalid(format!("endpoint '{ep}' is not a web address: use e.g. {DEFAULT_ENDPOINT}")));
        }
        if let Some(dir) = &self.cache_dir
            && !Path::new(dir).is_absolute()
        {
            return Err(AppError::invalid(format!("cache folder '{dir}' must be an absolute path")));
        }
        for dir in &self.local_model_dirs {
            if !Path::new(dir).is_absolute() {
                return Err(AppError::invalid(format!("local models folder '{dir}' must be an absolute path")));
            }
        }
        self.device_choice()?;
        if let Some(t) = &self.hub_token
            && (t.trim().is_empty() || t.chars().any(char::is_whitespace))
        {
            return Err(AppError::invalid("the Hub token has spaces in it: paste it again from huggingface.co/settings/tokens"));
        }
        Ok(())
    }

    /// The compute device as the engine opens it; a bad name says what is accepted.
    pub fn device_choice(&self) -> CmdResult<qlora_engine::DeviceChoice> {
        self.device.parse().map_err(|e: qlora_engine::Error| AppError::invalid(format!("compute device: {e}")))
    }

    /// Opens the chosen device: `auto` is never an error; `cuda:N` without a CUDA build or
    /// GPU says why and what to pick instead.
    pub fn open_device(&self) -> CmdResult<qlora_engine::candle_core::Device> {
        self.device_choice()?.open().map_err(|e| AppError::invalid(format!("compute device: {e}")))
    }

    /// Reads the settings file; a missing file gives the defaults.
    pub fn load(path: &Path) -> CmdResult<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AppError::new(crate::error::ErrorCode::BadFormat, format!("settings file '{}' is not valid: {e}; fix or delete it", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(AppError::io("cannot read settings file", path, e)),
        }
    }

    /// Writes the settings file atomically, readable only by the user (it may hold a token).
    pub fn save(&self, path: &Path) -> CmdResult<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| AppError::new(crate::error::ErrorCode::Internal, e.to_string()))?;
        write_atomic(path, &json, true)
    }

    /// Adds a local models folder unless it is already listed. True when it was added.
    pub fn add_local_dir(&mut self, dir: &Path) -> bool {
        let s = dir.to_string_lossy().to_string();
        if self.local_model_dirs.contains(&s) {
            return false;
        }
        self.local_model_dirs.push(s);
        true
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file. `private`: mode 0600 on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> CmdResult<()> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| AppError::io("cannot create folder", &dir, e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| AppError::io("cannot write", &tmp, e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = private;
    std::fs::rename(&tmp, path).map_err(|e| AppError::io("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        let mut s = Settings { offline: true, device: "cpu".into(), ..Default::default() };
        s.add_local_dir(Path::new("/models"));
        assert!(!s.add_local_dir(Path::new("/models")));
        s.validate().unwrap();
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), s);
    }

    #[test]
    fn bad_endpoint_and_relative_folder_are_refused_with_the_field_named() {
        let mut s = Settings { endpoint: "huggingface.co".into(), ..Default::default() };
        assert!(s.validate().unwrap_err().message.contains("endpoint 'huggingface.co'"));
        s.endpoint = DEFAULT_ENDPOINT.into();
        s.cache_dir = Some("cache".into());
        assert!(s.validate().unwrap_err().message.contains("cache folder 'cache'"));
        s.cache_dir = None;
        s.device = "gpu0".into();
        let msg = s.validate().unwrap_err().message;
        assert!(msg.contains("compute device") && msg.contains("'gpu0'") && msg.contains("cuda:N"), "{msg}");
    }

    #[test]
    fn device_is_auto_by_default_and_cpu_opens_here() {
        assert_eq!(Settings::default().device, "auto");
        // A settings file from before the device setting gets `auto`.
        let old: Settings = serde_json::from_str(r#"{"endpoint": "https://huggingface.co"}"#).unwrap();
        assert_eq!(old.device, "auto");
        let cpu = Settings { device: "cpu".into(), ..Default::default() };
        assert!(matches!(cpu.open_device().unwrap(), qlora_engine::candle_core::Device::Cpu));
        if !qlora_engine::device::CUDA_BUILT {
            let cuda = Settings { device: "cuda:0".into(), ..Default::default() };
            let e = cuda.open_device().unwrap_err();
            assert!(e.message.contains("--features cuda"), "{}", e.message);
        }
    }

    #[test]
    fn a_corrupt_settings_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = Settings::load(&path).unwrap_err();
        assert!(err.message.contains("settings.json"), "{}", err.message);
    }
}
