//! Dense storage: the weight kept as a plain f32/f16/bf16 tensor, the forward a matmul.

use super::{Linear, Storage};
use candle_core::{DType, Module, Result, Tensor};

/// `y = x Wᵀ + b` with `W` stored densely.
#[derive(Debug, Clone)]
pub struct DenseLinear {
    inner: candle_nn::Linear,
}

impl DenseLinear {
    /// `weight` is `[out_features, in_features]`, `bias` `[out_features]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias) }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
}

impl Linear for DenseLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }

    fn in_features(&self) -> usize {
        self.inner.weight().dims()[1]
    }

    fn out_features(&self) -> usize {
        self.inner.weight().dims()[0]
    }

    fn storage(&self) -> Storage {
        Storage::Dense
    }

    fn dense_weight(&self, dtype: DType) -> Result<Tensor> {
        self.inner.weight().to_dtype(dtype)
    }

    fn differentiable_by_hand(&self) -> bool {
        true
    }

    fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    fn storage_bytes(&self) -> usize {
        let w = self.inner.weight();
        let b = self.inner.bias().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
        w.elem_count() * w.dtype().size_in_bytes() + b
    }
}
