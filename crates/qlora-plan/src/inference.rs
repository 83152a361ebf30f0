//! Inference memory: weights + KV cache + activations of the largest step + overhead.
//!
//! The formulas follow what `qlora_engine` does today (read from its code, checked on an H100
//! by `bench/gpu/memcheck.sh`; docs/PLANNER.md states each term). The engine has two paths:
//!
//! * **CUDA** (`model/fast.rs`): the KV cache is preallocated for prompt + new tokens, rounded
//!   up to 256 positions, in the compute dtype, before GQA repetition. A prefill's peak is the
//!   attention of one layer: the residual stream (the previous layer's output and pending MLP
//!   result, the new sum and its norm), q/k/v, three q-sized copies (transposed, rotated, the
//!   attention output), and three `[B, heads, T, T]` buffers in the compute dtype (the scores,
//!   the fused masked softmax's output, and a third of that size the H100 shows on GQA models
//!   and not on Phi-2: counted always, so the plan errs high by under 2% there); or the MLP
//!   (gate, up, activation, product) when larger.
//! * **CPU** (the unfused path): the cache grows with each call (`Tensor::cat`); attention goes
//!   through f32 scores (matmul result, f32 copy, masked copy, softmax, the cast back: 14 bytes
//!   per score in 16-bit) with GQA-repeated k/v copies.
//!
//! Both then compute the logits of the last position only, and a quantized projection used
//! by a prefill of more than 8 rows is dequantized into a transient dense copy (the largest
//! projection counted): NF4 straight into the compute dtype on CUDA, through f32 on the CPU;
//! int8 through an f32 table lookup and two f32 products on CUDA (8 bytes + the output).
//! Up to 8 rows, NF4 runs fused kernels that read the 4-bit weight in place.

use crate::arch::ArchSpec;
use crate::overheads::{DeviceKind, Overheads};
use crate::tensors::TensorSpec;
use crate::weights::{Precision, largest_projection_numel, weights_bytes};
use serde::{Deserialize, Serialize};

/// Per-precision inference memory, each term in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceMemory {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub activations_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
}

/// Positions the CUDA path's KV cache is allocated in multiples of (`model/fast.rs`).
pub const CUDA_CACHE_CHUNK: u64 = 256;

/// Rows of a prefill up to which NF4 projections run fused (no dense copy).
pub const FUSED_MAX_ROWS: u64 = 8;

/// KV cache bytes for `context` positions of `batch` sequences.
pub fn kv_cache_bytes(s: &ArchSpec, context: u64, batch: u64, dtype_bytes: u64) -> u64 {
    s.num_layers * 2 * s.num_kv_heads * s.head_dim * context * batch * dtype_bytes
}

/// The KV cache as the engine allocates it on `device` for `context` positions.
pub fn kv_cache_allocated(s: &ArchSpec, context: u64, batch: u64, dtype_bytes: u64, device: DeviceKind) -> u64 {
    let positions = match device {
        DeviceKind::Cuda => context.next_multiple_of(CUDA_CACHE_CHUNK),
        DeviceKind::Cpu => context,
    };
    kv_cache_bytes(s, positions, batch, dtype_bytes)
}

/// Bytes per attention score alive at the softmax on the CPU path: the matmul result is
/// freed, the f32 scores, their masked copy and the f32 softmax stay, then the cast back to
/// `c` (in fp32 both casts are no-ops that share storage).
fn score_bytes(c: u64) -> u64 {
    if c == 4 { 4 + 4 + 4 } else { 4 + 4 + 4 + c }
}

/// Bytes per element of the transient dense copy a quantized projection makes in a prefill
/// of `rows` rows (0 when fused kernels read the weight in place).
pub fn dequant_bytes_per_element(precision: Precision, c: u64, rows: u64, device: DeviceKind) -> u64 {
    match (precision, device) {
        (Precision::Nf4 | Precision::Nf4Dq, _) if rows <= FUSED_MAX_ROWS => 0,
        (Precision::Nf4 | Precision::Nf4Dq, DeviceKind::Cuda) => c,
        (Precision::Int8, DeviceKind::Cuda) => 8 + c,
        (Precision::Nf4 | Precision::Nf4Dq | Precision::Int8, DeviceKind::Cpu) => 4 + c,
        _ => 0,
    }
}

