//! The local Hugging Face cache, read the way huggingface_hub's `scan_cache_dir` reads it:
//! repositories, revisions (with the refs pointing at them), files with sizes and last access,
//! blobs shared between revisions, and partial downloads left behind. [`manage`] deletes,
//! prunes and verifies; [`layout`] knows where everything goes.

pub mod against_hub;
pub mod layout;
pub mod manage;
pub mod relocate;

use crate::remote::{RemoteFile, RepoListing};
use layout::{RepoCache, is_commit_hash, repo_id_from_folder};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn secs(t: std::io::Result<SystemTime>) -> u64 {
    t.ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedFile {
    /// Path in the repository.
    pub path: String,
    /// The link in the snapshot folder.
    pub snapshot_path: PathBuf,
    pub blob_path: PathBuf,
    /// The blob's name: SHA-256 for LFS files, git blob id otherwise.
    pub etag: String,
    pub size: u64,
    /// Unix seconds.
    pub last_accessed: u64,
    pub last_modified: u64,
    /// The blob is also used by another revision.
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedRevision {
    pub commit: String,
    /// Branches and tags pointing here; empty: a detached revision (prunable).
    pub refs: Vec<String>,
    pub files: Vec<CachedFile>,
    /// Distinct blobs of this revision.
    pub size_on_disk: u64,
    pub last_modified: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialFile {
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedRepo {
    pub repo: String,
    pub dir: PathBuf,
    /// Distinct blobs used by any revision (what deleting the repository frees, partial files aside).
    pub size_on_disk: u64,
    pub nb_files: usize,
    pub last_accessed: u64,
    pub last_modified: u64,
    pub revisions: Vec<CachedRevision>,
    /// Interrupted downloads (`blobs/*.incomplete`).
    pub partial_files: Vec<PartialFile>,
    /// Blobs no snapshot uses.
    pub orphan_blobs: Vec<PartialFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    pub cache_dir: PathBuf,
    pub repos: Vec<CachedRepo>,
    pub size_on_disk: u64,
    /// Broken links and unreadable entries, reported rather than failing the scan.
    pub warnings: Vec<String>,
}

/// Scans every model repository in the cache. A missing cache folder is an empty cache.
pub fn scan(cache_dir: &Path) -> CacheReport {
    let mut report = CacheReport { cache_dir: cache_dir.to_path_buf(), repos: Vec::new(), size_on_disk: 0, warnings: Vec::new() };
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return report };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect();
    names.sort();
    for name in names {
        if let Some(repo) = repo_id_from_folder(&name) {
            let r = scan_repo(cache_dir, &repo, &mut report.warnings);
            report.size_on_disk += r.size_on_disk;
            report.repos.push(r);
        }
    }
    report
}

/// Commit → refs pointing to it (refs may be nested, e.g. `refs/pr/1`).
fn read_refs(refs_dir: &Path) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut stack = vec![refs_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let (Ok(c), Ok(rel)) = (std::fs::read_to_string(&p), p.strip_prefix(refs_dir)) {
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.entry(c.trim().to_string()).or_default().push(name);
            }
        }
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

/// Files under a snapshot folder: (repo path, link path).
fn snapshot_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            if is_dir {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((name, p));
            }
        }
    }
    out.sort();
    out
}

