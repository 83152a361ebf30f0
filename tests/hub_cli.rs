//! The `qlora` binary against the local Hub: a download killed with SIGKILL mid-file resumes
//! from the bytes it had, also with several files in flight; `qlora cache` lists and deletes
//! (dry run first) and `cache verify --hub` compares with the Hub; `qlora login` stores the
//! token as the `hf` CLI does; `qlora plan` of a cached model works offline and with the Hub
//! gone.

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

fn partials(blobs: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(blobs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .map(|e| (e.file_name().to_string_lossy().trim_end_matches(".incomplete").to_string(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

#[test]
fn many_files_in_flight_killed_with_sigkill_each_resume_bit_identical() {
    const MANY: &str = "test-org/many";
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = root.path().join(MANY);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 1..=6u64 {
        std::fs::write(dir.join(format!("part-{i}.bin")), fixture::pseudo_random(1_500_000, i)).unwrap();
    }
    let hub = TestHub::start(root.path()).unwrap();
    hub.add_fault(FaultRule::any_file(Fault::Throttle { bytes_per_sec: 1_000_000 }));

    let args = ["download", MANY, "--include", "*", "--workers", "4", "--json"];
    let mut child = qlora(&hub, home.path()).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["kind"] == "progress" && v["done"].as_u64().unwrap() > 2_000_000 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = partials(&home.path().join("hub/models--test-org--many/blobs"));
    assert!(kept.len() >= 2 && kept.iter().all(|(_, n)| *n > 0), "several files were in flight: {kept:?}");

    hub.clear_faults();
    hub.clear_log();
    let out = qlora(&hub, home.path()).args(["download", MANY, "--include", "*"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot = String::from_utf8(out.stdout).unwrap().trim().to_string();
    for i in 1..=6 {
        let name = format!("part-{i}.bin");
        assert_eq!(std::fs::read(Path::new(&snapshot).join(&name)).unwrap(), std::fs::read(dir.join(&name)).unwrap(), "{name}");
    }
    let cdn: Vec<_> = hub.log().into_iter().filter(|e| e.method == "GET" && e.path.starts_with("/_cdn/")).collect();
    for (sha, bytes) in &kept {
        let get = cdn.iter().find(|e| e.path.ends_with(sha.as_str())).unwrap();
        assert_eq!(get.range, Some(format!("bytes={bytes}-")), "resumed from the bytes it had");
    }

    for bad in ["0", "17"] {
        let out = qlora(&hub, home.path()).args(["download", MANY, "--workers", bad]).output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--workers"), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn cache_verify_against_the_hub_reports_what_changed() {
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    fixture::tiny_model(root.path(), REPO, 100_000).unwrap();
    let hub = TestHub::start(root.path()).unwrap();
    assert!(qlora(&hub, home.path()).args(["download", REPO]).output().unwrap().status.success());
    let out = qlora(&hub, home.path()).args(["cache", "verify", REPO, "--hub"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("matches the Hub"), "{stdout}");

    std::fs::write(root.path().join(REPO).join("tokenizer_config.json"), br#"{"chat_template": "{{ messages }}!!"}"#).unwrap();
    let out = qlora(&hub, home.path()).args(["cache", "verify", "--hub", "--json"]).output().unwrap();
    assert!(!out.status.success());
    let lines: Vec<serde_json::Value> =
        out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(lines[0]["corrupt"], serde_json::json!([]), "the blobs still match their names");
    assert_eq!(lines[1]["changed"][0]["path"], "tokenizer_config.json");
    assert_eq!(lines[1]["changed"][0]["updated_on_hub"], true);
    assert!(String::from_utf8_lossy(&out.stderr).contains("qlora download"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = qlora(&hub, home.path()).env("HF_HUB_OFFLINE", "1").args(["cache", "verify", REPO, "--hub"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --hub"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn plan_of_a_cached_model_works_offline_and_with_the_hub_gone() {
    const SHARDED: &str = "tiny-org/llama-sharded";
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let repo = root.path().join(SHARDED);
    std::fs::create_dir_all(&repo).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama_sharded");
    for e in std::fs::read_dir(fixture).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), repo.join(e.file_name())).unwrap();
    }
    let mut hub = TestHub::start(root.path()).unwrap();
    let plan = |hub: &TestHub, offline: bool, model: &str| {
        let mut c = qlora(hub, home.path());
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        c.args(["plan", model, "--gpu", "rtx3060", "--json"]).output().unwrap()
    };
    let json = |out: &std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let notes = v["notes"].take();
        v["disk"]["available_bytes"].take(); // free space moves between runs
        v["disk"]["verdict"].take();
        v["notes_taken"] = notes;
        v
    };
    // Not cached yet: offline says so.
    let out = plan(&hub, true, SHARDED);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("offline mode") && err.contains("not in the cache"), "{err}");

    assert!(qlora(&hub, home.path()).args(["download", SHARDED]).output().unwrap().status.success());
    let online = json(&plan(&hub, false, SHARDED));
    assert_eq!(online["download_bytes"], 0);
    hub.clear_log();
    let offline = json(&plan(&hub, true, SHARDED));
    assert!(hub.log().is_empty(), "offline: nothing went out: {:?}", hub.log());
    let note = offline["notes_taken"].to_string();
    assert!(note.contains("offline mode") && note.contains("cached snapshot"), "{note}");
    let strip = |mut v: serde_json::Value| {
        v["notes_taken"].take();
        v
    };
    assert_eq!(strip(offline), strip(online.clone()), "the same plan from the snapshot as from the Hub");

    hub.shutdown();
    let gone = json(&plan(&hub, false, SHARDED));
    assert!(gone["notes_taken"].to_string().contains("could not be reached"), "{}", gone["notes_taken"]);
    assert_eq!(strip(gone), strip(online));
}
