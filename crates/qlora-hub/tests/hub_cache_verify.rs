//! `cache verify --hub` on loopback: a fresh download matches the Hub's listing; then the Hub
//! moves on (a file re-uploaded, one deleted, one a load needs added) and a cached blob goes
//! bad on disk, and each is reported as what it is; offline mode and an uncached model are
//! clear errors.

mod common;

use common::{Env, REPO};
use qlora_hub::cache::against_hub::{ChangedFile, MissingFile, check_against_hub};
use qlora_hub::download::{self, DownloadOptions};
use qlora_hub::select::SelectOptions;
use qlora_hub::{HubClient, HubError};

async fn fetch(env: &Env) -> std::path::PathBuf {
    let opts = DownloadOptions { disk_margin: Some(0), ..Default::default() };
    download::download(&env.client(), REPO, "main", &SelectOptions::default(), &opts, &qlora_jobs::NoProgress).await.unwrap().snapshot
}

#[tokio::test]
async fn a_snapshot_is_checked_against_the_current_listing() {
    let env = Env::new(300_000);
    let snapshot = fetch(&env).await;
    let cancel = qlora_jobs::CancelToken::new();
    let r = check_against_hub(&env.client(), REPO, "main", &cancel).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.cached_commit, r.hub_commit);
    let cached = common::files_under(&snapshot);
    assert_eq!(r.files_checked, cached.len(), "{cached:?}");

    // The Hub moves on.
    let served = env.root.path().join(REPO);
    std::fs::write(served.join("tokenizer_config.json"), br#"{"chat_template": "{{ messages }} (v2)"}"#).unwrap();
    std::fs::remove_file(served.join("generation_config.json")).unwrap();
    std::fs::write(served.join("special_tokens_map.json"), br#"{"eos_token": "</s>"}"#).unwrap();
    // And a cached blob goes bad (same size, one byte flipped).
    let blob = std::fs::canonicalize(snapshot.join("model.safetensors")).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let r = check_against_hub(&env.client(), REPO, "main", &cancel).await.unwrap();
    assert_ne!(r.cached_commit, r.hub_commit);
    assert_eq!(r.missing, vec![MissingFile { path: "special_tokens_map.json".into(), size: 21 }]);
    assert_eq!(r.extra, vec!["generation_config.json".to_string()]);
    let changed: Vec<(&str, bool)> = r.changed.iter().map(|c| (c.path.as_str(), c.updated_on_hub)).collect();
    assert_eq!(changed, vec![("model.safetensors", false), ("tokenizer_config.json", true)], "{r:?}");
    let st: &ChangedFile = &r.changed[0];
    assert_eq!(st.hub_checksum, common::sha256_hex(&env.repo_file("model.safetensors")));
    assert_eq!(st.cached_checksum, common::sha256_hex(&bytes), "the content on disk, hashed");
    let tc = &r.changed[1];
    assert_ne!(tc.hub_size, tc.cached_size);
    assert!(tc.cached_checksum.is_empty());
    assert!(!r.is_clean());
}

#[tokio::test]
async fn offline_and_uncached_are_clear_errors() {
    let env = Env::new(10_000);
    let cancel = qlora_jobs::CancelToken::new();
    let e = check_against_hub(&env.client(), REPO, "main", &cancel).await.unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e:?}");
    assert!(e.to_string().contains(REPO), "{e}");
    fetch(&env).await;
    let offline = HubClient::new(qlora_hub::HubConfig { offline: true, ..env.config(None) }).unwrap();
    env.hub.clear_log();
    let e = check_against_hub(&offline, REPO, "main", &cancel).await.unwrap_err();
    assert_eq!(e.code(), "offline");
    assert!(e.to_string().contains("without --hub"), "{e}");
    assert!(env.hub.log().is_empty(), "nothing went out: {:?}", env.hub.log());
}
