//! The decoder's building blocks written from candle's primitive ops, so that gradients flow
//! through them. candle-nn's fused `rms_norm`, `layer_norm`, `softmax_last_dim`, `rope` and
//! `sdpa` have no backward pass: used on the way from the loss to a LoRA parameter they
//! silently cut the gradient. Each function here follows the arithmetic (and the dtype
//! casts) of the transformers module it replaces, so f32 results match the reference within
//! float rounding.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
//! let p = qlora_engine::ops::softmax_last_dim(&x).unwrap();
//! let sum: f32 = p.sum_all().unwrap().to_scalar().unwrap();
//! assert!((sum - 1.0).abs() < 1e-6);
//! ```

use candle_core::{D, DType, Result, Tensor};

pub mod attention;
pub mod glu;
pub mod rope;
mod twin;

/// Llama's RMSNorm: normalise in f32, cast back to the input dtype, then multiply by `weight`.
/// On CUDA one fused kernel, forward and backward ([`fused_rms::rms_norm`], same roundings).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && weight.dtype() == x.dtype() && weight.rank() == 1 {
        return fused_rms::rms_norm(x, weight, eps);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Gemma's RMSNorm: `normalize(x) * (1 + weight)`, all in f32, then cast to the input dtype.
pub fn rms_norm_one_plus(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    let scale = (weight.to_dtype(DType::F32)? + 1.0)?;
    normed.broadcast_mul(&scale)?.to_dtype(dtype)
}

/// LayerNorm over the last dimension with weight and bias (computed in f32).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centred = xf.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    let w = weight.to_dtype(DType::F32)?;
    let b = bias.to_dtype(DType::F32)?;
    normed.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(dtype)
}

/// Softmax over the last dimension. The row maximum is subtracted for stability and detached
/// (it cancels out of the result, so its gradient is zero anyway). On CUDA, f32 input goes
/// through one fused kernel whose backward needs only the output ([`fused_softmax`]): the
/// graph then keeps one `[B, H, T, T]` tensor instead of four.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 {
        return fused_softmax::softmax(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// `[-x2, x1]` where `x1`, `x2` are the two halves of the last dimension.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary embedding, transformers' non-interleaved layout, on the first `cos.dim(-1)`
/// dimensions of `x` (`[B, H, T, head_dim]`); the rest (Phi's partial rotary) passes through.
/// `cos`/`sin` are `[T, rotary_dim]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let rot = cos.dim(D::Minus1)?;
    let head_dim = x.dim(D::Minus1)?;
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    if rot == head_dim {
        return x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?;
    }
    let xr = x.narrow(D::Minus1, 0, rot)?;
    let xp = x.narrow(D::Minus1, rot, head_dim - rot)?;
    let rotated = (xr.broadcast_mul(&cos)? + rotate_half(&xr)?.broadcast_mul(&sin)?)?;
    Tensor::cat(&[&rotated, &xp], D::Minus1)
}

/// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`); candle's `gelu` is
/// exactly this formula and has a backward pass.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

/// The CUDA softmax with its backward (`qlora-quant/kernels/train.cu`), and CPU twins of both
/// (f32) so the op runs, and is checked, anywhere.
#[cfg(feature = "cuda")]
pub mod fused_softmax {
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

    fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("softmax: input is not contiguous") };
        Ok((&s.as_slice::<f32>()?[a..b], *l.dims().last().unwrap_or(&1)))
    }

    struct Softmax;

    impl CustomOp1 for Softmax {
        fn name(&self) -> &'static str {
            "softmax-last-dim"
        }
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let (x, cols) = rows(s, l)?;
            let mut y = Vec::with_capacity(x.len());
            for row in x.chunks(cols.max(1)) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
                let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
                let sum: f32 = e.iter().sum();
                y.extend(e.into_iter().map(|v| v / sum));
            }
            Ok((CpuStorage::F32(y), l.shape().clone()))
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            Ok((qlora_quant::cuda::train::softmax_f32(s, l)?, l.shape().clone()))
        }
        fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxBwd)?))
        }
    }

    struct SoftmaxBwd;

    impl CustomOp2 for SoftmaxBwd {
        fn name(&self) -> &'static str {
            "softmax-last-dim-bwd"
        }
        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
            let ((y, cols), (g, _)) = (rows(s1, l1)?, rows(s2, l2)?);
            let mut dx = Vec::with_capacity(y.len());
            for (yr, gr) in y.chunks(cols.max(1)).zip(g.chunks(cols.max(1))) {
                let s: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                dx.extend(yr.iter().zip(gr).map(|(a, b)| a * (b - s)));
            }
            Ok((CpuStorage::F32(dx), l1.shape().clone()))
        }
        fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
            Ok((qlora_quant::cuda::train::softmax_bwd_f32((s1, l1), (s2, l2))?, l1.shape().clone()))
        }
    }

    /// Softmax over the last dimension of an f32 tensor, differentiable.
    pub fn softmax(x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(Softmax)
    }
}

/// Llama RMSNorm as one CUDA kernel with a backward for the input (the weight is frozen), and
/// CPU twins of both; the graph keeps the output only. The backward alone
/// ([`fused_rms::rms_norm_bwd`]) serves the hand-written layer backward on every device.
pub mod fused_rms {
    use super::twin;
    #[cfg(feature = "cuda")]
    use candle_core::CudaStorage;
    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

    fn round(dtype: DType, v: f32) -> f32 {
        match dtype {
            DType::BF16 => half::bf16::from_f32(v).to_f32(),
            DType::F16 => half::f16::from_f32(v).to_f32(),
            _ => v,
        }
    }

    fn rstd(row: &[f32], eps: f32) -> f32 {
        1.0 / (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32 + eps).sqrt()
    }

    struct Rms {
        eps: f32,
    }