fn scan_repo(cache_dir: &Path, repo: &str, warnings: &mut Vec<String>) -> CachedRepo {
    let rc = RepoCache::new(cache_dir, repo);
    let refs = read_refs(&rc.dir.join("refs"));
    let mut revisions = Vec::new();
    let mut blob_users: HashMap<PathBuf, usize> = HashMap::new();
    let mut snaps: Vec<String> = std::fs::read_dir(rc.dir.join("snapshots"))
        .map(|it| it.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
        .unwrap_or_default();
    snaps.sort();
    for commit in snaps.into_iter().filter(|c| is_commit_hash(c)) {
        let mut files = Vec::new();
        for (path, link) in snapshot_files(&rc.snapshot_dir(&commit)) {
            let blob = std::fs::canonicalize(&link).ok();
            let meta = blob.as_ref().and_then(|b| std::fs::metadata(b).ok());
            let (Some(blob), Some(meta)) = (blob, meta) else {
                warnings.push(format!("{}: broken link (its blob is missing)", link.display()));
                continue;
            };
            let etag = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            *blob_users.entry(blob.clone()).or_default() += 1;
            files.push(CachedFile {
                path,
                snapshot_path: link,
                blob_path: blob,
                etag,
                size: meta.len(),
                last_accessed: secs(meta.accessed()),
                last_modified: secs(meta.modified()),
                shared: false,
            });
        }
        let mut distinct: BTreeMap<&Path, u64> = BTreeMap::new();
        files.iter().for_each(|f| {
            distinct.insert(&f.blob_path, f.size);
        });
        revisions.push(CachedRevision {
            refs: refs.get(&commit).cloned().unwrap_or_default(),
            size_on_disk: distinct.values().sum(),
            last_modified: files.iter().map(|f| f.last_modified).max().unwrap_or(0),
            files,
            commit,
        });
    }
    // A blob is shared when more than one revision links to it.
    let mut per_rev: HashMap<PathBuf, usize> = HashMap::new();
    for r in &revisions {
        let mut seen = std::collections::HashSet::new();
        for f in &r.files {
            if seen.insert(&f.blob_path) {
                *per_rev.entry(f.blob_path.clone()).or_default() += 1;
            }
        }
    }
    for r in &mut revisions {
        for f in &mut r.files {
            f.shared = per_rev.get(&f.blob_path).is_some_and(|n| *n > 1);
        }
    }
    let (partial_files, orphan_blobs) = blobs_outside_snapshots(&rc.dir.join("blobs"), &blob_users);
    let all: Vec<&CachedFile> = revisions.iter().flat_map(|r| &r.files).collect();
    let mut distinct: BTreeMap<&Path, u64> = BTreeMap::new();
    all.iter().for_each(|f| {
        distinct.insert(&f.blob_path, f.size);
    });
    CachedRepo {
        repo: repo.to_string(),
        size_on_disk: distinct.values().sum(),
        nb_files: distinct.len(),
        last_accessed: all.iter().map(|f| f.last_accessed).max().unwrap_or(0),
        last_modified: all.iter().map(|f| f.last_modified).max().unwrap_or(0),
        dir: rc.dir,
        revisions,
        partial_files,
        orphan_blobs,
    }
}

fn blobs_outside_snapshots(blobs: &Path, used: &HashMap<PathBuf, usize>) -> (Vec<PartialFile>, Vec<PartialFile>) {
    let (mut partial, mut orphan) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(blobs) else { return (partial, orphan) };
    for e in entries.flatten() {
        let p = e.path();
        let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
        let canon = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if p.extension().is_some_and(|x| x == "incomplete") {
            partial.push(PartialFile { path: p, bytes });
        } else if !used.contains_key(&canon) {
            orphan.push(PartialFile { path: p, bytes });
        }
    }
    partial.sort_by(|a, b| a.path.cmp(&b.path));
    orphan.sort_by(|a, b| a.path.cmp(&b.path));
    (partial, orphan)
}

/// The files of `repo` at `revision` as the cache holds them (no network): for the planner's
/// listing of a cached model and for offline mode. `blob_id` is the blob's name (the LFS SHA-256
/// for LFS files, whose pointer id the cache does not keep).
pub fn cached_listing(cache_dir: &Path, repo: &str, revision: &str) -> Option<RepoListing> {
    let rc = RepoCache::new(cache_dir, repo);
    let commit = rc.resolve_ref(revision)?;
    let dir = rc.snapshot_dir(&commit);
    if !dir.is_dir() {
        return None;
    }
    let files = snapshot_files(&dir)
        .into_iter()
        .filter_map(|(path, link)| {
            let size = std::fs::metadata(&link).ok()?.len();
            let target = std::fs::read_link(&link).ok();
            let etag = target.as_ref().and_then(|t| t.file_name()).and_then(|n| n.to_str()).map(String::from)?;
            let lfs_sha256 = (etag.len() == 64).then(|| etag.clone());
            Some(RemoteFile { path, size, blob_id: etag, lfs_sha256 })
        })
        .collect();
    Some(RepoListing { repo: repo.into(), revision: revision.into(), commit, files, gated: false, private: false })
}
