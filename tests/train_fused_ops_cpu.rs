//! The GPU's training path on the CPU: the fused training ops (rotary with the transpose to
//! heads, masked attention probabilities with grouped heads, SwiGLU, the LoRA update; see
//! `qlora_engine::model::layers::fused_training`) run here through their CPU twins, and the
//! trainer's LoRA gradients must match peft's as the composite ops' do (`train_lora_grads.rs`),
//! with and without gradient checkpointing, on the dense and the bitsandbytes NF4 base. Also the
//! regression of the fused ops' first GPU run: the gradients a micro-step returns carry no op
//! graph (they kept every layer's operands alive until the optimizer step). Its own binary: the
//! switch is process-wide.

#[path = "support/lora_grads.rs"]
mod lora_grads;

use lora_grads::{batch, check, fixtures, model_with_adapter};
use qlora_studio::engine::candle_core::{self, Device};
use qlora_studio::engine::model::layers::set_fused_training_on_cpu;
use qlora_studio::train::trainer;

#[test]
fn fused_ops_give_peft_gradients_dense_nf4_and_checkpointed() {
    set_fused_training_on_cpu(true);
    let (model, lora) = model_with_adapter(&fixtures().join("tiny/llama"));
    check(&model, &lora, "grads.safetensors", false);
    check(&model, &lora, "grads_masked.safetensors", false);
    check(&model, &lora, "grads.safetensors", true);
    let (model, lora) = model_with_adapter(&fixtures().join("bnb4"));
    check(&model, &lora, "grads_nf4.safetensors", false);
}

#[test]
fn gradients_of_a_fused_micro_step_keep_no_graph() {
    set_fused_training_on_cpu(true);
    let (model, lora) = model_with_adapter(&fixtures().join("tiny/llama"));
    let reference = candle_core::safetensors::load(fixtures().join("lora_grads/grads.safetensors"), &Device::Cpu).unwrap();
    let (b, n) = batch(&reference);
    for checkpointing in [false, true] {
        let (_, grads) = trainer::step::micro_step(&model, &lora, &b, n as f64, 1.0, checkpointing).unwrap();
        for (i, g) in grads.iter().enumerate() {
            assert!(!g.track_op(), "checkpointing {checkpointing}: gradient {i} keeps an op graph");
        }
    }
}
