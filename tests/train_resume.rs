//! A run killed with SIGKILL mid-way and resumed with `--resume` ends with the same adapter
//! (within 1e-4) and the same loss curve as an uninterrupted run with the same seed. Runs
//! the real `qlora` binary on SmolLM2-135M (NF4 base) with short samples, LoRA dropout on
//! (so the dropout RNG must be restored too), gradient accumulation and a cosine schedule.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn test_model() -> PathBuf {
    let assets =
        std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

fn write_config(dir: &Path, name: &str) -> PathBuf {
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = [
        "The cat sat on the mat.",
        "Rust is a systems language.",
        "Quillbury has a mayor.",
        "Bread rises in the oven.",
        "The river runs to the sea.",
        "Stars shine at night.",
    ]
    .iter()
    .map(|t| serde_json::json!({ "text": t }).to_string())
    .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let yaml = format!(
        "model: {model}\nquant: {{kind: nf4}}\ncompute_dtype: f32\n\
         lora: {{rank: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}}\n\
         data: {{files: [{data}], format: text, max_len: 16}}\n\
         optimizer: {{lr: 1.0e-3, weight_decay: 0.01}}\nschedule: {{kind: cosine, warmup_steps: 1}}\n\
         micro_batch: 2\ngrad_accum: 2\nmax_steps: 6\nseed: 11\n\
         checkpoint: {{every: 1, keep_last: 2}}\noutput_dir: {out}\n",
        model = test_model().display(),
        data = data.display(),
        out = dir.join(name).display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn qlora() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qlora"))
}

fn run_to_end(config: &Path, resume: bool) {
    let mut c = qlora();
    c.arg("train").arg("--config").arg(config);
    if resume {
        c.arg("--resume");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "qlora train failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn adapter(out: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    use qlora_studio::engine::candle_core::{Device, safetensors};
    let st = safetensors::load(out.join("adapter/adapter_model.safetensors"), &Device::Cpu).unwrap();
    st.into_iter().map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

fn losses(out: &Path) -> Vec<f64> {
    let log: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(out.join("log_history.json")).unwrap()).unwrap();
    log.iter().map(|e| e["loss"].as_f64().unwrap()).collect()
}

#[test]
fn killed_and_resumed_run_ends_with_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let straight = write_config(dir.path(), "straight");
    run_to_end(&straight, false);

    let killed = write_config(dir.path(), "killed");
    let mut child = qlora().arg("train").arg("--config").arg(&killed).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.starts_with("step 3: checkpoint") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was meant to be killed mid-way");
    let out_killed = dir.path().join("killed");
    assert!(!out_killed.join("adapter").exists(), "killed before the end: no final adapter yet");

    run_to_end(&killed, true);
    let a = adapter(&dir.path().join("straight"));
    let b = adapter(&out_killed);
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), 30 * 2 * 2, "q_proj and v_proj of 30 layers, A and B");
    let mut worst = 0f32;
    for (name, va) in &a {
        let vb = &b[name];
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("max |difference| between the adapters: {worst:e}");
    assert!(worst < 1e-4, "resumed adapter differs by {worst}");
    let (la, lb) = (losses(&dir.path().join("straight")), losses(&out_killed));
    assert_eq!(la.len(), 6);
    assert_eq!(lb.len(), 6, "the resumed run's log continues the killed run's");
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-4, "loss curves differ: {la:?} vs {lb:?}");
    }
}

#[test]
fn resume_without_a_checkpoint_and_rerun_over_one_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "r");
    let out = qlora().arg("train").arg("--config").arg(&cfg).arg("--resume").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no checkpoint there"), "{err}");
    run_to_end(&cfg, false);
    let out = qlora().arg("train").arg("--config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("pass --resume"), "{err}");
}
