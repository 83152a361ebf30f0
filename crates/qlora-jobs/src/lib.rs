//! Long jobs (downloads, training, generation) share three small pieces, kept here so the
//! core crates agree on them and the front ends (CLI, Tauri) render any job the same way:
//!
//! - [`CancelToken`]: held by the caller, checked by the job after each unit of work
//!   (a download chunk, an optimizer step, a generated token);
//! - [`ProgressSink`]: where a job reports its typed events; the job knows nothing of the UI;
//! - [`RateLimiter`]: progress is throttled (about 20 updates a second) so a fast job
//!   cannot flood a webview with events.
//!
//! ```
//! use qlora_jobs::{CancelToken, RateLimiter};
//! use std::time::Duration;
//! let token = CancelToken::new();
//! let child = token.clone();
//! token.cancel();
//! assert!(child.is_cancelled());
//! let mut limit = RateLimiter::new(Duration::from_millis(50));
//! assert!(limit.ready());      // the first update always goes out
//! assert!(!limit.ready());     // the next one within 50 ms does not
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cancellation flag shared between the caller and a running job. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop. The job stops at its next check and reports that it was cancelled.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled: lets a job write `token.check()?` after each unit of work.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }
}

/// The error a job returns when its [`CancelToken`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled by the user")]
pub struct Cancelled;

/// Where a job reports its events. `E` is the job's own event enum (download progress,
/// training step, generated token). Implemented for closures, so a test can collect events
/// into a `Vec` and the CLI can print them.
pub trait ProgressSink<E>: Send + Sync {
    fn emit(&self, event: E);
}

impl<E, F: Fn(E) + Send + Sync> ProgressSink<E> for F {
    fn emit(&self, event: E) {
        self(event)
    }
}

/// A sink that drops every event, for callers that do not watch progress.
pub struct NoProgress;

impl<E> ProgressSink<E> for NoProgress {
    fn emit(&self, _event: E) {}
}

/// Lets an update through at most once per `interval`. The job still sends its final event
/// unconditionally; only the stream in between is thinned.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Option<Instant>,
}

impl RateLimiter {
    /// About 20 updates a second: smooth in a UI, cheap over IPC.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

    pub fn new(interval: Duration) -> Self {
        Self { interval, last: None }
    }

    /// True when an update may go out now (and records that it did).
    pub fn ready(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(Self::DEFAULT_INTERVAL)
    }
}

/// A process-unique job id, for front ends that track several jobs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl JobId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        JobId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Speed and time left from bytes (or tokens, or steps) done so far, smoothed over a window
/// so a brief stall does not make the ETA jump to hours.
#[derive(Debug)]
pub struct Throughput {
    start: Instant,
    samples: std::collections::VecDeque<(Instant, u64)>,
    window: Duration,
}

impl Throughput {
    pub fn new() -> Self {
        Self::with_window(Duration::from_secs(5))
    }

    pub fn with_window(window: Duration) -> Self {
        Self { start: Instant::now(), samples: Default::default(), window }
    }

    /// Records that `done` units are complete now.
    pub fn record(&mut self, done: u64) {
        self.record_at(Instant::now(), done)
    }

    fn record_at(&mut self, now: Instant, done: u64) {
        self.samples.push_back((now, done));
        while let Some(&(t, _)) = self.samples.front() {
            if now.duration_since(t) > self.window && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Units per second over the window, 0 until two samples exist.
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, d0)), Some(&(t1, d1))) if t1 > t0 => d1.saturating_sub(d0) as f64 / t1.duration_since(t0).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Seconds left to reach `total`, `None` while the rate is unknown or zero.
    pub fn eta_secs(&self, total: u64) -> Option<f64> {
        let done = self.samples.back()?.1;
        let rate = self.rate();
        (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Default for Throughput {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_is_shared_by_clones() {
        let a = CancelToken::new();
        let b = a.clone();
        assert!(b.check().is_ok());
        a.cancel();
        assert_eq!(b.check(), Err(Cancelled));
    }

    #[test]
    fn rate_limiter_lets_one_through_per_interval() {
        let mut r = RateLimiter::new(Duration::from_millis(30));
        assert!(r.ready());
        assert!(!r.ready());
        std::thread::sleep(Duration::from_millis(35));
        assert!(r.ready());
    }

    #[test]
    fn throughput_rate_and_eta() {
        let mut t = Throughput::with_window(Duration::from_secs(10));
        let t0 = Instant::now();
        t.record_at(t0, 0);
        t.record_at(t0 + Duration::from_secs(2), 200);
        assert!((t.rate() - 100.0).abs() < 1e-9);
        assert!((t.eta_secs(1000).unwrap() - 8.0).abs() < 1e-9);
    }

    #[test]
    fn throughput_unknown_before_two_samples() {
        let mut t = Throughput::new();
        assert_eq!(t.eta_secs(10), None);
        t.record(5);
        assert_eq!(t.rate(), 0.0);
    }

    #[test]
    fn job_ids_are_unique() {
        assert_ne!(JobId::next(), JobId::next());
    }
}
