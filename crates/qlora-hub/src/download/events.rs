//! Typed download progress, for the CLI's progress bar and the app's download page alike.
//! `Progress` events are rate-limited by the downloader (about 20 a second); the others always
//! go out.

use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DownloadEvent {
    /// What will be fetched: `to_fetch_bytes` excludes what the cache already holds (whole
    /// blobs and the partial bytes a resume keeps).
    Planned {
        repo: String,
        commit: String,
        files: usize,
        total_bytes: u64,
        to_fetch_bytes: u64,
    },
    FileStarted {
        path: String,
        size: u64,
        resume_from: u64,
    },
    Progress {
        path: String,
        file_done: u64,
        file_total: u64,
        /// Bytes fetched in this run, all files.
        done: u64,
        /// `to_fetch_bytes` of the plan.
        total: u64,
        bytes_per_sec: f64,
        eta_secs: Option<f64>,
    },
    /// A connection dropped or stalled; the download resumes after `wait_secs`.
    Retrying {
        path: String,
        attempt: u32,
        reason: String,
        wait_secs: f64,
    },
    /// Size and checksum verified, linked into the snapshot.
    FileDone {
        path: String,
        size: u64,
    },
    Finished {
        snapshot: PathBuf,
        fetched_bytes: u64,
        secs: f64,
    },
}
