//! Moving the whole cache to another folder or drive (a small home disk, a big data disk), as
//! users do by hand today, but safe against interruption: everything is copied into
//! `<target>.qlora-moving` (blobs with progress through fs_extra, snapshot links recreated as
//! the same relative symlinks, never dereferenced), synced, then renamed to `<target>` in one
//! step; only then is the old cache renamed aside, optionally replaced by a symlink to the new
//! place, and deleted. Stopped at any moment, one side is a complete cache: before the rename
//! the old one (the half copy is ignored and redone), after it the new one.
//!
//! After a move without the symlink, the caller points `HF_HUB_CACHE` at the new folder (the
//! app keeps it in its settings).

use crate::{HubError, Result};
use qlora_jobs::{CancelToken, ProgressSink, RateLimiter};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MovePlan {
    pub from: PathBuf,
    pub to: PathBuf,
    pub bytes: u64,
    pub files: usize,
    /// Free space on the target's disk when planned.
    pub available: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MoveEvent {
    Progress { done: u64, total: u64 },
    Copied { to: PathBuf },
    Finished { to: PathBuf, symlink_left: bool },
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| HubError::io(dir, e))? {
        let p = e.map_err(|e| HubError::io(dir, e))?.path();
        let meta = std::fs::symlink_metadata(&p).map_err(|e| HubError::io(&p, e))?;
        if meta.is_dir() {
            walk(&p, out)?;
        }
        out.push(p);
    }
    Ok(())
}

/// Checks the move and its space: `to` must not exist (or be empty) and not lie inside `from`.
pub fn plan_move(from: &Path, to: &Path) -> Result<MovePlan> {
    let from_c = std::fs::canonicalize(from).map_err(|e| HubError::io(from, e))?;
    let to_abs = if to.is_absolute() { to.to_path_buf() } else { std::env::current_dir().map_err(|e| HubError::io(to, e))?.join(to) };
    if to_abs.starts_with(&from_c) || to_abs.starts_with(from) {
        return Err(HubError::OutsideCache { path: to.to_path_buf(), cache: from.to_path_buf() });
    }
    if to.exists() && std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(HubError::io(
            to,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the target folder is not empty; pick an empty or new folder"),
        ));
    }
    let mut entries = Vec::new();
    walk(&from_c, &mut entries)?;
    let mut bytes = 0;
    let mut files = 0;
    for p in &entries {
        let m = std::fs::symlink_metadata(p).map_err(|e| HubError::io(p, e))?;
        if m.is_file() {
            bytes += m.len();
            files += 1;
        }
    }
    let available = crate::disk::free_space(&to_abs)?;
    let margin = crate::disk::default_margin(bytes);
    if bytes + margin > available {
        return Err(HubError::NotEnoughSpace { dir: to_abs, needed: bytes, margin, available });
    }
    Ok(MovePlan { from: from_c, to: to_abs, bytes, files, available })
}

/// Copies, then swaps. With `leave_symlink`, the old path becomes a symlink to the new one.
pub fn move_cache(plan: &MovePlan, leave_symlink: bool, cancel: &CancelToken, sink: &dyn ProgressSink<MoveEvent>) -> Result<()> {
    let staging = PathBuf::from(format!("{}.qlora-moving", plan.to.display()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| HubError::io(&staging, e))?;
    }
    copy_tree(plan, &staging, cancel, sink)?;
    if plan.to.exists() {
        std::fs::remove_dir(&plan.to).map_err(|e| HubError::io(&plan.to, e))?;
    }
    std::fs::rename(&staging, &plan.to).map_err(|e| HubError::io(&plan.to, e))?;
    sink.emit(MoveEvent::Copied { to: plan.to.clone() });
    let old = PathBuf::from(format!("{}.qlora-old", plan.from.display()));
    std::fs::rename(&plan.from, &old).map_err(|e| HubError::io(&plan.from, e))?;
    if leave_symlink {
        #[cfg(unix)]
        std::os::unix::fs::symlink(&plan.to, &plan.from).map_err(|e| HubError::io(&plan.from, e))?;
    }
    std::fs::remove_dir_all(&old).map_err(|e| HubError::io(&old, e))?;
    sink.emit(MoveEvent::Finished { to: plan.to.clone(), symlink_left: leave_symlink && cfg!(unix) });
    Ok(())
}

fn copy_tree(plan: &MovePlan, staging: &Path, cancel: &CancelToken, sink: &dyn ProgressSink<MoveEvent>) -> Result<()> {
    let mut entries = Vec::new();
    walk(&plan.from, &mut entries)?;
    entries.sort_by_key(|p| p.components().count());
    std::fs::create_dir_all(staging).map_err(|e| HubError::io(staging, e))?;
    let mut done = 0u64;
    let mut limit = RateLimiter::default();
    for src in entries {
        cancel.check()?;
        let rel = src.strip_prefix(&plan.from).unwrap_or(&src);
        let dst = staging.join(rel);
        let meta = std::fs::symlink_metadata(&src).map_err(|e| HubError::io(&src, e))?;
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&dst).map_err(|e| HubError::io(&dst, e))?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| HubError::io(&src, e))?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| HubError::io(&dst, e))?;
        } else if src.extension().is_some_and(|x| x == "lock") {
            continue; // lock files belong to running processes
        } else {
            let opts = fs_extra::file::CopyOptions::new().overwrite(true);
            let base = done;
            let handler = |p: fs_extra::file::TransitProcess| {
                if limit.ready() {
                    sink.emit(MoveEvent::Progress { done: base + p.copied_bytes, total: plan.bytes });
                }
            };
            fs_extra::file::copy_with_progress(&src, &dst, &opts, handler).map_err(|e| HubError::io(&src, std::io::Error::other(e.to_string())))?;
            std::fs::File::open(&dst).and_then(|f| f.sync_all()).map_err(|e| HubError::io(&dst, e))?;
            done += meta.len();
        }
    }
    sink.emit(MoveEvent::Progress { done, total: plan.bytes });
    Ok(())
}
