//! Interop with Python's huggingface_hub both ways, and the proof that the local Hub test server
//! is faithful: huggingface_hub's own `snapshot_download` pointed at it (`HF_ENDPOINT`) succeeds
//! and fills the standard cache; we then use those files without a new download; and what we
//! download, its `scan_cache_dir` lists with the right sizes and revisions.
//! Needs `python3` with huggingface_hub (pinned in scripts/requirements-test.txt).

mod common;
use common::*;
use qlora_hub::download::{self, DownloadOptions};
use qlora_hub::select::SelectOptions;
use std::process::Command;

fn python(env: &Env, code: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("HF_ENDPOINT", env.hub.url())
        .env("HF_HUB_CACHE", env.cache_dir())
        .env("HF_HOME", env.cache.path())
        .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("python3 must be installed with huggingface_hub: pip install -r scripts/requirements-test.txt");
    assert!(
        out.status.success(),
        "python failed (pip install -r scripts/requirements-test.txt if huggingface_hub is missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const SELECTED: [&str; 5] = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

#[tokio::test]
async fn python_snapshot_download_from_the_test_server_is_used_by_us_without_a_new_download() {
    let env = Env::new(500_000);
    let allow = format!("{:?}", SELECTED);
    let path = python(&env, &format!("from huggingface_hub import snapshot_download\nprint(snapshot_download('{REPO}', allow_patterns={allow}))"));
    let snapshot = std::path::PathBuf::from(path.trim());
    assert_eq!(files_under(&snapshot), SELECTED);
    for f in SELECTED {
        assert_eq!(std::fs::read(snapshot.join(f)).unwrap(), env.repo_file(f), "{f}");
    }
    // huggingface_hub named the LFS blob by its SHA-256 and linked it relatively, as we do.
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(link.to_string_lossy(), format!("../../blobs/{}", sha256_hex(&env.repo_file("model.safetensors"))));

    env.hub.clear_log();
    let c = env.client();
    let plan = download::plan(&c, REPO, "main", &SelectOptions::default()).await.unwrap();
    assert!(plan.files.iter().all(|f| f.cached), "{plan:?}");
    assert_eq!(plan.to_fetch_bytes, 0);
    let out = download::run(&c, &plan, &DownloadOptions::default(), &qlora_jobs::NoProgress).await.unwrap();
    assert_eq!(out.snapshot, snapshot);
    assert_eq!(out.fetched_bytes, 0);
    assert_eq!(env.hub.content_bytes_sent(), 0, "no file content was fetched: {:?}", env.hub.log());
    let cached = qlora_hub::cache::cached_listing(&env.cache_dir(), REPO, "main").unwrap();
    assert_eq!(cached.commit, plan.commit);
}

#[tokio::test]
async fn what_we_download_python_scan_cache_dir_lists_with_the_right_sizes_and_revisions() {
    let env = Env::new(500_000);
    let out = download::download(&env.client(), REPO, "main", &SelectOptions::default(), &DownloadOptions::default(), &qlora_jobs::NoProgress)
        .await
        .unwrap();
    let ours = qlora_hub::cache::scan(&env.cache_dir());
    let json = python(
        &env,
        &format!(
            r#"
import json, os
from huggingface_hub import scan_cache_dir, snapshot_download
info = scan_cache_dir(os.environ["HF_HUB_CACHE"])
repos = [dict(repo_id=r.repo_id, size=r.size_on_disk, nb_files=r.nb_files,
              revisions=[dict(commit=v.commit_hash, refs=sorted(v.refs), size=v.size_on_disk, nb_files=v.nb_files) for v in r.revisions])
         for r in info.repos]
os.environ["HF_HUB_OFFLINE"] = "1"
from huggingface_hub import constants
constants.HF_HUB_OFFLINE = True
path = snapshot_download("{REPO}")
print(json.dumps(dict(repos=repos, warnings=[str(w) for w in info.warnings], offline_path=path)))
"#
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]));
    let r = &v["repos"][0];
    assert_eq!(r["repo_id"], REPO);
    let expected: u64 = SELECTED.iter().map(|f| env.repo_file(f).len() as u64).sum();
    assert_eq!(r["size"], expected);
    assert_eq!(r["size"], ours.repos[0].size_on_disk);
    assert_eq!(r["nb_files"], 5);
    assert_eq!(r["revisions"][0]["commit"], out.commit);
    assert_eq!(r["revisions"][0]["refs"], serde_json::json!(["main"]));
    assert_eq!(r["revisions"][0]["size"], expected);
    assert_eq!(v["offline_path"].as_str().unwrap(), out.snapshot.to_str().unwrap(), "huggingface_hub offline finds our snapshot");
}
