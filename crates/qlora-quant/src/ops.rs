//! `y = x Wᵀ` against a quantized weight, as a candle custom op that keeps QLoRA's memory rule.
//!
//! A plain `x.matmul(&w.dequantize()?.t())` records the dequantized weight in the autograd graph,
//! so every layer's dense weight stays alive until backward and training memory grows to the
//! dense model's size. Here the forward dequantizes W into a temporary, multiplies and drops it;
//! the graph keeps only `x` and the op (which holds the *quantized* weight). Backward computes
//! `grad_x = grad_y · W` by dequantizing W again. There is no gradient for W: the base is frozen.
//!
//! On the CPU, up to [`CPU_FUSED_MAX_ROWS`] rows of x (decode) skip the dense copy altogether:
//! `kernels::nf4_gemm_small` reads the packed weight once. With `--features cuda`, `crate::cuda`
//! supplies the GPU kernels; otherwise the device-generic tensor-op dequantize is used.
//!
//! ```
//! use candle_core::{Device, DType, Tensor, Var};
//! use qlora_quant::{ops::nf4_linear, Nf4Tensor};
//! let w = Nf4Tensor::quantize(&Tensor::randn(0f32, 0.02, (32, 64), &Device::Cpu)?, false)?;
//! let x = Var::randn(0f32, 1.0, (2, 3, 64), &Device::Cpu)?;
//! let y = nf4_linear(x.as_tensor(), &w)?;                 // [2, 3, 32]
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), &[2, 3, 64]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::int8::Int8Tensor;
use crate::nf4::Nf4Tensor;
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};

/// A quantized `[out, in]` weight that can produce a transient dense copy.
pub trait DequantWeight: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// Name of the custom op in candle's errors.
    const OP_NAME: &'static str;
    fn out_in(&self) -> (usize, usize);
    fn dequantize_to(&self, dtype: DType) -> Result<Tensor>;
    /// A fused CPU product for this input (decode-sized), or `None` to dequantize + matmul.
    fn cpu_fused(&self, _x: &CpuStorage, _l: &Layout) -> Result<Option<(CpuStorage, Shape)>> {
        Ok(None)
    }
    /// A fused CUDA product for this input, or `None` to dequantize + matmul.
    #[cfg(feature = "cuda")]
    fn cuda_fused(&self, _x: &CudaStorage, _l: &Layout) -> Result<Option<(CudaStorage, Shape)>> {
        Ok(None)
    }
}

impl DequantWeight for Nf4Tensor {
    const OP_NAME: &'static str = "nf4-linear";
    fn out_in(&self) -> (usize, usize) {
        let d = self.shape().dims();
        (d[0], d[1])
    }
    fn dequantize_to(&self, dtype: DType) -> Result<Tensor> {
        self.dequantize(dtype)
    }
    /// Decode (at most 8 rows of x) on the CPU: `kernels::nf4_gemm_small`, reading the 4-bit
    /// weight once instead of writing and reading a dense copy.
    fn cpu_fused(&self, x: &CpuStorage, l: &Layout) -> Result<Option<(CpuStorage, Shape)>> {
        nf4_cpu_fused(self, x, l)
    }
    /// Decode (at most 8 rows of x): the fused NF4 GEMV of `crate::cuda`. More rows in
    /// bf16/f16: `crate::cuda::prefill::linear_prefill` (by default the whole weight dequantized
    /// by the wide kernel, then one cuBLAS product; slabs overlapped on a second stream with
    /// `set_overlap_slabs`), or, when set, slabs on one stream (`set_chunk_bytes`, off by
    /// default); otherwise `None` (dequantize + matmul).
    #[cfg(feature = "cuda")]
    fn cuda_fused(&self, x: &CudaStorage, l: &Layout) -> Result<Option<(CudaStorage, Shape)>> {
        if let Some(y) = crate::cuda::linear_fused(self, x, l)? {
            return Ok(Some(y));
        }
        use crate::cuda::prefill;
        if prefill::chunk_bytes() > 0 {
            return prefill::linear_chunked(self, x, l, prefill::chunk_bytes());
        }
        prefill::linear_prefill(self, x, l)
    }
}

impl DequantWeight for Int8Tensor {
    const OP_NAME: &'static str = "int8-linear";
    fn out_in(&self) -> (usize, usize) {
        (self.rows(), self.cols())
    }
    fn dequantize_to(&self, dtype: DType) -> Result<Tensor> {
        self.dequantize(dtype)
    }
}

/// Rows of x up to which the CPU forward uses the fused kernel (decode, small batches).
pub const CPU_FUSED_MAX_ROWS: usize = 8;

