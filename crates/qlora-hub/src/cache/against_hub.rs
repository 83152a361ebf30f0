//! A cached snapshot checked against the Hub's current listing, for `qlora cache verify --hub`:
//! the blob-name check ([`super::manage::verify`]) proves a blob holds what it was downloaded
//! as, but not that it is what the Hub serves now (a branch moved, a file was re-uploaded or
//! deleted, a file a load needs was never fetched). Each snapshot file's content is hashed the
//! way the Hub lists it (SHA-256 for LFS files, git blob id for small files) and compared with
//! the listing's size and checksum.

use super::cached_listing;
use super::layout::RepoCache;
use crate::client::HubClient;
use crate::download::{Hasher, hash_prefix};
use crate::remote::{RemoteFile, list_files};
use crate::select::{SelectOptions, files_for_load};
use crate::{HubError, Result};
use serde::Serialize;
use std::collections::HashMap;

/// A file a load needs that the Hub lists and the snapshot lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingFile {
    pub path: String,
    pub size: u64,
}

/// A snapshot file whose size or content differs from the Hub's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedFile {
    pub path: String,
    pub hub_size: u64,
    pub cached_size: u64,
    /// The Hub's checksum (LFS SHA-256, else git blob id).
    pub hub_checksum: String,
    /// The same checksum of the cached content (empty when the sizes already differ).
    pub cached_checksum: String,
    /// The blob was downloaded under another checksum: the Hub changed the file since; false
    /// means the cached content itself went bad.
    pub updated_on_hub: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubCheck {
    pub repo: String,
    pub revision: String,
    /// The commit the cache's ref points to (the snapshot checked).
    pub cached_commit: String,
    /// The commit the revision points to on the Hub now.
    pub hub_commit: String,
    pub files_checked: usize,
    pub bytes_checked: u64,
    pub missing: Vec<MissingFile>,
    pub changed: Vec<ChangedFile>,
    /// Snapshot files the Hub no longer lists.
    pub extra: Vec<String>,
}

impl HubCheck {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.extra.is_empty()
    }
}

/// Lists `repo` at `revision` on the Hub and checks the cache's snapshot of that revision
/// against it. Needs the network: offline mode is an error that says so.
pub async fn check_against_hub(client: &HubClient, repo: &str, revision: &str, cancel: &qlora_jobs::CancelToken) -> Result<HubCheck> {
    let cache_dir = &client.config().cache_dir;
    let what = format!("{repo}@{revision}");
    let cached = cached_listing(cache_dir, repo, revision).ok_or_else(|| HubError::NotCached { what: what.clone(), cache: cache_dir.clone() })?;
    if client.config().offline {
        return Err(HubError::NeedsNetwork { what: format!("checking {what} against the Hub") });
    }
    let hub = list_files(client, repo, revision).await?;
    let snapshot = RepoCache::new(cache_dir, repo).snapshot_dir(&cached.commit);
    let on_disk: HashMap<&str, &RemoteFile> = cached.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let needed = files_for_load(&hub.files, &SelectOptions::default())?;
    let mut report = HubCheck {
        repo: repo.into(),
        revision: revision.into(),
        cached_commit: cached.commit.clone(),
        hub_commit: hub.commit.clone(),
        files_checked: 0,
        bytes_checked: 0,
        missing: Vec::new(),
        changed: Vec::new(),
        extra: Vec::new(),
    };
    for f in &hub.files {
        cancel.check()?;
        let Some(c) = on_disk.get(f.path.as_str()) else {
            if needed.files.iter().any(|n| n.path == f.path) {
                report.missing.push(MissingFile { path: f.path.clone(), size: f.size });
            }
            continue;
        };
        report.files_checked += 1;
        report.bytes_checked += c.size;
        let cached_checksum = if c.size == f.size {
            // Hashed as the Hub lists this file (its LFS-ness), over the bytes on disk.
            let mut h = Hasher::for_file(&RemoteFile { size: c.size, ..f.clone() });
            hash_prefix(&snapshot.join(&f.path), c.size, &mut h)?;
            h.hex()
        } else {
            String::new()
        };
        if cached_checksum != f.etag() {
            report.changed.push(ChangedFile {
                path: f.path.clone(),
                hub_size: f.size,
                cached_size: c.size,
                hub_checksum: f.etag().to_string(),
                cached_checksum,
                updated_on_hub: c.etag() != f.etag(),
            });
        }
    }
    report.extra = cached.files.iter().filter(|c| hub.get(&c.path).is_none()).map(|c| c.path.clone()).collect();
    Ok(report)
}