/// Transient activation bytes of the largest step: a prefill of `t` tokens (`batch` rows)
/// in compute dtype of `c` bytes on `device`, plus `dequant` bytes of a projection's copy.
pub fn prefill_activation_bytes(s: &ArchSpec, t: u64, batch: u64, c: u64, dequant: u64, device: DeviceKind) -> u64 {
    let bt = batch * t;
    let qkv = bt * (s.q_dim() + 2 * s.kv_dim()) * c;
    let mlp_tensors = if s.parallel_block { 2 } else { 4 };
    let mlp = mlp_tensors * bt * s.intermediate_size * c;
    let logits = batch * s.vocab_size * (c + 4);
    let (residual, attention) = match device {
        DeviceKind::Cuda => {
            let residual = 4 * bt * s.hidden_size * c;
            let q_copies = 3 * bt * s.q_dim() * c;
            let scores = 3 * batch * s.num_heads * t * t * c;
            (residual, qkv + q_copies + scores)
        }
        DeviceKind::Cpu => {
            let residual = 2 * bt * s.hidden_size * c;
            // GQA-repeated k and v (when kv heads < heads) and the contiguous transposed k.
            let copies = if s.num_kv_heads == s.num_heads { 1 } else { 3 };
            let repeated_kv = copies * batch * s.num_heads * t * s.head_dim * c;
            let scores = batch * s.num_heads * t * t * score_bytes(c) + t * t * 4;
            (residual, qkv + repeated_kv + scores)
        }
    };
    residual + attention.max(mlp).max(logits) + dequant
}

