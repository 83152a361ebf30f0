//! Downloads against the local Hub on loopback, one test per failure: connection dropped
//! mid-file, stall, wrong bytes, cancel, resume from a partial file, 401/403/404, offline
//! mode, network down, not enough disk space.

mod common;
use common::*;
use qlora_hub::download::{self, DownloadEvent, DownloadOptions};
use qlora_hub::select::SelectOptions;
use qlora_hub::{HubClient, HubError};
use qlora_hub_testserver::{Fault, FaultRule};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn fast_opts() -> DownloadOptions {
    DownloadOptions { backoff: Duration::from_millis(50), disk_margin: Some(0), ..Default::default() }
}

async fn get(env: &Env, opts: &DownloadOptions) -> Result<download::DownloadOutcome, HubError> {
    download::download(&env.client(), REPO, "main", &SelectOptions::default(), opts, &qlora_jobs::NoProgress).await
}

fn st_etag(env: &Env) -> String {
    sha256_hex(&env.repo_file("model.safetensors"))
}

#[tokio::test]
async fn download_lays_out_the_standard_cache_and_reruns_fetch_nothing() {
    let env = Env::new(300_000);
    let events = Mutex::new(Vec::new());
    let sink = |e: DownloadEvent| events.lock().unwrap().push(e);
    let out = download::download(&env.client(), REPO, "main", &SelectOptions::default(), &fast_opts(), &sink).await.unwrap();
    let files = files_under(&out.snapshot);
    assert_eq!(files, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    for f in &files {
        assert_eq!(std::fs::read(out.snapshot.join(f)).unwrap(), env.repo_file(f), "{f}");
    }
    let link = std::fs::read_link(out.snapshot.join("model.safetensors")).unwrap();
    assert_eq!(link, std::path::PathBuf::from(format!("../../blobs/{}", st_etag(&env))));
    let repo_dir = env.cache_dir().join("models--test-org--tiny-model");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), out.commit);
    let selected: u64 = files.iter().map(|f| env.repo_file(f).len() as u64).sum();
    assert_eq!(out.fetched_bytes, selected);
    assert_eq!(env.hub.content_bytes_sent(), selected, "skipped files (.bin, onnx, README) were not fetched");
    let ev = events.into_inner().unwrap();
    assert!(matches!(&ev[0], DownloadEvent::Planned { to_fetch_bytes, .. } if *to_fetch_bytes == selected));
    assert!(ev.iter().any(|e| matches!(e, DownloadEvent::Progress { done, total, .. } if done == total)));
    assert!(matches!(ev.last(), Some(DownloadEvent::Finished { .. })));

    env.hub.clear_log();
    let plan = download::plan(&env.client(), REPO, "main", &SelectOptions::default()).await.unwrap();
    assert_eq!(plan.to_fetch_bytes, 0);
    let again = get(&env, &fast_opts()).await.unwrap();
    assert_eq!(again.fetched_bytes, 0);
    assert_eq!(env.hub.content_bytes_sent(), 0, "a rerun fetches nothing");
}

#[tokio::test]
async fn connection_dropped_mid_file_resumes_with_range() {
    let env = Env::new(2_000_000);
    env.hub.add_fault(FaultRule::once("model.safetensors", Fault::DropAfter(700_000)));
    let out = get(&env, &fast_opts()).await.unwrap();
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
    let gets: Vec<_> = env.content_gets().into_iter().filter(|e| e.path.starts_with("/_cdn/")).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].bytes_sent, 700_000);
    // The resume starts where the client's partial file ended (what reached it before the cut).
    let range = gets[1].range.as_deref().unwrap();
    let start: u64 = range.strip_prefix("bytes=").unwrap().trim_end_matches('-').parse().unwrap();
    assert!(start > 0 && start <= 700_000, "{range}");
    let total = env.repo_file("model.safetensors").len() as u64;
    assert_eq!(gets[1].bytes_sent, total - start, "only the rest was sent again");
}

