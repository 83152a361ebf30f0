//! Downloads into the standard Hugging Face cache: plan (which files, how many bytes are really
//! left to fetch), check the disk, fetch each blob resumably and verified ([`fetch`]), then link
//! it into `snapshots/<commit>/` and record `refs/<revision>`, exactly as huggingface_hub lays
//! the cache out, so Python tools see our downloads and we see theirs.

mod events;
mod fetch;

pub use events::DownloadEvent;
pub(crate) use fetch::{Hasher, hash_prefix};

use crate::cache::layout::{RepoCache, safe_relative};
use crate::client::HubClient;
use crate::remote::{RemoteFile, RepoListing, list_files};
use crate::select::{SelectOptions, Skipped, files_for_load};
use crate::{HubError, Result};
use qlora_jobs::{CancelToken, ProgressSink, RateLimiter, Throughput};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub cancel: CancelToken,
    /// No byte for this long: the connection is dropped and retried.
    pub stall_timeout: Duration,
    /// Retries per file after a drop or a stall (with exponential backoff from `backoff`).
    pub max_retries: u32,
    pub backoff: Duration,
    /// Space kept free on the cache's disk; `None`: [`crate::disk::default_margin`].
    pub disk_margin: Option<u64>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            cancel: CancelToken::new(),
            stall_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff: Duration::from_secs(1),
            disk_margin: None,
        }
    }
}

/// One file of a plan and what the cache already holds of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    pub file: RemoteFile,
    /// The verified blob is in the cache.
    pub cached: bool,
    /// Bytes of an interrupted download a resume keeps.
    pub partial_bytes: u64,
}

/// What a download will do, before it does it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadPlan {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub cache_dir: PathBuf,
    pub files: Vec<PlannedFile>,
    pub skipped: Vec<Skipped>,
    /// Size of the selected files.
    pub total_bytes: u64,
    /// Bytes still to fetch: not counting cached blobs nor partial bytes kept for a resume.
    pub to_fetch_bytes: u64,
}

/// The plan for a listing against a cache (no network): the planner's download bytes.
pub fn plan_from_listing(cache_dir: &Path, listing: &RepoListing, select: &SelectOptions) -> Result<DownloadPlan> {
    let sel = files_for_load(&listing.files, select)?;
    let rc = RepoCache::new(cache_dir, &listing.repo);
    let files: Vec<PlannedFile> = sel
        .files
        .into_iter()
        .map(|file| {
            let cached = std::fs::metadata(rc.blob(file.etag())).is_ok_and(|m| m.len() == file.size);
            let partial = std::fs::metadata(rc.incomplete(file.etag())).map(|m| m.len()).unwrap_or(0);
            let partial_bytes = if cached || partial > file.size { 0 } else { partial };
            PlannedFile { file, cached, partial_bytes }
        })
        .collect();
    let total_bytes = files.iter().map(|f| f.file.size).sum();
    let to_fetch_bytes = files.iter().filter(|f| !f.cached).map(|f| f.file.size - f.partial_bytes).sum();
    Ok(DownloadPlan {
        repo: listing.repo.clone(),
        revision: listing.revision.clone(),
        commit: listing.commit.clone(),
        cache_dir: cache_dir.to_path_buf(),
        files,
        skipped: sel.skipped,
        total_bytes,
        to_fetch_bytes,
    })
}

/// Lists the repository on the Hub and plans against the client's cache.
pub async fn plan(client: &HubClient, repo: &str, revision: &str, select: &SelectOptions) -> Result<DownloadPlan> {
    let listing = list_files(client, repo, revision).await?;
    plan_from_listing(&client.config().cache_dir, &listing, select)
}

/// What a finished download left.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownloadOutcome {
    /// `snapshots/<commit>`: the folder to load from.
    pub snapshot: PathBuf,
    pub commit: String,
    pub fetched_bytes: u64,
}

/// Rate-limited progress: bytes, speed and ETA per file and in total.
pub(crate) struct Meter<'a> {
    sink: &'a dyn ProgressSink<DownloadEvent>,
    done: u64,
    total: u64,
    speed: Throughput,
    limit: RateLimiter,
}

