//! The peft gradient fixtures (`tests/fixtures/lora_grads/`) and the check of our LoRA
//! gradients against them, shared by `train_lora_grads.rs` (the CPU's composite ops) and
//! `train_fused_ops_cpu.rs` (the GPU's fused ops through their CPU twins).

#![allow(dead_code)]

use qlora_studio::engine::candle_core::{self, DType, Device, Tensor};
use qlora_studio::engine::linear::Quant;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::train::config::TrainConfig;
use qlora_studio::train::data::batch::Batch;
use qlora_studio::train::lora::Attached;
use qlora_studio::train::{adapter, trainer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn config(model: &Path) -> TrainConfig {
    let yaml = format!(
        "model: {}\nquant: {{kind: none}}\ncompute_dtype: f32\n\
         lora: {{rank: 4, alpha: 8, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}\n\
         data: {{files: [unused.jsonl], max_len: 64}}\nmax_steps: 1\n",
        model.display()
    );
    TrainConfig::from_yaml_str(&yaml, None).unwrap()
}

/// Model at `dir` with the fixture's peft adapter attached as trainable LoRA.
pub fn model_with_adapter(dir: &Path) -> (Model, Attached) {
    let opts = LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu };
    let mut model = Model::load(dir, &opts).unwrap();
    model.set_training(true);
    let lora = trainer::attach(&mut model, &config(dir)).unwrap();
    assert_eq!(lora.len(), 2 * 7, "7 projections in each of 2 layers");
    adapter::load_into(&fixtures().join("lora_grads/adapter"), &lora).unwrap();
    (model, lora)
}

/// The fixture's ids and labels (-100 = ignored) as our shifted batch.
pub fn batch(reference: &HashMap<String, Tensor>) -> (Batch, usize) {
    let ids: Vec<i64> = reference["input_ids"].flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = reference["labels"].flatten_all().unwrap().to_vec1().unwrap();
    let t = ids.len();
    let mut b = Batch { rows: 1, seq: t, ids: ids.iter().map(|&i| i as u32).collect(), labels: vec![0; t], weights: vec![0.0; t], tokens: t };
    for p in 0..t - 1 {
        if labels[p + 1] != -100 {
            b.labels[p] = labels[p + 1] as u32;
            b.weights[p] = 1.0;
        }
    }
    let n = b.target_count();
    (b, n)
}

pub fn check(model: &Model, lora: &Attached, file: &str, checkpointing: bool) {
    let reference = candle_core::safetensors::load(fixtures().join("lora_grads").join(file), &Device::Cpu).unwrap();
    let (b, n) = batch(&reference);
    let (loss, grads) = trainer::step::micro_step(model, lora, &b, n as f64, 1.0, checkpointing).unwrap();
    let want_loss = reference["loss"].to_scalar::<f32>().unwrap() as f64;
    assert!((loss - want_loss).abs() / want_loss < 1e-4, "{file}: loss {loss} vs peft {want_loss}");
    let mut worst = 0f64;
    for (i, (path, _)) in lora.iter().enumerate() {
        let (a_name, b_name) = adapter::peft_names(path);
        for (name, g) in [(a_name, &grads[2 * i]), (b_name, &grads[2 * i + 1])] {
            let want = &reference[&name];
            let g_abs_max = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(g_abs_max > 0.0, "{file}: {name} got a zero gradient");
            let diff = g.sub(want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
            let rel = diff / scale;
            assert!(rel < 1e-3, "{file} (checkpointing {checkpointing}): {name} differs from peft by {rel:e} relative");
            worst = worst.max(rel);
        }
    }
    eprintln!("{file} checkpointing={checkpointing}: loss {loss:.6} (peft {want_loss:.6}), worst grad rel err {worst:e}");
}
