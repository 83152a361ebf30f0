//! Model folders on disk seen as Hub repositories: which files a revision holds, their git blob
//! ids, LFS SHA-256 and sizes, and the commit id of each revision.
//!
//! Layout under the server's root:
//!
//! ```text
//! <root>/<org>/<name>/...                      the `main` branch (every file, `.hub/` excluded)
//! <root>/<org>/<name>/.hub/revisions/<rev>/... another branch or tag, a full tree of its own
//! <root>/<org>/<name>/.hub/config.json         {"gated": "auto", "private": false, "tokens": ["hf_..."]}
//! ```
//!
//! A revision's commit id is derived from its content (SHA-1 over its paths and blob ids), so it
//! is a stable 40-hex id that changes when a file changes, as a git commit would.
//!
//! Which files are LFS follows the Hub's default `.gitattributes`: weights, archives and any
//! file of 10 MiB or more. LFS files are served through a redirect to a CDN-like path, others
//! straight from `resolve`, exactly as the Hub does.

use sha1::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Extensions the Hub's default `.gitattributes` stores in LFS.
const LFS_EXTENSIONS: &[&str] = &[
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gguf",
    "gz",
    "h5",
    "joblib",
    "mlmodel",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "pt",
    "pth",
    "rar",
    "safetensors",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "xz",
    "zip",
    "zst",
];

/// Files at least this large go to LFS whatever their extension.
pub const LFS_SIZE_THRESHOLD: u64 = 10 * 1024 * 1024;

/// One file of a revision.
#[derive(Debug, Clone)]
pub struct RepoFile {
    pub path: String,
    pub abs: PathBuf,
    pub size: u64,
    /// Git blob id: of the content for a regular file, of the LFS pointer for an LFS file.
    pub blob_id: String,
    /// SHA-256 of the content (the LFS oid and the ETag of an LFS file).
    pub sha256: String,
    pub lfs: bool,
}

impl RepoFile {
    /// The ETag the Hub gives the file's content: the git blob id, or the SHA-256 for LFS.
    pub fn etag(&self) -> &str {
        if self.lfs { &self.sha256 } else { &self.blob_id }
    }

    pub fn pointer_size(&self) -> u64 {
        lfs_pointer(&self.sha256, self.size).len() as u64
    }
}

/// One revision (branch or tag) of a repository.
#[derive(Debug, Clone)]
pub struct Revision {
    pub name: String,
    pub commit: String,
    pub files: BTreeMap<String, RepoFile>,
    pub last_modified: SystemTime,
}

/// Access settings of a repository, from `.hub/config.json` or set through the server's API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Access {
    /// `Some("auto")`/`Some("manual")`: gated; files need a token in `tokens`.
    #[serde(default, deserialize_with = "gated_de")]
    pub gated: Option<String>,
    /// Private: without a token in `tokens` the repository does not exist.
    #[serde(default)]
    pub private: bool,
    /// Tokens that have access (accepted the licence, or members of the org).
    #[serde(default)]
    pub tokens: Vec<String>,
}

fn gated_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Bool(true) => Some("auto".into()),
        _ => None,
    })
}

pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// Git's blob id: SHA-1 of `blob <len>\0<content>`.
pub fn git_blob_id(content: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lfs(path: &str, size: u64) -> bool {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    size >= LFS_SIZE_THRESHOLD || (path.contains('.') && LFS_EXTENSIONS.contains(&ext.as_str()))
}

/// Hashes of files already read, keyed by path and checked against size and mtime, so a large
/// file is hashed once per change, not once per request.
#[derive(Default)]
pub struct HashCache(Mutex<HashMap<PathBuf, (u64, SystemTime, String, String)>>);

impl HashCache {
    /// (git blob id of the content, sha256 of the content)
    fn hashes(&self, abs: &Path, size: u64, mtime: SystemTime) -> std::io::Result<(String, String)> {
        if let Ok(map) = self.0.lock()
            && let Some((s, m, sha1, sha256)) = map.get(abs)
            && *s == size
            && *m == mtime
        {
            return Ok((sha1.clone(), sha256.clone()));
        }
        let mut f = std::fs::File::open(abs)?;
        let mut s1 = sha1::Sha1::new();
        s1.update(format!("blob {size}\0").as_bytes());
        let mut s256 = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s1.update(&buf[..n]);
            s256.update(&buf[..n]);
        }
        let out = (hex(&s1.finalize()), hex(&s256.finalize()));
        if let Ok(mut map) = self.0.lock() {
            map.insert(abs.to_path_buf(), (size, mtime, out.0.clone(), out.1.clone()));
        }
        Ok(out)
    }
}

/// A repository folder under the root.
pub struct RepoDir {
    pub id: String,
    pub dir: PathBuf,
}

