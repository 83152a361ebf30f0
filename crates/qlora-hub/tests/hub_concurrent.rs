//! Several files downloaded at once: never more in flight than `workers`, and more than one
//! when allowed; a file that fails leaves the others verified and linked and is the error
//! returned; files with the same content share one fetch; a cancel stops every file within a
//! second, keeping each partial file, and the next run resumes each from its bytes.

use qlora_hub::download::{self, DownloadEvent, DownloadOptions};
use qlora_hub::select::SelectOptions;
use qlora_hub::{HubClient, HubConfig, HubError};
use qlora_hub_testserver::{Fault, FaultRule, TestHub, fixture};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const REPO: &str = "test-org/many";
const PARTS: usize = 10;

struct Many {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
    hub: TestHub,
}

/// `part-01.bin`…`part-10.bin` (LFS, `size` bytes each, different content), two LFS files with
/// the same content, two small text files with the same content, a config.
fn many(size: usize) -> Many {
    many_parts(size, PARTS)
}

fn many_parts(size: usize, parts: usize) -> Many {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(REPO);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 1..=parts {
        std::fs::write(dir.join(format!("part-{i:02}.bin")), fixture::pseudo_random(size, i as u64)).unwrap();
    }
    let same = fixture::pseudo_random(size / 2, 99);
    std::fs::write(dir.join("dup-1.bin"), &same).unwrap();
    std::fs::write(dir.join("dup-2.bin"), &same).unwrap();
    std::fs::write(dir.join("copy-a.txt"), b"the same small text\n").unwrap();
    std::fs::write(dir.join("copy-b.txt"), b"the same small text\n").unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type": "llama"}"#).unwrap();
    let hub = TestHub::start(root.path()).unwrap();
    Many { root, cache: tempfile::tempdir().unwrap(), hub }
}

impl Many {
    fn client(&self) -> HubClient {
        HubClient::new(HubConfig {
            endpoint: self.hub.url(),
            token: None,
            offline: false,
            cache_dir: self.cache.path().join("hub"),
            hf_home: self.cache.path().to_path_buf(),
        })
        .unwrap()
    }

    fn file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(REPO).join(path)).unwrap()
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.root.path().join(REPO)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn blobs(&self) -> PathBuf {
        self.cache.path().join("hub/models--test-org--many/blobs")
    }

    /// Content GETs (resolve or CDN) whose path ends with `name` or is the CDN URL of its SHA.
    fn content_gets(&self) -> Vec<qlora_hub_testserver::LogEntry> {
        self.hub.log().into_iter().filter(|e| e.method == "GET" && (e.path.contains("/resolve/") || e.path.starts_with("/_cdn/"))).collect()
    }

    async fn get(&self, opts: &DownloadOptions, sink: &dyn qlora_jobs::ProgressSink<DownloadEvent>) -> Result<download::DownloadOutcome, HubError> {
        let select = SelectOptions { include: vec!["*".into()] };
        download::download(&self.client(), REPO, "main", &select, opts, sink).await
    }
}

fn opts(workers: usize) -> DownloadOptions {
    DownloadOptions { workers, backoff: Duration::from_millis(50), max_retries: 1, disk_margin: Some(0), ..Default::default() }
}

/// Files started but not done, at most, over a run's events.
fn max_in_flight(events: &[DownloadEvent]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events {
        match e {
            DownloadEvent::FileStarted { .. } => {
                now += 1;
                max = max.max(now);
            }
            DownloadEvent::FileDone { path, .. } if !path.starts_with("dup-2") && !path.starts_with("copy-b") => now -= 1,
            _ => {}
        }
    }
    max
}

fn partials(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn files_download_at_once_up_to_the_worker_count_and_the_same_content_is_fetched_once() {
    let mut m = many(200_000);
    // Every file waits before its first byte: with one worker they would come one by one.
    m.hub.add_fault(FaultRule::any_file(Fault::Latency { secs: 0.2 }));
    for workers in [4, 1] {
        m.cache = tempfile::tempdir().unwrap();
        m.hub.clear_log();
        let events = Mutex::new(Vec::new());
        let sink = |e: DownloadEvent| events.lock().unwrap().push(e);
        let select = SelectOptions { include: vec!["*".into()] };
        let out = download::download(&m.client(), REPO, "main", &select, &opts(workers), &sink).await.unwrap();
        let events = events.into_inner().unwrap();
        assert_eq!(max_in_flight(&events), workers, "workers {workers}");
        let names = m.names_from(&out.snapshot);
        assert_eq!(names.len(), PARTS + 5);
        let gets = m.content_gets();
        assert_eq!(gets.iter().filter(|e| e.path.starts_with("/_cdn/")).count(), PARTS + 1, "dup-1 and dup-2 share one fetch");
        let copies = gets.iter().filter(|e| e.path.ends_with("/copy-a.txt") || e.path.ends_with("/copy-b.txt")).count();
        assert_eq!(copies, 1, "copy-a.txt and copy-b.txt share one fetch");
        // Progress totals: every fetched byte counted once, `done` never goes backwards.
        let done: Vec<u64> = events.iter().filter_map(|e| if let DownloadEvent::Progress { done, .. } = e { Some(*done) } else { None }).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]));
        let Some(DownloadEvent::Planned { to_fetch_bytes, .. }) = events.first() else { panic!("{:?}", events.first()) };
        assert_eq!(out.fetched_bytes, *to_fetch_bytes);
        assert_eq!(*done.last().unwrap(), *to_fetch_bytes);
    }
}

