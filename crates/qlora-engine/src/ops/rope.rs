//! Rotary embedding for training as one custom op, forward and backward, with the projection's
//! transpose to heads folded in: `x` `[B, T, H, hd]` (a projection's output, reshaped) in,
//! `[B, H, T, hd]` out.
//!
//! Why: written from candle primitives ([`super::apply_rope`]) a rotary was a copy to heads,
//! two table casts, two products, a negation, a concatenation and a sum, and candle's backward
//! of those products also computes (and keeps until the layer's backward ends) gradients for
//! the constant cos/sin tables broadcast to the activations' shape. Here it is one kernel each
//! way (`rope_fwd*` / `rope_bwd*` in `qlora-quant/kernels/train.cu`), f32 inside, rounded once
//! to the input's dtype; in f32 the same arithmetic as the composite, bit for bit.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! // one position, one head, hd 2: a rotation by 90°
//! let x = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap().reshape((1, 1, 1, 2)).unwrap();
//! let cos = Tensor::new(&[[0f32, 0.]], &Device::Cpu).unwrap();
//! let sin = Tensor::new(&[[1f32, 1.]], &Device::Cpu).unwrap();
//! let y = qlora_engine::ops::rope::rope_heads(&x, &cos, &sin).unwrap();
//! assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-2., 1.]);
//! ```

use super::twin;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `[B, T, H, hd]` and the rotary width, checked against the tables.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
    rot: usize,
}

impl Dims {
    fn of(x: &[usize], cos: &[usize], sin: &[usize]) -> Result<Self> {
        let (&[b, t, h, hd], &[ct, rot]) = (x, cos) else {
            candle_core::bail!("rope: x {x:?} must be [B, T, heads, head_dim] and cos {cos:?} [T, rotary_dim]")
        };
        if ct != t || sin != cos || rot > hd || rot % 2 != 0 {
            candle_core::bail!("rope: tables cos {cos:?} / sin {sin:?} do not fit x {x:?} (even rotary_dim <= head_dim, T rows)")
        }
        Ok(Dims { b, t, h, hd, rot })
    }

    #[cfg(feature = "cuda")]
    fn kernel(&self) -> qlora_quant::cuda::train::RopeDims {
        qlora_quant::cuda::train::RopeDims { batch: self.b, t: self.t, heads: self.h, hd: self.hd, rot: self.rot }
    }
}

/// CPU twin of both kernels. Forward reads rows of `[B, T, H, hd]` and writes `[B, H, T, hd]`;
/// backward the other way round.
fn cpu(src: &[f32], cos: &[f32], sin: &[f32], d: Dims, bwd: bool) -> Vec<f32> {
    let Dims { b, t, h, hd, rot } = d;
    let half = rot / 2;
    let mut out = vec![0f32; src.len()];
    for bi in 0..b {
        for ti in 0..t {
            let (c, s) = (&cos[ti * rot..(ti + 1) * rot], &sin[ti * rot..(ti + 1) * rot]);
            for hi in 0..h {
                let bthd = ((bi * t + ti) * h + hi) * hd;
                let bhtd = ((bi * h + hi) * t + ti) * hd;
                let (from, to) = if bwd { (bhtd, bthd) } else { (bthd, bhtd) };
                let (x, y) = (&src[from..from + hd], &mut out[to..to + hd]);
                for i in 0..hd {
                    y[i] = match (i < half, i < rot, bwd) {
                        (_, false, _) => x[i],
                        (true, true, false) => x[i] * c[i] + (-x[i + half]) * s[i],
                        (false, true, false) => x[i] * c[i] + x[i - half] * s[i],
                        (true, true, true) => x[i] * c[i] + x[i + half] * s[i + half],
                        (false, true, true) => x[i] * c[i] - x[i - half] * s[i - half],
                    };
                }
            }
        }
    }
    out
}

