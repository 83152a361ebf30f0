//! Dropout as a candle custom op: `keep(seed, i) ? x[i] / p_keep : 0`, with `keep` the
//! counter-based hash of `kernels/train.cu` (splitmix64 of `seed + (i + 1)·φ`, top 32 bits
//! below `p_keep · 2³²`). Its backward applies the same mask to the gradient (dropout is linear
//! in `x`), so nothing is stored for it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The 32-bit draw for element `i` under `seed` (the twin of `keep_hash` in `train.cu`).
pub fn keep_hash(seed: u64, i: u64) -> u32 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 32) as u32
}

/// `p_keep · 2³²` as the kernel's threshold (`p_keep` in (0, 1]).
fn threshold(p_keep: f64) -> u32 {
    (p_keep * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// The dropout op for one draw: `seed` and the probability of dropping an element.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub seed: u64,
    pub p: f64,
}

impl Dropout {
    fn keep(&self) -> (u32, f32) {
        let keep = 1.0 - self.p;
        (threshold(keep), (1.0 / keep) as f32)
    }
}

fn twin<T: Copy>(x: &[T], seed: u64, thr: u32, scale: f32, to: impl Fn(T) -> f32, from: impl Fn(f32) -> T) -> Vec<T> {
    x.iter().enumerate().map(|(i, v)| from(if keep_hash(seed, i as u64) < thr { to(*v) * scale } else { 0.0 })).collect()
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "lora-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("lora-dropout: input is not contiguous") };
        let (thr, scale) = self.keep();
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(twin(&v[a..b], self.seed, thr, scale, |x| x, |x| x)),
            CpuStorage::BF16(v) => CpuStorage::BF16(twin(&v[a..b], self.seed, thr, scale, |x| x.to_f32(), half::bf16::from_f32)),
            CpuStorage::F16(v) => CpuStorage::F16(twin(&v[a..b], self.seed, thr, scale, |x| x.to_f32(), half::f16::from_f32)),
            other => candle_core::bail!("lora-dropout takes f32, bf16 or f16, got {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (thr, scale) = self.keep();
        Ok((qlora_quant::cuda::train::dropout(s, l, self.seed, thr, scale)?, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// `x` with each element dropped with probability `p` (kept ones scaled by `1/(1-p)`), the mask
/// drawn from `seed`. Differentiable. `p = 0` returns `x`.
pub fn dropout(x: &Tensor, seed: u64, p: f64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 || p.is_nan() || !matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("lora dropout must be in [0, 1) on f32/bf16/f16 input, got {p} on {:?}", x.dtype())
    }
    x.contiguous()?.apply_op1(Dropout { seed, p })
}

/// [`dropout`] of a tensor the caller gives up, written over its own storage (no second
/// buffer): for a fresh tensor nobody else holds (a product just made). Same mask and values
/// as [`dropout`]; not differentiable.
pub fn dropout_owned(x: Tensor, seed: u64, p: f64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x);
    }
    if p >= 1.0 || p.is_nan() || !matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) || !x.is_contiguous() {
        return dropout(&x, seed, p);
    }
    x.inplace_op1(&InPlace(Dropout { seed, p }))?;
    Ok(x)
}

struct InPlace(Dropout);

impl candle_core::InplaceOp1 for InPlace {
    fn name(&self) -> &'static str {
        "lora-dropout-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("lora-dropout-in-place: input is not contiguous") };
        let (thr, scale) = self.0.keep();
        let seed = self.0.seed;
        fn go<T: Copy>(v: &mut [T], seed: u64, thr: u32, scale: f32, to: impl Fn(T) -> f32, from: impl Fn(f32) -> T) {
            for (i, x) in v.iter_mut().enumerate() {
                *x = from(if keep_hash(seed, i as u64) < thr { to(*x) * scale } else { 0.0 });
            }
        }
        match s {
            CpuStorage::F32(v) => go(&mut v[a..b], seed, thr, scale, |x| x, |x| x),
            CpuStorage::BF16(v) => go(&mut v[a..b], seed, thr, scale, |x| x.to_f32(), half::bf16::from_f32),
            CpuStorage::F16(v) => go(&mut v[a..b], seed, thr, scale, |x| x.to_f32(), half::f16::from_f32),
            other => candle_core::bail!("lora-dropout takes f32, bf16 or f16, got {:?}", other.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        let (thr, scale) = self.0.keep();
        qlora_quant::cuda::train_gemm::dropout_in_place(s, l, self.0.seed, thr, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn same_seed_same_mask_and_the_keep_rate_is_right() {
        let x = Tensor::ones((64, 1024), DType::F32, &Device::Cpu).unwrap();
        let a = dropout(&x, 7, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = dropout(&x, 7, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let c = dropout(&x, 8, 0.25).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kept = a.iter().filter(|v| **v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn backward_applies_the_same_mask() {
        let x = Var::new(&[[1f32, 2., 3., 4., 5., 6., 7., 8.]], &Device::Cpu).unwrap();
        let y = dropout(x.as_tensor(), 3, 0.5).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let yv = y.to_vec2::<f32>().unwrap();
        for (gv, (yv, xv)) in gx[0].iter().zip(yv[0].iter().zip([1f32, 2., 3., 4., 5., 6., 7., 8.])) {
            assert_eq!(*gv, yv / xv, "gradient is the mask");
        }
    }
}