    impl CustomOp2 for Rms {
        fn name(&self) -> &'static str {
            "rms-norm"
        }
        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
            let (x, w, dt) = (twin::f32s("rms_norm", s1, l1)?, twin::f32s("rms_norm", s2, l2)?, s1.dtype());
            let mut y = Vec::with_capacity(x.len());
            for row in x.chunks(w.len().max(1)) {
                let r = rstd(row, self.eps);
                y.extend(row.iter().zip(&w).map(|(v, wv)| round(dt, v * r) * wv));
            }
            Ok((twin::store(dt, y), l1.shape().clone()))
        }
        #[cfg(feature = "cuda")]
        fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
            Ok((qlora_quant::cuda::train::rms_norm((s1, l1), (s2, l2), None, self.eps)?, l1.shape().clone()))
        }
        fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
            Ok((Some(rms_norm_bwd(x, w, grad, self.eps as f64)?), None))
        }
    }

    struct RmsBwd {
        eps: f32,
    }

    impl CustomOp3 for RmsBwd {
        fn name(&self) -> &'static str {
            "rms-norm-bwd"
        }
        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
            let (x, w, g, dt) = (twin::f32s("rms_norm", s1, l1)?, twin::f32s("rms_norm", s2, l2)?, twin::f32s("rms_norm", s3, l3)?, s1.dtype());
            let n = w.len().max(1);
            let mut dx = Vec::with_capacity(x.len());
            for (row, gr) in x.chunks(n).zip(g.chunks(n)) {
                let r = rstd(row, self.eps);
                let d = row.iter().zip(gr).zip(&w).map(|((v, gv), wv)| gv * wv * v * r).sum::<f32>() / n as f32;
                dx.extend(row.iter().zip(gr).zip(&w).map(|((v, gv), wv)| r * (gv * wv - v * r * d)));
            }
            Ok((twin::store(dt, dx), l1.shape().clone()))
        }
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            Ok((qlora_quant::cuda::train::rms_norm((s1, l1), (s2, l2), Some((s3, l3)), self.eps)?, l1.shape().clone()))
        }
    }

    /// `∂L/∂x` of the RMSNorm of `x` with weight `w` given the output's gradient `dy` (in x's
    /// dtype, f32 inside), no graph.
    pub fn rms_norm_bwd(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
        let (w, dy) = (w.to_dtype(x.dtype())?, dy.to_dtype(x.dtype())?);
        x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &dy.contiguous()?, &RmsBwd { eps: eps as f32 })
    }

    /// `T(T(x · rstd) · w)` per row, differentiable in `x`.
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        x.contiguous()?.apply_op2(&w.contiguous()?, Rms { eps: eps as f32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &[f32], tol: f32) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn rms_norm_hand_checked() {
        // x = [3, 4]: mean square 12.5, rsqrt = 0.28284271
        let x = Tensor::new(&[[3f32, 4.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        close(&rms_norm(&x, &w, 0.0).unwrap(), &[0.8485281, 2.2627417], 1e-6);
        // Gemma: (1 + w)
        close(&rms_norm_one_plus(&x, &w, 0.0).unwrap(), &[1.6970563, 3.3941125], 1e-6);
    }

    #[test]
    fn layer_norm_hand_checked() {
        // x = [1, 3]: mean 2, var 1 -> [-1, 1]
        let x = Tensor::new(&[[1f32, 3.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[2f32, 3.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
        close(&layer_norm(&x, &w, &b, 0.0).unwrap(), &[-1.5, 2.5], 1e-6);
    }

    #[test]
    fn softmax_matches_fused_and_handles_neg_inf() {
        let x = Tensor::new(&[[1f32, 2., f32::NEG_INFINITY], [1000., 1000., 0.]], &Device::Cpu).unwrap();
        let ours = softmax_last_dim(&x).unwrap();
        close(&ours, &[0.268_941_4, 0.731_058_6, 0.0, 0.5, 0.5, 0.0], 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        // head_dim 4: pairs (0,2) and (1,3). angle for pair 0 = pi/2, pair 1 = 0.
        let x = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap().reshape((1, 1, 1, 4)).unwrap();
        let h = std::f32::consts::FRAC_PI_2;
        let cos = Tensor::new(&[[h.cos(), 1., h.cos(), 1.]], &Device::Cpu).unwrap();
        let sin = Tensor::new(&[[h.sin(), 0., h.sin(), 0.]], &Device::Cpu).unwrap();
        // pair 0: (1, 3) rotated by 90° -> (-3, 1); pair 1 unchanged.
        close(&apply_rope(&x, &cos, &sin).unwrap(), &[-3., 2., 1., 4.], 1e-6);
        // partial rotary: only the first 2 dims rotate (pair (0,1)), the rest passes.
        let cos2 = Tensor::new(&[[h.cos(), h.cos()]], &Device::Cpu).unwrap();
        let sin2 = Tensor::new(&[[h.sin(), h.sin()]], &Device::Cpu).unwrap();
        close(&apply_rope(&x, &cos2, &sin2).unwrap(), &[-2., 1., 3., 4.], 1e-6);
    }

    #[test]
    fn gradients_flow_through_every_op() {
        let dev = Device::Cpu;
        let x = Var::new(&[[0.5f32, -1.0, 2.0, 0.25]], &dev).unwrap();
        let w = Var::new(&[1f32, 2., 3., 4.], &dev).unwrap();
        let b = Var::new(&[0.1f32, 0.2, 0.3, 0.4], &dev).unwrap();
        let cos = Tensor::new(&[[0.5f32, 0.6, 0.5, 0.6]], &dev).unwrap();
        let sin = Tensor::new(&[[0.8f32, 0.7, 0.8, 0.7]], &dev).unwrap();
        let y1 = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        let y2 = rms_norm_one_plus(&y1, w.as_tensor(), 1e-6).unwrap();
        let y3 = layer_norm(&y2, w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let y4 = apply_rope(&y3.reshape((1, 1, 1, 4)).unwrap(), &cos, &sin).unwrap();
        let y5 = softmax_last_dim(&gelu_tanh(&y4).unwrap()).unwrap();
        let loss = (y5 * Tensor::new(&[1f32, 2., 3., 4.], &dev).unwrap().reshape((1, 1, 1, 4)).unwrap()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for v in [&x, &w, &b] {
            let g = grads.get(v.as_tensor()).expect("gradient reached the variable");
            let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(n > 0.0, "zero gradient");
        }
    }
}
