// The `qlora` engine subcommands as a user runs them, on the real test model (imported by
// scripts/fetch-test-model.sh): `generate` prints only the generated text on stdout,
// `perplexity --json` prints parseable numbers, bad input exits non-zero with a clear message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn model_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let assets = std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| here.join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the real test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

fn qlora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qlora")).args(args).env_remove("RUST_BACKTRACE").output().unwrap()
}

#[test]
fn generate_prints_only_the_answer() {
    let m = model_dir();
    let out = qlora(&["generate", "--model", m.to_str().unwrap(), "--prompt", "What is the capital of France?", "--max-new-tokens", "24"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim(), "The capital of France is Paris.", "stdout must hold only the generated text");
}

#[test]
fn generate_raw_with_sampling_is_seeded() {
    let m = model_dir();
    let run = |seed: &str| {
        let out = qlora(&[
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--raw",
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--quant",
            "int8",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let a = run("3");
    assert!(!a.trim().is_empty());
    assert_eq!(a, run("3"), "the same seed must give the same text");
}

#[test]
fn perplexity_json() {
    let m = model_dir();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/perplexity_text.txt");
    let out = qlora(&["perplexity", "--model", m.to_str().unwrap(), "--file", text.to_str().unwrap(), "--json", "--dtype", "bf16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 30.0, "{v}");
    assert_eq!(v["scored_tokens"].as_u64().unwrap(), 194);
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = qlora(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
    let m = model_dir();
    let out = qlora(&["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--quant", "nf3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown quantization 'nf3'"));
    let tmp = tempfile::tempdir().unwrap();
    let out = qlora(&["import-gguf", m.join("config.json").to_str().unwrap(), tmp.path().join("x").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a readable GGUF file"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!tmp.path().join("x").exists(), "a failed import must leave nothing behind");
}

#[test]
fn device_choice_is_checked() {
    let m = model_dir();
    let m = m.to_str().unwrap();
    // An unknown device name is refused by the argument parser, naming what is accepted.
    let out = qlora(&["generate", "--model", m, "--prompt", "hi", "--device", "tpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'tpu'") && err.contains("cuda:N"), "{err}");
    // --device cpu runs; a GPU asked for explicitly on a build without CUDA says how to get one.
    let out = qlora(&["generate", "--model", m, "--prompt", "What is the capital of France?", "--max-new-tokens", "8", "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if !cfg!(feature = "cuda") {
        let out = qlora(&["generate", "--model", m, "--prompt", "hi", "--device", "cuda:0"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cuda:0") && err.contains("--features cuda") && err.contains("--device cpu"), "{err}");
    }
}

/// `import-gguf` into a filesystem too small for what it writes (a 32 MB tmpfs against the
/// test model's 538 MB of f32) is refused before anything is written, naming both numbers,
/// the folder and the fix. Needs root, as the hub's disk-full tests (mount -t tmpfs).
#[test]
fn import_refuses_a_disk_too_small_before_writing() {
    let m = model_dir();
    let gguf = m.parent().unwrap().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "{} is missing: run scripts/fetch-test-model.sh", gguf.display());
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"]).arg(dir.path()).status();
    assert!(st.is_ok_and(|s| s.success()), "mounting a tmpfs failed: this test needs root (mount -t tmpfs) to make a small filesystem");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let out_dir = dir.path().join("smol");
    let out = qlora(&["import-gguf", gguf.to_str().unwrap(), out_dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("538.06 MB") && err.contains("free") && err.contains(&*out_dir.to_string_lossy()) && err.contains("larger disk"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written before the check");
}
