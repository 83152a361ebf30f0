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
