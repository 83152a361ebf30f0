//! QLoRA training memory, term by term, as `qlora-train` runs it: an NF4 base (16-bit
//! embeddings, norms and head), f32 LoRA `A`/`B` on the chosen projections with f32 gradients
//! and two f32 AdamW moments, activations kept for backward (all layers, or with gradient
//! checkpointing only each layer's input plus one layer recomputed), the chunked loss's logits
//! buffer (`qlora_train::loss::CHUNK` positions at a time) and the runtime overhead.
//! The per-layer activation formula and its assumptions are in docs/PLANNER.md.

use crate::PlanError;
use crate::arch::ArchSpec;
use crate::overheads::{DeviceKind, Overheads};
use crate::tensors::{TensorSpec, layer_projections};
use crate::weights::{Precision, largest_projection_numel, weights_bytes};
use serde::{Deserialize, Serialize};

/// Positions per loss chunk (`qlora_train::loss::CHUNK`).
pub const LOSS_CHUNK: u64 = 256;

/// A QLoRA run to price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub seq_len: u64,
    pub micro_batch: u64,
    pub rank: u64,
    /// Projection names (`q_proj`, `down_proj`, `fc1`…); empty = every projection.
    pub targets: Vec<String>,
    pub checkpointing: bool,
    /// Base weights: `nf4` or `nf4_dq` (the QLoRA paper's double quantization).
    pub base: Precision,
    /// LoRA dropout > 0 keeps an f32 mask and a masked copy of each target's input.
    pub dropout: bool,
    /// With checkpointing on a GPU, the layer inputs wait in pinned host memory
    /// (`qlora-train`'s `offload_checkpoints`, on by default): the device keeps two.
    #[serde(default = "yes")]
    pub offload_checkpoints: bool,
}

fn yes() -> bool {
    true
}

impl Default for TrainOptions {
    /// The configuration the GPU benchmarks measure (issue 7): sequence 512, micro-batch 4,
    /// rank 16 on every projection, gradient checkpointing, NF4 + double quantization.
    fn default() -> Self {
        Self {
            seq_len: 512,
            micro_batch: 4,
            rank: 16,
            targets: vec![],
            checkpointing: true,
            base: Precision::Nf4Dq,
            dropout: false,
            offload_checkpoints: true,
        }
    }
}

/// Every term of a QLoRA run's peak memory, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingMemory {
    pub lora_parameters: u64,
    pub base_weights_bytes: u64,
    pub lora_weights_bytes: u64,
    pub lora_grads_bytes: u64,
    pub optimizer_bytes: u64,
    /// 0: the LoRA weights are themselves f32, there is no separate master copy.
    pub master_weights_bytes: u64,
    pub activations_bytes: u64,
    pub logits_bytes: u64,
    /// Pinned host memory holding the offloaded layer inputs (not device memory).
    pub host_offload_bytes: u64,
    /// Dense copy of the largest projection while its NF4 matmul runs.
    pub dequant_scratch_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
}

/// `(out, in)` of each targeted projection in one layer.
pub fn lora_targets(s: &ArchSpec, targets: &[String]) -> Result<Vec<(u64, u64)>, PlanError> {
    let all = layer_projections(s);
    let short = |name: &str| name.rsplit('.').next().unwrap_or(name).to_string();
    for t in targets {
        if !all.iter().any(|(n, _, _)| short(n) == *t) {
            let known: Vec<String> = all.iter().map(|(n, _, _)| short(n)).collect();
            return Err(PlanError::BadOption {
                option: "target".into(),
                reason: format!("'{t}' is not a projection of this model; use one of {}", known.join(", ")),
            });
        }
    }
    Ok(all.into_iter().filter(|(n, _, _)| targets.is_empty() || targets.contains(&short(n))).map(|(_, o, i)| (o, i)).collect())
}

/// LoRA parameters: `rank × (in + out)` per targeted projection per layer.
pub fn lora_parameters(s: &ArchSpec, rank: u64, targets: &[(u64, u64)]) -> u64 {
    s.num_layers * targets.iter().map(|(o, i)| rank * (i + o)).sum::<u64>()
}

/// Bytes per activation element as the trainer computes: f32 on the CPU (the CPU path's fast
/// and default compute dtype), bf16 on a GPU.
pub fn activation_elem_bytes(device: DeviceKind) -> u64 {
    match device {
        DeviceKind::Cpu => 4,
        DeviceKind::Cuda => 2,
    }
}

