// A PEFT adapter written by peft 0.21.2 (`tests/fixtures/peft/`) on the engine's tiny llama
// reproduces peft's logits within 1e-4 (f32): as trained, at set_scale 0.5, with rsLoRA, at
// scale 0 (the base model's logits), merged into a dense copy, and after switching/dropping
// adapters on the same loaded model (no reload).

use qlora_studio::engine::candle_core::{DType, Device, IndexOp, Tensor};
use qlora_studio::engine::lora::{attach_adapter, detach_all, set_scale_all};
use qlora_studio::engine::{LoadOptions, Model, Weights};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tensor(file: &Path, name: &str) -> Tensor {
    let w = Weights::from_files(file.parent().unwrap(), &[file.to_path_buf()])
        .unwrap_or_else(|e| panic!("{}: {e}; run `python3 tests/fixtures/make_fixtures.py tiny peft`", file.display()));
    w.get(name, &Device::Cpu).unwrap()
}

fn logits(model: &Model, ids: &Tensor) -> Tensor {
    model.forward(ids, None).unwrap().i(0).unwrap().to_dtype(DType::F32).unwrap()
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}");
    let d = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4, "{what}: logits differ from peft's by {d}");
}

#[test]
fn peft_adapter_reproduces_peft_logits() {
    let refs = fixtures().join("peft/reference.safetensors");
    let ids = tensor(&refs, "input_ids").to_dtype(DType::U32).unwrap();
    let mut model = Model::load(&fixtures().join("tiny/llama"), &LoadOptions::default()).unwrap();
    let base = logits(&model, &ids);
    let layers = model.lora_layers().unwrap();
    let dev = Device::Cpu;

    attach_adapter(&fixtures().join("peft/adapter"), &layers, &dev, None).unwrap();
    let with = logits(&model, &ids);
    assert_close("adapter", &with, &tensor(&refs, "logits"));

    set_scale_all(&layers, 0.5);
    assert_close("set_scale 0.5", &logits(&model, &ids), &tensor(&refs, "logits_scale_0_5"));
    set_scale_all(&layers, 0.0);
    assert_close("scale 0 = base", &logits(&model, &ids), &base);
    let tiny_ref = fixtures().join("tiny/llama/reference.safetensors");
    assert_close("scale 0 = transformers' base logits", &logits(&model, &ids), &tensor(&tiny_ref, "logits"));
    set_scale_all(&layers, 1.0);

    // switch to the rsLoRA adapter on the same loaded model, then drop it
    attach_adapter(&fixtures().join("peft/adapter_rslora"), &layers, &dev, None).unwrap();
    assert_close("rslora", &logits(&model, &ids), &tensor(&refs, "logits_rslora"));
    detach_all(&layers);
    assert_close("detached", &logits(&model, &ids), &base);

    // merged into a dense copy (peft's merge_and_unload)
    attach_adapter(&fixtures().join("peft/adapter"), &layers, &dev, None).unwrap();
    let mut merged = Model::load(&fixtures().join("tiny/llama"), &LoadOptions::default()).unwrap();
    for (path, layer) in &layers {
        merged.replace_projection(path, Arc::new(layer.merged(DType::F32).unwrap())).unwrap();
    }
    assert_close("merged", &logits(&merged, &ids), &tensor(&refs, "logits_merged"));
    assert_close("merged vs adapter", &logits(&merged, &ids), &with);
}
