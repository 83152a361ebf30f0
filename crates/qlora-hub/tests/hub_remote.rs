//! Metadata from the Hub without weights: listing with sizes and checksums, file metadata,
//! safetensors headers over Range, the shared selection rule; and the hf-hub 1.0 gaps each
//! workaround covers (the `upstream_gap_*` tests fail once hf-hub fixes a gap: then the
//! workaround can go).

mod common;
use common::*;
use qlora_hub::remote;
use qlora_hub::select::{SelectOptions, WeightsFormat, files_for_load};

#[tokio::test]
async fn listing_has_sizes_and_lfs_sha256_for_every_file() {
    let env = Env::new(200_000);
    env.hub.set_page_size(3); // several pages: the Link header is followed
    let l = remote::list_files(&env.client(), REPO, "main").await.unwrap();
    assert_eq!(l.commit.len(), 40);
    let paths: Vec<&str> = l.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [".hub-none"; 0]
            .iter()
            .copied()
            .chain([
                "README.md",
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "onnx/model.onnx",
                "pytorch_model.bin",
                "tokenizer.json",
                "tokenizer_config.json"
            ])
            .collect::<Vec<_>>()
    );
    for f in &l.files {
        let bytes = env.repo_file(&f.path);
        assert_eq!(f.size, bytes.len() as u64, "{}", f.path);
    }
    // Gap: hf-hub's listing drops the LFS SHA-256 (`lfs.oid`); ours has it, and it is right.
    let st = l.get("model.safetensors").unwrap();
    assert_eq!(st.lfs_sha256.as_deref(), Some(sha256_hex(&env.repo_file("model.safetensors")).as_str()));
    assert_eq!(st.etag(), st.lfs_sha256.as_deref().unwrap());
    assert!(l.get("config.json").unwrap().lfs_sha256.is_none());
}

#[tokio::test]
async fn lfs_file_metadata_through_the_redirect() {
    let env = Env::new(10_000);
    let c = env.client();
    // Gap: hf-hub's get_file_metadata follows the 302 to the CDN and fails on X-Repo-Commit.
    let m = remote::file_metadata(&c, REPO, "main", "model.safetensors").await.unwrap();
    let l = remote::list_files(&c, REPO, "main").await.unwrap();
    assert_eq!(m.commit, l.commit);
    assert_eq!(m.etag, sha256_hex(&env.repo_file("model.safetensors")));
    assert_eq!(m.size, env.repo_file("model.safetensors").len() as u64);
    assert!(m.location.contains("/_cdn/"), "{}", m.location);
    let small = remote::file_metadata(&c, REPO, "main", "config.json").await.unwrap();
    assert_eq!(small.etag, l.get("config.json").unwrap().blob_id);
    assert_eq!(env.content_gets().len(), 0, "metadata must not fetch content");
}

#[tokio::test]
async fn safetensors_header_reads_only_the_header() {
    let env = Env::new(4_000_000);
    let c = env.client();
    let h = remote::safetensors_header(&c, REPO, "main", "model.safetensors").await.unwrap();
    assert_eq!(h.tensors.len(), 2);
    let t = &h.tensors["lm_head.weight"];
    assert_eq!((t.dtype.as_str(), t.shape.as_slice()), ("F32", [500_000u64].as_slice()));
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(8 + h.header_len + h.data_bytes(), env.repo_file("model.safetensors").len() as u64);
    let sent: u64 = env.content_gets().iter().map(|e| e.bytes_sent).sum();
    assert_eq!(sent, 8 + h.header_len, "only the header's bytes went over the wire");
    assert!(env.content_gets().iter().all(|e| e.range.is_some()));
}

#[tokio::test]
async fn selection_from_a_real_listing() {
    let env = Env::new(10_000);
    let l = remote::list_files(&env.client(), REPO, "main").await.unwrap();
    let s = files_for_load(&l.files, &SelectOptions::default()).unwrap();
    assert_eq!(s.weights, Some(WeightsFormat::Safetensors));
    let paths: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
}

