//! A local Hugging Face Hub on loopback, for tests and benchmarks (test support code, not a
//! mock of our own code): it serves model folders with the Hub's HTTP API as hf-hub 1.0 and
//! Python's huggingface_hub use it, so the downloader, the planner and the app are tested
//! against the real protocol without the network. Python's `snapshot_download` pointed at it
//! (`HF_ENDPOINT`) produces the standard cache, which is how its faithfulness is checked
//! (`tests/hub_python_interop.rs`).
//!
//! It misbehaves on demand ([`Fault`]): cut a connection mid-file, stall, send wrong bytes,
//! throttle, or go away ([`TestHub::shutdown`]); and it keeps a request log ([`TestHub::log`])
//! so a test can prove, for example, that only metadata was fetched.
//!
//! ```no_run
//! use qlora_hub_testserver::{Fault, FaultRule, TestHub};
//! let root = std::path::Path::new("/tmp/hub-root"); // holds org/name/config.json, …
//! let hub = TestHub::start(root).unwrap();
//! hub.add_fault(FaultRule::once("model.safetensors", Fault::DropAfter(1000)));
//! // … run the client with HF_ENDPOINT=hub.url() …
//! assert!(hub.log().iter().all(|e| e.bytes_sent < 1000));
//! ```
//!
//! Model folders: see [`repo`] for the layout (revisions, gated and private repositories).

pub mod card;
mod faults;
pub mod fixture;
pub mod repo;
mod routes;

pub use faults::{Fault, FaultRule};
pub use repo::Access;

use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes handed to the connection so far.
    pub bytes_sent: u64,
    /// Whether the request carried a bearer token.
    pub had_token: bool,
}

pub(crate) struct LogRecord {
    method: String,
    path: String,
    range: Option<String>,
    status: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    had_token: bool,
}

pub(crate) struct State {
    root: PathBuf,
    base_url: String,
    /// The CDN LFS files redirect to: another origin (port), as on the Hub, so clients treat it
    /// as a CDN (no token sent, headers of the redirect used for metadata).
    cdn_url: String,
    hashes: repo::HashCache,
    faults: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<LogRecord>>,
    access: Mutex<HashMap<String, Access>>,
    known_tokens: Mutex<Vec<String>>,
    page_size: AtomicUsize,
    lfs_by_sha: Mutex<HashMap<String, repo::RepoFile>>,
    /// Extra tree-listing entries per repository (a hostile Hub: names no folder can hold).
    phantom: Mutex<HashMap<String, Vec<String>>>,
}

/// A running local Hub. Dropping it shuts it down.
pub struct TestHub {
    state: Arc<State>,
    port: u16,
    cdn_port: u16,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestHub {
    /// Serves the model folders under `root` on a free loopback port.
    pub fn start(root: &Path) -> std::io::Result<TestHub> {
        Self::start_on(root, 0)
    }

    /// Serves on `127.0.0.1:port` (0: any free port).
    pub fn start_on(root: &Path, port: u16) -> std::io::Result<TestHub> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let cdn = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let cdn_port = cdn.local_addr()?.port();
        let state = Arc::new(State {
            root: root.to_path_buf(),
            base_url: format!("http://127.0.0.1:{port}"),
            cdn_url: format!("http://127.0.0.1:{cdn_port}"),
            hashes: Default::default(),
            faults: Default::default(),
            log: Default::default(),
            access: Default::default(),
            known_tokens: Default::default(),
            page_size: AtomicUsize::new(1000),
            lfs_by_sha: Default::default(),
            phantom: Default::default(),
        });
        let mut hub = TestHub { state, port, cdn_port, stop: None, thread: None };
        hub.serve(listener, cdn)?;
        Ok(hub)
    }

    fn serve(&mut self, listener: std::net::TcpListener, cdn: std::net::TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        cdn.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = self.state.clone();
        let thread = std::thread::Builder::new().name(format!("testhub-{}", self.port)).spawn(move || {
            rt.block_on(async move {
                if let (Ok(l), Ok(c)) = (tokio::net::TcpListener::from_std(listener), tokio::net::TcpListener::from_std(cdn)) {
                    tokio::join!(accept_loop(l, state.clone(), rx.clone()), accept_loop(c, state, rx));
                }
            });
            rt.shutdown_background();
        })?;
        self.stop = Some(tx);
        self.thread = Some(thread);
        Ok(())
    }

    /// `http://127.0.0.1:<port>`, for `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        &self.state.root
    }

    /// Goes away: stops listening and cuts every open connection (a download in flight sees
    /// its connection reset; new ones are refused).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Comes back on the same port after [`shutdown`](Self::shutdown), with the same state.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.shutdown();
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port))?;
        let cdn = std::net::TcpListener::bind(("127.0.0.1", self.cdn_port))?;
        self.serve(listener, cdn)
    }

    pub fn add_fault(&self, rule: FaultRule) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.push(rule);
        }
    }

    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.clear();
        }
    }

    /// Sets who may access `repo` (`org/name`), overriding its `.hub/config.json`.
    pub fn set_access(&self, repo: &str, access: Access) {
        if let Ok(mut a) = self.state.access.lock() {
            a.insert(repo.to_string(), access);
        }
    }

    /// Makes `repo` gated: files need one of `tokens` (401 without a token, 403 with another).
    pub fn gate(&self, repo: &str, tokens: &[&str]) {
        let tokens = tokens.iter().map(|t| t.to_string()).collect();
        self.set_access(repo, Access { gated: Some("auto".into()), private: false, tokens });
    }

    /// Tokens `whoami-v2` accepts besides those with access to some repository.
    pub fn add_user_token(&self, token: &str) {
        if let Ok(mut t) = self.state.known_tokens.lock() {
            t.push(token.to_string());
        }
    }

    /// Adds a file entry named `path` (say `../../etc/passwd`) to `repo`'s tree listings: a
    /// hostile or broken Hub, for testing that clients refuse such names.
    pub fn inject_tree_entry(&self, repo: &str, path: &str) {
        if let Ok(mut p) = self.state.phantom.lock() {
            p.entry(repo.to_string()).or_default().push(path.to_string());
        }
    }

    /// Entries per page of tree and search listings (the Hub uses 1000).
    pub fn set_page_size(&self, n: usize) {
        self.state.page_size.store(n, Ordering::Relaxed);
    }

    /// Every request answered so far, oldest first.
    pub fn log(&self) -> Vec<LogEntry> {
        let Ok(log) = self.state.log.lock() else { return Vec::new() };
        log.iter()
            .map(|r| LogEntry {
                method: r.method.clone(),
                path: r.path.clone(),
                range: r.range.clone(),
                status: r.status.load(Ordering::Relaxed) as u16,
                bytes_sent: r.bytes.load(Ordering::Relaxed),
                had_token: r.had_token,
            })
            .collect()
    }

    pub fn clear_log(&self) {
        if let Ok(mut l) = self.state.log.lock() {
            l.clear();
        }
    }

    /// Body bytes sent for file content (resolve and CDN GETs), the measure of "was anything
    /// downloaded".
    pub fn content_bytes_sent(&self) -> u64 {
        self.log().iter().filter(|e| e.method == "GET" && (e.path.contains("/resolve/") || e.path.starts_with("/_cdn/"))).map(|e| e.bytes_sent).sum()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(routes::handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
