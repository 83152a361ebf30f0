//! Misbehaviour on demand: what a real network and a real CDN do to a download (a connection
//! cut mid-file, a stall, corrupted bytes, a slow link), injected per test through the server
//! handle so each failure path of a client can be exercised on loopback.

use bytes::Bytes;
use futures::Stream;
use std::io::SeekFrom;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// What goes wrong while a file's bytes are served.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Send this many bytes of the body, then cut the connection.
    DropAfter(u64),
    /// Send this many bytes, then send nothing for `secs` seconds, then go on.
    StallAfter { bytes: u64, secs: f64 },
    /// Send bytes of the right length but the wrong content (every byte inverted).
    WrongBytes,
    /// Send at most this many bytes a second.
    Throttle { bytes_per_sec: u64 },
    /// Wait this long before answering (the round trip to a far server or a CDN's first byte);
    /// the headers come after the wait.
    Latency { secs: f64 },
}

/// A fault, for one file (its repository path) or any file, for the next `times` GETs of file
/// content (`None`: until cleared).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub file: Option<String>,
    pub fault: Fault,
    pub times: Option<u32>,
}

impl FaultRule {
    /// A fault on every GET of `file`'s content until cleared.
    pub fn always(file: &str, fault: Fault) -> Self {
        Self { file: Some(file.to_string()), fault, times: None }
    }

    /// A fault on the next GET of `file`'s content only.
    pub fn once(file: &str, fault: Fault) -> Self {
        Self { file: Some(file.to_string()), fault, times: Some(1) }
    }

    /// A fault on every file's content until cleared.
    pub fn any_file(fault: Fault) -> Self {
        Self { file: None, fault, times: None }
    }
}

/// Takes the faults that apply to a GET of `file`, counting down one-shot rules.
pub fn take_faults(rules: &mut Vec<FaultRule>, file: &str) -> Vec<Fault> {
    let mut out = Vec::new();
    for rule in rules.iter_mut() {
        if rule.file.as_deref().is_none_or(|f| f == file) && rule.times != Some(0) {
            out.push(rule.fault.clone());
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
            }
        }
    }
    rules.retain(|r| r.times != Some(0));
    out
}

/// The wait a [`Fault::Latency`] among `faults` asks for before the answer (the longest).
pub fn latency(faults: &[Fault]) -> Option<Duration> {
    faults
        .iter()
        .filter_map(|f| match f {
            Fault::Latency { secs } => Some(Duration::from_secs_f64(secs.max(0.0))),
            _ => None,
        })
        .max()
}

struct BodyState {
    file: tokio::fs::File,
    sent: u64,
    left: u64,
    faults: Vec<Fault>,
    counter: Arc<AtomicU64>,
    stalled: bool,
}

/// Streams `len` bytes of the file at `abs` from `start`, applying `faults`, and counts the bytes
/// actually handed to the connection in `counter` (for the request log).
pub async fn file_stream(
    abs: &std::path::Path,
    start: u64,
    len: u64,
    faults: Vec<Fault>,
    counter: Arc<AtomicU64>,
) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + use<>> {
    let mut file = tokio::fs::File::open(abs).await?;
    file.seek(SeekFrom::Start(start)).await?;
    let state = BodyState { file, sent: 0, left: len, faults, counter, stalled: false };
    Ok(futures::stream::unfold(state, next_chunk))
}

async fn next_chunk(mut s: BodyState) -> Option<(std::io::Result<Bytes>, BodyState)> {
    if s.left == 0 {
        return None;
    }
    let mut chunk = 64 * 1024u64;
    let mut throttle = None;
    for f in &s.faults {
        match *f {
            Fault::DropAfter(n) => {
                if s.sent >= n {
                    let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: connection dropped");
                    s.left = 0;
                    return Some((Err(err), s));
                }
                chunk = chunk.min(n - s.sent);
            }
            Fault::StallAfter { bytes, secs } => {
                if s.sent >= bytes && !s.stalled {
                    s.stalled = true;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                } else if s.sent < bytes {
                    chunk = chunk.min(bytes - s.sent);
                }
            }
            Fault::Throttle { bytes_per_sec } => {
                let per_tick = (bytes_per_sec / 20).max(1);
                chunk = chunk.min(per_tick);
                throttle = Some(Duration::from_secs_f64(per_tick as f64 / bytes_per_sec.max(1) as f64));
            }
            Fault::WrongBytes | Fault::Latency { .. } => {}
        }
    }
    let n = chunk.min(s.left) as usize;
    let mut buf = vec![0u8; n];
    if let Err(e) = s.file.read_exact(&mut buf).await {
        s.left = 0;
        return Some((Err(e), s));
    }
    if s.faults.contains(&Fault::WrongBytes) {
        buf.iter_mut().for_each(|b| *b = !*b);
    }
    if let Some(d) = throttle {
        tokio::time::sleep(d).await;
    }
    s.sent += n as u64;
    s.left -= n as u64;
    s.counter.fetch_add(n as u64, Ordering::Relaxed);
    Some((Ok(Bytes::from(buf)), s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_rules_are_used_up() {
        let mut rules = vec![FaultRule::once("a", Fault::WrongBytes), FaultRule::any_file(Fault::DropAfter(3))];
        assert_eq!(take_faults(&mut rules, "b"), vec![Fault::DropAfter(3)]);
        assert_eq!(take_faults(&mut rules, "a"), vec![Fault::WrongBytes, Fault::DropAfter(3)]);
        assert_eq!(take_faults(&mut rules, "a"), vec![Fault::DropAfter(3)]);
        assert_eq!(rules.len(), 1);
    }
}
