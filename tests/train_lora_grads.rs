//! The trainer's LoRA gradients against peft's, recorded by `tests/fixtures/make_fixtures.py`
//! (`lora_grads/`): the tiny random Llama with LoRA (r 4) on all seven projections, one
//! sequence of 24 tokens. Our forward in training mode, chunked loss and backward must give
//! every lora_A / lora_B gradient within 1e-3 relative, with and without gradient
//! checkpointing, on a dense base and on the bitsandbytes NF4 base; every parameter must get a
//! non-zero gradient (a fused op without backward would silently cut some to zero).

#[path = "support/lora_grads.rs"]
mod lora_grads;

use lora_grads::{check, config, fixtures, model_with_adapter};
use qlora_studio::engine::candle_core::{DType, Device, Tensor};
use qlora_studio::engine::linear::Quant;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::train::trainer;

#[test]
fn lora_gradients_match_peft_on_the_dense_base() {
    let (model, lora) = model_with_adapter(&fixtures().join("tiny/llama"));
    check(&model, &lora, "grads.safetensors", false);
    check(&model, &lora, "grads_masked.safetensors", false);
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let (model, lora) = model_with_adapter(&fixtures().join("tiny/llama"));
    check(&model, &lora, "grads.safetensors", true);
}

#[test]
fn lora_gradients_match_peft_on_the_bitsandbytes_nf4_base() {
    let (model, lora) = model_with_adapter(&fixtures().join("bnb4"));
    check(&model, &lora, "grads_nf4.safetensors", false);
}

#[test]
fn a_target_module_that_does_not_exist_is_a_clear_error() {
    let dir = fixtures().join("tiny/llama");
    let opts = LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu };
    let mut model = Model::load(&dir, &opts).unwrap();
    let mut cfg = config(&dir);
    cfg.lora.target_modules = vec!["q_proj".into(), "query_key_value".into()];
    let e = trainer::attach(&mut model, &cfg).unwrap_err().to_string();
    assert!(e.contains("`query_key_value`") && e.contains("q_proj") && e.contains("down_proj"), "{e}");
}

#[test]
fn closed_form_loss_gradient_matches_autograd_for_a_tied_head() {
    use qlora_studio::train::loss;
    let dir = fixtures().join("tiny/qwen2");
    let opts = LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu };
    let mut model = Model::load(&dir, &opts).unwrap();
    model.set_training(true);
    assert!(model.config().tie_embeddings);
    let t = 10;
    let ids = Tensor::from_vec((0..t as u32).map(|i| i * 3 + 1).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
    let labels = Tensor::from_vec((0..t as u32).map(|i| i * 5 + 2).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
    let w: Vec<f32> = (0..t).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
    let weights = Tensor::from_vec(w, (1, t), &Device::Cpu).unwrap();
    let hidden = model.forward_hidden(&ids, None).unwrap();
    let (l1, g1) = loss::loss_and_hidden_grad(&model, &hidden, &labels, &weights, 6.0, 2.0).unwrap();
    let (l2, g2) = loss::loss_and_hidden_grad_autograd(&model, &hidden, &labels, &weights, 6.0, 2.0).unwrap();
    assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
    let diff = g1.sub(&g2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = g2.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(scale > 0.0 && diff / scale < 1e-5, "closed form differs by {diff} (max {scale})");
}

/// The GPU's loss path (fused cross-entropy, `Wᵀ` read back for untied heads), run here through
/// the kernels' CPU twins, against candle's autograd: tied (Qwen2), untied (Llama), untied with
/// a head bias (Phi).
#[test]
fn fused_loss_gradient_matches_autograd_for_tied_untied_and_biased_heads() {
    use qlora_studio::train::loss;
    for name in ["qwen2", "llama", "phi"] {
        let dir = fixtures().join("tiny").join(name);
        let opts = LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu };
        let mut model = Model::load(&dir, &opts).unwrap();
        model.set_training(true);
        let t = 10;
        let v = model.config().vocab_size as u32;
        let ids = Tensor::from_vec((0..t as u32).map(|i| (i * 3 + 1) % v).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec((0..t as u32).map(|i| (i * 5 + 2) % v).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..t).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let weights = Tensor::from_vec(w, (1, t), &Device::Cpu).unwrap();
        let hidden = model.forward_hidden(&ids, None).unwrap();
        let (l1, g1) = loss::fused(&model, &hidden, &labels, &weights, 6.0, 2.0).unwrap();
        let (l2, g2) = loss::loss_and_hidden_grad_autograd(&model, &hidden, &labels, &weights, 6.0, 2.0).unwrap();
        assert!((l1 - l2).abs() < 1e-5, "{name}: {l1} vs {l2}");
        let diff = g1.sub(&g2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = g2.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0 && diff / scale < 1e-5, "{name}: fused differs by {diff} (max {scale})");
    }
}
