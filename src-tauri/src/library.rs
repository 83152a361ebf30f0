//! The Library page: the Hugging Face cache as `qlora_hub::cache` sees it (repos, revisions,
//! sizes, blobs shared between revisions), and delete / prune as a dry run first (the plan)
//! then done; verify re-hashes the blobs.

use crate::views::{CacheReport, CachedRepo};
use qlora_hub::cache::{self, manage};
use std::path::Path;

/// Every cached repository.
pub fn list(cache_dir: &Path) -> Vec<CachedRepo> {
    cache::scan(cache_dir)
        .repos
        .into_iter()
        .map(|r| {
            let shared = r.revisions.iter().flat_map(|v| &v.files).filter(|f| f.shared).map(|f| f.size).sum();
            CachedRepo {
                id: r.repo,
                revisions: r.revisions.iter().map(|v| v.commit.clone()).collect(),
                size_on_disk: r.size_on_disk,
                shared_bytes: shared,
                complete: r.partial_files.is_empty(),
            }
        })
        .collect()
}

/// A cleanup plan, done unless `dry_run`.
pub fn cleanup(plan: manage::CleanupPlan, dry_run: bool) -> Result<CacheReport, qlora_hub::HubError> {
    let freed = if dry_run { plan.freed_bytes } else { manage::execute(&plan)? };
    Ok(CacheReport { dry_run, actions: plan.summary, freed_bytes: freed, problems: Vec::new() })
}

pub fn delete(cache_dir: &Path, repo: &str, dry_run: bool) -> Result<CacheReport, qlora_hub::HubError> {
    cleanup(manage::plan_delete(cache_dir, &manage::Target::Repo(repo.to_string()))?, dry_run)
}

pub fn prune(cache_dir: &Path, dry_run: bool) -> Result<CacheReport, qlora_hub::HubError> {
    cleanup(manage::plan_prune(cache_dir), dry_run)
}

pub fn verify(cache_dir: &Path, repo: &str) -> Result<CacheReport, qlora_hub::HubError> {
    let r = manage::verify(cache_dir, Some(repo), &qlora_jobs::CancelToken::new())?;
    Ok(CacheReport {
        dry_run: false,
        actions: vec![format!("checked {} files ({} bytes)", r.files_checked, r.bytes_checked)],
        freed_bytes: 0,
        problems: r
            .corrupt
            .iter()
            .map(|c| format!("{}: {} is damaged (expected {}, got {}); download it again", c.repo, c.path, c.expected, c.actual))
            .collect(),
    })
}
