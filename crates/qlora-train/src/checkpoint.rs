//! Checkpoints: when to save and what to delete (a policy that returns actions, as burn's,
//! so it is tested without a model), and how a checkpoint folder is written atomically: its
//! files go into a hidden temporary folder, are synced, and the folder is renamed to
//! `checkpoint-{step}` in one step. A run killed mid-write leaves only a `.tmp` folder, which
//! is ignored and cleaned up; the last complete checkpoint stays the one a resume uses.

use std::path::{Path, PathBuf};

/// What the policy asks for after an optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Save(usize),
    Delete(usize),
}

/// Save every `every` steps (and at the end), keep the newest `keep_last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub every: usize,
    pub keep_last: usize,
}

impl Policy {
    /// Actions after optimizer step `step` (1-based count of steps done), given the steps of
    /// the checkpoints on disk. `last` forces a save (end of the run).
    pub fn actions(&self, step: usize, existing: &[usize], last: bool) -> Vec<Action> {
        let due = last || (self.every > 0 && step.is_multiple_of(self.every));
        if !due || existing.contains(&step) {
            return Vec::new();
        }
        let mut out = vec![Action::Save(step)];
        let mut kept: Vec<usize> = existing.iter().copied().filter(|s| *s < step).collect();
        kept.sort_unstable();
        let keep_old = self.keep_last.max(1) - 1;
        let n_delete = kept.len().saturating_sub(keep_old);
        out.extend(kept[..n_delete].iter().map(|s| Action::Delete(*s)));
        out
    }
}

/// The folder of the checkpoint at `step`.
pub fn dir_for(root: &Path, step: usize) -> PathBuf {
    root.join(format!("checkpoint-{step}"))
}

/// Steps of the complete checkpoints under `root`, ascending.
pub fn list(root: &Path) -> std::io::Result<Vec<usize>> {
    let mut steps = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(steps),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("checkpoint-")).and_then(|n| n.parse().ok()) {
            steps.push(n);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Writes a checkpoint folder atomically: `fill` writes the files into a temporary folder,
/// which is then renamed to `checkpoint-{step}` (replacing one of the same step).
pub fn write_atomic<E: From<std::io::Error>>(root: &Path, step: usize, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<PathBuf, E> {
    std::fs::create_dir_all(root)?;
    let tmp = root.join(format!(".checkpoint-{step}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    for entry in std::fs::read_dir(&tmp)? {
        std::fs::File::open(entry?.path())?.sync_all()?;
    }
    let dest = dir_for(root, step);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&tmp, &dest)?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all(); // directory fsync: best effort (not supported everywhere)
    }
    Ok(dest)
}

/// Writes one file atomically (temp file in the same folder, synced, renamed).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes temporary folders a killed run left behind.
pub fn clean_partial(root: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".checkpoint-") && name.ends_with(".tmp") {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_every_n_and_keeps_last_k() {
        let p = Policy { every: 2, keep_last: 2 };
        assert_eq!(p.actions(1, &[], false), vec![]);
        assert_eq!(p.actions(2, &[], false), vec![Action::Save(2)]);
        assert_eq!(p.actions(4, &[2], false), vec![Action::Save(4)]);
        assert_eq!(p.actions(6, &[2, 4], false), vec![Action::Save(6), Action::Delete(2)]);
        assert_eq!(p.actions(7, &[4, 6], true), vec![Action::Save(7), Action::Delete(4)]);
        assert_eq!(p.actions(6, &[4, 6], true), vec![], "already saved at this step");
        let one = Policy { every: 1, keep_last: 1 };
        assert_eq!(one.actions(3, &[1, 2], false), vec![Action::Save(3), Action::Delete(1), Action::Delete(2)]);
        let never = Policy { every: 0, keep_last: 3 };
        assert_eq!(never.actions(10, &[], false), vec![]);
        assert_eq!(never.actions(10, &[], true), vec![Action::Save(10)]);
    }

    #[test]
    fn atomic_write_lists_and_ignores_partial() {
        let d = tempfile::tempdir().unwrap();
        write_atomic::<std::io::Error>(d.path(), 3, |p| std::fs::write(p.join("a"), b"x")).unwrap();
        // a failed fill leaves no checkpoint-5
        let r = write_atomic::<std::io::Error>(d.path(), 5, |_| Err(std::io::Error::other("boom")));
        assert!(r.is_err());
        assert_eq!(list(d.path()).unwrap(), vec![3]);
        assert_eq!(std::fs::read(dir_for(d.path(), 3).join("a")).unwrap(), b"x");
        clean_partial(d.path()).unwrap();
        assert!(!d.path().join(".checkpoint-5.tmp").exists());
        assert_eq!(list(&d.path().join("missing")).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn write_file_atomic_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write_file_atomic(&p, b"1").unwrap();
        write_file_atomic(&p, b"2").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
    }
}
