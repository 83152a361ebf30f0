//! Shared by the hub integration tests: a local Hub serving a small model, and a client whose
//! whole configuration is explicit (no environment).
#![allow(dead_code)]

use qlora_hub::{HubClient, HubConfig};
use qlora_hub_testserver::TestHub;
use std::path::{Path, PathBuf};

pub const REPO: &str = "test-org/tiny-model";

pub struct Env {
    pub root: tempfile::TempDir,
    pub cache: tempfile::TempDir,
    pub hub: TestHub,
}

impl Env {
    /// A Hub serving `test-org/tiny-model` with about `weight_bytes` of safetensors.
    pub fn new(weight_bytes: usize) -> Env {
        let root = tempfile::tempdir().unwrap();
        qlora_hub_testserver::fixture::tiny_model(root.path(), REPO, weight_bytes).unwrap();
        let hub = TestHub::start(root.path()).unwrap();
        Env { root, cache: tempfile::tempdir().unwrap(), hub }
    }

    pub fn config(&self, token: Option<&str>) -> HubConfig {
        HubConfig {
            endpoint: self.hub.url(),
            token: token.map(String::from),
            offline: false,
            cache_dir: self.cache.path().join("hub"),
            hf_home: self.cache.path().to_path_buf(),
        }
    }

    pub fn client(&self) -> HubClient {
        HubClient::new(self.config(None)).unwrap()
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache.path().join("hub")
    }

    pub fn repo_file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(REPO).join(path)).unwrap()
    }

    /// GETs of file content (resolve or CDN) for `file` (None: any).
    pub fn content_gets(&self) -> Vec<qlora_hub_testserver::LogEntry> {
        self.hub.log().into_iter().filter(|e| e.method == "GET" && (e.path.contains("/resolve/") || e.path.starts_with("/_cdn/"))).collect()
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}
