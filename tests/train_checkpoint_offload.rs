//! Gradient checkpointing through the trainer's stash (`trainer/stash.rs`) and the loss's
//! closed-form head gradient, on the CPU (the GPU side, real host offload and the fused loss on
//! CUDA, is `gpu_train_offload.rs`):
//!
//! - a micro-step with `Checkpointing::Offload` gives exactly the gradients of
//!   `Checkpointing::OnDevice` (on the CPU the stash keeps the inputs as they are; the same
//!   code path as on a GPU up to where the inputs live), and both match the whole-graph step
//!   to float rounding;
//! - the CPU loss gives `∂L/∂h = ∂L/∂logits · W` in closed form for every head now that the
//!   engine exposes it (`Model::head`): tied (Qwen2), untied (Llama) and untied with a bias
//!   (Phi), against candle's autograd.

#[path = "support/lora_grads.rs"]
mod lora_grads;

use lora_grads::{batch, fixtures, model_with_adapter};
use qlora_studio::engine::candle_core::{self, DType, Device, Tensor};
use qlora_studio::engine::linear::Quant;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::train::loss;
use qlora_studio::train::trainer::stash::Checkpointing;
use qlora_studio::train::trainer::step;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn offloaded_checkpoints_give_the_gradients_of_checkpoints_kept_on_the_device() {
    let (model, lora) = model_with_adapter(&fixtures().join("tiny/llama"));
    let reference = candle_core::safetensors::load(fixtures().join("lora_grads/grads.safetensors"), &Device::Cpu).unwrap();
    let (b, n) = batch(&reference);
    let run = |mode: Checkpointing| step::micro_step(&model, &lora, &b, n as f64, 1.0, mode).unwrap();
    let (l_dev, g_dev) = run(Checkpointing::OnDevice);
    let (l_off, g_off) = run(Checkpointing::Offload);
    let (l_whole, g_whole) = run(Checkpointing::Off);
    assert_eq!(l_dev, l_off);
    assert!((l_dev - l_whole).abs() < 1e-6 * l_whole.abs(), "{l_dev} vs {l_whole}");
    assert_eq!(g_dev.len(), g_off.len());
    for (i, ((d, o), w)) in g_dev.iter().zip(&g_off).zip(&g_whole).enumerate() {
        assert_eq!(max_abs_diff(d, o), 0.0, "gradient {i} differs with offload");
        let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0, "gradient {i} is zero");
        assert!(max_abs_diff(d, w) <= 1e-4 * scale, "gradient {i}: checkpointed vs whole graph");
    }
}

#[test]
fn closed_form_head_gradient_matches_autograd_for_tied_untied_and_biased_heads() {
    for name in ["qwen2", "llama", "phi"] {
        let dir = fixtures().join("tiny").join(name);
        let opts = LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu };
        let mut model = Model::load(&dir, &opts).unwrap();
        model.set_training(true);
        let (w, bias) = model.head();
        assert_eq!(w.dims(), &[model.config().vocab_size, model.config().hidden_size], "{name}");
        assert_eq!(bias.is_some(), name == "phi", "{name}: only Phi's head has a bias");
        let (t, v) = (300, model.config().vocab_size as u32); // more than one loss chunk
        let ids = Tensor::from_vec((0..t as u32).map(|i| (i * 3 + 1) % v).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec((0..t as u32).map(|i| (i * 5 + 2) % v).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
        let wts: Vec<f32> = (0..t).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let weights = Tensor::from_vec(wts, (1, t), &Device::Cpu).unwrap();
        let hidden = model.forward_hidden(&ids, None).unwrap();
        let (l1, g1) = loss::loss_and_hidden_grad(&model, &hidden, &labels, &weights, 200.0, 2.0).unwrap();
        let (l2, g2) = loss::loss_and_hidden_grad_autograd(&model, &hidden, &labels, &weights, 200.0, 2.0).unwrap();
        assert!((l1 - l2).abs() < 1e-5 * l2.abs().max(1.0), "{name}: {l1} vs {l2}");
        let scale = g2.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = max_abs_diff(&g1, &g2);
        assert!(scale > 0.0 && diff / scale < 1e-5, "{name}: closed form differs by {diff} (max {scale})");
    }
}
