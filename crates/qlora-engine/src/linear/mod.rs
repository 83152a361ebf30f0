//! One linear-layer abstraction whatever the weight's storage: dense (f32/f16/bf16), NF4
//! (bitsandbytes-exact, optionally double-quantized), int8, or a bitsandbytes pre-quantized
//! checkpoint. The storage is picked at load time; model code only sees [`Linear`].
//! LoRA wraps any of them as a decorator (see `crate::lora`).

use candle_core::{Result, Tensor};
use std::sync::Arc;

/// How a linear layer's weight is stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    Dense,
    Int8,
    Nf4,
    Nf4DoubleQuant,
}

/// A linear layer `y = x Wᵀ (+ b)`, `W` of shape `[out_features, in_features]` as in
/// PyTorch's `nn.Linear`. `x` is `[..., in_features]`.
pub trait Linear: Send + Sync + std::fmt::Debug {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    fn storage(&self) -> Storage;
    /// The weight as a dense tensor of `dtype` (dequantized when stored quantized), for
    /// merging adapters and for tests. Allocates: not for the forward pass.
    fn dense_weight(&self, dtype: candle_core::DType) -> Result<Tensor>;
    fn bias(&self) -> Option<&Tensor>;
    /// Bytes this layer's storage holds (weight, quantization state, bias).
    fn storage_bytes(&self) -> usize;
    /// The NF4 weight and bias when this layer is a plain NF4 projection (nothing wrapped
    /// around it), so inference can fuse several of them into one kernel launch. `None` for
    /// every other storage and for decorators such as LoRA, which then run their own forward.
    fn as_nf4(&self) -> Option<(&qlora_quant::Nf4Tensor, Option<&Tensor>)> {
        None
    }
}

pub type ArcLinear = Arc<dyn Linear>;

pub mod dense;
pub mod int8;
pub mod load;
pub mod nf4;
pub mod prequantized;

pub use dense::DenseLinear;
pub use load::{LinearLoader, Quant};
