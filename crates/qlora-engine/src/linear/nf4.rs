//! NF4 storage: a thin `impl Linear` over qlora-quant's bitsandbytes-exact [`Nf4Tensor`].
//! The forward is qlora-quant's `nf4_linear` custom op, whose backward dequantizes the
//! weight again rather than keeping a dense copy alive (the QLoRA memory rule).

use super::{ArcLinear, GradSink, Linear, Replay, Storage};
use crate::error::Result;
use candle_core::{DType, Tensor};
use qlora_quant::Nf4Tensor;
use std::sync::Arc;

/// `y = x Wᵀ + b` with `W` in NF4 (blocks of 64, optionally double-quantized).
#[derive(Debug, Clone)]
pub struct Nf4Linear {
    weight: Nf4Tensor,
    bias: Option<Tensor>,
}

impl Nf4Linear {
    pub fn new(weight: Nf4Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Nf4Tensor {
        &self.weight
    }

    /// The dense weight for a backward product, dropped after the call.
    fn backward_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.weight.packed().device().is_cuda() && matches!(dtype, DType::BF16 | DType::F16) {
            return qlora_quant::cuda::prefill::dequantize_prefill(&self.weight, dtype);
        }
        self.weight.dequantize(dtype)
    }
}

/// Quantizes a dense `[out, in]` weight to NF4 (quantized from `w`'s values in `dtype`, as
/// bitsandbytes quantizes the checkpoint's 16-bit weights).
pub fn quantize(w: &Tensor, bias: Option<Tensor>, dtype: DType, double_quant: bool) -> Result<ArcLinear> {
    let q = Nf4Tensor::quantize(&w.to_dtype(dtype)?, double_quant).map_err(candle_core::Error::from)?;
    Ok(Arc::new(Nf4Linear::new(q, bias)))
}

impl Linear for Nf4Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = qlora_quant::nf4_linear(x, &self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn in_features(&self) -> usize {
        self.weight.shape().dims()[1]
    }

    fn out_features(&self) -> usize {
        self.weight.shape().dims()[0]
    }

    fn storage(&self) -> Storage {
        if self.weight.is_double_quant() { Storage::Nf4DoubleQuant } else { Storage::Nf4 }
    }

    fn dense_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.weight.dequantize(dtype)
    }

    fn differentiable_by_hand(&self) -> bool {
        true
    }

    /// `dy · W` with W dequantized for the call (on CUDA in 16 bits by the prefill product's
    /// wide kernel: same bits as [`Nf4Tensor::dequantize`], more loads in flight).
    fn backward(&self, x: Tensor, dy: &Tensor, _replay: &Replay, _grads: &mut dyn GradSink) -> candle_core::Result<Tensor> {
        let shape = x.shape().clone();
        drop(x);
        let n = self.out_features();
        let rows = dy.elem_count() / n.max(1);
        let w = self.backward_weight(dy.dtype())?;
        dy.reshape((rows, n))?.matmul(&w)?.reshape(shape)
    }

    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    fn storage_bytes(&self) -> usize {
        self.weight.storage_bytes() + self.bias.as_ref().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes())
    }

    fn as_nf4(&self) -> Option<(&Nf4Tensor, Option<&Tensor>)> {
        Some((&self.weight, self.bias.as_ref()))
    }
}
