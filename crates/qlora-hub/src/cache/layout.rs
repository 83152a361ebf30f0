//! The standard Hugging Face cache layout, byte-compatible with huggingface_hub so both share
//! every file:
//!
//! ```text
//! <cache>/models--org--name/blobs/<etag>                 content, named by git blob id or LFS SHA-256
//! <cache>/models--org--name/blobs/<etag>.incomplete      a download in progress (ours resume from it)
//! <cache>/models--org--name/snapshots/<commit>/<path>    relative symlink to ../../blobs/<etag>
//! <cache>/models--org--name/refs/<revision>              the commit a branch or tag points to
//! <cache>/.locks/models--org--name/<etag>.lock           one writer per blob
//! ```

use crate::{HubError, Result};
use std::path::{Component, Path, PathBuf};

/// `models--org--name`.
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// `org/name` from `models--org--name` (None for datasets, spaces and anything else).
pub fn repo_id_from_folder(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    let (org, name) = rest.split_once("--")?;
    Some(format!("{org}/{name}"))
}

pub fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Checks a file name from a Hub listing: relative, `/`-separated, no `..`, no empty or `.`
/// parts, no backslashes or NULs. Returns the path to join under a snapshot folder.
pub fn safe_relative(repo: &str, name: &str) -> Result<PathBuf> {
    let hostile = || HubError::HostileFileName { repo: repo.to_string(), name: name.to_string() };
    if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err(hostile());
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(hostile());
        }
        out.push(part);
    }
    // Belt and braces: whatever the platform parses, only normal components may remain.
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(hostile());
    }
    Ok(out)
}

/// An etag used as a blob file name: hex only (40 for git, 64 for SHA-256).
pub fn safe_etag(repo: &str, etag: &str) -> Result<()> {
    if (etag.len() == 40 || etag.len() == 64) && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(HubError::BadResponse { url: repo.to_string(), what: format!("file id '{etag}' is not a git or SHA-256 hash") })
    }
}

/// Paths of one repository inside a cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub cache_dir: PathBuf,
    pub repo: String,
    pub dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        RepoCache { cache_dir: cache_dir.to_path_buf(), repo: repo.to_string(), dir: cache_dir.join(repo_folder_name(repo)) }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn lock(&self, etag: &str) -> PathBuf {
        self.cache_dir.join(".locks").join(repo_folder_name(&self.repo)).join(format!("{etag}.lock"))
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.dir.join("refs").join(revision)
    }

    /// The commit a revision points to in this cache (a commit id is its own answer).
    pub fn resolve_ref(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let s = std::fs::read_to_string(self.ref_file(revision)).ok()?;
        let s = s.trim();
        is_commit_hash(s).then(|| s.to_string())
    }

    /// Records that `revision` points to `commit` (atomic write, as huggingface_hub does).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(safe_relative(&self.repo, revision)?);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(commit) {
            return Ok(());
        }
        atomic_write(&path, commit.as_bytes())
    }

    /// Links `snapshots/<commit>/<file>` to `blobs/<etag>` with a relative symlink, exactly as
    /// huggingface_hub does (`../../blobs/<etag>`, one more `../` per folder level of the file).
    pub fn link(&self, commit: &str, file: &Path, etag: &str) -> Result<PathBuf> {
        let dst = self.snapshot_dir(commit).join(file);
        let parent = dst.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let depth = file.components().count() - 1 + 2;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if std::fs::read_link(&dst).ok().as_deref() == Some(target.as_path()) {
            return Ok(dst);
        }
        // Named after the file too: links of one folder made by concurrent downloads never share it.
        let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or("f");
        let tmp = parent.join(format!(".{name}.{}.tmp-link", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| HubError::io(&dst, e))?;
        Ok(dst)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    // Where symlinks are not available huggingface_hub copies the blob; so do we.
    let resolved = link.parent().unwrap_or(Path::new(".")).join(target);
    std::fs::copy(resolved, link).map(|_| ())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers see the old
/// content or the new, never half of it.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let tmp = parent.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("f"), std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HubError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["../x", "a/../../b", "/etc/passwd", "a//b", "./a", "a\\..\\b", "", "a/"] {
            assert!(matches!(safe_relative("o/m", bad), Err(HubError::HostileFileName { .. })), "{bad}");
        }
        assert_eq!(safe_relative("o/m", "sub/model.safetensors").unwrap(), PathBuf::from("sub/model.safetensors"));
        assert_eq!(safe_relative("o/m", ".gitattributes").unwrap(), PathBuf::from(".gitattributes"));
    }

    #[test]
    fn folder_names() {
        assert_eq!(repo_folder_name("org/m"), "models--org--m");
        assert_eq!(repo_id_from_folder("models--org--m-1.5"), Some("org/m-1.5".into()));
        assert_eq!(repo_id_from_folder("datasets--a--b"), None);
    }

    #[test]
    fn links_are_relative_like_huggingface_hub() {
        let d = tempfile::tempdir().unwrap();
        let rc = RepoCache::new(d.path(), "o/m");
        let c = "a".repeat(40);
        std::fs::create_dir_all(rc.dir.join("blobs")).unwrap();
        std::fs::write(rc.blob("e1"), b"x").unwrap();
        let p = rc.link(&c, Path::new("sub/dir/f.txt"), "e1").unwrap();
        assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from("../../../../blobs/e1"));
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        let p = rc.link(&c, Path::new("f.txt"), "e1").unwrap();
        assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from("../../blobs/e1"));
        rc.write_ref("main", &c).unwrap();
        assert_eq!(rc.resolve_ref("main"), Some(c));
    }
}
