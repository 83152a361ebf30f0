//! Everything that can go wrong reaching the Hub or touching the cache, one variant per case a
//! user must tell apart (no token, licence not accepted, not found, network down, offline, disk
//! full, corrupt download…), each carrying the repository, file or path at fault and a message
//! that says the fix. Front ends map [`HubError::code`] to a stable machine code.

use std::path::PathBuf;

pub type Result<T, E = HubError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("'{id}' is not a Hub model id; use the form 'org/name' (for example 'TinyLlama/TinyLlama-1.1B-Chat-v1.0')")]
    InvalidRepoId { id: String },

    #[error("HF_ENDPOINT '{endpoint}' is not a valid URL ({detail}); unset it, or set it to a Hub such as https://huggingface.co")]
    BadEndpoint { endpoint: String, detail: String },

    #[error("{repo} needs a Hugging Face token ({why}) and none was found; run `qlora login` or set HF_TOKEN")]
    NoToken { repo: String, why: String },

    #[error("you have not been granted access to the gated model {repo}; open {page_url}, accept its licence (or ask for access), then try again")]
    LicenceNotAccepted { repo: String, page_url: String },

    #[error("model {repo} was not found on {endpoint}; check the id{hint}")]
    RepoNotFound { repo: String, endpoint: String, hint: &'static str },

    #[error("revision '{revision}' of {repo} was not found; check the branch, tag or commit id")]
    RevisionNotFound { repo: String, revision: String },

    #[error("file '{path}' was not found in {repo} at '{revision}'")]
    EntryNotFound { repo: String, revision: String, path: String },

    #[error("cannot reach the Hub at {endpoint} ({detail}); check the network connection, or set HF_HUB_OFFLINE=1 to use only cached models")]
    Network { endpoint: String, detail: String },

    #[error("offline mode (HF_HUB_OFFLINE) is on and {what} is not in the cache at {cache}; unset HF_HUB_OFFLINE to download it")]
    Offline { what: String, cache: PathBuf },

    #[error(
        "{what} needs the Hub, and offline mode (HF_HUB_OFFLINE) is on; unset HF_HUB_OFFLINE, or check only the cached blobs against their names (`qlora cache verify` without --hub)"
    )]
    NeedsNetwork { what: String },

    #[error("the Hub answered {status} for {url}: {message}")]
    Http { url: String, status: u16, message: String },

    #[error("unexpected answer from {url}: {what}")]
    BadResponse { url: String, what: String },

    #[error("{repo} lists a file named '{name}' that would land outside its snapshot folder; refusing to download it")]
    HostileFileName { repo: String, name: String },

    #[error("not enough disk space in {}: the download needs {} (+ {} margin) but only {} is free; free some space or choose another cache folder (HF_HUB_CACHE or `qlora download --cache-dir`)", dir.display(), human(*needed), human(*margin), human(*available))]
    NotEnoughSpace { dir: PathBuf, needed: u64, margin: u64, available: u64 },

    #[error("the disk holding {} is full while writing {file}; {} of it are kept and the download resumes from there once space is freed", path.display(), human(*kept))]
    DiskFull { file: String, path: PathBuf, kept: u64 },

    #[error("downloaded '{file}' does not match the Hub's checksum (expected {expected}, got {actual}); the partial file {} was deleted, run the download again", partial.display())]
    ChecksumMismatch { file: String, expected: String, actual: String, partial: PathBuf },

    #[error("downloaded '{file}' has {actual} bytes but the Hub says {expected}; the partial file {} was deleted, run the download again", partial.display())]
    SizeMismatch { file: String, expected: u64, actual: u64, partial: PathBuf },

    #[error("'{file}' stalled (no data for {secs} s) {attempts} times; the bytes so far are kept, run again to resume")]
    Stalled { file: String, secs: u64, attempts: u32 },

    #[error("downloading '{file}' failed after {attempts} attempts: {detail}; the bytes so far are kept, run again to resume")]
    Interrupted { file: String, attempts: u32, detail: String },

    #[error("'{file}' is being downloaded by another process (lock {}); wait for it or stop it", lock.display())]
    Busy { file: String, lock: PathBuf },

    #[error("cancelled")]
    Cancelled,

    #[error("{} is outside the cache folder {}; refusing to touch it", path.display(), cache.display())]
    OutsideCache { path: PathBuf, cache: PathBuf },

    #[error("{what} is not in the cache at {}", cache.display())]
    NotCached { what: String, cache: PathBuf },

    #[error("bad pattern '{pattern}': {detail}")]
    BadGlob { pattern: String, detail: String },

    #[error("'{path}' in {repo} is not a valid safetensors file: {detail}")]
    BadSafetensors { repo: String, path: String, detail: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl HubError {
    /// A stable code for front ends (the UI shows its own text per code).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRepoId { .. } => "invalid_repo_id",
            Self::BadEndpoint { .. } => "bad_endpoint",
            Self::NoToken { .. } => "no_token",
            Self::LicenceNotAccepted { .. } => "licence_not_accepted",
            Self::RepoNotFound { .. } => "repo_not_found",
            Self::RevisionNotFound { .. } => "revision_not_found",
            Self::EntryNotFound { .. } => "entry_not_found",
            Self::Network { .. } => "network",
            Self::Offline { .. } => "offline",
            Self::NeedsNetwork { .. } => "offline",
            Self::Http { .. } => "http",
            Self::BadResponse { .. } => "bad_response",
            Self::HostileFileName { .. } => "hostile_file_name",
            Self::NotEnoughSpace { .. } => "not_enough_space",
            Self::DiskFull { .. } => "disk_full",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::Stalled { .. } => "stalled",
            Self::Interrupted { .. } => "interrupted",
            Self::Busy { .. } => "busy",
            Self::Cancelled => "cancelled",
            Self::OutsideCache { .. } => "outside_cache",
            Self::NotCached { .. } => "not_cached",
            Self::BadGlob { .. } => "bad_glob",
            Self::BadSafetensors { .. } => "bad_safetensors",
            Self::Io { .. } => "io",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

impl From<qlora_jobs::Cancelled> for HubError {
    fn from(_: qlora_jobs::Cancelled) -> Self {
        Self::Cancelled
    }
}

/// Bytes for people: `1.50 GB`, `12.0 MB`, `512 B` (decimal units, as the Hub shows sizes).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.2} {}", UNITS[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1_500_000_000), "1.50 GB");
        assert_eq!(human(5_000_000), "5.00 MB");
    }

    #[test]
    fn space_error_names_both_numbers_and_the_fix() {
        let e = HubError::NotEnoughSpace { dir: "/c".into(), needed: 2_000_000_000, margin: 100_000_000, available: 1_000_000_000 };
        let m = e.to_string();
        assert!(m.contains("2.00 GB") && m.contains("1.00 GB") && m.contains("HF_HUB_CACHE"), "{m}");
    }
}