impl RepoDir {
    /// `org/name` under `root`, if that folder exists. Names with `..` or empty parts are refused.
    pub fn find(root: &Path, org: &str, name: &str) -> Option<RepoDir> {
        let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('\\') && !s.starts_with(".hub");
        if !ok(org) || !ok(name) {
            return None;
        }
        let dir = root.join(org).join(name);
        dir.is_dir().then(|| RepoDir { id: format!("{org}/{name}"), dir })
    }

    /// Every repository under `root` (two levels: org, name).
    pub fn all(root: &Path) -> Vec<RepoDir> {
        let mut out = Vec::new();
        let Ok(orgs) = std::fs::read_dir(root) else { return out };
        for org in orgs.flatten().filter(|e| e.path().is_dir()) {
            let Ok(names) = std::fs::read_dir(org.path()) else { continue };
            for name in names.flatten().filter(|e| e.path().is_dir()) {
                let (o, n) = (org.file_name(), name.file_name());
                if let (Some(o), Some(n)) = (o.to_str(), n.to_str())
                    && let Some(r) = RepoDir::find(root, o, n)
                {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn access(&self) -> Access {
        std::fs::read(self.dir.join(".hub/config.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn revision_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut out = vec![("main".to_string(), self.dir.clone())];
        if let Ok(entries) = std::fs::read_dir(self.dir.join(".hub/revisions")) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                if let Some(name) = e.file_name().to_str() {
                    out.push((name.to_string(), e.path()));
                }
            }
        }
        out
    }

    /// The revision named `rev` (branch, tag, or a commit id of one of them).
    pub fn revision(&self, rev: &str, hashes: &HashCache) -> std::io::Result<Option<Revision>> {
        let dirs = self.revision_dirs();
        if let Some((name, dir)) = dirs.iter().find(|(n, _)| n == rev) {
            return Ok(Some(read_revision(name, dir, hashes)?));
        }
        if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
            for (name, dir) in &dirs {
                let r = read_revision(name, dir, hashes)?;
                if r.commit == rev {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }
}

fn read_revision(name: &str, dir: &Path, hashes: &HashCache) -> std::io::Result<Revision> {
    let mut files = BTreeMap::new();
    let mut last_modified = SystemTime::UNIX_EPOCH;
    walk(dir, dir, &mut |abs, rel| {
        let meta = std::fs::metadata(abs)?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        last_modified = last_modified.max(mtime);
        let (content_blob, sha256) = hashes.hashes(abs, meta.len(), mtime)?;
        let lfs = is_lfs(&rel, meta.len());
        let blob_id = if lfs { git_blob_id(lfs_pointer(&sha256, meta.len()).as_bytes()) } else { content_blob };
        files.insert(rel.clone(), RepoFile { path: rel, abs: abs.to_path_buf(), size: meta.len(), blob_id, sha256, lfs });
        Ok(())
    })?;
    let mut h = sha1::Sha1::new();
    h.update(name.as_bytes());
    for f in files.values() {
        h.update(format!("{}\0{}\n", f.path, f.blob_id).as_bytes());
    }
    Ok(Revision { name: name.to_string(), commit: hex(&h.finalize()), files, last_modified })
}

fn walk(base: &Path, dir: &Path, f: &mut dyn FnMut(&Path, String) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        if dir == base && (name == ".hub" || name == ".git") {
            continue;
        }
        let ft = std::fs::metadata(&path)?.file_type();
        if ft.is_dir() {
            walk(base, &path, f)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            f(&path, rel.join("/"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_blob_id(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn lfs_follows_hub_gitattributes() {
        assert!(is_lfs("model.safetensors", 10));
        assert!(is_lfs("sub/pytorch_model.bin", 10));
        assert!(is_lfs("tokenizer.model", 10));
        assert!(!is_lfs("config.json", 10));
        assert!(is_lfs("big.json", LFS_SIZE_THRESHOLD));
        assert!(!is_lfs("README", 10));
    }

    #[test]
    fn commit_changes_with_content() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("org/m");
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        std::fs::write(repo.join("config.json"), b"{}").unwrap();
        std::fs::write(repo.join("sub/model.safetensors"), b"weights").unwrap();
        let hashes = HashCache::default();
        let r = RepoDir::find(d.path(), "org", "m").unwrap();
        let a = r.revision("main", &hashes).unwrap().unwrap();
        assert_eq!(a.commit.len(), 40);
        assert_eq!(a.files.len(), 2);
        let st = &a.files["sub/model.safetensors"];
        assert!(st.lfs);
        assert_eq!(st.etag(), st.sha256);
        assert_eq!(r.revision(&a.commit, &hashes).unwrap().unwrap().name, "main");
        std::fs::write(repo.join("config.json"), b"{\"a\":1}").unwrap();
        let b = r.revision("main", &hashes).unwrap().unwrap();
        assert_ne!(a.commit, b.commit);
        assert!(r.revision("nope", &hashes).unwrap().is_none());
        assert!(RepoDir::find(d.path(), "org", "..").is_none());
    }
}
