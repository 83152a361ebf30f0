//! The cache manager on a real cache filled by real downloads: revisions sharing blobs, delete
//! with a dry run that says what it frees, prune, verify, and refusal to touch anything outside
//! the cache folder.

mod common;
use common::*;
use qlora_hub::cache::{self, manage};
use qlora_hub::download::{self, DownloadOptions};
use qlora_hub::select::SelectOptions;

async fn fetch(env: &Env, rev: &str) -> download::DownloadOutcome {
    let opts = DownloadOptions { disk_margin: Some(0), ..Default::default() };
    download::download(&env.client(), REPO, rev, &SelectOptions::default(), &opts, &qlora_jobs::NoProgress).await.unwrap()
}

/// main, and a tag v1 with the same weights but another config.
fn two_revisions() -> Env {
    let env = Env::new(200_000);
    let v1 = env.root.path().join(REPO).join(".hub/revisions/v1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(env.root.path().join(REPO).join(f), v1.join(f)).unwrap();
    }
    std::fs::write(v1.join("config.json"), b"{\"v\": 1}").unwrap();
    env
}

#[tokio::test]
async fn scan_shows_revisions_shared_blobs_and_sizes() {
    let env = two_revisions();
    let main = fetch(&env, "main").await;
    let v1 = fetch(&env, "v1").await;
    let report = cache::scan(&env.cache_dir());
    assert_eq!(report.repos.len(), 1);
    let r = &report.repos[0];
    assert_eq!(r.revisions.len(), 2);
    let weights = env.repo_file("model.safetensors").len() as u64;
    let main_rev = r.revisions.iter().find(|x| x.commit == main.commit).unwrap();
    let v1_rev = r.revisions.iter().find(|x| x.commit == v1.commit).unwrap();
    assert_eq!(main_rev.refs, ["main"]);
    assert_eq!(v1_rev.refs, ["v1"]);
    let st = v1_rev.files.iter().find(|f| f.path == "model.safetensors").unwrap();
    assert!(st.shared, "the weights blob is shared by both revisions");
    assert!(!v1_rev.files.iter().find(|f| f.path == "config.json").unwrap().shared);
    let distinct = main_rev.size_on_disk + 8; // v1 adds only its 8-byte config
    assert_eq!(r.size_on_disk, distinct);
    assert!(r.size_on_disk < main_rev.size_on_disk + v1_rev.size_on_disk, "shared blobs counted once");
    assert!(main_rev.size_on_disk > weights);
}

#[tokio::test]
async fn delete_revision_keeps_blobs_the_other_revision_uses() {
    let env = two_revisions();
    let main = fetch(&env, "main").await;
    fetch(&env, "v1").await;
    let t = manage::Target::Revision { repo: REPO.into(), revision: "v1".into() };
    let plan = manage::plan_delete(&env.cache_dir(), &t).unwrap();
    assert_eq!(plan.freed_bytes, 8, "only v1's own config: {plan:?}");
    assert!(cache::cached_listing(&env.cache_dir(), REPO, "v1").is_some(), "a dry run deletes nothing");
    assert_eq!(manage::execute(&plan).unwrap(), 8);
    assert!(cache::cached_listing(&env.cache_dir(), REPO, "v1").is_none());
    assert_eq!(std::fs::read(main.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));

    let t = manage::Target::File { repo: REPO.into(), revision: "main".into(), path: "tokenizer.json".into() };
    let plan = manage::plan_delete(&env.cache_dir(), &t).unwrap();
    assert_eq!(plan.freed_bytes, env.repo_file("tokenizer.json").len() as u64);
    manage::execute(&plan).unwrap();
    assert!(!main.snapshot.join("tokenizer.json").exists());
    assert!(main.snapshot.join("config.json").exists());

    let plan = manage::plan_delete(&env.cache_dir(), &manage::Target::Repo(REPO.into())).unwrap();
    manage::execute(&plan).unwrap();
    assert!(cache::scan(&env.cache_dir()).repos.is_empty());
    let e = manage::plan_delete(&env.cache_dir(), &manage::Target::Repo(REPO.into())).unwrap_err();
    assert_eq!(e.code(), "not_cached");
}