/// Bytes one decoder layer's autograd graph holds (every intermediate its forward made, which
/// candle keeps until backward), for `bt` = batch × seq tokens. On a GPU the trainer takes the
/// fused training ops (`qlora-engine` `ops::{rope, attention, glu}`, the trainer's LoRA update):
/// bf16 activations, RMSNorm, rotary (with the transpose to heads), the attention
/// probabilities (q·kᵀ, scale, mask and softmax in one op that keeps only `P`), SwiGLU and the
/// LoRA update each one op. On the CPU everything is f32 and composite.
pub fn layer_activation_bytes(s: &ArchSpec, batch: u64, t: u64, rank: u64, targets: &[(u64, u64)], dropout: bool, device: DeviceKind) -> u64 {
    match device {
        DeviceKind::Cuda => layer_activation_bytes_fused(s, batch, t, targets),
        DeviceKind::Cpu => layer_activation_bytes_composite(s, batch, t, rank, targets, dropout),
    }
}

/// The GPU's fused training layer (16-bit activations).
fn layer_activation_bytes_fused(s: &ArchSpec, batch: u64, t: u64, targets: &[(u64, u64)]) -> u64 {
    let c = activation_elem_bytes(DeviceKind::Cuda);
    let (bt, h) = (batch * t, s.hidden_size);
    let norms = if s.parallel_block { 1 } else { 2 };
    // Llama-style RMSNorm is one op (its output); Gemma's `1 + w` norm and Phi's LayerNorm stay
    // composite (f32 upcast, square, normalised, cast back, weighted).
    let per_norm = if matches!(s.arch, crate::arch::Arch::Gemma | crate::arch::Arch::Phi) { 8 + 4 + 2 * c } else { c };
    let hidden = bt * h * (norms * per_norm + 3 * c);
    // Projection outputs, rotated q and k (already head-major), v's head-major copy.
    let qkv = bt * 2 * (s.q_dim() + 2 * s.kv_dim()) * c;
    // The probabilities alone; grouped heads read K/V in place.
    let scores = batch * s.num_heads * t * t * c;
    // probs · v, and its copy back to rows.
    let attn_out = 2 * bt * s.q_dim() * c;
    // Gated SiLU: gate, up, SwiGLU's output. Gemma's GELU-tanh gate: composite (~4). Phi: fc1
    // and its activation.
    let mlp = match (s.parallel_block, s.arch) {
        (true, _) => 2,
        (false, crate::arch::Arch::Gemma) => 4,
        (false, _) => 3,
    } * bt
        * s.intermediate_size
        * c;
    // LoRA: one output-sized tensor per target (the update `s · drop(x) Aᵀ Bᵀ` is one op). The
    // base output and the sum may be alive too; counting one fits the measured peaks of both
    // Llama-family shapes with one factor (docs/PLANNER.md), counting three does not.
    let lora: u64 = targets.iter().map(|(o, _)| bt * o * c).sum();
    hidden + qkv + scores + attn_out + mlp + lora
}

/// The CPU's composite training layer (f32).
fn layer_activation_bytes_composite(s: &ArchSpec, batch: u64, t: u64, rank: u64, targets: &[(u64, u64)], dropout: bool) -> u64 {
    let c = activation_elem_bytes(DeviceKind::Cpu);
    let (bt, h) = (batch * t, s.hidden_size);
    let norms = if s.parallel_block { 1 } else { 2 };
    // Per norm: its square, the normalised value and the weighted output (no f32 upcast: f32
    // already); plus the layer input and residual sums.
    let per_norm = 8 + c;
    let hidden = bt * h * (norms * per_norm + 3 * c);
    let qkv_width = s.q_dim() + 2 * s.kv_dim();
    // Projection outputs, their head-major copies, rotary q and k (mul, neg, cat, mul, add).
    let qkv = bt * (2 * qkv_width + 4 * (s.q_dim() + s.kv_dim())) * c;
    let repeated = if s.num_kv_heads == s.num_heads { 0 } else { 2 * bt * s.q_dim() * c };
    // Scores: the matmul, scaled, masked, the softmax's subtract, exp and divide.
    let scores = batch * s.num_heads * t * t * (2 * c + 4 + 3 * 4);
    let attn_out = 2 * bt * s.q_dim() * c;
    let mlp = if s.parallel_block { 2 } else { 4 } * bt * s.intermediate_size * c;
    // LoRA: the dropped-out input, x·Aᵀ, its product with Bᵀ, scaled, added to the base output.
    let lora: u64 = targets.iter().map(|(o, i)| bt * (i * if dropout { 4 } else { 0 } + rank * 4 + o * (8 + c))).sum();
    hidden + qkv + repeated + scores + attn_out + mlp + lora
}

