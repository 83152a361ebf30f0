//! Deleting, pruning and verifying cached models. Every destructive call is two steps: a
//! [`CleanupPlan`] that says what would go and how many bytes that frees (the dry run), then
//! [`execute`], which refuses any path outside the cache folder. A blob still used by another
//! revision is never deleted with a revision or a file.

use super::layout::RepoCache;
use super::{CachedRepo, scan};
use crate::download::{Hasher, hash_prefix};
use crate::remote::RemoteFile;
use crate::{HubError, Result};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Repo(String),
    /// A revision by commit id, branch or tag.
    Revision {
        repo: String,
        revision: String,
    },
    /// One file of a revision.
    File {
        repo: String,
        revision: String,
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupPlan {
    pub cache_dir: PathBuf,
    /// Files, links and folders to remove.
    pub paths: Vec<PathBuf>,
    /// Bytes freed on disk (blobs and partial files; links and refs count as 0).
    pub freed_bytes: u64,
    /// One line per thing removed, for people.
    pub summary: Vec<String>,
}

impl CleanupPlan {
    fn new(cache_dir: &Path) -> Self {
        CleanupPlan { cache_dir: cache_dir.to_path_buf(), paths: Vec::new(), freed_bytes: 0, summary: Vec::new() }
    }

    fn add(&mut self, path: PathBuf, bytes: u64, what: String) {
        if !self.paths.contains(&path) {
            self.paths.push(path);
            self.freed_bytes += bytes;
            self.summary.push(what);
        }
    }
}

fn find_repo(cache_dir: &Path, repo: &str) -> Result<CachedRepo> {
    scan(cache_dir)
        .repos
        .into_iter()
        .find(|r| r.repo == repo)
        .ok_or_else(|| HubError::NotCached { what: repo.to_string(), cache: cache_dir.to_path_buf() })
}

/// Blobs of `keep_out` revisions removed, unless another revision still uses them.
fn plan_revision(plan: &mut CleanupPlan, repo: &CachedRepo, commit: &str) {
    let others: HashSet<&Path> =
        repo.revisions.iter().filter(|r| r.commit != commit).flat_map(|r| r.files.iter().map(|f| f.blob_path.as_path())).collect();
    let Some(rev) = repo.revisions.iter().find(|r| r.commit == commit) else { return };
    let rc = RepoCache::new(&plan.cache_dir, &repo.repo);
    for f in &rev.files {
        if !others.contains(f.blob_path.as_path()) {
            plan.add(f.blob_path.clone(), f.size, format!("blob of {} ({} bytes)", f.path, f.size));
        }
    }
    plan.add(rc.snapshot_dir(commit), 0, format!("snapshot {}@{commit}", repo.repo));
    for r in &rev.refs {
        plan.add(rc.ref_file(r), 0, format!("ref {r} -> {commit}"));
    }
}

/// The dry run of deleting `target`.
pub fn plan_delete(cache_dir: &Path, target: &Target) -> Result<CleanupPlan> {
    let mut plan = CleanupPlan::new(cache_dir);
    match target {
        Target::Repo(repo) => {
            let r = find_repo(cache_dir, repo)?;
            let partial: u64 = r.partial_files.iter().chain(&r.orphan_blobs).map(|p| p.bytes).sum();
            plan.add(r.dir.clone(), r.size_on_disk + partial, format!("{repo}: every revision and blob"));
            let locks = cache_dir.join(".locks").join(super::layout::repo_folder_name(repo));
            if locks.exists() {
                plan.add(locks, 0, format!("{repo}: lock files"));
            }
        }
        Target::Revision { repo, revision } => {
            let r = find_repo(cache_dir, repo)?;
            let commit = resolve(cache_dir, repo, revision)?;
            plan_revision(&mut plan, &r, &commit);
        }
        Target::File { repo, revision, path } => {
            let r = find_repo(cache_dir, repo)?;
            let commit = resolve(cache_dir, repo, revision)?;
            let rev = r.revisions.iter().find(|x| x.commit == commit);
            let f = rev
                .and_then(|x| x.files.iter().find(|f| &f.path == path))
                .ok_or_else(|| HubError::NotCached { what: format!("{repo}@{revision}/{path}"), cache: cache_dir.to_path_buf() })?;
            let used_elsewhere = r.revisions.iter().flat_map(|x| &x.files).filter(|g| g.blob_path == f.blob_path).count() > 1;
            if !used_elsewhere {
                plan.add(f.blob_path.clone(), f.size, format!("blob of {path} ({} bytes)", f.size));
            }
            plan.add(f.snapshot_path.clone(), 0, format!("{repo}@{commit}/{path}"));
        }
    }
    Ok(plan)
}

fn resolve(cache_dir: &Path, repo: &str, revision: &str) -> Result<String> {
    let rc = RepoCache::new(cache_dir, repo);
    rc.resolve_ref(revision)
        .filter(|c| rc.snapshot_dir(c).is_dir())
        .ok_or_else(|| HubError::NotCached { what: format!("{repo}@{revision}"), cache: cache_dir.to_path_buf() })
}

/// The dry run of pruning: detached revisions (no branch or tag points to them), partial files
/// of downloads no one is running, and blobs no snapshot uses.
pub fn plan_prune(cache_dir: &Path) -> CleanupPlan {
    let mut plan = CleanupPlan::new(cache_dir);
    for repo in scan(cache_dir).repos {
        for rev in repo.revisions.iter().filter(|r| r.refs.is_empty()) {
            plan_revision(&mut plan, &repo, &rev.commit);
        }
        for p in &repo.partial_files {
            if !download_running(cache_dir, &repo.repo, &p.path) {
                plan.add(p.path.clone(), p.bytes, format!("partial download {} ({} bytes)", p.path.display(), p.bytes));
            }
        }
        for b in &repo.orphan_blobs {
            plan.add(b.path.clone(), b.bytes, format!("unused blob {} ({} bytes)", b.path.display(), b.bytes));
        }
    }
    plan
}

/// True when another process holds the lock of this partial file's blob.
fn download_running(cache_dir: &Path, repo: &str, partial: &Path) -> bool {
    let Some(etag) = partial.file_stem().and_then(|s| s.to_str()) else { return false };
    let lock = RepoCache::new(cache_dir, repo).lock(etag);
    std::fs::OpenOptions::new().write(true).open(lock).is_ok_and(|f| f.try_lock().is_err())
}

/// Carries out a plan; every path must be inside the cache folder. Returns the bytes freed.
pub fn execute(plan: &CleanupPlan) -> Result<u64> {
    let cache = std::fs::canonicalize(&plan.cache_dir).map_err(|e| HubError::io(&plan.cache_dir, e))?;
    for p in &plan.paths {
        let parent = p.parent().and_then(|d| std::fs::canonicalize(d).ok());
        let inside = parent.is_some_and(|d| d.starts_with(&cache)) && p.file_name().is_some_and(|n| n != "..");
        if !inside || p == &plan.cache_dir {
            return Err(HubError::OutsideCache { path: p.clone(), cache: plan.cache_dir.clone() });
        }
    }
    for p in &plan.paths {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(HubError::io(p, e)),
        };
        // remove_dir_all does not follow symlinks: nothing outside the cache can go.
        let r = if meta.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        r.map_err(|e| HubError::io(p, e))?;
    }
    Ok(plan.freed_bytes)
}

