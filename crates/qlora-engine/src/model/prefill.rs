//! The prompt (several tokens at once) branch of the fused CUDA inference path (`fast.rs`):
//! a prefill is compute-bound in its projections, and what is around them should be as few
//! kernels and copies as the decode step's.
//!
//! * q's rotary is one kernel with the `[B, T, H, hd]` → `[B, H, T, hd]` transpose folded in
//!   (`ops::rope::rope_heads`, f32 inside) instead of a copy to heads and about eight candle ops
//!   (`ops::apply_rope`: casts, two products, a negation, a concatenation, a sum);
//! * grouped heads side by side against one K per group, no `repeat_kv` copies, the causal mask
//!   made inside the softmax kernel (`infer::masked_softmax`);
//! * the gated MLP's `silu(gate) · up` is one kernel (`ops::glu::swiglu`) instead of two;
//! * the softmax keeps each row (up to 1024 keys) in registers, one warp a row, and the
//!   attention output goes back to one row per token through a 16-byte copy kernel
//!   (`infer::heads_to_rows`) instead of candle's strided copy (26 µs a Mistral layer at 512
//!   tokens, 0.3 TB/s).
//!
//! k is rotated as it is written to the cache (`infer::kv_append_at`, in `fast.rs`).

use super::layers::{Attention, Mlp};
use crate::ops;
use candle_core::{Result, Tensor};
use qlora_quant::cuda::infer;

/// Attention of a prompt's `q` `[B, T, heads · hd]` (not yet rotated) against the layer's cache
/// `[2, B, kv_heads, capacity, hd]`, whose first `past + T` positions hold k (rotated) and v.
/// `tables` are the rotary `(cos, sin)` `[T, rotary_dim]` of positions `past ..`; returns
/// `[B, T, heads · hd]`.
pub(super) fn attention(attn: &Attention, q: &Tensor, cache: &Tensor, tables: (&Tensor, &Tensor), past: usize) -> Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    let (hd, nh, nkv) = (attn.head_dim, attn.num_heads, attn.num_kv_heads);
    let len = past + t;
    let q = ops::rope::rope_heads(&q.reshape((b, t, nh, hd))?, tables.0, tables.1)?;
    // Grouped heads side by side: [B, kv_heads, rep * T, hd] against one K per group.
    let q = q.reshape((b, nkv, (nh / nkv) * t, hd))?;
    let kc = cache.get(0)?.narrow(2, 0, len)?;
    let vc = cache.get(1)?.narrow(2, 0, len)?;
    let scores = q.matmul(&kc.t()?)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let probs = infer::masked_softmax(&scores, t, past, attn.sliding_window, scale)?;
    infer::heads_to_rows(&probs.matmul(&vc)?.reshape((b, nh, t, hd))?)
}

/// The feed-forward block for a prompt: SwiGLU as one kernel where the MLP is gated with SiLU,
/// the module's own forward otherwise.
pub(super) fn mlp(mlp: &Mlp, x: &Tensor) -> Result<Tensor> {
    mlp.forward_with(x, true)
}
