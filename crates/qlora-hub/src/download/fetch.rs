//! One blob, fetched so that nothing is ever lost or corrupt: bytes go to
//! `blobs/<etag>.incomplete` and a restarted download (after a cancel, a crash or a SIGKILL)
//! continues from its length with an HTTP `Range` request; a dropped or stalled connection
//! (no bytes for `stall_timeout`) is retried with exponential backoff; the cancel token is
//! checked at least every 200 ms; and the blob gets its final name only after its size and
//! checksum (LFS SHA-256, or git blob id for small files) match what the Hub listed. A mismatch
//! deletes the partial file and says so. Re-hashing a resumed partial file and the final fsync
//! run on the blocking pool, so the other blobs in flight keep streaming.

use super::{DownloadEvent, DownloadOptions, Meter};
use crate::cache::layout::RepoCache;
use crate::client::{HubClient, transient};
use crate::remote::RemoteFile;
use crate::{HubError, Result};
use futures::StreamExt;
use sha1::Digest as _;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The checksum the Hub gives a file: SHA-256 for LFS, git's blob SHA-1 otherwise.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl Hasher {
    pub(crate) fn for_file(f: &RemoteFile) -> Self {
        if f.lfs_sha256.is_some() {
            Hasher::Sha256(sha2::Sha256::new())
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", f.size).as_bytes());
            Hasher::GitSha1(h)
        }
    }

    pub(crate) fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitSha1(h) => h.update(b),
        }
    }

    pub(crate) fn hex(self) -> String {
        let bytes = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::GitSha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Hashes `len` bytes of `path` from its start into `h`.
pub(crate) fn hash_prefix(path: &Path, len: u64, h: &mut Hasher) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| HubError::io(path, e))?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// Why one attempt stopped.
enum Stop {
    /// Worth another try: the bytes so far are kept.
    Retry {
        reason: String,
        stalled: bool,
    },
    Fatal(HubError),
}

impl From<HubError> for Stop {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Network { detail, .. } => Stop::Retry { reason: detail, stalled: false },
            e => Stop::Fatal(e),
        }
    }
}

pub(crate) struct Fetch<'a> {
    pub client: &'a HubClient,
    pub rc: &'a RepoCache,
    pub commit: &'a str,
    pub opts: &'a DownloadOptions,
}