/// The chunked loss's buffer, per element of one chunk's `[B·min(T, 256), vocab]` logits. GPU:
/// the 16-bit logits and the 16-bit gradient the fused cross-entropy writes (2 + 2). CPU: the
/// f32 logits, the log-softmax's three f32 intermediates, its exponential, the weighted
/// softmax and the scattered gradient (4 × 7).
pub fn logits_bytes(s: &ArchSpec, batch: u64, seq_len: u64, device: DeviceKind) -> u64 {
    let per = match device {
        DeviceKind::Cuda => 4,
        DeviceKind::Cpu => 28,
    };
    batch * seq_len.min(LOSS_CHUNK) * s.vocab_size * per
}

/// Whether the trainer differentiates the layers by hand (`qlora-engine` `model/backward.rs`):
/// on a GPU with gradient checkpointing, for the Llama family (RMSNorm, SiLU-gated MLP). Its
/// recompute keeps only what the backward reads and frees as it goes, so fewer bytes than one
/// layer's autograd graph are alive at the peak (`training.manual_layer_graphs`).
pub fn manual_backward(s: &ArchSpec, o: &TrainOptions, device: DeviceKind) -> bool {
    use crate::arch::Arch;
    device == DeviceKind::Cuda && o.checkpointing && matches!(s.arch, Arch::Llama | Arch::Mistral | Arch::Qwen2)
}

/// Dense weight bytes the hand-written path holds at once: a projection's whole bf16 copy up to
/// 64 MiB; larger ones go through in slabs of at most 32 MiB (`qlora-quant` `cuda/train_gemm.rs`).
fn manual_dequant_scratch(s: &ArchSpec) -> u64 {
    const WHOLE: u64 = 64 << 20;
    const SLAB: u64 = 32 << 20;
    layer_projections(s).iter().map(|(_, o, i)| o * i * 2).map(|b| if b <= WHOLE { b } else { SLAB }).max().unwrap_or(0)
}