#[tokio::test]
async fn prune_removes_detached_revisions_partial_files_and_unused_blobs() {
    let env = two_revisions();
    let main = fetch(&env, "main").await;
    let v1 = fetch(&env, "v1").await;
    let repo_dir = env.cache_dir().join("models--test-org--tiny-model");
    std::fs::remove_file(repo_dir.join("refs/v1")).unwrap(); // v1 is now detached
    std::fs::write(repo_dir.join("blobs").join(format!("{}.incomplete", "a".repeat(64))), vec![0u8; 1000]).unwrap();
    std::fs::write(repo_dir.join("blobs").join("b".repeat(40)), vec![0u8; 300]).unwrap();
    let plan = manage::plan_prune(&env.cache_dir());
    assert_eq!(plan.freed_bytes, 8 + 1000 + 300, "{plan:#?}");
    manage::execute(&plan).unwrap();
    let r = &cache::scan(&env.cache_dir()).repos[0];
    assert_eq!(r.revisions.len(), 1);
    assert_eq!(r.revisions[0].commit, main.commit);
    assert!(r.partial_files.is_empty() && r.orphan_blobs.is_empty());
    assert!(!repo_dir.join("snapshots").join(&v1.commit).exists());
    assert_eq!(std::fs::read(main.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
}

#[tokio::test]
async fn verify_finds_a_corrupted_blob() {
    let env = Env::new(100_000);
    let out = fetch(&env, "main").await;
    let ok = manage::verify(&env.cache_dir(), None, &Default::default()).unwrap();
    assert_eq!(ok.files_checked, 5);
    assert!(ok.corrupt.is_empty());
    let blob = std::fs::canonicalize(out.snapshot.join("config.json")).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let bad = manage::verify(&env.cache_dir(), Some(REPO), &Default::default()).unwrap();
    assert_eq!(bad.corrupt.len(), 1);
    assert_eq!(bad.corrupt[0].path, "config.json");
}

#[tokio::test]
async fn refuses_paths_outside_the_cache() {
    let env = Env::new(1000);
    fetch(&env, "main").await;
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("keep.txt");
    std::fs::write(&victim, b"x").unwrap();
    for p in [victim.clone(), env.cache_dir().join("../../keep.txt"), env.cache_dir()] {
        let mut plan = manage::plan_prune(&env.cache_dir());
        plan.paths.push(p.clone());
        let e = manage::execute(&plan).unwrap_err();
        assert_eq!(e.code(), "outside_cache", "{p:?}: {e}");
    }
    assert!(victim.exists());
}

#[tokio::test]
async fn moving_the_cache_keeps_links_and_leaves_a_symlink() {
    use qlora_hub::cache::relocate;
    let env = Env::new(300_000);
    let out = fetch(&env, "main").await;
    let before = cache::scan(&env.cache_dir());
    let dest = tempfile::tempdir().unwrap();
    let to = dest.path().join("hf-cache");
    let plan = relocate::plan_move(&env.cache_dir(), &to).unwrap();
    assert!(plan.bytes >= before.size_on_disk);
    let events = std::sync::Mutex::new(Vec::new());
    let sink = |e: relocate::MoveEvent| events.lock().unwrap().push(e);
    relocate::move_cache(&plan, true, &Default::default(), &sink).unwrap();
    // Links were recreated (relative, not dereferenced copies) and the old path points to the new.
    let link = std::fs::read_link(to.join("models--test-org--tiny-model/snapshots").join(&out.commit).join("model.safetensors")).unwrap();
    assert!(link.starts_with("../../blobs"), "{link:?}");
    assert!(std::fs::symlink_metadata(env.cache_dir()).unwrap().file_type().is_symlink());
    let after = cache::scan(&to);
    assert_eq!(after.size_on_disk, before.size_on_disk);
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
    assert!(matches!(events.lock().unwrap().last(), Some(relocate::MoveEvent::Finished { .. })));
    // Moving into itself, or onto a non-empty folder, is refused.
    assert!(relocate::plan_move(&to, &to.join("inner")).is_err());
    assert!(relocate::plan_move(&to, dest.path()).is_err());
}