#[tokio::test]
async fn stalled_connection_is_retried_and_resumes() {
    let env = Env::new(1_000_000);
    env.hub.add_fault(FaultRule::once("model.safetensors", Fault::StallAfter { bytes: 300_000, secs: 30.0 }));
    let opts = DownloadOptions { stall_timeout: Duration::from_secs(1), ..fast_opts() };
    let t = Instant::now();
    let out = get(&env, &opts).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "the stall was detected, not waited out");
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
    let gets: Vec<_> = env.content_gets().into_iter().filter(|e| e.path.starts_with("/_cdn/")).collect();
    let start: u64 = gets[1].range.as_deref().unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(start > 0 && start <= 300_000, "{gets:?}");
}

#[tokio::test]
async fn wrong_bytes_are_rejected_and_never_visible_in_a_snapshot() {
    let env = Env::new(500_000);
    env.hub.add_fault(FaultRule::once("model.safetensors", Fault::WrongBytes));
    let e = get(&env, &fast_opts()).await.unwrap_err();
    assert_eq!(e.code(), "checksum_mismatch", "{e}");
    let msg = e.to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("deleted"), "{msg}");
    let repo_dir = env.cache_dir().join("models--test-org--tiny-model");
    let etag = st_etag(&env);
    assert!(!repo_dir.join("blobs").join(&etag).exists());
    assert!(!repo_dir.join("blobs").join(format!("{etag}.incomplete")).exists(), "the bad partial is deleted");
    let snaps = files_under(&repo_dir.join("snapshots"));
    assert!(snaps.iter().all(|p| !p.ends_with("model.safetensors")), "{snaps:?}");
    // The next run (server healthy again) succeeds.
    let out = get(&env, &fast_opts()).await.unwrap();
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
}

#[tokio::test]
async fn cancel_is_honoured_within_a_second_and_the_next_run_resumes() {
    let env = Env::new(3_000_000);
    env.hub.add_fault(FaultRule::always("model.safetensors", Fault::Throttle { bytes_per_sec: 1_000_000 }));
    let opts = fast_opts();
    let cancel = opts.cancel.clone();
    let c = env.client();
    let task = tokio::spawn(async move { download::download(&c, REPO, "main", &SelectOptions::default(), &opts, &qlora_jobs::NoProgress).await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = Instant::now();
    cancel.cancel();
    let r = task.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "cancel took {:?}", t.elapsed());
    assert_eq!(r.unwrap_err().code(), "cancelled");
    let partial = env.cache_dir().join("models--test-org--tiny-model/blobs").join(format!("{}.incomplete", st_etag(&env)));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0);
    env.hub.clear_faults();
    env.hub.clear_log();
    let out = get(&env, &fast_opts()).await.unwrap();
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
    let cdn: Vec<_> = env.content_gets().into_iter().filter(|e| e.path.starts_with("/_cdn/")).collect();
    assert_eq!(cdn[0].range, Some(format!("bytes={kept}-")));
}

/// hf-hub 1.0 truncates `blobs/<sha>.incomplete` on the next run; we resume from it.
#[tokio::test]
async fn partial_file_from_an_earlier_run_is_resumed_not_truncated() {
    let env = Env::new(1_000_000);
    let content = env.repo_file("model.safetensors");
    let blobs = env.cache_dir().join("models--test-org--tiny-model/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.incomplete", st_etag(&env))), &content[..400_000]).unwrap();
    let plan = download::plan(&env.client(), REPO, "main", &SelectOptions::default()).await.unwrap();
    let st = plan.files.iter().find(|f| f.file.path == "model.safetensors").unwrap();
    assert_eq!(st.partial_bytes, 400_000);
    assert_eq!(plan.to_fetch_bytes, plan.total_bytes - 400_000, "bytes in the cache do not count");
    let out = download::run(&env.client(), &plan, &fast_opts(), &qlora_jobs::NoProgress).await.unwrap();
    assert_eq!(out.fetched_bytes, plan.to_fetch_bytes);
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), content);
    let cdn: Vec<_> = env.content_gets().into_iter().filter(|e| e.path.starts_with("/_cdn/")).collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].range.as_deref(), Some("bytes=400000-"));
    assert_eq!(cdn[0].bytes_sent, content.len() as u64 - 400_000);
}

