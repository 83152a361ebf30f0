//! Device-generic (candle tensor ops) dequantization, used when the quantized data lives on a
//! GPU. It computes the same f32 products as the CPU kernels; fused CUDA kernels may replace it
//! (issue 7) and must match it.

use crate::nf4::{DoubleQuant, Nf4Tensor};
use candle_core::{DType, Result, Tensor, D};

/// Per-element f32 scale: `block_vals[i / blocksize]`, for the first `n` elements.
fn expand(block_vals: &Tensor, blocksize: usize, n: usize) -> Result<Tensor> {
    let blocks = block_vals.dim(0)?;
    block_vals.unsqueeze(1)?.broadcast_as((blocks, blocksize))?.flatten_all()?.narrow(0, 0, n)
}

/// `nested_code[q] * nested_absmax[block] + offset` on the tensors' device.
pub(crate) fn dq_absmax(d: &DoubleQuant) -> Result<Tensor> {
    let dev = d.q.device();
    let code = Tensor::new(d.nested_code.as_slice(), dev)?;
    let vals = code.index_select(&d.q.to_dtype(DType::U32)?, 0)?;
    let scale = expand(&d.nested_absmax, d.nested_blocksize, d.q.elem_count())?;
    (vals * scale)? + d.offset as f64
}

/// Unpacks nibbles (high first), looks codes up and scales them, then casts to `dtype`.
pub(crate) fn nf4_dequantize(w: &Nf4Tensor, dtype: DType) -> Result<Tensor> {
    let dev = w.device();
    let n = w.shape().elem_count();
    let p = w.packed().to_dtype(DType::F32)?;
    let hi = (&p / 16.0)?.floor()?;
    let lo = (&p - (&hi * 16.0)?)?;
    let idx = Tensor::stack(&[hi, lo], D::Minus1)?.flatten_all()?.narrow(0, 0, n)?.to_dtype(DType::U32)?;
    let code = Tensor::new(w.code().as_slice(), dev)?;
    let vals = code.index_select(&idx, 0)?;
    let absmax = w.absmax_f32()?;
    let scale = expand(&absmax, w.blocksize(), n)?;
    (vals * scale)?.to_dtype(dtype)?.reshape(w.shape())
}