/// One blob whose content does not match its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Corrupt {
    pub repo: String,
    pub path: String,
    pub blob: PathBuf,
    pub expected: String,
    pub actual: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub files_checked: usize,
    pub bytes_checked: u64,
    pub corrupt: Vec<Corrupt>,
}

/// Re-hashes every blob of `repo` (or of every repository) against the checksum the Hub gave
/// it, which is its name: SHA-256 for LFS files, git blob id for the others.
pub fn verify(cache_dir: &Path, repo: Option<&str>, cancel: &qlora_jobs::CancelToken) -> Result<VerifyReport> {
    let mut report = VerifyReport { files_checked: 0, bytes_checked: 0, corrupt: Vec::new() };
    let mut seen = HashSet::new();
    for r in scan(cache_dir).repos.into_iter().filter(|r| repo.is_none_or(|x| x == r.repo)) {
        for f in r.revisions.iter().flat_map(|rev| &rev.files) {
            if !seen.insert(f.blob_path.clone()) {
                continue;
            }
            cancel.check()?;
            let lfs = (f.etag.len() == 64).then(|| f.etag.clone());
            let file = RemoteFile { path: f.path.clone(), size: f.size, blob_id: f.etag.clone(), lfs_sha256: lfs };
            let mut h = Hasher::for_file(&file);
            hash_prefix(&f.blob_path, f.size, &mut h)?;
            let actual = h.hex();
            report.files_checked += 1;
            report.bytes_checked += f.size;
            if actual != f.etag {
                report.corrupt.push(Corrupt {
                    repo: r.repo.clone(),
                    path: f.path.clone(),
                    blob: f.blob_path.clone(),
                    expected: f.etag.clone(),
                    actual,
                });
            }
        }
    }
    Ok(report)
}
