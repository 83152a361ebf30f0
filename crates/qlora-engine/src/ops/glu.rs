//! The gated MLP's `silu(gate) · up` (SwiGLU) as one custom op with a backward pass, for
//! training on a GPU.
//!
//! Why: as candle ops it was two kernels forward and about a dozen backward (the product's two
//! gradients, SiLU's own backward, each gradient accumulated into a zeroed tensor), and the
//! graph kept `silu(gate)` as well as both inputs. Here it is one kernel each way
//! (`swiglu_*` in `qlora-quant/kernels/train.cu`), f32 inside and rounded once; the backward
//! writes both input gradients in one buffer. The CPU twin computes the composite's formula
//! (`g / (e^−g + 1) · u`), bit for bit in f32.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let g = Tensor::new(&[0f32, 1.], &Device::Cpu).unwrap();
//! let u = Tensor::new(&[5f32, 2.], &Device::Cpu).unwrap();
//! let y: Vec<f32> = qlora_engine::ops::glu::swiglu(&g, &u).unwrap().to_vec1().unwrap();
//! assert_eq!(y[0], 0.0);
//! assert!((y[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
//! ```

use super::twin;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

fn same_size(a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() != b.shape() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", a.dims(), b.dims())
    }
    Ok(())
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        same_size(l1, l2)?;
        let (g, u) = (twin::f32s("swiglu", s1, l1)?, twin::f32s("swiglu", s2, l2)?);
        let y = g.iter().zip(&u).map(|(g, u)| g / ((-g).exp() + 1.0) * u).collect();
        Ok((twin::store(s1.dtype(), y), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        same_size(l1, l2)?;
        Ok((qlora_quant::cuda::train::swiglu((s1, l1), (s2, l2), None)?, l1.shape().clone()))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = swiglu_bwd(g, u, dy)?;
        Ok((Some(dg), Some(du)))
    }
}

/// `(g, u, dy)` to `[dg; du]`, shape `[2, ..]`.
struct SwiGluBwd;

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "swiglu-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        same_size(l1, l2)?;
        same_size(l1, l3)?;
        let (g, u, dy) = (twin::f32s("swiglu", s1, l1)?, twin::f32s("swiglu", s2, l2)?, twin::f32s("swiglu", s3, l3)?);
        let mut d = vec![0f32; 2 * g.len()];
        let (dg, du) = d.split_at_mut(g.len());
        for i in 0..g.len() {
            let s = 1.0 / (1.0 + (-g[i]).exp());
            dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            du[i] = dy[i] * g[i] * s;
        }
        Ok((twin::store(s1.dtype(), d), both_shape(l1)))
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
        same_size(l1, l2)?;
        same_size(l1, l3)?;
        Ok((qlora_quant::cuda::train::swiglu((s1, l1), (s2, l2), Some((s3, l3)))?, both_shape(l1)))
    }
}

fn both_shape(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.dims());
    Shape::from(dims)
}

/// The gradients `(∂gate, ∂up)` of [`swiglu`] given its output's gradient `dy`, in one kernel
/// (two views of one buffer), no graph. For hand-written backwards (`model::backward`).
pub fn swiglu_bwd(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dy = dy.to_dtype(gate.dtype())?.contiguous()?;
    let both = gate.contiguous()?.apply_op3_no_bwd(&up.contiguous()?, &dy, &SwiGluBwd)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// [`swiglu_bwd`] over its inputs, which the caller gives up: on CUDA `gate`'s storage
/// becomes `∂gate` and `up`'s `∂up` (one kernel, no new buffer: on Mistral-7B's MLP that is
/// 117 MB less at the layer backward's peak); elsewhere, or for inputs that are not plain
/// contiguous tensors of one dtype, [`swiglu_bwd`]. `gate` and `up` must be tensors nobody
/// else holds (the recompute's fresh outputs).
pub fn swiglu_bwd_in_place(gate: Tensor, up: Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if gate.device().is_cuda()
        && gate.is_contiguous()
        && up.is_contiguous()
        && gate.dtype() == up.dtype()
        && gate.shape() == up.shape()
        && gate.shape() == dy.shape()
    {
        let dy = dy.to_dtype(gate.dtype())?.contiguous()?;
        gate.inplace_op3(&up, &dy, &SwiGluBwdInPlace)?;
        return Ok((gate, up));
    }
    swiglu_bwd(&gate, &up, dy)
}

#[cfg(feature = "cuda")]
struct SwiGluBwdInPlace;

#[cfg(feature = "cuda")]
impl candle_core::InplaceOp3 for SwiGluBwdInPlace {
    fn name(&self) -> &'static str {
        "swiglu-bwd-in-place"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("swiglu-bwd-in-place runs on CUDA; on the CPU call swiglu_bwd")
    }
    fn cuda_fwd(
        &self,
        g: &mut candle_core::CudaStorage,
        gl: &Layout,
        u: &candle_core::CudaStorage,
        ul: &Layout,
        dy: &candle_core::CudaStorage,
        dl: &Layout,
    ) -> Result<()> {
        qlora_quant::cuda::train_gemm::swiglu_bwd_in_place(g, gl, u, ul, dy, dl)
    }
}

/// `silu(gate) · up`, differentiable in both; same dtype and shape in and out.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn equals_the_composite_forward_and_backward() {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::randn(0f32, 3.0, (3, 7, 40), &dev).unwrap()).unwrap();
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 40), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 7, 40), &dev).unwrap();
        let want = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        let got = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
        assert_eq!(max_diff(&want, &got), 0.0, "forward");
        let gw = (&want * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (&got * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&g, "gate"), (&u, "up")] {
            let (a, b) = (gw.get(v.as_tensor()).unwrap(), gg.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-5, "{what} gradient differs by {}", max_diff(a, b));
        }
    }

    #[test]
    fn shapes_must_match() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(swiglu(&a, &b).unwrap_err().to_string().contains("differ in shape"));
    }
}