fn nf4_cpu_fused(w: &Nf4Tensor, x: &CpuStorage, l: &Layout) -> Result<Option<(CpuStorage, Shape)>> {
    let (n, k) = w.out_in();
    let m = l.shape().elem_count() / k.max(1);
    if m == 0 || m > CPU_FUSED_MAX_ROWS || k % w.blocksize() != 0 || !w.device().is_cpu() {
        return Ok(None);
    }
    let Some((a, b)) = l.contiguous_offsets() else { return Ok(None) };
    let xs: std::borrow::Cow<[f32]> = match x {
        CpuStorage::F32(v) => std::borrow::Cow::Borrowed(&v[a..b]),
        CpuStorage::BF16(v) => v[a..b].iter().map(|v| v.to_f32()).collect(),
        CpuStorage::F16(v) => v[a..b].iter().map(|v| v.to_f32()).collect(),
        _ => return Ok(None),
    };
    let absmax = w.absmax_f32()?.to_vec1::<f32>()?;
    let (packed_s, packed_l) = w.packed().storage_and_layout();
    let (Storage::Cpu(CpuStorage::U8(p)), Some((pa, pb))) = (&*packed_s, packed_l.contiguous_offsets()) else {
        return Ok(None);
    };
    let view = crate::kernels::Nf4View { packed: &p[pa..pb], absmax: &absmax, code: w.code(), blocksize: w.blocksize() };
    let y = crate::kernels::nf4_gemm_small(&xs, m, view, n, k);
    let out = match x {
        CpuStorage::BF16(_) => CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect()),
        CpuStorage::F16(_) => CpuStorage::F16(y.into_iter().map(half::f16::from_f32).collect()),
        _ => CpuStorage::F32(y),
    };
    let mut dims = l.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Ok(Some((out, Shape::from(dims))))
}

/// `x Wᵀ` for an NF4 weight `[out, in]`; `x` is `[..., in]` in f32, f16 or bf16.
pub fn nf4_linear(x: &Tensor, w: &Nf4Tensor) -> Result<Tensor> {
    if w.shape().rank() != 2 {
        candle_core::bail!("nf4_linear needs a 2-d [out, in] weight, got shape {:?}", w.shape().dims())
    }
    quant_linear(x, w)
}

/// `x Wᵀ` for an int8 weight `[out, in]` (weight-only: W is dequantized to x's dtype).
pub fn int8_linear(x: &Tensor, w: &Int8Tensor) -> Result<Tensor> {
    quant_linear(x, w)
}

/// `x Wᵀ` for any [`DequantWeight`], differentiable w.r.t. `x` only.
pub fn quant_linear<W: DequantWeight>(x: &Tensor, w: &W) -> Result<Tensor> {
    let (_, k) = w.out_in();
    let in_x = x.dims().last().copied().unwrap_or(0);
    if in_x != k {
        candle_core::bail!("{}: input has {in_x} features (shape {:?}), the weight expects {k}", W::OP_NAME, x.dims())
    }
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("{}: input must be f32, f16 or bf16, got {:?}", W::OP_NAME, x.dtype())
    }
    x.apply_op1(QuantLinearOp { w: w.clone() })
}

struct QuantLinearOp<W> {
    w: W,
}

impl<W: DequantWeight> QuantLinearOp<W> {
    fn fwd<S: BackendStorage<Device = D>, D: BackendDevice<Storage = S>>(
        &self,
        x: &S,
        xl: &Layout,
        dense: impl Fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let (n, k) = self.w.out_in();
        let dims = xl.dims();
        let m = xl.shape().elem_count() / k.max(1);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked rank >= 1") = n;
        // lhs: x as a contiguous [m, k] (copy only when x is strided).
        let copied;
        let (lhs, lhs_l) = match xl.contiguous_offsets() {
            Some((start, _)) => (x, Layout::contiguous_with_offset((m, k), start)),
            None => {
                let mut dst = x.device().zeros_impl(xl.shape(), x.dtype())?;
                x.copy_strided_src(&mut dst, 0, xl)?;
                copied = dst;
                (&copied, Layout::contiguous((m, k)))
            }
        };
        // rhs: the transient dense W [n, k] read as Wᵀ [k, n]; dropped when this returns.
        let w = self.w.dequantize_to(x.dtype())?;
        let (ws, wl) = w.storage_and_layout();
        let Some(ws) = dense(&ws) else { candle_core::bail!("{}: weight and input on different devices", W::OP_NAME) };
        let rhs_l = Layout::new(Shape::from((k, n)), vec![1, k], wl.start_offset());
        let y = lhs.matmul(ws, (1, m, n, k), &lhs_l, &rhs_l)?;
        Ok((y, Shape::from(out_dims)))
    }
}

impl<W: DequantWeight> CustomOp1 for QuantLinearOp<W> {
    fn name(&self) -> &'static str {
        W::OP_NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let Some(fused) = self.w.cpu_fused(s, l)? {
            return Ok(fused);
        }
        self.fwd(s, l, |st| match st {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        if let Some(fused) = self.w.cuda_fused(s, l)? {
            return Ok(fused);
        }
        self.fwd(s, l, |st| match st {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, k) = self.w.out_in();
        let m = arg.elem_count() / k.max(1);
        // Dequantize again (transient), and keep the result out of any graph.
        let w = self.w.dequantize_to(grad_res.dtype())?;
        let g = grad_res.detach().reshape((m, n))?.matmul(&w)?;
        Ok(Some(g.reshape(arg.shape())?))
    }
}
