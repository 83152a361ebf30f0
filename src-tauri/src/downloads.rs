//! Downloads: `qlora_hub::download::download` in the background, its events turned into the
//! app's `download` events (progress counts what the cache already held, so a resumed
//! download's bar continues where it stopped), and its end (finished, cancelled, failed)
//! reported once.

use crate::views::DownloadEvent;
use qlora_hub::download::{self, DownloadEvent as HubEvent, DownloadOptions};
use qlora_hub::select::SelectOptions;
use qlora_hub::{HubClient, HubError};
use qlora_jobs::CancelToken;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Turns the hub's events into the app's. `already` holds the bytes the cache had at start.
pub struct Mapper {
    pub job: u64,
    pub model: String,
    already: AtomicU64,
    total: AtomicU64,
    pub done: AtomicU64,
}

impl Mapper {
    pub fn new(job: u64, model: &str) -> Self {
        Self { job, model: model.to_string(), already: AtomicU64::new(0), total: AtomicU64::new(0), done: AtomicU64::new(0) }
    }

    pub fn map(&self, e: HubEvent) -> Option<DownloadEvent> {
        let job = self.job;
        match e {
            HubEvent::Planned { total_bytes, to_fetch_bytes, .. } => {
                let already = total_bytes.saturating_sub(to_fetch_bytes);
                self.already.store(already, Ordering::Relaxed);
                self.total.store(total_bytes, Ordering::Relaxed);
                self.done.store(already, Ordering::Relaxed);
                Some(DownloadEvent::Started { job, model: self.model.clone(), total_bytes, resumed_bytes: already })
            }
            HubEvent::Progress { path, done, bytes_per_sec, eta_secs, .. } => {
                let done = self.already.load(Ordering::Relaxed) + done;
                self.done.store(done, Ordering::Relaxed);
                Some(DownloadEvent::Progress {
                    job,
                    file: path,
                    done_bytes: done,
                    total_bytes: self.total.load(Ordering::Relaxed),
                    bytes_per_sec,
                    eta_secs,
                })
            }
            HubEvent::Finished { snapshot, .. } => Some(DownloadEvent::Finished { job, path: snapshot.to_string_lossy().to_string() }),
            _ => None,
        }
    }

    /// The closing event for a download that returned an error.
    pub fn ended(&self, e: HubError) -> DownloadEvent {
        match e {
            HubError::Cancelled => DownloadEvent::Cancelled { job: self.job, done_bytes: self.done.load(Ordering::Relaxed) },
            e => DownloadEvent::Failed { job: self.job, error: crate::hub::to_app(e) },
        }
    }
}

/// Runs one download to its end, sending every event to `emit`.
pub async fn run(client: HubClient, mapper: Mapper, cancel: CancelToken, emit: impl Fn(DownloadEvent) + Send + Sync) {
    // Fewer, quicker retries than the CLI: the window shows the failure and a Resume button.
    let opts =
        DownloadOptions { cancel, max_retries: 3, backoff: Duration::from_millis(500), stall_timeout: Duration::from_secs(20), ..Default::default() };
    let sink = |e: HubEvent| {
        if let Some(ev) = mapper.map(e) {
            emit(ev);
        }
    };
    let repo = mapper.model.clone();
    match download::download(&client, &repo, "main", &SelectOptions::default(), &opts, &sink).await {
        Ok(outcome) if client.config().offline => {
            emit(DownloadEvent::Finished { job: mapper.job, path: outcome.snapshot.to_string_lossy().to_string() })
        }
        Ok(_) => {}
        Err(e) => emit(mapper.ended(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_download_counts_what_the_cache_held() {
        let m = Mapper::new(3, "a/b");
        let started = m.map(HubEvent::Planned { repo: "a/b".into(), commit: "c".into(), files: 2, total_bytes: 1000, to_fetch_bytes: 600 });
        assert!(matches!(started, Some(DownloadEvent::Started { resumed_bytes: 400, total_bytes: 1000, .. })));
        let p = m.map(HubEvent::Progress {
            path: "model.safetensors".into(),
            file_done: 100,
            file_total: 600,
            done: 100,
            total: 600,
            bytes_per_sec: 10.0,
            eta_secs: Some(50.0),
        });
        assert!(matches!(p, Some(DownloadEvent::Progress { done_bytes: 500, total_bytes: 1000, .. })));
        assert!(matches!(m.ended(HubError::Cancelled), DownloadEvent::Cancelled { job: 3, done_bytes: 500 }));
        let failed = m.ended(HubError::Network { endpoint: "http://x".into(), detail: "refused".into() });
        assert!(matches!(failed, DownloadEvent::Failed { error: crate::error::AppError { code: crate::error::ErrorCode::Offline, .. }, .. }));
    }
}
