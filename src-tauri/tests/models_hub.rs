//! The Models page's search and details calls against the local Hub on loopback: what a user
//! sees before downloading (summary, licence, files with sizes, which of them a download
//! fetches), and the error codes the page branches on (not found, offline).

use qlora_hub_testserver::{TestHub, fixture};
use qlora_studio_app::error::ErrorCode;
use qlora_studio_app::hub;
use qlora_studio_app::settings::Settings;

const REPO: &str = "test-org/tiny-chat";

fn served() -> (tempfile::TempDir, TestHub) {
    let root = tempfile::tempdir().unwrap();
    let dir = fixture::tiny_model(root.path(), REPO, 4000).unwrap();
    std::fs::write(dir.join("README.md"), "---\nlicense: mit\n---\n# Tiny chat\n\nA tiny chat model.\n").unwrap();
    let hub = TestHub::start(root.path()).unwrap();
    (root, hub)
}

fn client(url: &str, offline: bool, cache: &std::path::Path) -> qlora_hub::HubClient {
    let settings = Settings { endpoint: url.into(), offline, ..Default::default() };
    hub::client(&settings, cache.to_path_buf()).unwrap()
}

#[test]
fn search_then_details_show_what_a_download_fetches() {
    let (_root, server) = served();
    let cache = tempfile::tempdir().unwrap();
    let c = client(&server.url(), false, cache.path());
    let hits = hub::search(&c, "tiny").unwrap();
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), [REPO]);
    assert_eq!(hits[0].pipeline_tag.as_deref(), Some("text-generation"));
    let d = hub::details(&c, REPO).unwrap();
    assert_eq!(d.summary, "A tiny chat model.");
    assert_eq!(d.license.as_deref(), Some("mit"));
    let selected: Vec<&str> = d.files.iter().filter(|f| f.selected).map(|f| f.path.as_str()).collect();
    assert_eq!(selected, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    assert!(d.files.iter().any(|f| f.path == "pytorch_model.bin" && !f.selected), "the duplicate .bin is listed, not fetched");
    assert_eq!(d.download_bytes, d.files.iter().filter(|f| f.selected).map(|f| f.size).sum::<u64>());
    assert!(d.repo_bytes > d.download_bytes);
    assert!(!d.cached && !d.from_cache);
}

#[test]
fn unknown_model_network_gone_and_offline_have_their_codes() {
    let (_root, mut server) = served();
    let cache = tempfile::tempdir().unwrap();
    let c = client(&server.url(), false, cache.path());
    let e = hub::details(&c, "test-org/nope").unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);
    assert!(e.message.contains("test-org/nope was not found"), "{}", e.message);
    let e = hub::search(&client(&server.url(), true, cache.path()), "tiny").unwrap_err();
    assert_eq!(e.code, ErrorCode::Offline, "{}", e.message);
    assert!(e.message.contains("turn offline mode off in Settings"), "{}", e.message);
    server.shutdown();
    let e = hub::details(&c, REPO).unwrap_err();
    assert_eq!(e.code, ErrorCode::Offline, "{}", e.message);
    assert!(e.message.contains("cannot reach the Hub"), "{}", e.message);
}
