//! The Hugging Face token, stored as the `hf` CLI stores it (`$HF_HOME/token`, or
//! `$HF_TOKEN_PATH`), readable by the user only (mode 0600), so `hf`, huggingface_hub and we
//! share one login. The token is never logged or printed: only its first characters.

use crate::{HubError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `token` to `path` atomically with mode 0600 (created with that mode, never readable
/// by others even for a moment).
pub fn save_token_to(path: &Path, token: &str) -> Result<()> {
    let token = token.trim();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HubError::BadResponse { url: path.display().to_string(), what: "the token is empty or has spaces; paste it again".into() });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    let tmp = dir.join(format!(".token.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| HubError::io(&tmp, e))?;
    f.write_all(token.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HubError::io(path, e))
}

/// Stores the token where `hf auth login` does. Returns the file written.
pub fn save_token(token: &str) -> Result<PathBuf> {
    let path = crate::config::token_path();
    save_token_to(&path, token)?;
    Ok(path)
}

/// Removes the stored token (logout). Returns whether one was there.
pub fn delete_token() -> Result<bool> {
    let path = crate::config::token_path();
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HubError::io(path, e)),
    }
}

/// `hf_ab…` : enough to recognise a token, not enough to use it.
pub fn redact(token: &str) -> String {
    let head: String = token.chars().take(5).collect();
    format!("{head}…")
}

/// Who the Hub says the token belongs to (`/api/whoami-v2`).
pub async fn whoami(client: &crate::HubClient) -> Result<String> {
    client.ensure_online("the token check")?;
    if client.config().token.is_none() {
        return Err(HubError::NoToken { repo: "checking who you are".into(), why: "the Hub needs it to say who you are".into() });
    }
    let url = reqwest::Url::parse(&format!("{}/api/whoami-v2", client.config().endpoint))
        .map_err(|e| HubError::BadResponse { url: client.config().endpoint.clone(), what: e.to_string() })?;
    let resp = client.get(&url, None).await?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(HubError::Http {
            url: url.to_string(),
            status: 401,
            message: "the Hub rejected this token; create a new one at https://huggingface.co/settings/tokens".into(),
        });
    }
    let resp = client.check(resp, "whoami", "main", None).await?;
    let v: serde_json::Value = resp.json().await.map_err(|e| client.network_error(&e))?;
    v.get("name")
        .and_then(|n| n.as_str())
        .map(String::from)
        .ok_or_else(|| HubError::BadResponse { url: url.to_string(), what: "whoami without a name".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_atomic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hf/token");
        save_token_to(&p, " hf_abcdef\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hf_abcdef");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        save_token_to(&p, "hf_second").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hf_second");
        assert!(save_token_to(&p, "two words").is_err());
        assert_eq!(redact("hf_abcdefgh"), "hf_ab…");
    }
}
