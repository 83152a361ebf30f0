//! Quantized weight storage for qlora-studio, bit-compatible with bitsandbytes.
//!
//! * [`Nf4Tensor`] (`nf4.rs`): 4-bit NormalFloat, blocks of 64, optional double quantization —
//!   the QLoRA base-weight format, byte-identical to `bitsandbytes.functional.quantize_4bit`.
//! * [`Int8Tensor`] (`int8.rs`): LLM.int8-style row-wise absmax 8-bit weights.
//! * [`ops`]: `nf4_linear` / `int8_linear`, `x Wᵀ` as candle custom ops whose backward
//!   dequantizes the weight again instead of keeping a dense copy alive until backward (the
//!   QLoRA memory rule).
//! * [`bnb_format`]: reading bitsandbytes pre-quantized checkpoints (`weight`, `weight.absmax`,
//!   `weight.quant_map`, nested state and the `quant_state.bitsandbytes__nf4` JSON).
//! * [`adamw`]: AdamW's per-step constants, laid out as the optimizer kernels take them (here
//!   rather than under `cuda` so that `qlora-train`'s CPU twin reads the same type).
//!
//! No dependency on the engine: the engine wraps these types in its `Linear` implementations.

pub mod adamw;
pub mod bnb_format;
pub mod codebook;
/// CUDA kernels (NF4 dequantize, fused decode GEMV) with CPU twins; `cuda` feature only.
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
mod generic;
pub mod kernels;
pub mod nf4;
mod tensor_util;
pub mod torch_sum;

pub use error::QuantError;
pub use nf4::{Absmax, DoubleQuant, Nf4Options, Nf4Tensor};
pub mod int8;
pub mod ops;

pub use int8::Int8Tensor;
pub use ops::{int8_linear, nf4_linear};
