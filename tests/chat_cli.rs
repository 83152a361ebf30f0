//! `qlora chat` on the real test model and Ctrl-C, sent as a real SIGINT: while an answer is
//! being written it stops the answer (the process lives on and prompts again, and no token
//! follows), and at the prompt it ends the chat (exit status 130, as a shell reports SIGINT).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn model_dir() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let assets = std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| repo.join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the real test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

/// Everything a pipe has delivered so far, read on a thread of its own.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn text(b: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&b.lock().unwrap()).into_owned()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool, child: &mut Child, err: &Arc<Mutex<Vec<u8>>>) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("qlora chat exited ({status}) waiting for {what}; stderr: {}", text(err));
        }
        assert!(Instant::now() < end, "timed out waiting for {what}; stderr: {}", text(err));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigint(child: &Child) {
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
}

#[test]
fn ctrl_c_stops_the_answer_then_ctrl_c_at_the_prompt_quits() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["chat", "--device", "cpu", "--max-new-tokens", "3000", "--model"])
        .arg(model_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    wait_for("the first prompt", 120, || text(&err).ends_with("> "), &mut child, &err);
    stdin.write_all(b"Write a very long story about a dragon who learns to cook, with many chapters.\n").unwrap();
    stdin.flush().unwrap();
    wait_for("the answer to stream", 120, || out.lock().unwrap().len() > 40, &mut child, &err);

    sigint(&child);
    wait_for("the prompt after the stop", 20, || text(&err).contains("[stopped]\n> "), &mut child, &err);
    // The stopped answer's closing newline went to stdout before "[stopped]" went to stderr,
    // but the two pipes are read by two threads: let stdout's reader catch up (it ends with
    // that newline and stays still) before taking the length the rest must keep.
    let mut written = out.lock().unwrap().len();
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let (len, ends_nl) = {
            let o = out.lock().unwrap();
            (o.len(), o.last() == Some(&b'\n'))
        };
        if len == written && ends_nl {
            break;
        }
        assert!(Instant::now() < settle, "stdout kept growing after the stop; stdout: {}", text(&out));
        written = len;
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(out.lock().unwrap().len(), written, "no token after the stop");
    assert!(child.try_wait().unwrap().is_none(), "the chat goes on after the first Ctrl-C");

    sigint(&child);
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "Ctrl-C at the prompt did not end the chat; stderr: {}", text(&err));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "stderr: {}", text(&err));
}
