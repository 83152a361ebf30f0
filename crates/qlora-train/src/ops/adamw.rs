//! AdamW's arithmetic as three in-place ops per parameter (first moment, second moment,
//! parameter), on CUDA one kernel each (`adamw_*` in `qlora-quant/kernels/train.cu`), with CPU
//! twins.
//!
//! Why: written from candle ops, one parameter's update was about fifteen kernels and as many
//! fresh tensors; the 308 LoRA matrices of a TinyLlama run made the optimizer step ~4,600
//! launches, host-bound. The arithmetic is the composite's operation for operation (each
//! product and sum rounded to f32 on its own, the f64 hyper-parameters rounded to f32 as
//! candle's `affine` rounds them), so the result is the same to the bit on both devices.
//! [`step_multi`] runs the same arithmetic for every parameter of a model in one launch (448
//! LoRA tensors on Mistral-7B: ~1,350 launches and 10 ms of an H100 step before, 0.7 ms now).

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

/// One step's constants, from the f64 hyper-parameters ([`Consts::new`]): the type the CUDA
/// kernels read, so that every path of the update takes the same rounded values.
pub use qlora_quant::adamw::AdamWConsts as Consts;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("AdamW: the {what} is not contiguous") };
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("AdamW: the {what} is not contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        other => candle_core::bail!("AdamW keeps its {what} in f32, got {:?}", candle_core::backend::BackendStorage::dtype(other)),
    }
}

/// `x = x·beta + g·c` (`square`: `g²·c`) in place.
struct Moment {
    beta: f32,
    c: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let g = slice(s2, l2, "gradient")?;
        let x = slice_mut(s1, l1, "moment")?;
        if x.len() != g.len() {
            candle_core::bail!("AdamW: a moment of {} floats for a gradient of {}", x.len(), g.len())
        }
        for (x, g) in x.iter_mut().zip(g) {
            let g = if self.square { g * g } else { *g };
            *x = *x * self.beta + g * self.c;
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &mut candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<()> {
        qlora_quant::cuda::train::adamw_moment((s1, l1), (s2, l2), self.beta, self.c, self.square)
    }
}

/// `w = (w·decay) − (m / (sqrt(v)·inv_bc2 + eps))·step_size` in place.
struct Update(Consts);

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<()> {
        let c = &self.0;
        let (m, v) = (slice(s2, l2, "first moment")?, slice(s3, l3, "second moment")?);
        let w = slice_mut(s1, l1, "parameter")?;
        if m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("AdamW: moments of {} and {} floats for a parameter of {}", m.len(), v.len(), w.len())
        }
        for ((w, m), v) in w.iter_mut().zip(m).zip(v) {
            let wi = if c.wd_on != 0 { *w * c.decay } else { *w };
            let denom = v.sqrt() * c.inv_bc2 + c.eps;
            *w = wi - (m / denom) * c.step_size;
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        let c = &self.0;
        let k = qlora_quant::cuda::train::AdamWUpdate {
            inv_bc2: c.inv_bc2,
            eps: c.eps,
            step_size: c.step_size,
            decay: c.decay,
            weight_decay: c.wd_on != 0,
        };
        qlora_quant::cuda::train::adamw_update((s1, l1), (s2, l2), (s3, l3), &k)
    }
}

/// One AdamW step in place: moments `m`, `v` and parameter `w` (f32, contiguous, the same
/// size) from the f32 gradient `g`.
pub fn step(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, c: Consts) -> Result<()> {
    m.inplace_op2(g, &Moment { beta: c.b1, c: c.c1, square: false })?;
    v.inplace_op2(g, &Moment { beta: c.b2, c: c.c2, square: true })?;
    w.inplace_op3(m, v, &Update(c))
}

/// `QLORA_FUSED_ADAMW` unset or not `0`: the multi-tensor kernels on CUDA.
pub fn fused_by_default() -> bool {
    std::env::var("QLORA_FUSED_ADAMW").map_or(true, |v| v.trim() != "0")
}

/// Whether [`step_multi`] takes these parameters: all f32, contiguous, on one CUDA device
/// (always false without the `cuda` feature).
pub fn multi_applies(ws: &[&Tensor]) -> bool {
    cfg!(feature = "cuda")
        && !ws.is_empty()
        && ws.iter().all(|w| w.device().is_cuda() && w.dtype() == candle_core::DType::F32 && w.is_contiguous())
        && ws.iter().all(|w| w.device().same_device(ws[0].device()))
}

/// One AdamW step over all parameters `ws` with moments `m`, `v` and gradients `grads` (any
/// float dtype; cast to f32 where they are not) in one launch (`adamw_multi_f32` in
/// `qlora-quant/kernels/optim.cu`), each gradient first multiplied by `grad_scale` if given.
/// The same arithmetic as [`step`] for each parameter, so the same bits.
pub fn step_multi(ws: &[&Tensor], m: &[Tensor], v: &[Tensor], grads: &[Tensor], c: Consts, grad_scale: Option<f64>) -> Result<()> {
    if m.len() != ws.len() || v.len() != ws.len() || grads.len() != ws.len() {
        candle_core::bail!("AdamW: {} parameters with {} / {} moments and {} gradients", ws.len(), m.len(), v.len(), grads.len())
    }
    #[cfg(feature = "cuda")]
    {
        use qlora_quant::cuda::optim::{AdamWSlot, adamw_multi};
        let gs = grads.iter().map(|g| g.to_dtype(candle_core::DType::F32)?.contiguous()).collect::<Result<Vec<_>>>()?;
        let slots: Vec<AdamWSlot> = (0..ws.len()).map(|i| AdamWSlot { w: ws[i], m: &m[i], v: &v[i], g: &gs[i], shadow: None }).collect();
        let k = Consts { gscale: grad_scale.unwrap_or(1.0) as f32, gscale_on: grad_scale.is_some() as u32, shadow_kind: 0, ..c };
        adamw_multi(&slots, &k)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (c, grad_scale);
        candle_core::bail!("AdamW: the multi-tensor step runs on CUDA (build with the cuda feature)")
    }
}

/// The sum of squares of all `grads` by the multi-tensor kernels (f64, one read back), or
/// `None` where they do not apply (not all on one CUDA device, or `QLORA_FUSED_ADAMW=0`).
pub fn sum_squares_multi(grads: &[Tensor]) -> Result<Option<f64>> {
    let refs: Vec<&Tensor> = grads.iter().collect();
    let on_cuda = !refs.is_empty() && refs.iter().all(|g| g.device().is_cuda() && g.device().same_device(refs[0].device()));
    if !cfg!(feature = "cuda") || !on_cuda || !fused_by_default() || grads.iter().all(|g| g.elem_count() == 0) {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        let gs = grads.iter().map(|g| g.to_dtype(candle_core::DType::F32)?.contiguous()).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = gs.iter().collect();
        return Ok(Some(qlora_quant::cuda::optim::sum_squares(&refs)?.to_scalar::<f64>()?));
    }
    #[allow(unreachable_code)]
    Ok(None)
}