impl Meter<'_> {
    fn add(&mut self, path: &str, n: u64, file_done: u64, file_total: u64) {
        self.done += n;
        self.speed.record(self.done);
        if self.limit.ready() || file_done == file_total {
            self.sink.emit(DownloadEvent::Progress {
                path: path.to_string(),
                file_done,
                file_total,
                done: self.done,
                total: self.total,
                bytes_per_sec: self.speed.rate(),
                eta_secs: self.speed.eta_secs(self.total),
            });
        }
    }
}

/// Fetches what the plan says is missing, verifies it and links the snapshot.
pub async fn run(
    client: &HubClient,
    plan: &DownloadPlan,
    opts: &DownloadOptions,
    sink: &dyn ProgressSink<DownloadEvent>,
) -> Result<DownloadOutcome> {
    let started = Instant::now();
    let rc = RepoCache::new(&plan.cache_dir, &plan.repo);
    for f in &plan.files {
        safe_relative(&plan.repo, &f.file.path)?;
    }
    if plan.to_fetch_bytes > 0 {
        client.ensure_online(&format!("{}@{}", plan.repo, plan.revision))?;
    }
    let margin = opts.disk_margin.unwrap_or_else(|| crate::disk::default_margin(plan.to_fetch_bytes));
    crate::disk::preflight(&plan.cache_dir, plan.to_fetch_bytes, margin)?;
    sink.emit(DownloadEvent::Planned {
        repo: plan.repo.clone(),
        commit: plan.commit.clone(),
        files: plan.files.len(),
        total_bytes: plan.total_bytes,
        to_fetch_bytes: plan.to_fetch_bytes,
    });
    let mut meter = Meter {
        sink,
        done: 0,
        total: plan.to_fetch_bytes,
        speed: Throughput::new(),
        limit: RateLimiter::default(),
    };
    let fetch = fetch::Fetch { client, rc: &rc, commit: &plan.commit, opts };
    for pf in &plan.files {
        opts.cancel.check()?;
        fetch.blob(&pf.file, &mut meter).await?;
        rc.link(&plan.commit, &safe_relative(&plan.repo, &pf.file.path)?, pf.file.etag())?;
        rc.write_ref(&plan.revision, &plan.commit)?;
        sink.emit(DownloadEvent::FileDone { path: pf.file.path.clone(), size: pf.file.size });
    }
    let snapshot = rc.snapshot_dir(&plan.commit);
    std::fs::create_dir_all(&snapshot).map_err(|e| HubError::io(&snapshot, e))?;
    rc.write_ref(&plan.revision, &plan.commit)?;
    sink.emit(DownloadEvent::Finished { snapshot: snapshot.clone(), fetched_bytes: meter.done, secs: started.elapsed().as_secs_f64() });
    Ok(DownloadOutcome { snapshot, commit: plan.commit.clone(), fetched_bytes: meter.done })
}

/// Plans and runs a download; in offline mode answers from the cache alone (or says what is
/// missing).
pub async fn download(
    client: &HubClient,
    repo: &str,
    revision: &str,
    select: &SelectOptions,
    opts: &DownloadOptions,
    sink: &dyn ProgressSink<DownloadEvent>,
) -> Result<DownloadOutcome> {
    if client.config().offline {
        return offline_snapshot(client, repo, revision, select);
    }
    let plan = plan(client, repo, revision, select).await?;
    run(client, &plan, opts, sink).await
}

fn offline_snapshot(client: &HubClient, repo: &str, revision: &str, select: &SelectOptions) -> Result<DownloadOutcome> {
    let cache = &client.config().cache_dir;
    let offline = || HubError::Offline { what: format!("{repo}@{revision}"), cache: cache.clone() };
    let listing = crate::cache::cached_listing(cache, repo, revision).ok_or_else(offline)?;
    let sel = files_for_load(&listing.files, select)?;
    if sel.files.is_empty() {
        return Err(offline());
    }
    let snapshot = RepoCache::new(cache, repo).snapshot_dir(&listing.commit);
    Ok(DownloadOutcome { snapshot, commit: listing.commit, fetched_bytes: 0 })
}
