//! Downloads into the standard Hugging Face cache: plan (which files, how many bytes are really
//! left to fetch), check the disk, fetch each blob resumably and verified ([`fetch`]), then link
//! it into `snapshots/<commit>/` and record `refs/<revision>`, exactly as huggingface_hub lays
//! the cache out, so Python tools see our downloads and we see theirs.
//!
//! Several blobs are fetched at once ([`DownloadOptions::workers`], 4 by default; `hf download`
//! uses 8): a model of many small files, or shards behind a per-request latency, would otherwise
//! wait on one round trip after another. Each blob keeps its own resume, lock, verification and
//! atomic rename; the progress totals are shared. A file that fails does not stop the others:
//! they finish (verified and linked), then the first error is returned.

mod events;
mod fetch;

pub use events::DownloadEvent;
pub(crate) use fetch::{Hasher, hash_prefix};

use crate::cache::layout::{RepoCache, safe_relative};
use crate::client::HubClient;
use crate::remote::{RemoteFile, RepoListing, list_files};
use crate::select::{SelectOptions, Skipped, files_for_load};
use crate::{HubError, Result};
use futures::StreamExt;
use qlora_jobs::{CancelToken, ProgressSink, RateLimiter, Throughput};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most blobs fetched at once (`workers` is clamped to 1..=this).
pub const MAX_WORKERS: usize = 16;

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
    /// Blobs fetched at once (clamped to 1..=[`MAX_WORKERS`]).
    pub workers: usize,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            cancel: CancelToken::new(),
            stall_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff: Duration::from_secs(1),
            disk_margin: None,
            workers: 4,
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
    /// Bytes still to fetch: not counting cached blobs nor partial bytes kept for a resume; a
    /// blob shared by several files counted once.
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
    // Files with the same content share one blob: it is fetched (and counted) once.
    let mut seen = std::collections::HashSet::new();
    let to_fetch_bytes = files.iter().filter(|f| !f.cached && seen.insert(f.file.etag())).map(|f| f.file.size - f.partial_bytes).sum();
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

/// Rate-limited progress: bytes, speed and ETA per file and in total, shared by the blobs in
/// flight (the lock is never held across an await).
pub(crate) struct Meter<'a> {
    sink: &'a dyn ProgressSink<DownloadEvent>,
    total: u64,
    state: Mutex<MeterState>,
}

struct MeterState {
    done: u64,
    speed: Throughput,
    limit: RateLimiter,
}

impl Meter<'_> {
    fn add(&self, path: &str, n: u64, file_done: u64, file_total: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done += n;
        let done = s.done;
        s.speed.record(done);
        if s.limit.ready() || file_done == file_total {
            // Emitted under the lock, so `done` never goes backwards for the sink.
            self.sink.emit(DownloadEvent::Progress {
                path: path.to_string(),
                file_done,
                file_total,
                done,
                total: self.total,
                bytes_per_sec: s.speed.rate(),
                eta_secs: s.speed.eta_secs(self.total),
            });
        }
    }

    fn done(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).done
    }
}

/// The plan's files grouped by blob, in plan order: two paths with the same content share one
/// fetch (and its lock), then each is linked.
fn by_blob(files: &[PlannedFile]) -> Vec<Vec<&PlannedFile>> {
    let mut groups: Vec<Vec<&PlannedFile>> = Vec::new();
    for pf in files {
        match groups.iter_mut().find(|g| g[0].file.etag() == pf.file.etag()) {
            Some(g) => g.push(pf),
            None => groups.push(vec![pf]),
        }
    }
    groups
}

/// One blob fetched (or found in the cache), then every path of the plan that holds it linked.
async fn fetch_group(fetch: &fetch::Fetch<'_>, meter: &Meter<'_>, plan: &DownloadPlan, group: Vec<&PlannedFile>) -> Result<()> {
    fetch.opts.cancel.check()?;
    fetch.blob(&group[0].file, meter).await?;
    for pf in group {
        fetch.rc.link(&plan.commit, &safe_relative(&plan.repo, &pf.file.path)?, pf.file.etag())?;
        fetch.rc.write_ref(&plan.revision, &plan.commit)?;
        meter.sink.emit(DownloadEvent::FileDone { path: pf.file.path.clone(), size: pf.file.size });
    }
    Ok(())
}

/// Fetches what the plan says is missing, verifies it and links the snapshot.
pub async fn run(client: &HubClient, plan: &DownloadPlan, opts: &DownloadOptions, sink: &dyn ProgressSink<DownloadEvent>) -> Result<DownloadOutcome> {
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
    let meter = Meter {
        sink,
        total: plan.to_fetch_bytes,
        state: Mutex::new(MeterState { done: 0, speed: Throughput::new(), limit: RateLimiter::default() }),
    };
    let fetch = fetch::Fetch { client, rc: &rc, commit: &plan.commit, opts };
    let workers = opts.workers.clamp(1, MAX_WORKERS);
    // Futures made up front (they start when polled): a closure kept in the stream would make
    // this future lose `Send` (a higher-ranked lifetime rustc cannot prove), and callers spawn it.
    let jobs: Vec<_> = by_blob(&plan.files).into_iter().map(|g| fetch_group(&fetch, &meter, plan, g)).collect();
    let results: Vec<Result<()>> = futures::stream::iter(jobs).buffer_unordered(workers).collect().await;
    opts.cancel.check()?;
    // The other blobs are verified and linked by now; the first failure to finish is the answer.
    if let Some(e) = results.into_iter().find_map(|r| r.err()) {
        return Err(e);
    }
    let snapshot = rc.snapshot_dir(&plan.commit);
    std::fs::create_dir_all(&snapshot).map_err(|e| HubError::io(&snapshot, e))?;
    rc.write_ref(&plan.revision, &plan.commit)?;
    sink.emit(DownloadEvent::Finished { snapshot: snapshot.clone(), fetched_bytes: meter.done(), secs: started.elapsed().as_secs_f64() });
    Ok(DownloadOutcome { snapshot, commit: plan.commit.clone(), fetched_bytes: meter.done() })
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