#[tokio::test]
async fn hostile_file_name_fails_the_listing() {
    let env = Env::new(1000);
    env.hub.inject_tree_entry(REPO, "../../../../etc/evil");
    let e = remote::list_files(&env.client(), REPO, "main").await.unwrap_err();
    assert_eq!(e.code(), "hostile_file_name", "{e}");
    assert!(e.to_string().contains("../../../../etc/evil"));
}

#[tokio::test]
async fn missing_repo_revision_and_file() {
    let env = Env::new(1000);
    let c = env.client();
    let e = remote::list_files(&c, "test-org/nope", "main").await.unwrap_err();
    assert_eq!(e.code(), "repo_not_found", "{e}");
    let e = remote::list_files(&c, REPO, "no-such-branch").await.unwrap_err();
    assert_eq!(e.code(), "revision_not_found", "{e}");
    let e = remote::file_metadata(&c, REPO, "main", "nope.json").await.unwrap_err();
    assert_eq!(e.code(), "entry_not_found", "{e}");
}

#[tokio::test]
async fn revisions_resolve_to_their_own_commit() {
    let env = Env::new(1000);
    let rev_dir = env.root.path().join(REPO).join(".hub/revisions/v1");
    std::fs::create_dir_all(&rev_dir).unwrap();
    std::fs::write(rev_dir.join("config.json"), b"{\"v\": 1}").unwrap();
    let c = env.client();
    let main = remote::list_files(&c, REPO, "main").await.unwrap();
    let v1 = remote::list_files(&c, REPO, "v1").await.unwrap();
    assert_ne!(main.commit, v1.commit);
    assert_eq!(v1.files.len(), 1);
    let by_commit = remote::list_files(&c, REPO, &v1.commit).await.unwrap();
    assert_eq!(by_commit.files, v1.files);
}

#[tokio::test]
async fn search_finds_served_models() {
    let env = Env::new(1000);
    let found = remote::search_models(&env.client(), "tiny", 10).await.unwrap();
    assert_eq!(found.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [REPO]);
}

// --- hf-hub 1.0.0 gaps: these pass while the gap exists; when one fails, hf-hub fixed it and
// the matching workaround in qlora-hub can go.

#[tokio::test]
async fn upstream_gap_hf_hub_file_metadata_fails_after_lfs_redirect() {
    let env = Env::new(1000);
    let hf = hf_hub::HFClient::builder().endpoint(env.hub.url()).cache_dir(env.cache_dir()).build().unwrap();
    let r = hf.model("test-org", "tiny-model").get_file_metadata().filepath("model.safetensors").send().await;
    let e = r.expect_err("hf-hub now reads LFS metadata: drop the workaround in remote::file_metadata");
    assert!(e.to_string().contains("X-Repo-Commit"), "{e}");
}

#[tokio::test]
async fn upstream_gap_hf_hub_tree_has_no_lfs_sha256_and_info_no_sizes() {
    use futures::StreamExt;
    let env = Env::new(1000);
    let hf = hf_hub::HFClient::builder().endpoint(env.hub.url()).cache_dir(env.cache_dir()).build().unwrap();
    let m = hf.model("test-org", "tiny-model");
    let stream = m.list_tree().recursive(true).send().unwrap();
    futures::pin_mut!(stream);
    let mut lfs_sha = Vec::new();
    while let Some(e) = stream.next().await {
        if let hf_hub::repository::RepoTreeEntry::File { path, lfs: Some(lfs), .. } = e.unwrap() {
            lfs_sha.push((path, lfs.sha256));
        }
    }
    assert!(!lfs_sha.is_empty());
    assert!(lfs_sha.iter().all(|(_, s)| s.is_none()), "hf-hub now reads lfs.oid: {lfs_sha:?}");
    let info = m.info().send().await.unwrap();
    let siblings = info.siblings.unwrap();
    assert!(siblings.iter().all(|s| s.size.is_none()), "hf-hub info now has sizes");
}
