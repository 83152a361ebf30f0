//! Disk full, on a real small filesystem (a 6 MiB tmpfs; needs root, as on the project's
//! machines): the preflight refuses a download that cannot fit, naming both numbers; a disk
//! that fills up mid-download gives a clear error, leaves nothing corrupt where a loader looks,
//! and the download resumes once space is freed.

mod common;
use common::*;
use qlora_hub::download::{self, DownloadOptions};
use qlora_hub::select::SelectOptions;
use qlora_hub::{HubClient, HubConfig};
use qlora_hub_testserver::{Fault, FaultRule};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A mounted tmpfs; the TempDir is kept so the mount point outlives the test.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).status();
        assert!(st.is_ok_and(|s| s.success()), "mounting a tmpfs failed: this test needs root (mount -t tmpfs) to make a small filesystem");
        Tmpfs(dir.path().to_path_buf(), dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn client(env: &Env, cache: &Path) -> HubClient {
    HubClient::new(HubConfig { cache_dir: cache.to_path_buf(), ..env.config(None) }).unwrap()
}

#[tokio::test]
async fn preflight_refuses_a_download_larger_than_the_disk() {
    let fs = Tmpfs::mount("6m");
    let env = Env::new(8_000_000);
    let opts = DownloadOptions { disk_margin: Some(0), ..Default::default() };
    let e = download::download(&client(&env, &fs.0.join("hub")), REPO, "main", &SelectOptions::default(), &opts, &qlora_jobs::NoProgress)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "not_enough_space", "{e}");
    let msg = e.to_string();
    assert!(msg.contains("8.00 MB") && msg.contains("6.29 MB"), "names both numbers: {msg}");
    assert_eq!(env.hub.content_bytes_sent(), 0);
}

#[tokio::test]
async fn disk_filling_up_mid_download_is_clear_safe_and_resumable() {
    let fs = Tmpfs::mount("6m");
    let env = Env::new(4_000_000);
    env.hub.add_fault(FaultRule::always("model.safetensors", Fault::Throttle { bytes_per_sec: 4_000_000 }));
    let c = client(&env, &fs.0.join("hub"));
    let opts = DownloadOptions { disk_margin: Some(0), ..Default::default() };
    let task = {
        let (c, opts) = (c.clone(), opts.clone());
        tokio::spawn(async move { download::download(&c, REPO, "main", &SelectOptions::default(), &opts, &qlora_jobs::NoProgress).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another program fills the disk.
    let filler = fs.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 64 * 1024]).is_ok() {}
    drop(f);
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.code(), "disk_full", "{e}");
    assert!(e.to_string().contains("resumes"), "{e}");
    let snaps = files_under(&fs.0.join("hub/models--test-org--tiny-model/snapshots"));
    assert!(snaps.iter().all(|p| !p.ends_with("model.safetensors")), "{snaps:?}");

    std::fs::remove_file(&filler).unwrap();
    env.hub.clear_faults();
    env.hub.clear_log();
    let out = download::download(&c, REPO, "main", &SelectOptions::default(), &opts, &qlora_jobs::NoProgress).await.unwrap();
    assert_eq!(std::fs::read(out.snapshot.join("model.safetensors")).unwrap(), env.repo_file("model.safetensors"));
    let cdn: Vec<_> = env.content_gets().into_iter().filter(|e| e.path.starts_with("/_cdn/")).collect();
    assert!(cdn[0].range.is_some(), "resumed with Range: {cdn:?}");
}
