//! Planning a model served by the local Hub test server reads metadata only: the server's
//! request log shows the listing, config.json, and for each safetensors shard one 8-byte
//! Range request and one Range request for its JSON header — no weight byte — and the plan
//! equals the one made from the same folder on disk. Once the model is in the cache, the
//! download the plan announces drops to zero.

use qlora_hub_testserver::TestHub;
use qlora_studio::hub::remote::{SafetensorsHeader, block_on};
use qlora_studio::hub::{HubClient, HubConfig, download, select::SelectOptions};
use qlora_studio::jobs::NoProgress;
use qlora_studio::plan::{self as qp, Overheads, PlanOptions, Target};
use std::path::{Path, PathBuf};

const REPO: &str = "tiny-org/llama-sharded";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama_sharded")
}

/// The sharded tiny Llama, plus a duplicate `pytorch_model.bin` the selection must skip.
fn serve() -> (tempfile::TempDir, TestHub) {
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join(REPO);
    std::fs::create_dir_all(&repo).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), repo.join(e.file_name())).unwrap();
    }
    std::fs::write(repo.join("pytorch_model.bin"), vec![7u8; 3 << 20]).unwrap();
    let hub = TestHub::start(root.path()).unwrap();
    (root, hub)
}

fn client(hub: &TestHub, home: &Path) -> HubClient {
    HubClient::new(HubConfig { endpoint: hub.url(), token: None, offline: false, cache_dir: home.join("hub"), hf_home: home.to_path_buf() }).unwrap()
}

fn shards() -> Vec<String> {
    (1..=3).map(|i| format!("model-0000{i}-of-00003.safetensors")).collect()
}

#[test]
fn planning_a_hub_model_fetches_only_metadata() {
    let (_root, hub) = serve();
    let home = tempfile::tempdir().unwrap();
    let meta = qp::gather(&qp::HubSource::new(client(&hub, home.path()), REPO, "main")).unwrap();

    // The same tensors, parameters and plan as from the folder on disk.
    let local = qp::gather(&qp::LocalFolder::new(fixture())).unwrap();
    assert_eq!(meta.tensors_from, qp::TensorsFrom::SafetensorsHeaders);
    assert_eq!(meta.tensors, local.tensors);
    let target = Target::preset("rtx3060").unwrap();
    let plan = |m: &qp::ModelMeta| qp::plan(m, &target, &PlanOptions::default(), Overheads::builtin().unwrap()).unwrap();
    let (remote_plan, local_plan) = (plan(&meta), plan(&local));
    assert_eq!(remote_plan.inference, local_plan.inference);
    assert_eq!(remote_plan.parameters, local_plan.parameters);

    // Download: exactly the shards, their index, config and generation config; not the .bin.
    let mut selected: Vec<&str> = meta.download.files.iter().map(|f| f.path.as_str()).collect();
    selected.sort();
    let mut expected = vec!["config.json", "generation_config.json", "model.safetensors.index.json"];
    let shard_names = shards();
    expected.extend(shard_names.iter().map(String::as_str));
    expected.sort();
    assert_eq!(selected, expected);
    let on_disk: u64 = expected.iter().map(|f| std::fs::metadata(fixture().join(f)).unwrap().len()).sum();
    assert_eq!((meta.download.selected_bytes, meta.download.to_fetch_bytes, meta.download.exact), (on_disk, on_disk, true));
    assert_eq!(remote_plan.download_bytes, on_disk);

    // The request log: file content only as config.json and Range requests inside each header.
    let log = hub.log();
    let header_end = |path: &str| {
        let h = SafetensorsHeader::read_file(&fixture().join(path)).unwrap();
        8 + h.header_len
    };
    let mut expected_bytes = std::fs::metadata(fixture().join("config.json")).unwrap().len();
    for s in &shards() {
        expected_bytes += header_end(s);
    }
    for e in log.iter().filter(|e| e.method == "GET" && (e.path.contains("/resolve/") || e.path.starts_with("/_cdn/"))) {
        assert!(!e.path.contains("pytorch_model.bin"), "the duplicate .bin was requested: {e:?}");
        if e.path.ends_with("/config.json") {
            continue;
        }
        let range = e.range.as_deref().unwrap_or_else(|| panic!("a GET without Range: {e:?}"));
        let end: u64 = range.rsplit('-').next().unwrap().parse().unwrap();
        let max_header = shards().iter().map(|s| header_end(s)).max().unwrap();
        assert!(end < max_header, "a Range past the safetensors headers: {e:?}");
    }
    assert_eq!(hub.content_bytes_sent(), expected_bytes, "file bytes sent: config.json + 8-byte lengths + JSON headers only\n{log:#?}");
    let weights: u64 = shards().iter().map(|s| std::fs::metadata(fixture().join(s)).unwrap().len()).sum();
    assert!(expected_bytes < weights / 10, "the headers are a small part of the shards");
}

#[test]
fn bytes_already_in_the_cache_are_not_counted() {
    let (_root, hub) = serve();
    let home = tempfile::tempdir().unwrap();
    let c = client(&hub, home.path());
    block_on(download::download(&c, REPO, "main", &SelectOptions::default(), &Default::default(), &NoProgress)).unwrap();
    let meta = qp::gather(&qp::HubSource::new(client(&hub, home.path()), REPO, "main")).unwrap();
    assert_eq!(meta.download.to_fetch_bytes, 0);
    assert!(meta.download.selected_bytes > 0);
    let mut disk = qp::plan(&meta, &Target::preset("rtx2080").unwrap(), &PlanOptions::default(), Overheads::builtin().unwrap()).unwrap().disk;
    assert_eq!(disk.download_bytes, 0);
    disk.check_free_space(&home.path().join("hub"), 0.9).unwrap();
    assert!(disk.available_bytes.unwrap() > 0);
}

#[test]
fn a_missing_repository_is_a_clear_error() {
    let (_root, hub) = serve();
    let home = tempfile::tempdir().unwrap();
    let e = qp::gather(&qp::HubSource::new(client(&hub, home.path()), "tiny-org/nothing-here", "main")).unwrap_err().to_string();
    assert!(e.contains("tiny-org/nothing-here"), "{e}");
}
