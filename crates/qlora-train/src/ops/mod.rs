//! Training ops with a CUDA kernel (`qlora-quant/kernels/train.cu`, with the `cuda` feature) and
//! a CPU twin computing the same function, so the GPU result is checked against the CPU:
//!
//! - [`dropout`]: LoRA dropout whose mask is a pure function of `(seed, element index)`. A
//!   checkpointed layer's recompute and the backward replay it from the seed instead of
//!   keeping an f32 mask (and the mask never crosses from the host to the GPU).
//! - [`cross_entropy`]: per-row masked cross-entropy and its logits gradient, read from 16-bit
//!   logits; the full-vocabulary f32 logits, log-softmax and softmax never exist.
//! - [`lora_delta`]: the LoRA update `scale · dropout(x) Aᵀ Bᵀ` as one op with its backward
//!   written out (the training path on a GPU).
//! - [`adamw`]: AdamW's update in place, three kernels per parameter instead of ~15 candle
//!   ops, bit-identical to the composite; on CUDA one launch for all parameters
//!   ([`adamw::step_multi`], `qlora-quant/kernels/optim.cu`), the same bits again.

pub mod adamw;
pub mod cross_entropy;
pub mod dropout;
pub mod lora_delta;
