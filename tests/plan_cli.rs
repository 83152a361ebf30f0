//! `qlora plan`: the readable table and the documented `--json` shape (docs/PLANNER.md), run as
//! the real binary on the seed configs and a tiny model with safetensors.

use std::process::Command;

fn qlora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const MISTRAL: &str = "tests/fixtures/hub-configs/mistralai--Mistral-7B-v0.1";

#[test]
fn json_has_the_documented_shape() {
    let (ok, out, err) = qlora(&["plan", MISTRAL, "--gpu", "rtx2080", "--train", "--seq-len", "3072", "--checkpointing", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "model",
        "architecture",
        "tensors_from",
        "parameters",
        "download_bytes",
        "model_bytes",
        "download_exact",
        "context",
        "batch",
        "target",
        "inference",
        "training",
        "disk",
        "notes",
    ] {
        assert!(v.get(key).is_some(), "missing top-level '{key}'");
    }
    assert_eq!(v["parameters"], 7_241_732_096u64);
    assert_eq!(v["tensors_from"], "architecture");
    for p in ["fp32", "bf16", "fp16", "int8", "nf4", "nf4_dq"] {
        let e = &v["inference"][p];
        let sum: u64 = ["weights_bytes", "kv_cache_bytes", "activations_bytes", "overhead_bytes"].iter().map(|k| e[*k].as_u64().unwrap()).sum();
        assert_eq!(e["total_bytes"].as_u64().unwrap(), sum, "{p}");
        assert!(e["verdict"].is_string());
    }
    let t = &v["training"];
    let terms = [
        "base_weights_bytes",
        "lora_weights_bytes",
        "lora_grads_bytes",
        "optimizer_bytes",
        "master_weights_bytes",
        "activations_bytes",
        "logits_bytes",
        "dequant_scratch_bytes",
        "overhead_bytes",
    ];
    let sum: u64 = terms.iter().map(|k| t[*k].as_u64().unwrap()).sum();
    assert_eq!(t["total_bytes"].as_u64().unwrap(), sum);
    assert_eq!(t["verdict"], "wont_fit");
    assert!(t["suggestion"]["change"].as_str().unwrap().contains("micro-batch 1"));
    assert!(v["disk"]["available_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn table_names_each_term_and_the_fix() {
    // Sequence 3072: at 512 QLoRA fits the 2080 with the layer inputs in host memory.
    let (ok, out, err) = qlora(&["plan", MISTRAL, "--gpu", "rtx2080", "--train", "--seq-len", "3072", "--checkpointing"]);
    assert!(ok, "{err}");
    for needle in ["nf4_dq", "kv cache", "won't fit", "logits / loss buffer", "AdamW", "to fit: micro-batch 1", "config.json only", "host memory"] {
        assert!(out.contains(needle), "'{needle}' missing from:\n{out}");
    }
}

#[test]
fn a_folder_with_weights_is_planned_from_its_headers() {
    let (ok, out, err) = qlora(&["plan", "tests/fixtures/tiny/gemma", "--gpu", "cpu", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tensors_from"], "safetensors_headers");
    assert_eq!(v["target"]["kind"], "cpu");
    assert_eq!(v["download_bytes"], 0, "a local folder downloads nothing");
}

#[test]
fn bad_input_says_what_to_do() {
    let (ok, _, err) = qlora(&["plan", MISTRAL, "--gpu", "gtx9999"]);
    assert!(!ok);
    assert!(err.contains("unknown GPU preset 'gtx9999'") && err.contains("rtx2080"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type":"gpt2"}"#).unwrap();
    let (ok, _, err) = qlora(&["plan", dir.path().to_str().unwrap(), "--gpu", "rtx2080"]);
    assert!(!ok);
    assert!(err.contains("gpt2") && err.contains("supported"), "{err}");
}
