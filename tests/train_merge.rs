//! `qlora merge`: the tiny Llama plus the peft adapter of `tests/fixtures/lora_grads/` merged
//! into a dense folder gives the same logits as the base with the adapter applied, and an
//! adapter for another base is a clear error.

use qlora_studio::engine::candle_core::{DType, Device, Tensor};
use qlora_studio::engine::linear::Quant;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::train::adapter;
use std::path::Path;
use std::process::Command;

fn fixtures() -> &'static Path {
    Box::leak(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").into_boxed_path())
}

fn logits(model: &Model) -> Vec<f32> {
    let ids = Tensor::new(&[[1u32, 5, 9, 2, 7, 3]], &Device::Cpu).unwrap();
    model.forward(&ids, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn merged_model_matches_base_plus_adapter() {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let base = fixtures().join("tiny/llama");
    let adapter_dir = fixtures().join("lora_grads/adapter");
    let st = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["merge", "--model"])
        .arg(&base)
        .arg("--adapter")
        .arg(&adapter_dir)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(merged.join("config.json").is_file());
    let opts = LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu };
    let m = Model::load(&merged, &opts).unwrap();
    let mut with = Model::load(&base, &opts).unwrap();
    adapter::apply(&mut with, &adapter_dir).unwrap();
    let plain = logits(&Model::load(&base, &opts).unwrap());
    let (a, b) = (logits(&m), logits(&with));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "merged vs applied logits differ by {worst}");
    let moved = plain.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "the adapter should change the logits");
}

#[test]
fn an_adapter_for_another_base_is_a_clear_error() {
    let out = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["merge", "--model"])
        .arg(fixtures().join("tiny/phi"))
        .arg("--adapter")
        .arg(fixtures().join("lora_grads/adapter"))
        .arg("--out")
        .arg(out.path().join("m"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("another base"), "{err}");
}
