//! Free space on the cache's filesystem, checked before a download starts so it fails at once
//! with both numbers rather than hours later with a full disk.

use crate::{HubError, Result};
use std::path::{Path, PathBuf};

/// Free bytes on the filesystem holding `path` (its nearest existing ancestor).
pub fn free_space(path: &Path) -> Result<u64> {
    let existing = existing_ancestor(path);
    fs4::available_space(&existing).map_err(|e| HubError::io(existing, e))
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) if parent != p => p = parent.to_path_buf(),
            _ => break,
        }
    }
    p
}

/// The margin kept free: 1% of the download, at least 64 MiB, at most 2 GiB.
pub fn default_margin(bytes: u64) -> u64 {
    (bytes / 100).clamp(64 << 20, 2 << 30)
}

/// Whether writing `needed` bytes leaves the [`default_margin`] of `available` free: the rule
/// of a download's [`preflight`], for other writers (a GGUF import) that word their own refusal.
pub fn fits(needed: u64, available: u64) -> bool {
    needed.saturating_add(default_margin(needed)) <= available
}

/// `Err(NotEnoughSpace)` when `needed + margin` does not fit on `dir`'s filesystem.
pub fn preflight(dir: &Path, needed: u64, margin: u64) -> Result<()> {
    if needed == 0 {
        return Ok(());
    }
    let available = free_space(dir)?;
    if needed.saturating_add(margin) > available {
        return Err(HubError::NotEnoughSpace { dir: dir.to_path_buf(), needed, margin, available });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_refuses_more_than_free() {
        let d = tempfile::tempdir().unwrap();
        let free = free_space(&d.path().join("not/yet/created")).unwrap();
        assert!(free > 0);
        assert!(preflight(d.path(), 1, 0).is_ok());
        let e = preflight(d.path(), free, 1 << 20).unwrap_err();
        assert!(matches!(e, HubError::NotEnoughSpace { available, .. } if available > 0), "{e}");
    }

    #[test]
    fn fits_keeps_the_default_margin_free() {
        assert!(fits(1 << 30, (1 << 30) + (64 << 20)));
        assert!(!fits(1 << 30, (1 << 30) + (64 << 20) - 1));
        assert!(!fits(500, 500), "the margin is at least 64 MiB");
        assert!(fits(300 << 30, (300 << 30) + (2 << 30)), "and at most 2 GiB");
    }
}
