//! Where the Hub is and who we are, read from the same environment huggingface_hub and the
//! `hf` CLI read, so a user's existing setup just works: `HF_ENDPOINT`, `HF_TOKEN` (then
//! `HF_TOKEN_PATH`, then the `$HF_HOME/token` file `hf auth login` writes),
//! `HF_HUB_DISABLE_IMPLICIT_TOKEN`, `HF_HUB_OFFLINE`, `HF_HOME` and `HF_HUB_CACHE`.

use std::path::PathBuf;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Clone)]
pub struct HubConfig {
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    pub token: Option<String>,
    /// No network at all: only the cache answers.
    pub offline: bool,
    /// The hub cache (`models--org--name/...` lives here).
    pub cache_dir: PathBuf,
    /// `HF_HOME`, where the token file lives.
    pub hf_home: PathBuf,
}

impl std::fmt::Debug for HubConfig {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// huggingface_hub's `_is_true`: 1, ON, YES, TRUE (any case).
pub fn env_true(key: &str) -> bool {
    env(key).is_some_and(|v| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(h) = env("HF_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = env("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("huggingface");
    }
    PathBuf::from(env("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/huggingface")
}

/// `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `<hf_home>/hub`.
pub fn default_cache_dir() -> PathBuf {
    env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")).map(PathBuf::from).unwrap_or_else(|| hf_home().join("hub"))
}

/// The token file `hf auth login` writes: `$HF_TOKEN_PATH`, else `$HF_HOME/token`.
pub fn token_path() -> PathBuf {
    env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"))
}

/// Token from `HF_TOKEN`, else the token file; none when `HF_HUB_DISABLE_IMPLICIT_TOKEN` is set.
pub fn resolve_token() -> Option<String> {
    if env_true("HF_HUB_DISABLE_IMPLICIT_TOKEN") {
        return None;
    }
    env("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
        let t = std::fs::read_to_string(token_path()).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_string())
    })
}

impl HubConfig {
    /// Everything from the environment.
    pub fn from_env() -> Self {
        HubConfig {
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string(),
            token: resolve_token(),
            offline: env_true("HF_HUB_OFFLINE"),
            cache_dir: default_cache_dir(),
            hf_home: hf_home(),
        }
    }

    /// The model page on the Hub (where a licence is accepted).
    pub fn model_page(&self, repo: &str) -> String {
        format!("{}/{}", self.endpoint, repo)
    }
}

/// Splits `org/name`, refusing anything else (no empty parts, no `..`, no extra slashes).
pub fn split_repo_id(id: &str) -> crate::Result<(&str, &str)> {
    let bad = || crate::HubError::InvalidRepoId { id: id.to_string() };
    let (org, name) = id.split_once('/').ok_or_else(bad)?;
    let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok(org) && ok(name) { Ok((org, name)) } else { Err(bad()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(split_repo_id("TinyLlama/TinyLlama-1.1B-Chat-v1.0").unwrap(), ("TinyLlama", "TinyLlama-1.1B-Chat-v1.0"));
        for bad in ["gpt2", "a/b/c", "../x", "a/..", "a/", "a b/c"] {
            assert!(split_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_token() {
        let c = HubConfig { endpoint: "e".into(), token: Some("hf_secret".into()), offline: false, cache_dir: "c".into(), hf_home: "h".into() };
        assert!(!format!("{c:?}").contains("hf_secret"));
    }
}