/// The whole QLoRA estimate.
pub fn training_memory(
    s: &ArchSpec,
    tensors: &[TensorSpec],
    o: &TrainOptions,
    device: DeviceKind,
    overheads: &Overheads,
) -> Result<TrainingMemory, PlanError> {
    if !matches!(o.base, Precision::Nf4 | Precision::Nf4Dq) {
        return Err(PlanError::BadOption { option: "base".into(), reason: "QLoRA trains on an nf4 or nf4_dq base".into() });
    }
    if o.seq_len == 0 || o.micro_batch == 0 || o.rank == 0 {
        return Err(PlanError::BadOption { option: "seq-len/micro-batch/rank".into(), reason: "must be at least 1".into() });
    }
    let targets = lora_targets(s, &o.targets)?;
    let params = lora_parameters(s, o.rank, &targets);
    let (b, t) = (o.micro_batch, o.seq_len);
    let layer = layer_activation_bytes(s, b, t, o.rank, &targets, o.dropout, device);
    let c = activation_elem_bytes(device);
    // Embedding output and final norm stay alive in both modes.
    let outside = 2 * b * t * s.hidden_size * c;
    let input = b * t * s.hidden_size * c;
    // With offload on a GPU the device keeps the last layer's input and the one being
    // brought back; the rest wait in pinned host memory.
    let offload = o.checkpointing && o.offload_checkpoints && device == DeviceKind::Cuda;
    let on_device_inputs = if offload { s.num_layers.min(2) } else { s.num_layers };
    let manual = manual_backward(s, o, device);
    let activations = if o.checkpointing {
        // The kept layer inputs, one layer recomputed, and its gradients during backward.
        let graphs = if manual { overheads.training.manual_layer_graphs() } else { overheads.training.layer_graphs(s.arch.model_type()) };
        on_device_inputs * input + (layer as f64 * graphs).ceil() as u64 + outside
    } else {
        (s.num_layers + 1) * layer + outside
    };
    // Pinned host buffers for every input but the last layer's (which stays on the device).
    let host_offload = if offload { s.num_layers.saturating_sub(1) * input } else { 0 };
    let base = weights_bytes(s, tensors, o.base);
    let scratch = if manual { manual_dequant_scratch(s) } else { largest_projection_numel(s, tensors) * (4 + 2) };
    let logits = logits_bytes(s, b, t, device);
    let working = base + params * 16 + activations + logits + scratch;
    let overhead = overheads.training_overhead_bytes(device, working);
    Ok(TrainingMemory {
        lora_parameters: params,
        base_weights_bytes: base,
        lora_weights_bytes: params * 4,
        lora_grads_bytes: params * 4,
        optimizer_bytes: params * 8,
        master_weights_bytes: 0,
        activations_bytes: activations,
        logits_bytes: logits,
        host_offload_bytes: host_offload,
        dequant_scratch_bytes: scratch,
        overhead_bytes: overhead,
        total_bytes: working + overhead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(name: &str) -> ArchSpec {
        let p = format!("{}/../../tests/fixtures/hub-configs/{name}/config.json", env!("CARGO_MANIFEST_DIR"));
        ArchSpec::from_json(Path::new(&p), &std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    /// TinyLlama, r = 16 on all seven projections, per layer:
    /// q 16·(2048+2048) = 65,536; k, v 16·(2048+256) = 36,864 each; o 65,536;
    /// gate, up 16·(2048+5632) = 122,880 each; down 122,880 → 573,440; × 22 = 12,615,680.
    #[test]
    fn lora_parameter_count_by_hand() {
        let s = spec("TinyLlama--TinyLlama-1.1B-Chat-v1.0");
        let all = lora_targets(&s, &[]).unwrap();
        assert_eq!(lora_parameters(&s, 16, &all), 12_615_680);
        let qv = lora_targets(&s, &["q_proj".into(), "v_proj".into()]).unwrap();
        assert_eq!(lora_parameters(&s, 8, &qv), 22 * 8 * (4096 + 2304));
        let e = lora_targets(&s, &["fc1".into()]).unwrap_err().to_string();
        assert!(e.contains("'fc1'") && e.contains("gate_proj"), "{e}");
    }

    /// Gemma's 256,000-token vocabulary: on a GPU micro-batch 4 × 256-position chunk × 256,000
    /// × (2 + 2) bytes = 1,048,576,000; micro-batch 1 is a quarter of it; on the CPU 28 bytes
    /// an element.
    #[test]
    fn gemma_logits_buffer_is_large() {
        let s = spec("google--gemma-2b");
        assert_eq!(logits_bytes(&s, 4, 512, DeviceKind::Cuda), 4 * 256 * 256_000 * 4);
        assert_eq!(logits_bytes(&s, 1, 512, DeviceKind::Cuda), 256 * 256_000 * 4);
        assert_eq!(logits_bytes(&s, 1, 100, DeviceKind::Cpu), 100 * 256_000 * 28);
    }

    #[test]
    fn checkpointing_saves_memory_and_every_term_adds_up() {
        let s = spec("mistralai--Mistral-7B-v0.1");
        let tensors = crate::tensors::from_arch(&s);
        let ov = Overheads::builtin().unwrap();
        let on = training_memory(&s, &tensors, &TrainOptions::default(), DeviceKind::Cuda, ov).unwrap();
        let off = training_memory(&s, &tensors, &TrainOptions { checkpointing: false, ..Default::default() }, DeviceKind::Cuda, ov).unwrap();
        assert!(off.activations_bytes > 5 * on.activations_bytes, "{} vs {}", off.activations_bytes, on.activations_bytes);
        let sum = on.base_weights_bytes
            + on.lora_weights_bytes
            + on.lora_grads_bytes
            + on.optimizer_bytes
            + on.master_weights_bytes
            + on.activations_bytes
            + on.logits_bytes
            + on.dequant_scratch_bytes
            + on.overhead_bytes;
        assert_eq!(sum, on.total_bytes);
        assert_eq!(on.optimizer_bytes, 2 * on.lora_weights_bytes);
    }

    /// Offload: on a GPU the device keeps at most 2 of Mistral's 32 layer inputs (4 × 512 ×
    /// 4096 × 2 bytes each: the last layer's and the one being brought back); pinned host
    /// buffers hold the 31 below the last. The CPU keeps all of them.
    #[test]
    fn offloaded_inputs_move_to_host_memory() {
        let s = spec("mistralai--Mistral-7B-v0.1");
        let tensors = crate::tensors::from_arch(&s);
        let ov = Overheads::builtin().unwrap();
        let input = 4 * 512 * 4096 * 2;
        let on = training_memory(&s, &tensors, &TrainOptions::default(), DeviceKind::Cuda, ov).unwrap();
        let off = training_memory(&s, &tensors, &TrainOptions { offload_checkpoints: false, ..Default::default() }, DeviceKind::Cuda, ov).unwrap();
        assert_eq!(on.host_offload_bytes, 31 * input);
        assert_eq!(off.host_offload_bytes, 0);
        assert_eq!(off.activations_bytes - on.activations_bytes, 30 * input);
        let cpu = training_memory(&s, &tensors, &TrainOptions::default(), DeviceKind::Cpu, ov).unwrap();
        assert_eq!(cpu.host_offload_bytes, 0, "the CPU keeps its inputs where they are");
    }
}