impl Fetch<'_> {
    /// Makes `blobs/<etag>` hold the verified content of `file`, fetching what is missing.
    pub(crate) async fn blob(&self, file: &RemoteFile, meter: &Meter<'_>) -> Result<()> {
        let etag = file.etag();
        if std::fs::metadata(self.rc.blob(etag)).is_ok_and(|m| m.len() == file.size) {
            return Ok(());
        }
        let lock_path = self.rc.lock(etag);
        let _lock = lock(&lock_path, &file.path)?;
        let partial = self.rc.incomplete(etag);
        let blobs = self.rc.dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > file.size {
            truncate(&partial)?;
            have = 0;
        }
        meter.sink.emit(DownloadEvent::FileStarted { path: file.path.clone(), size: file.size, resume_from: have });
        let mut hasher = Hasher::for_file(file);
        let mut hashed = 0;
        let mut attempt = 0u32;
        let mut stalls = 0u32;
        loop {
            self.opts.cancel.check()?;
            let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            if have != hashed {
                hasher = off_thread(&partial, {
                    let (mut h, p) = (Hasher::for_file(file), partial.clone());
                    move || hash_prefix(&p, have, &mut h).map(|()| h)
                })
                .await?;
                hashed = have;
            }
            if have == file.size {
                break;
            }
            let stop = match self.attempt(file, &partial, have, &mut hasher, &mut hashed, meter).await {
                Ok(()) => continue,
                Err(stop) => stop,
            };
            let (reason, stalled) = match stop {
                Stop::Fatal(e) => return Err(e),
                Stop::Retry { reason, stalled } => (reason, stalled),
            };
            stalls += u32::from(stalled);
            attempt += 1;
            if attempt > self.opts.max_retries {
                return Err(if stalled {
                    HubError::Stalled { file: file.path.clone(), secs: self.opts.stall_timeout.as_secs(), attempts: stalls }
                } else {
                    HubError::Interrupted { file: file.path.clone(), attempts: attempt, detail: reason }
                });
            }
            let wait = self.opts.backoff.saturating_mul(1 << (attempt - 1).min(5)).min(Duration::from_secs(30));
            meter.sink.emit(DownloadEvent::Retrying { path: file.path.clone(), attempt, reason, wait_secs: wait.as_secs_f64() });
            sleep_cancellable(wait, &self.opts.cancel).await?;
        }
        let p = partial.clone();
        let len = off_thread(&partial, move || {
            let f = std::fs::File::open(&p).map_err(|e| HubError::io(&p, e))?;
            f.sync_all().map_err(|e| HubError::io(&p, e))?;
            Ok(f.metadata().map_err(|e| HubError::io(&p, e))?.len())
        })
        .await?;
        self.verify_and_promote(file, &partial, len, hasher)
    }

    /// One GET from `have` to the end of the file, appended to `partial`.
    async fn attempt(
        &self,
        file: &RemoteFile,
        partial: &Path,
        have: u64,
        hasher: &mut Hasher,
        hashed: &mut u64,
        meter: &Meter<'_>,
    ) -> std::result::Result<(), Stop> {
        let repo = &self.rc.repo;
        let url = self.client.resolve_url(repo, self.commit, &file.path)?;
        let range = (have > 0).then(|| format!("bytes={have}-"));
        let resp = self.client.get(&url, range.as_deref()).await?;
        let status = resp.status();
        if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            truncate(partial)?;
            return Err(Stop::Retry { reason: "the server refused to resume; starting the file over".into(), stalled: false });
        }
        if transient(status) {
            return Err(Stop::Retry { reason: format!("the server answered {status}"), stalled: false });
        }
        let resp = self.client.check(resp, repo, self.commit, Some(&file.path)).await?;
        let mut out = std::fs::OpenOptions::new().create(true).append(true).open(partial).map_err(|e| HubError::io(partial, e))?;
        if have > 0 && resp.status() == reqwest::StatusCode::OK {
            // The server ignored Range: start over.
            out.set_len(0).map_err(|e| HubError::io(partial, e))?;
            *hasher = Hasher::for_file(file);
            *hashed = 0;
        }
        let mut stream = resp.bytes_stream();
        let mut last_byte = Instant::now();
        loop {
            self.opts.cancel.check().map_err(|c| Stop::Fatal(c.into()))?;
            let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            let chunk = match next {
                Err(_) if last_byte.elapsed() >= self.opts.stall_timeout => {
                    let reason = format!("no data for {} s", self.opts.stall_timeout.as_secs());
                    return Err(Stop::Retry { reason, stalled: true });
                }
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Stop::Retry { reason: format!("connection dropped: {}", self.client.network_error(&e)), stalled: false });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            last_byte = Instant::now();
            if *hashed + chunk.len() as u64 > file.size {
                return Err(Stop::Fatal(self.mismatch_size(file, partial, *hashed + chunk.len() as u64)));
            }
            if let Err(e) = out.write_all(&chunk) {
                return Err(Stop::Fatal(write_error(file, partial, e)));
            }
            hasher.update(&chunk);
            *hashed += chunk.len() as u64;
            meter.add(&file.path, chunk.len() as u64, *hashed, file.size);
        }
        out.flush().map_err(|e| Stop::Fatal(write_error(file, partial, e)))?;
        if *hashed < file.size {
            return Err(Stop::Retry { reason: "the connection closed before the end of the file".into(), stalled: false });
        }
        Ok(())
    }

    fn mismatch_size(&self, file: &RemoteFile, partial: &Path, actual: u64) -> HubError {
        let _ = std::fs::remove_file(partial);
        HubError::SizeMismatch { file: file.path.clone(), expected: file.size, actual, partial: partial.to_path_buf() }
    }

    /// Checks size and checksum, then renames the partial file to its blob name.
    /// `len`: the partial file's length once synced to disk.
    fn verify_and_promote(&self, file: &RemoteFile, partial: &Path, len: u64, hasher: Hasher) -> Result<()> {
        if len != file.size {
            return Err(self.mismatch_size(file, partial, len));
        }
        let actual = hasher.hex();
        if actual != file.etag() {
            let _ = std::fs::remove_file(partial);
            return Err(HubError::ChecksumMismatch {
                file: file.path.clone(),
                expected: file.etag().to_string(),
                actual,
                partial: partial.to_path_buf(),
            });
        }
        let blob = self.rc.blob(file.etag());
        std::fs::rename(partial, &blob).map_err(|e| HubError::io(&blob, e))
    }
}

/// Runs blocking file work (re-hashing a partial file, fsync) on tokio's blocking pool, so the
/// other downloads in flight keep streaming meanwhile.
async fn off_thread<T: Send + 'static>(path: &Path, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(HubError::io(path, std::io::Error::other(e))))
}

fn write_error(file: &RemoteFile, partial: &Path, e: std::io::Error) -> HubError {
    if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
        let kept = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        HubError::DiskFull { file: file.path.clone(), path: partial.to_path_buf(), kept }
    } else {
        HubError::io(partial, e)
    }
}

fn truncate(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(0)).map_err(|e| HubError::io(path, e))
}

/// An exclusive lock on `.locks/<repo>/<etag>.lock`, so two processes never append to the same
/// partial file. Released when dropped.
fn lock(path: &Path, file: &str) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| HubError::io(path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(HubError::Busy { file: file.to_string(), lock: path.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(HubError::io(path, e)),
    }
}

async fn sleep_cancellable(d: Duration, cancel: &qlora_jobs::CancelToken) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        cancel.check()?;
        tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(100))).await;
    }
    Ok(())
}
