//! The `qlora` binary against the local Hub: a download killed with SIGKILL mid-file resumes
//! from the bytes it had; `qlora cache` lists and deletes (dry run first); `qlora login`
//! stores the token as the `hf` CLI does.

use qlora_hub_testserver::{Fault, FaultRule, TestHub, fixture};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const REPO: &str = "test-org/tiny-model";

fn qlora(hub: &TestHub, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qlora"));
    c.env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", home)
        .env("HF_HUB_CACHE", home.join("hub"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN_PATH");
    c
}

#[test]
fn download_killed_with_sigkill_resumes_from_the_bytes_it_had() {
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    fixture::tiny_model(root.path(), REPO, 8_000_000).unwrap();
    let hub = TestHub::start(root.path()).unwrap();
    hub.add_fault(FaultRule::always("model.safetensors", Fault::Throttle { bytes_per_sec: 2_000_000 }));

    let mut child = qlora(&hub, home.path()).args(["download", REPO, "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["kind"] == "progress" && v["path"] == "model.safetensors" && v["file_done"].as_u64().unwrap() > 2_000_000 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let blobs = home.path().join("hub/models--test-org--tiny-model/blobs");
    let partial = std::fs::read_dir(&blobs).unwrap().flatten().find(|e| e.file_name().to_string_lossy().ends_with(".incomplete")).unwrap();
    let kept = partial.metadata().unwrap().len();
    assert!(kept > 2_000_000, "kept {kept}");
    let snapshot_files: Vec<_> = walk(&home.path().join("hub/models--test-org--tiny-model/snapshots"));
    assert!(snapshot_files.iter().all(|p| !p.ends_with("model.safetensors")), "nothing half-done is visible: {snapshot_files:?}");

    hub.clear_faults();
    hub.clear_log();
    let out = qlora(&hub, home.path()).args(["download", REPO]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let want = std::fs::read(root.path().join(REPO).join("model.safetensors")).unwrap();
    assert_eq!(std::fs::read(Path::new(&snapshot).join("model.safetensors")).unwrap(), want);
    let cdn: Vec<_> = hub.log().into_iter().filter(|e| e.method == "GET" && e.path.starts_with("/_cdn/")).collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    let range = cdn[0].range.clone().unwrap();
    let start: u64 = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert_eq!(start, kept, "resumed from the bytes it had");
    assert_eq!(cdn[0].bytes_sent, want.len() as u64 - start, "only the missing bytes were sent");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn cache_ls_rm_with_dry_run_and_login() {
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    fixture::tiny_model(root.path(), REPO, 100_000).unwrap();
    let hub = TestHub::start(root.path()).unwrap();
    let out = qlora(&hub, home.path()).args(["download", REPO]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = qlora(&hub, home.path()).args(["cache", "ls", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repos"][0]["repo"], REPO);
    let size = v["repos"][0]["size_on_disk"].as_u64().unwrap();
    assert!(size > 100_000);

    let out = qlora(&hub, home.path()).args(["cache", "rm", REPO, "--dry-run", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plan"]["freed_bytes"], size);
    assert!(home.path().join("hub/models--test-org--tiny-model").exists(), "dry run deleted nothing");
    let out = qlora(&hub, home.path()).args(["cache", "rm", REPO]).output().unwrap();
    assert!(out.status.success());
    assert!(!home.path().join("hub/models--test-org--tiny-model").exists());

    hub.add_user_token("hf_valid_token");
    let out = qlora(&hub, home.path()).args(["login", "--token", "hf_wrong"]).output().unwrap();
    assert!(!out.status.success());
    assert!(!home.path().join("token").exists(), "a rejected token is not stored");
    let out = qlora(&hub, home.path()).args(["login", "--token", "hf_valid_token"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("hf_valid_token"), "the token is never printed: {all}");
    let token = home.path().join("token");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "hf_valid_token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
}
