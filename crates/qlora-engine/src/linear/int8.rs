//! Int8 storage: a thin `impl Linear` over qlora-quant's [`Int8Tensor`] (LLM.int8-style
//! row-wise absmax: each output row scaled by its largest magnitude to -127..127). The
//! forward dequantizes inside qlora-quant's `int8_linear` custom op (weight-only
//! quantization; activations stay in the compute dtype).

use super::{ArcLinear, Linear, Storage};
use crate::error::Result;
use candle_core::{DType, Tensor};
use qlora_quant::Int8Tensor;
use std::sync::Arc;

/// `y = x Wᵀ + b` with `W` in row-wise absmax int8.
#[derive(Debug, Clone)]
pub struct Int8Linear {
    weight: Int8Tensor,
    bias: Option<Tensor>,
}

impl Int8Linear {
    pub fn new(weight: Int8Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

/// Quantizes a dense `[out, in]` weight to int8.
pub fn quantize(w: &Tensor, bias: Option<Tensor>, dtype: DType) -> Result<ArcLinear> {
    let q = Int8Tensor::quantize(&w.to_dtype(dtype)?).map_err(candle_core::Error::from)?;
    Ok(Arc::new(Int8Linear::new(q, bias)))
}

impl Linear for Int8Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = qlora_quant::int8_linear(x, &self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    fn in_features(&self) -> usize {
        self.weight.cols()
    }

    fn out_features(&self) -> usize {
        self.weight.rows()
    }

    fn storage(&self) -> Storage {
        Storage::Int8
    }

    fn dense_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.weight.dequantize(dtype)
    }

    fn differentiable_by_hand(&self) -> bool {
        true
    }

    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    fn storage_bytes(&self) -> usize {
        self.weight.storage_bytes() + self.bias.as_ref().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes())
    }
}
