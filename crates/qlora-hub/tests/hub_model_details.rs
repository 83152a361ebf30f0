//! Choosing a model before downloading it: search and a model's details (card summary, licence,
//! files with sizes) against the local Hub on loopback, errors for an unknown repository, the
//! network gone and offline mode; and the test server's JSON checked against the reference
//! client, Python's huggingface_hub (`list_models`, `model_info(files_metadata=True)`), so the
//! shapes are the Hub's. Needs `python3` with huggingface_hub (scripts/requirements-test.txt).

mod common;
use common::*;
use qlora_hub::remote;

const CARD: &str = "---\nlicense: apache-2.0\nlanguage:\n- en\npipeline_tag: text-generation\ntags: [chat]\n---\n\n# Tiny model\n\n![banner](banner.png)\n\nA tiny **test** model for [qlora-studio](https://example.org), small enough\nto download in a test.\n\n## Usage\n\nMore text.\n";
const OTHER: &str = "test-org/tiny-model-base";

/// The tiny model with a model card and counters, and a second, more downloaded, repository.
fn env() -> Env {
    let env = Env::new(20_000);
    let dir = env.root.path().join(REPO);
    std::fs::write(dir.join("README.md"), CARD).unwrap();
    std::fs::create_dir_all(dir.join(".hub")).unwrap();
    std::fs::write(dir.join(".hub/config.json"), r#"{"downloads": 120, "likes": 7}"#).unwrap();
    let other = qlora_hub_testserver::fixture::tiny_model(env.root.path(), OTHER, 1000).unwrap();
    std::fs::create_dir_all(other.join(".hub")).unwrap();
    std::fs::write(other.join(".hub/config.json"), r#"{"downloads": 5000, "likes": 1}"#).unwrap();
    env
}

#[tokio::test]
async fn search_lists_matches_most_downloaded_first_with_task_and_tags() {
    let env = env();
    let found = remote::search_models(&env.client(), "TINY-model", 10).await.unwrap();
    let ids: Vec<&str> = found.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [OTHER, REPO]);
    let m = &found[1];
    assert_eq!((m.downloads, m.likes), (120, 7));
    assert_eq!(m.pipeline_tag.as_deref(), Some("text-generation"));
    assert!(m.tags.contains(&"license:apache-2.0".to_string()) && m.tags.contains(&"chat".to_string()), "{:?}", m.tags);
    assert!(!m.gated && m.last_modified.is_some());
    assert_eq!(remote::search_models(&env.client(), "tiny", 1).await.unwrap().len(), 1, "limit");
    assert!(remote::search_models(&env.client(), "no-such-thing", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn details_have_the_card_summary_licence_and_every_file_with_its_size() {
    let env = env();
    env.hub.gate(REPO, &["hf_ok"]);
    // Without access to a gated model: its details, marked gated, without the card's text.
    let d = remote::model_details(&env.client(), REPO, "main").await.unwrap();
    assert!(d.gated, "gated repositories say so before any download");
    assert_eq!((d.summary.as_str(), d.license.as_deref()), ("", Some("apache-2.0")));
    let with_access = qlora_hub::HubClient::new(env.config(Some("hf_ok"))).unwrap();
    let d = remote::model_details(&with_access, REPO, "main").await.unwrap();
    assert_eq!(d.summary, "A tiny test model for qlora-studio, small enough to download in a test.");
    assert_eq!(d.license.as_deref(), Some("apache-2.0"));
    assert!(d.gated);
    assert_eq!((d.downloads, d.likes, d.pipeline_tag.as_deref()), (120, 7, Some("text-generation")));
    assert_eq!(d.card_data.as_ref().unwrap()["language"], serde_json::json!(["en"]));
    let listing = remote::list_files(&env.client(), REPO, "main").await;
    assert!(listing.is_ok(), "the tree of a gated repo is public: {listing:?}");
    assert_eq!(d.files, listing.unwrap().files, "same files, sizes and checksums as the tree listing");
    for f in &d.files {
        assert_eq!(f.size, env.repo_file(&f.path).len() as u64, "{}", f.path);
    }
    assert_eq!(d.commit.len(), 40);
    assert!(!d.from_cache);
}

#[tokio::test]
async fn details_fetch_no_weights() {
    let env = env();
    remote::model_details(&env.client(), REPO, "main").await.unwrap();
    let gets = env.content_gets();
    assert_eq!(gets.iter().map(|e| e.path.rsplit('/').next().unwrap()).collect::<Vec<_>>(), ["README.md"], "{gets:?}");
}

#[tokio::test]
async fn an_unknown_repo_revision_or_a_bad_id_is_a_clear_error() {
    let env = env();
    let c = env.client();
    let e = remote::model_details(&c, "test-org/no-such-model", "main").await.unwrap_err();
    assert_eq!(e.code(), "repo_not_found", "{e}");
    assert!(e.to_string().contains("test-org/no-such-model was not found"), "{e}");
    let e = remote::model_details(&c, REPO, "v9").await.unwrap_err();
    assert_eq!(e.code(), "revision_not_found", "{e}");
    let e = remote::model_details(&c, "not-an-id", "main").await.unwrap_err();
    assert_eq!(e.code(), "invalid_repo_id", "{e}");
}

#[tokio::test]
async fn network_gone_and_offline_mode() {
    let mut env = env();
    let mut cfg = env.config(None);
    cfg.offline = true;
    let offline = qlora_hub::HubClient::new(cfg).unwrap();
    let e = remote::model_details(&offline, REPO, "main").await.unwrap_err();
    assert_eq!(e.code(), "offline", "{e}");
    let e = remote::search_models(&offline, "tiny", 5).await.unwrap_err();
    assert_eq!(e.code(), "offline", "{e}");
    // Once downloaded, offline details come from the cache.
    let opts = qlora_hub::select::SelectOptions { include: vec!["README.md".into(), "config.json".into()] };
    qlora_hub::download::download(&env.client(), REPO, "main", &opts, &Default::default(), &qlora_jobs::NoProgress).await.unwrap();
    let d = remote::model_details(&offline, REPO, "main").await.unwrap();
    assert!(d.from_cache);
    assert_eq!(d.summary, "A tiny test model for qlora-studio, small enough to download in a test.");
    assert_eq!(d.license.as_deref(), Some("apache-2.0"));
    assert_eq!(d.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["README.md", "config.json"], "what the cache holds");
    env.hub.shutdown();
    let e = remote::model_details(&env.client(), REPO, "main").await.unwrap_err();
    assert_eq!(e.code(), "network", "{e}");
    assert!(e.to_string().contains("cannot reach the Hub"), "{e}");
}

/// The reference client reads the test server's search and model info as it reads the Hub's.
#[tokio::test]
async fn huggingface_hub_reads_search_and_model_info_from_the_test_server() {
    let env = env();
    let code = format!(
        r#"
import json, os
from huggingface_hub import HfApi
api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=False)
hits = [dict(id=m.id, downloads=m.downloads, likes=m.likes, pipeline_tag=m.pipeline_tag, tags=m.tags,
             created=str(m.created_at)) for m in api.list_models(search="tiny-model", sort="downloads", limit=10)]
full = [dict(id=m.id, gated=m.gated, card=(m.card_data or {{}}).get("license"), siblings=len(m.siblings or []))
        for m in api.list_models(search="tiny-model", full=True, cardData=True)]
info = api.model_info("{REPO}", files_metadata=True)
print(json.dumps(dict(hits=hits, full=full, info=dict(
    id=info.id, sha=info.sha, downloads=info.downloads, likes=info.likes, gated=info.gated,
    pipeline_tag=info.pipeline_tag, license=info.card_data.license if info.card_data else None,
    language=info.card_data.language if info.card_data else None,
    files={{s.rfilename: [s.size, s.blob_id, s.lfs.sha256 if s.lfs else None] for s in info.siblings}}))))
"#
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("HF_ENDPOINT", env.hub.url())
        .env("HF_HOME", env.cache.path())
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("python3 must be installed with huggingface_hub: pip install -r scripts/requirements-test.txt");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hits"][0]["id"], OTHER);
    let hit = &v["hits"][1];
    assert_eq!((hit["id"].as_str(), hit["downloads"].as_u64(), hit["likes"].as_u64()), (Some(REPO), Some(120), Some(7)));
    assert_eq!(hit["pipeline_tag"], "text-generation");
    assert!(hit["created"].as_str().unwrap().starts_with("20"), "createdAt parsed as a date: {hit}");
    let full = v["full"].as_array().unwrap().iter().find(|m| m["id"] == REPO).unwrap();
    assert_eq!((full["gated"].as_bool(), full["card"].as_str()), (Some(false), Some("apache-2.0")));
    assert!(full["siblings"].as_u64().unwrap() >= 8);
    let info = &v["info"];
    let ours = remote::model_details(&env.client(), REPO, "main").await.unwrap();
    assert_eq!(info["sha"], ours.commit);
    assert_eq!((info["downloads"].as_u64(), info["likes"].as_u64()), (Some(120), Some(7)));
    assert_eq!((info["license"].as_str(), info["pipeline_tag"].as_str()), (Some("apache-2.0"), Some("text-generation")));
    assert_eq!(info["language"], serde_json::json!(["en"]));
    for f in &ours.files {
        let py = &info["files"][&f.path];
        assert_eq!(py[0].as_u64(), Some(f.size), "{}", f.path);
        assert_eq!(py[1].as_str(), Some(f.blob_id.as_str()), "{}", f.path);
        assert_eq!(py[2].as_str(), f.lfs_sha256.as_deref(), "{}", f.path);
    }
}
