//! Bad input to `qlora train` is a clear error naming the input and the fix, never a panic:
//! malformed YAML, an unknown or mistyped field, an empty dataset, a record of the wrong
//! shape, a sample longer than max_len with truncation off, a target module the model lacks.

use std::path::{Path, PathBuf};
use std::process::Command;

fn test_model() -> PathBuf {
    let assets =
        std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

/// Runs `qlora train` on `yaml` (with `{model}` and `{data}` filled in) and `data` as the
/// dataset; returns stderr of the failed run.
fn fails(yaml: &str, data: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("data.jsonl");
    std::fs::write(&data_path, data).unwrap();
    let yaml = yaml.replace("{model}", &test_model().display().to_string()).replace("{data}", &data_path.display().to_string());
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qlora")).arg("train").arg("--config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a failure:\n{err}");
    assert!(!err.contains("panicked"), "a panic is not an error message:\n{err}");
    err
}

const GOOD: &str = "model: {model}\nquant: {kind: nf4}\ncompute_dtype: f32\n\
                    data: {files: [{data}], max_len: 64}\nmax_steps: 1\n";
const CHAT: &str = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n";

#[test]
fn malformed_yaml() {
    let e = fails("model: {model}\ndata: [unclosed\n", CHAT);
    assert!(e.contains("invalid config") && e.contains("line 2"), "{e}");
}

#[test]
fn unknown_and_mistyped_fields() {
    let e = fails(&format!("{GOOD}lora: {{rnak: 4}}\n"), CHAT);
    assert!(e.contains("unknown field `rnak`") && e.contains("line 6"), "{e}");
    let e = fails(&format!("{GOOD}micro_batch: two\n"), CHAT);
    assert!(e.contains("micro_batch") && e.contains("invalid type"), "{e}");
    let e = fails(&format!("{GOOD}optimizer: {{lr: 0}}\n"), CHAT);
    assert!(e.contains("`optimizer.lr`"), "{e}");
}

#[test]
fn empty_dataset() {
    let e = fails(GOOD, "\n\n");
    assert!(e.contains("the dataset is empty") && e.contains("data.jsonl"), "{e}");
}

#[test]
fn a_record_of_the_wrong_shape_names_file_and_line() {
    let e = fails(GOOD, &format!("{CHAT}{{\"messages\": \"just a string\"}}\n"));
    assert!(e.contains("data.jsonl:2") && e.contains("`messages` must be an array"), "{e}");
    let e = fails(GOOD, &format!("{CHAT}{{not json\n"));
    assert!(e.contains("data.jsonl:2") && e.contains("skip_bad_lines"), "{e}");
}

#[test]
fn too_long_with_truncation_off() {
    let long = "word ".repeat(200);
    let data = format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{long}\"}}, {{\"role\": \"assistant\", \"content\": \"ok\"}}]}}\n");
    let e = fails(&GOOD.replace("max_len: 64}", "max_len: 64, truncation: false}"), &data);
    assert!(e.contains("data.jsonl:1") && e.contains("longer than data.max_len = 64"), "{e}");
}

#[test]
fn a_target_module_the_model_does_not_have() {
    let e = fails(&format!("{GOOD}lora: {{target_modules: [q_proj, query_key_value]}}\n"), CHAT);
    assert!(e.contains("`query_key_value` matches no projection") && e.contains("gate_proj"), "{e}");
}

#[test]
fn a_missing_model_folder() {
    let e = fails(&GOOD.replace("{model}", "/nonexistent/model"), CHAT);
    assert!(e.contains("/nonexistent/model"), "{e}");
}
