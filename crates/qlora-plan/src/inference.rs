//! Inference memory: weights + KV cache + activations of the largest step + overhead.
//!
//! The formulas follow what `qlora_engine` does today (read from its code, see
//! docs/PLANNER.md for each term):
//! * KV cache: `layers × 2 × kv_heads × head_dim × context × batch × bytes`, in the compute
//!   dtype, stored before GQA repetition. Not capped by a sliding window: the engine masks
//!   with the window but keeps every position.
//! * Largest step: a prefill of the whole context in one `Model::forward` call (the engine does
//!   not chunk prompts). Its peak is the residual stream plus the largest of the attention
//!   phase (q/k/v, GQA-repeated k/v, and the `[B, heads, T, T]` scores: matmul result, f32
//!   copy, masked copy, softmax and the cast back, 14 bytes per score in 16-bit), the MLP phase
//!   (gate, act, up, product) and the logits (`[B, T, vocab]` in the compute dtype plus the
//!   last row in f32), plus for quantized weights the transient dense copy of the largest
//!   projection (f32 dequantized, then the compute dtype).

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

/// KV cache bytes for `context` positions of `batch` sequences.
pub fn kv_cache_bytes(s: &ArchSpec, context: u64, batch: u64, dtype_bytes: u64) -> u64 {
    s.num_layers * 2 * s.num_kv_heads * s.head_dim * context * batch * dtype_bytes
}

/// Bytes per attention score alive at the softmax in inference: the matmul result is freed,
/// the f32 scores, their masked copy and the f32 softmax stay, then the cast back to `c`
/// (in fp32 both casts are no-ops that share storage).
fn score_bytes(c: u64) -> u64 {
    if c == 4 { 4 + 4 + 4 } else { 4 + 4 + 4 + c }
}

/// Transient activation bytes of the largest step: a prefill of `t` tokens (`batch` rows)
/// in compute dtype of `c` bytes.
pub fn prefill_activation_bytes(s: &ArchSpec, t: u64, batch: u64, c: u64, dequant_numel: u64) -> u64 {
    let bt = batch * t;
    let residual = 2 * bt * s.hidden_size * c;
    let qkv = bt * (s.q_dim() + 2 * s.kv_dim()) * c;
    // GQA-repeated k and v (when kv heads < heads) and the contiguous transposed k.
    let copies = if s.num_kv_heads == s.num_heads { 1 } else { 3 };
    let repeated_kv = copies * batch * s.num_heads * t * s.head_dim * c;
    let scores = batch * s.num_heads * t * t * score_bytes(c) + t * t * 4;
    let attention = qkv + repeated_kv + scores;
    let mlp_tensors = if s.parallel_block { 2 } else { 4 };
    let mlp = mlp_tensors * bt * s.intermediate_size * c;
    let logits = bt * s.vocab_size * c + batch * s.vocab_size * 4;
    // A quantized projection dequantizes into an f32 buffer, then the compute dtype.
    let dequant = dequant_numel * (4 + c);
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
    let kv = kv_cache_bytes(s, context, batch, c);
    let dequant = if precision.is_quantized() { largest_projection_numel(s, tensors) } else { 0 };
    let act = prefill_activation_bytes(s, context, batch, c, dequant);
    let working = weights + kv + act;
    let overhead = overheads.overhead_bytes(device, working);
    InferenceMemory {
        weights_bytes: weights,
        kv_cache_bytes: kv,
        activations_bytes: act,
        overhead_bytes: overhead,
        total_bytes: working + overhead,
    }
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

    /// A 2-token prefill of Mistral in 16-bit, by hand: residual 2·2·4096·2 = 32,768;
    /// attention: qkv 2·(4096+2048)·2 = 24,576, repeated k, v and kᵀ 3·32·2·128·2 = 49,152,
    /// scores 32·4·14 + 4·4 = 1,808 → 75,536; MLP 4·2·14336·2 = 229,376; logits
    /// 2·32000·2 + 32000·4 = 256,000. Peak = 32,768 + 256,000 = 288,768.
    #[test]
    fn prefill_activation_by_hand() {
        assert_eq!(prefill_activation_bytes(&mistral(), 2, 1, 2, 0), 288_768);
        // With a dequantized 14336×4096 projection: + 58,720,256 × 6.
        assert_eq!(prefill_activation_bytes(&mistral(), 2, 1, 2, 14336 * 4096), 288_768 + 58_720_256 * 6);
        // 64 tokens: attention wins. qkv 64·6144·2 = 786,432; k, v, kᵀ 3·32·64·128·2 = 1,572,864;
        // scores 32·4096·14 + 4096·4 = 1,851,392 → 4,210,688; MLP 4·64·14336·2 = 7,340,032;
        // logits 64·32000·2 + 128,000 = 4,224,000. Peak = 64·4096·2·2 (1,048,576) + 7,340,032.
        assert_eq!(prefill_activation_bytes(&mistral(), 64, 1, 2, 0), 1_048_576 + 7_340_032);
        // fp32, 1024 tokens: scores 32·1024²·12 + 1024²·4 = 406,847,488 dominate.
        let attn32 = 1024 * 6144 * 4 + 3 * 32 * 1024 * 128 * 4 + 406_847_488;
        assert_eq!(prefill_activation_bytes(&mistral(), 1024, 1, 4, 0), 2 * 1024 * 4096 * 4 + attn32);
    }
}
