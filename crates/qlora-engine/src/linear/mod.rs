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
    /// Whether [`Linear::forward_train`] / [`Linear::backward`] are exact for this layer. The
    /// default backward (`dy · dense_weight`) is right for plain storages, which say so; a
    /// decorator that adds to the output (an adapter) must override both or stay `false`, and
    /// a layer holding one keeps autograd (`model::backward`).
    fn differentiable_by_hand(&self) -> bool {
        false
    }
    /// The forward of a layer that will be differentiated by hand ([`Linear::backward`]): no
    /// autograd graph, and what the backward needs besides `x` in the returned [`Replay`].
    /// Frozen layers need nothing (their forward builds no graph from an untracked `x`).
    fn forward_train(&self, x: &Tensor) -> Result<(Tensor, Replay)> {
        Ok((self.forward(x)?, Replay::default()))
    }
    /// What [`Linear::forward_train`]`(x)` would leave for the backward, without computing
    /// `y` (a recompute whose output nobody reads: the last projection of a layer). Draws
    /// the same dropout seed as the forward would.
    fn replay_for(&self, _x: &Tensor) -> Result<Replay> {
        Ok(Replay::default())
    }
    /// [`Linear::replay_for`] that may leave work to [`Linear::backward`] (a LoRA keeps only
    /// its dropout seed and adapter weights; its backward makes the rank-sized product from
    /// the dropped input it makes anyway): for the last projection of a recompute, whose
    /// backward comes next. Same dropout draw as `replay_for`.
    fn replay_lazy(&self, x: &Tensor) -> Result<Replay> {
        self.replay_for(x)
    }
    /// `∂L/∂x` of [`Linear::forward_train`]`(x)` given `dy = ∂L/∂y` (`[..., out_features]`),
    /// with the gradients of any trainable parameters (a LoRA's A and B) handed to `grads`.
    /// `x` is given up: it is dropped as soon as it has been read, so that (when the caller
    /// kept no other handle) its memory is free before the weight's dense copy is made.
    /// Frozen layers: `dy · W` with the weight made dense for the call and dropped after
    /// (dequantized again for a quantized storage, as the QLoRA memory rule asks).
    fn backward(&self, x: Tensor, dy: &Tensor, _replay: &Replay, _grads: &mut dyn GradSink) -> Result<Tensor> {
        let shape = x.shape().clone();
        drop(x);
        let n = self.out_features();
        let rows = dy.elem_count() / n.max(1);
        let w = self.dense_weight(dy.dtype())?;
        dy.reshape((rows, n))?.matmul(&w)?.reshape(shape)
    }
    /// [`Linear::backward`] for an `x` whose storage nobody else holds (no other handle, no
    /// view): the layer may overwrite it (a LoRA applies its dropout over it in place instead
    /// of making a dropped copy, one input-sized buffer less during the call: on Mistral-7B's
    /// down projection 56 MiB, next to gate and up). Same results. Default: `backward`.
    fn backward_owned(&self, x: Tensor, dy: &Tensor, replay: &Replay, grads: &mut dyn GradSink) -> Result<Tensor> {
        self.backward(x, dy, replay, grads)
    }
}

/// `acc + dy · W` (`acc` shaped as the layer's input, `dy` `[..., out_features]`): a frozen
/// layer's input gradient added to one made elsewhere (a LoRA's), which storages on a GPU
/// accumulate in place (NF4: a slab of the dense weight at a time) instead of making the
/// product and the dense weight whole. `acc` is given up.
pub fn backward_add(layer: &dyn Linear, dy: &Tensor, acc: Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some((w, _)) = layer.as_nf4()
        && acc.device().is_cuda()
        && acc.dtype() == dy.dtype()
        && matches!(acc.dtype(), candle_core::DType::BF16 | candle_core::DType::F16)
    {
        let (acc, dy) = (acc.contiguous()?, dy.contiguous()?);
        qlora_quant::cuda::train_gemm::nf4_backward_add(&acc, &dy, w)?;
        return Ok(acc);
    }
    let n = layer.out_features();
    let rows = dy.elem_count() / n.max(1);
    let w = layer.dense_weight(dy.dtype())?;
    let shape = acc.shape().clone();
    acc + dy.reshape((rows, n))?.matmul(&w)?.reshape(shape)?
}

/// What a layer's [`Linear::forward_train`] leaves for its [`Linear::backward`] besides the
/// input: the seed of a dropout draw (replayed, not stored as a mask) and small tensors
/// (a LoRA's adapter weights cast to the compute dtype, its scaled rank-sized product).
/// Opaque to the caller, who only hands it back.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub seed: Option<u64>,
    pub saved: Vec<Tensor>,
}

/// Where a hand-written backward puts the gradients of trainable parameters, keyed by the
/// parameter's tensor (a candle `Var`'s). Called once per parameter and backward.
pub trait GradSink {
    fn add(&mut self, param: &Tensor, grad: Tensor) -> Result<()>;
}

pub type ArcLinear = Arc<dyn Linear>;

pub mod dense;
pub mod int8;
pub mod load;
pub mod nf4;
pub mod prequantized;

pub use dense::DenseLinear;
pub use load::{LinearLoader, Quant};