impl Many {
    /// The snapshot's files, each checked bit for bit against the served folder.
    fn names_from(&self, snapshot: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(snapshot).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert_eq!(std::fs::read(snapshot.join(&name)).unwrap(), self.file(&name), "{name}");
            out.push(name);
        }
        out.sort();
        out
    }
}

#[tokio::test]
async fn one_failing_file_leaves_the_others_verified_and_linked_and_is_the_error() {
    let m = many(200_000);
    m.hub.add_fault(FaultRule::always("part-03.bin", Fault::WrongBytes));
    let e = m.get(&opts(4), &qlora_jobs::NoProgress).await.unwrap_err();
    match &e {
        HubError::ChecksumMismatch { file, .. } => assert_eq!(file, "part-03.bin"),
        other => panic!("{other:?}"),
    }
    let snap = std::fs::read_dir(m.cache.path().join("hub/models--test-org--many/snapshots")).unwrap().next().unwrap().unwrap().path();
    let linked = m.names_from(&snap);
    let want: Vec<String> = m.names().into_iter().filter(|n| n != "part-03.bin").collect();
    assert_eq!(linked, want, "every other file is there, verified");
    assert_eq!(partials(&m.blobs()), vec![], "the bad bytes were deleted");

    m.hub.clear_faults();
    m.hub.clear_log();
    let out = m.get(&opts(4), &qlora_jobs::NoProgress).await.unwrap();
    assert_eq!(m.names_from(&out.snapshot), m.names());
    let gets = m.content_gets();
    assert_eq!(gets.len(), 2, "only part-03.bin again (resolve, then CDN): {gets:?}");
    assert!(gets[0].path.ends_with("/part-03.bin"));
}

#[tokio::test]
async fn cancel_stops_every_file_within_a_second_and_each_resumes_from_its_bytes() {
    let m = many(1_000_000);
    m.hub.add_fault(FaultRule::any_file(Fault::Throttle { bytes_per_sec: 400_000 }));
    let o = opts(4);
    let cancel = o.cancel.clone();
    let c = m.client();
    let task = tokio::spawn(async move {
        let select = SelectOptions { include: vec!["*".into()] };
        download::download(&c, REPO, "main", &select, &o, &qlora_jobs::NoProgress).await
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = Instant::now();
    cancel.cancel();
    let r = task.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "cancel took {:?}", t.elapsed());
    assert_eq!(r.unwrap_err().code(), "cancelled");
    let kept = partials(&m.blobs());
    assert!(kept.len() >= 2 && kept.iter().all(|(_, n)| *n > 0), "several files were in flight: {kept:?}");

    m.hub.clear_faults();
    m.hub.clear_log();
    let out = m.get(&opts(4), &qlora_jobs::NoProgress).await.unwrap();
    assert_eq!(m.names_from(&out.snapshot), m.names(), "bit-identical");
    let cdn: Vec<_> = m.content_gets().into_iter().filter(|e| e.path.starts_with("/_cdn/")).collect();
    for (name, bytes) in &kept {
        let sha = name.trim_end_matches(".incomplete");
        let get = cdn.iter().find(|e| e.path.ends_with(sha)).unwrap_or_else(|| panic!("{sha} fetched again: {cdn:?}"));
        assert_eq!(get.range, Some(format!("bytes={bytes}-")), "{sha} resumed from its bytes");
    }
    assert_eq!(partials(&m.blobs()), vec![]);
}

#[tokio::test]
async fn worker_count_is_bounded() {
    // More blobs than MAX_WORKERS, each waiting before its first byte.
    let mut m = many_parts(1_000, download::MAX_WORKERS + 6);
    m.hub.add_fault(FaultRule::any_file(Fault::Latency { secs: 0.05 }));
    for (asked, want) in [(1000, download::MAX_WORKERS), (0, 1)] {
        let events = Mutex::new(Vec::new());
        let sink = |e: DownloadEvent| events.lock().unwrap().push(e);
        m.cache = tempfile::tempdir().unwrap();
        m.get(&opts(asked), &sink).await.unwrap();
        assert_eq!(max_in_flight(&events.lock().unwrap()), want, "workers {asked}");
    }
}
