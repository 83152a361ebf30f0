//! Device-generic (candle tensor ops) dequantization, used when the quantized data lives on a
//! GPU. It computes the same f32 products as the CPU kernels; fused CUDA kernels may replace it
//! (issue 7) and must match it.

use crate::nf4::{DoubleQuant, Nf4Tensor};
use candle_core::{D, DType, Result, Tensor};

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

#[cfg(test)]
mod tests {
    use crate::Nf4Tensor;
    use candle_core::{DType, Device, Tensor};

    /// The tensor-op path (used off the CPU) gives the CPU kernels' values bit for bit; run here
    /// on CPU tensors, since it is device-generic.
    #[test]
    fn generic_path_equals_cpu_kernels() {
        let w = Tensor::randn(0f32, 0.05, (40, 100), &Device::Cpu).unwrap(); // ragged last block
        for dq in [false, true] {
            let q = Nf4Tensor::quantize(&w, dq).unwrap();
            for dtype in [DType::F32, DType::BF16] {
                let ours = super::nf4_dequantize(&q, dtype).unwrap().to_dtype(DType::F32).unwrap();
                let cpu = q.dequantize(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let a: Vec<u32> = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
                let b: Vec<u32> = cpu.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
                assert_eq!(a, b, "double quant {dq}, {dtype:?}");
            }
            if let crate::Absmax::Double(d) = q.absmax() {
                let g = super::dq_absmax(d).unwrap().to_vec1::<f32>().unwrap();
                let c = q.absmax_f32().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(g, c);
            }
        }
    }
}