#[tokio::test]
async fn gated_model_without_token_with_wrong_token_and_with_access() {
    let env = Env::new(10_000);
    env.hub.gate(REPO, &["hf_granted"]);
    let e = get(&env, &fast_opts()).await.unwrap_err();
    assert_eq!(e.code(), "no_token", "{e}");
    assert!(e.to_string().contains("qlora login"), "{e}");
    let c = HubClient::new(env.config(Some("hf_other"))).unwrap();
    let e = download::download(&c, REPO, "main", &SelectOptions::default(), &fast_opts(), &qlora_jobs::NoProgress).await.unwrap_err();
    assert_eq!(e.code(), "licence_not_accepted", "{e}");
    assert!(e.to_string().contains(&format!("{}/{REPO}", env.hub.url())), "names the model page: {e}");
    let c = HubClient::new(env.config(Some("hf_granted"))).unwrap();
    env.hub.clear_log();
    let out = download::download(&c, REPO, "main", &SelectOptions::default(), &fast_opts(), &qlora_jobs::NoProgress).await.unwrap();
    assert!(out.snapshot.join("model.safetensors").exists());
    assert!(env.hub.log().iter().filter(|e| e.path.contains("/resolve/")).all(|e| e.had_token));
}

#[tokio::test]
async fn missing_model_and_offline_mode_and_network_down() {
    let mut env = Env::new(10_000);
    let e = download::download(&env.client(), "test-org/absent", "main", &SelectOptions::default(), &fast_opts(), &qlora_jobs::NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "repo_not_found", "{e}");

    let mut cfg = env.config(None);
    cfg.offline = true;
    let offline = HubClient::new(cfg).unwrap();
    let e = download::download(&offline, REPO, "main", &SelectOptions::default(), &fast_opts(), &qlora_jobs::NoProgress).await.unwrap_err();
    assert_eq!(e.code(), "offline", "{e}");
    assert!(env.hub.log().is_empty() || env.hub.log().iter().all(|e| e.path.contains("absent")), "offline sends nothing");
    let out = get(&env, &fast_opts()).await.unwrap();
    env.hub.clear_log();
    let cached = download::download(&offline, REPO, "main", &SelectOptions::default(), &fast_opts(), &qlora_jobs::NoProgress).await.unwrap();
    assert_eq!(cached.snapshot, out.snapshot);
    assert!(env.hub.log().is_empty(), "offline mode sent a request");

    env.hub.shutdown();
    let e = download::plan(&env.client(), REPO, "main", &SelectOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), "network", "{e}");
    assert!(e.to_string().contains("HF_HUB_OFFLINE"), "{e}");
}

#[tokio::test]
async fn server_going_away_mid_file_keeps_the_bytes_for_a_resume() {
    let mut env = Env::new(3_000_000);
    env.hub.add_fault(FaultRule::always("model.safetensors", Fault::Throttle { bytes_per_sec: 2_000_000 }));
    let opts = DownloadOptions { max_retries: 1, ..fast_opts() };
    let c = env.client();
    let task = tokio::spawn(async move { download::download(&c, REPO, "main", &SelectOptions::default(), &opts, &qlora_jobs::NoProgress).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.hub.shutdown();
    let e = task.await.unwrap().unwrap_err();
    assert!(matches!(e.code(), "interrupted" | "network"), "{e}");
    let partial = env.cache_dir().join("models--test-org--tiny-model/blobs").join(format!("{}.incomplete", st_etag(&env)));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0);
    env.hub.restart().unwrap();
    env.hub.clear_faults();
    let out = get(&env, &fast_opts()).await.unwrap();
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
}

#[tokio::test]
async fn preflight_refuses_when_the_disk_is_too_small() {
    let env = Env::new(100_000);
    let free = qlora_hub::disk::free_space(&env.cache_dir()).unwrap();
    let opts = DownloadOptions { disk_margin: Some(free), ..fast_opts() };
    let e = get(&env, &opts).await.unwrap_err();
    assert_eq!(e.code(), "not_enough_space");
    let msg = e.to_string();
    assert!(msg.contains("HF_HUB_CACHE") && msg.contains("free"), "{msg}");
    assert_eq!(env.hub.content_bytes_sent(), 0, "nothing fetched before the refusal");
}