/// Inference memory for one precision.
pub fn inference_memory(
    s: &ArchSpec,
    tensors: &[TensorSpec],
    precision: Precision,
    context: u64,
    batch: u64,
    device: DeviceKind,
    overheads: &Overheads,
) -> InferenceMemory {
    let c = precision.compute_bytes();
    let weights = weights_bytes(s, tensors, precision);
    let kv = kv_cache_allocated(s, context, batch, c, device);
    let per_element = dequant_bytes_per_element(precision, c, batch * context, device);
    let dequant = if per_element > 0 { largest_projection_numel(s, tensors) * per_element } else { 0 };
    let act = prefill_activation_bytes(s, context, batch, c, dequant, device);
    let working = weights + kv + act;
    let overhead = overheads.overhead_bytes(device, working);
    InferenceMemory { weights_bytes: weights, kv_cache_bytes: kv, activations_bytes: act, overhead_bytes: overhead, total_bytes: working + overhead }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mistral() -> ArchSpec {
        let text = include_str!("../../../tests/fixtures/hub-configs/mistralai--Mistral-7B-v0.1/config.json");
        ArchSpec::from_json(Path::new("config.json"), text).unwrap()
    }

    /// Mistral 7B at 4096 tokens, batch 1, 16-bit: 32 layers × 2 × 8 kv heads × 128 × 4096 × 2
    /// = 536,870,912 bytes (512 MiB), not the 2 GiB a full-head (32 heads) cache would take.
    #[test]
    fn kv_cache_uses_kv_heads_not_heads() {
        assert_eq!(kv_cache_bytes(&mistral(), 4096, 1, 2), 536_870_912);
        assert_eq!(kv_cache_bytes(&mistral(), 4096, 2, 4), 4 * 536_870_912);
    }

    /// On the CUDA path the cache is allocated in chunks of 256 positions.
    #[test]
    fn cuda_cache_is_allocated_in_chunks() {
        let m = mistral();
        assert_eq!(kv_cache_allocated(&m, 2, 1, 2, DeviceKind::Cpu), 262_144);
        assert_eq!(kv_cache_allocated(&m, 2, 1, 2, DeviceKind::Cuda), 33_554_432);
        assert_eq!(kv_cache_allocated(&m, 4096, 1, 2, DeviceKind::Cuda), 536_870_912);
    }

    #[test]
    fn dense_copies_only_where_the_engine_makes_them() {
        use Precision::*;
        let d = dequant_bytes_per_element;
        assert_eq!(d(Nf4Dq, 2, 8, DeviceKind::Cuda), 0, "up to 8 rows NF4 runs fused");
        assert_eq!(d(Nf4Dq, 2, 9, DeviceKind::Cuda), 2);
        assert_eq!(d(Nf4, 2, 2048, DeviceKind::Cpu), 6);
        assert_eq!(d(Int8, 2, 1, DeviceKind::Cuda), 10);
        assert_eq!(d(Int8, 2, 1, DeviceKind::Cpu), 6);
        assert_eq!(d(Bf16, 2, 2048, DeviceKind::Cuda), 0);
    }

    /// CPU path, a 2-token prefill of Mistral in 16-bit, by hand: residual 2·2·4096·2 = 32,768;
    /// attention: qkv 2·(4096+2048)·2 = 24,576, repeated k, v and kᵀ 3·32·2·128·2 = 49,152,
    /// scores 32·4·14 + 4·4 = 1,808 → 75,536; MLP 4·2·14336·2 = 229,376; last-position
    /// logits 32000·(2 + 4) = 192,000. Peak = 32,768 + 229,376 = 262,144.
    #[test]
    fn cpu_prefill_activation_by_hand() {
        let cpu = DeviceKind::Cpu;
        assert_eq!(prefill_activation_bytes(&mistral(), 2, 1, 2, 0, cpu), 262_144);
        // With a dequantized 14336×4096 projection through f32: + 58,720,256 × 6.
        assert_eq!(prefill_activation_bytes(&mistral(), 2, 1, 2, 58_720_256 * 6, cpu), 262_144 + 58_720_256 * 6);
        // 64 tokens: qkv 64·6144·2 = 786,432; k, v, kᵀ 3·32·64·128·2 = 1,572,864; scores
        // 32·4096·14 + 4096·4 = 1,851,392 → 4,210,688; MLP 4·64·14336·2 = 7,340,032 wins.
        // Peak = 64·4096·2·2 (1,048,576) + 7,340,032.
        assert_eq!(prefill_activation_bytes(&mistral(), 64, 1, 2, 0, cpu), 1_048_576 + 7_340_032);
        // fp32, 1024 tokens: scores 32·1024²·12 + 1024²·4 = 406,847,488 dominate.
        let attn32 = 1024 * 6144 * 4 + 3 * 32 * 1024 * 128 * 4 + 406_847_488;
        assert_eq!(prefill_activation_bytes(&mistral(), 1024, 1, 4, 0, cpu), 2 * 1024 * 4096 * 4 + attn32);
    }

    /// CUDA path, Mistral, 2048 tokens in bf16: residual 4·2048·4096·2 = 67,108,864; qkv
    /// 2048·6144·2 = 25,165,824; q copies 3·2048·4096·2 = 50,331,648; scores 3·32·2048²·2 =
    /// 805,306,368 → attention 880,803,840 (MLP 4·2048·14336·2 = 234,881,024).
    /// Peak = 67,108,864 + 880,803,840 = 947,912,704.
    #[test]
    fn cuda_prefill_activation_by_hand() {
        assert_eq!(prefill_activation_bytes(&mistral(), 2048, 1, 2, 0, DeviceKind::Cuda), 947_912_704);
        // 16 tokens: the MLP wins: 4·16·14336·2 = 1,835,008 vs attention 16·6144·2 +
        // 3·16·4096·2 + 3·32·256·2 = 196,608 + 393,216 + 49,152; residual 4·16·4096·2 = 524,288.
        assert_eq!(prefill_activation_bytes(&mistral(), 16, 1, 2, 0, DeviceKind::Cuda), 524_288 + 1_835_008);
    }
}