struct Rope {
    bwd: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        if self.bwd { "rope-heads-bwd" } else { "rope-heads" }
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (d, shape) = self.dims(l1, l2, l3)?;
        let y = cpu(&twin::f32s("rope", s1, l1)?, &twin::f32s("rope", s2, l2)?, &twin::f32s("rope", s3, l3)?, d, self.bwd);
        Ok((twin::store(s1.dtype(), y), shape))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (d, shape) = self.dims(l1, l2, l3)?;
        Ok((qlora_quant::cuda::train::rope((s1, l1), (s2, l2), (s3, l3), d.kernel(), self.bwd)?, shape))
    }
    fn bwd(&self, _x: &Tensor, cos: &Tensor, sin: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(rope_heads_bwd(dy, cos, sin)?), None, None))
    }
}

impl Rope {
    /// The forward's `[B, T, H, hd]` dims (read from the input, or from the gradient's
    /// `[B, H, T, hd]` in backward) and the output shape.
    fn dims(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<(Dims, Shape)> {
        let x = l1.dims();
        let fwd_dims = match (self.bwd, x) {
            (true, &[b, h, t, hd]) => vec![b, t, h, hd],
            _ => x.to_vec(),
        };
        let d = Dims::of(&fwd_dims, l2.dims(), l3.dims())?;
        let out = if self.bwd { [d.b, d.t, d.h, d.hd] } else { [d.b, d.h, d.t, d.hd] };
        Ok((d, Shape::from(out.to_vec())))
    }
}

/// Rotary embedding of `x` `[B, T, H, hd]` (any dtype of f32/bf16/f16) with f32 tables `cos`,
/// `sin` `[T, rotary_dim]` (transformers' halves layout; dims past `rotary_dim` pass through),
/// returned as heads `[B, H, T, hd]`, differentiable in `x`.
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.to_dtype(DType::F32)?.contiguous()?;
    let sin = sin.to_dtype(DType::F32)?.contiguous()?;
    x.contiguous()?.apply_op3(&cos, &sin, Rope { bwd: false })
}

/// The backward of [`rope_heads`]: the heads' gradient `[B, H, T, hd]` to the input's
/// `[B, T, H, hd]`, no graph. For hand-written backwards (`model::backward`).
pub fn rope_heads_bwd(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.to_dtype(DType::F32)?.contiguous()?;
    let sin = sin.to_dtype(DType::F32)?.contiguous()?;
    dy.contiguous()?.apply_op3_no_bwd(&cos, &sin, &Rope { bwd: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn equals_the_composite_forward_and_backward_full_and_partial() {
        let dev = Device::Cpu;
        let (b, t, h, hd) = (2, 5, 3, 8);
        for rot in [8, 4] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h, hd), &dev).unwrap()).unwrap();
            let ang = Tensor::randn(0f32, 2.0, (t, rot / 2), &dev).unwrap();
            let ang = Tensor::cat(&[&ang, &ang], 1).unwrap();
            let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
            let up = Tensor::randn(0f32, 1.0, (b, h, t, hd), &dev).unwrap();
            let heads = x.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap();
            let want = super::super::apply_rope(&heads, &cos, &sin).unwrap();
            let got = rope_heads(x.as_tensor(), &cos, &sin).unwrap();
            assert_eq!(got.dims(), &[b, h, t, hd]);
            assert_eq!(max_diff(&want, &got), 0.0, "rot {rot}: forward");
            let gw = (&want * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = (&got * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, c) = (gw.get(x.as_tensor()).unwrap(), gg.get(x.as_tensor()).unwrap());
            assert!(max_diff(a, c) < 1e-6, "rot {rot}: gradient differs by {}", max_diff(a, c));
        }
    }

    #[test]
    fn bad_tables_are_errors_naming_the_shapes() {
        let x = Tensor::zeros((1, 4, 2, 8), DType::F32, &Device::Cpu).unwrap();
        let c = Tensor::zeros((3, 8), DType::F32, &Device::Cpu).unwrap();
        let e = rope_heads(&x, &c, &c).unwrap_err().to_string();
        assert!(e.contains("do not fit x [1, 4, 2, 8]"), "{e}");
        let e = rope_heads(&x.reshape((4, 2, 8)).unwrap(), &c, &c).unwrap_err().to_string();
        assert!(e.contains("[B, T, heads, head_dim]"), "{e}");
    }
}
