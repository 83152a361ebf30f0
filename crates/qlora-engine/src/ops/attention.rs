//! The training attention's probabilities, `softmax(scale · q·kᵀ)` under the causal (and
//! sliding-window) mask, as custom ops with a backward pass.
//!
//! Why: written from candle primitives, a layer's attention made five `[B, H, T, T]` tensors
//! (scale, f32 copy, mask add, softmax, cast back) that autograd kept until the layer's
//! backward ended, and it built the mask on the host and uploaded it in every layer call, a
//! synchronous copy that drained the GPU queue. Here the mask is decided inside the op from
//! the row's position (nothing uploaded), the math is f32 inside, and the result keeps the
//! scores' dtype. [`probs`] also folds in `q·kᵀ`: its scores live only inside the op, so the
//! graph keeps the probabilities alone.
//!
//! Grouped heads need no `repeat_kv` copy: q `[B, kv_heads, rep·T, hd]` (the heads of a
//! group side by side) against k `[B, kv_heads, S, hd]`; row `r` of the scores is query
//! `r mod T`, at position `past + r mod T`.
//!
//! On CUDA the kernels are `attn_softmax*` of `qlora-quant/kernels/train.cu`; the CPU twins
//! here compute the same function in f32, so the op runs, and is checked, anywhere.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use qlora_engine::ops::attention::{masked_softmax, AttnMask};
//! let s = Tensor::new(&[[1f32, 2.], [1., 1.]], &Device::Cpu).unwrap();
//! let m = AttnMask { t: 2, past: 0, window: None, scale: 1.0 };
//! let p: Vec<Vec<f32>> = masked_softmax(&s, m).unwrap().to_vec2().unwrap();
//! assert_eq!(p[0], [1.0, 0.0]); // query 0 sees key 0 only
//! assert_eq!(p[1], [0.5, 0.5]);
//! ```

use super::twin;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Which keys a row keeps, and the scale applied to its scores before the softmax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnMask {
    /// Queries per block of rows: row `r` is query `r mod t`.
    pub t: usize,
    /// Positions before the first query (cached keys).
    pub past: usize,
    /// Keys at most this far behind the query (`pos − j < window`); `None` (or 0): no limit.
    pub window: Option<usize>,
    pub scale: f64,
}

impl AttnMask {
    /// Kept keys `lo..hi` of row `r` among `len`.
    fn kept(&self, r: usize, len: usize) -> (usize, usize) {
        let pos = self.past + r % self.t;
        let lo = match self.window {
            Some(w) if w > 0 && pos + 1 > w => pos + 1 - w,
            _ => 0,
        };
        (lo.min(len), (pos + 1).min(len))
    }

    /// The row length of scores `dims`, whose blocks of rows (second-last dimension) must be
    /// whole multiples of `t` for row `r` to be query `r mod t`.
    fn check(&self, dims: &[usize]) -> Result<usize> {
        let len = dims.last().copied().unwrap_or(0);
        let rows = if dims.len() < 2 { 0 } else { dims[dims.len() - 2] };
        if self.t == 0 || len == 0 || rows == 0 || rows % self.t != 0 {
            candle_core::bail!("attention softmax: scores {dims:?} do not hold rows of {} queries", self.t)
        }
        Ok(len)
    }

    #[cfg(feature = "cuda")]
    fn kernel(&self) -> Result<qlora_quant::cuda::train::AttnMask> {
        let u = |v: usize, what: &str| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("attention softmax: {what} {v} is above u32")));
        Ok(qlora_quant::cuda::train::AttnMask {
            t: u(self.t, "query count")?,
            past: u(self.past, "past length")?,
            window: u(self.window.unwrap_or(0), "sliding window")?,
            scale: self.scale as f32,
        })
    }
}

/// CPU twin of the forward kernel: rows of `len` scores to probabilities (f32).
fn cpu_softmax(s: &[f32], len: usize, m: &AttnMask) -> Vec<f32> {
    let scale = m.scale as f32;
    let mut p = vec![0f32; s.len()];
    for (r, (row, out)) in s.chunks(len).zip(p.chunks_mut(len)).enumerate() {
        let (lo, hi) = m.kept(r, len);
        let (row, out) = (&row[lo..hi], &mut out[lo..hi]);
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, v| a.max(v * scale));
        for (o, v) in out.iter_mut().zip(row) {
            *o = (v * scale - mx).exp();
        }
        let sum: f32 = out.iter().sum();
        out.iter_mut().for_each(|o| *o /= sum);
    }
    p
}

/// CPU twin of the backward kernel: `scale · p · (dp − Σ p·dp)` per row (f32).
fn cpu_softmax_bwd(p: &[f32], g: &[f32], len: usize, m: &AttnMask) -> Vec<f32> {
    let scale = m.scale as f32;
    let mut ds = vec![0f32; p.len()];
    for (r, ((pr, gr), out)) in p.chunks(len).zip(g.chunks(len)).zip(ds.chunks_mut(len)).enumerate() {
        let (lo, hi) = m.kept(r, len);
        let (pr, gr) = (&pr[lo..hi], &gr[lo..hi]);
        let d: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for ((o, pv), gv) in out[lo..hi].iter_mut().zip(pr).zip(gr) {
            *o = scale * pv * (gv - d);
        }
    }
    ds
}

/// Scores (any contiguous layout of `[.., rows, len]`) to probabilities, same dtype.
struct MaskedSoftmax(AttnMask);

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "attn-masked-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let len = self.0.check(l.dims())?;
        Ok((twin::store(s.dtype(), cpu_softmax(&twin::f32s("attention softmax", s, l)?, len, &self.0)), l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        self.0.check(l.dims())?;
        Ok((qlora_quant::cuda::train::attn_softmax((s, l), None, self.0.kernel()?)?, l.shape().clone()))
    }
    fn bwd(&self, _scores: &Tensor, p: &Tensor, dp: &Tensor) -> Result<Option<Tensor>> {
        softmax_bwd(p, dp, self.0).map(Some)
    }
}

/// `(p, dp)` to the scores' gradient.
struct MaskedSoftmaxBwd(AttnMask);

impl CustomOp2 for MaskedSoftmaxBwd {
    fn name(&self) -> &'static str {
        "attn-masked-softmax-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let len = self.0.check(l1.dims())?;
        let (p, g) = (twin::f32s("attention softmax", s1, l1)?, twin::f32s("attention softmax", s2, l2)?);
        if p.len() != g.len() {
            candle_core::bail!("attention softmax backward: probabilities and gradient sizes differ")
        }
        Ok((twin::store(s1.dtype(), cpu_softmax_bwd(&p, &g, len, &self.0)), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.0.check(l1.dims())?;
        Ok((qlora_quant::cuda::train::attn_softmax((s1, l1), Some((s2, l2)), self.0.kernel()?)?, l1.shape().clone()))
    }
}

/// The backward of the masked softmax (and of [`probs`]' softmax): probabilities `p` and
/// their gradient `dp` to the scores' gradient `scale · p · (dp − Σ p·dp)` in `p`'s dtype,
/// no graph. For hand-written backwards (`model::backward`).
pub fn softmax_bwd(p: &Tensor, dp: &Tensor, m: AttnMask) -> Result<Tensor> {
    let dp = dp.to_dtype(p.dtype())?;
    p.contiguous()?.apply_op2_no_bwd(&dp.contiguous()?, &MaskedSoftmaxBwd(m))
}

/// `softmax(scale · scores)` over the last dimension with the mask of `m`, differentiable; same
/// dtype as `scores` (f32, bf16 or f16), f32 inside. The graph keeps `scores` and the result.
pub fn masked_softmax(scores: &Tensor, m: AttnMask) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(MaskedSoftmax(m))
}

/// `q·kᵀ` then the masked softmax, in one op: q `[.., M, hd]`, k `[.., S, hd]` (same leading
/// dims) to probabilities `[.., M, S]`.
struct Probs(AttnMask);

impl Probs {
    /// `(batch, M, S, hd)` for the storage matmul, and the output shape.
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<((usize, usize, usize, usize), Shape)> {
        let (qd, kd) = (lq.dims(), lk.dims());
        let n = qd.len();
        if n < 2 || kd.len() != n || qd[..n - 2] != kd[..n - 2] || qd[n - 1] != kd[n - 1] {
            candle_core::bail!("attention probabilities: q {qd:?} and k {kd:?} do not pair up ([.., M, hd] and [.., S, hd])")
        }
        let mut out = qd.to_vec();
        out[n - 1] = kd[n - 2];
        self.0.check(&out)?;
        Ok(((qd[..n - 2].iter().product(), qd[n - 2], kd[n - 2], qd[n - 1]), Shape::from(out)))
    }
}

impl CustomOp2 for Probs {
    fn name(&self) -> &'static str {
        "attn-probs"
    }
    fn cpu_fwd(&self, q: &CpuStorage, lq: &Layout, k: &CpuStorage, lk: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bmnk, shape) = self.dims(lq, lk)?;
        let kt = lk.transpose(lk.dims().len() - 2, lk.dims().len() - 1)?;
        let scores = q.matmul(k, bmnk, lq, &kt)?;
        let ls = Layout::contiguous(shape.clone());
        Ok((twin::store(q.dtype(), cpu_softmax(&twin::f32s("attention softmax", &scores, &ls)?, bmnk.2, &self.0)), shape))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, shape) = self.dims(lq, lk)?;
        let kt = lk.transpose(lk.dims().len() - 2, lk.dims().len() - 1)?;
        let scores = q.matmul(k, bmnk, lq, &kt)?;
        let ls = Layout::contiguous(shape.clone());
        Ok((qlora_quant::cuda::train::attn_softmax((&scores, &ls), None, self.0.kernel()?)?, shape))
    }
    fn bwd(&self, q: &Tensor, k: &Tensor, p: &Tensor, dp: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = softmax_bwd(p, dp, self.0)?;
        // Detached: dq and dk would otherwise reference k, q and their graphs, and ds.
        let dq = ds.matmul(&k.detach())?;
        let dk = ds.t()?.matmul(&q.detach())?;
        Ok((Some(dq), Some(dk)))
    }
}

/// `softmax(scale · q·kᵀ)` with the mask of `m`, differentiable in `q` and `k`: q `[.., M, hd]`,
/// k `[.., S, hd]`, probabilities `[.., M, S]` in their dtype. The scores never outlive the op;
/// the graph keeps q, k and the probabilities.
pub fn probs(q: &Tensor, k: &Tensor, m: AttnMask) -> Result<Tensor> {
    q.contiguous()?.apply_op2(&k.contiguous()?, Probs(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, DType, Device, Var};

    /// The composite the op replaces: scale, additive `causal_mask`, softmax.
    fn composite(scores: &Tensor, m: AttnMask) -> Tensor {
        let rows = scores.dim(D::Minus2).unwrap();
        let mask = crate::model::layers::causal_mask(m.t, m.past, m.window, &Device::Cpu).unwrap().unwrap();
        let mask = mask.repeat((rows / m.t, 1)).unwrap();
        crate::ops::softmax_last_dim(&(scores * m.scale).unwrap().broadcast_add(&mask).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn forward_and_gradient_equal_the_composite() {
        let dev = Device::Cpu;
        for (t, past, window) in [(7, 0, None), (5, 3, None), (9, 0, Some(4)), (4, 6, Some(3))] {
            let m = AttnMask { t, past, window, scale: 0.37 };
            let s = Tensor::randn(0f32, 3.0, (2, 3 * t, past + t), &dev).unwrap();
            let up = Tensor::randn(0f32, 1.0, (2, 3 * t, past + t), &dev).unwrap();
            let run = |f: &dyn Fn(&Tensor) -> Tensor| {
                let v = Var::from_tensor(&s).unwrap();
                let p = f(v.as_tensor());
                let g = (&p * &up).unwrap().sum_all().unwrap().backward().unwrap();
                (p, g.get(v.as_tensor()).unwrap().clone())
            };
            let (pc, gc) = run(&|x| composite(x, m));
            let (pf, gf) = run(&|x| masked_softmax(x, m).unwrap());
            assert!(max_diff(&pc, &pf) < 1e-6, "{m:?}: forward differs by {}", max_diff(&pc, &pf));
            assert!(max_diff(&gc, &gf) < 1e-5, "{m:?}: gradient differs by {}", max_diff(&gc, &gf));
        }
    }

    #[test]
    fn grouped_probs_equal_repeated_heads_with_gradients() {
        // 4 heads sharing 2 kv heads, T = 6 after 2 cached positions.
        let (dev, b, nh, nkv, t, past, hd) = (Device::Cpu, 2, 4, 2, 6, 2, 8);
        let m = AttnMask { t, past, window: Some(5), scale: 1.0 / (hd as f64).sqrt() };
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, nkv, past + t, hd), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, nh, t, past + t), &dev).unwrap();
        let rep = nh / nkv;
        let kr = k.as_tensor().unsqueeze(2).unwrap().expand((b, nkv, rep, past + t, hd)).unwrap();
        let kr = kr.reshape((b, nh, past + t, hd)).unwrap();
        let want = composite(&q.as_tensor().matmul(&kr.t().unwrap()).unwrap(), m);
        let got = probs(&q.as_tensor().reshape((b, nkv, rep * t, hd)).unwrap(), k.as_tensor(), m).unwrap();
        let got = got.reshape((b, nh, t, past + t)).unwrap();
        assert!(max_diff(&want, &got) < 1e-6, "forward differs by {}", max_diff(&want, &got));
        let gw = (&want * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (&got * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&q, "q"), (&k, "k")] {
            let (a, b) = (gw.get(v.as_tensor()).unwrap(), gg.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-5, "{what} gradient differs by {}", max_diff(a, b));
            // Regression: a gradient holding an op graph keeps k, q and the scores' gradient
            // alive for as long as it lives.
            assert!(!b.track_op(), "the {what} gradient keeps an op graph");
        }
    }

    #[test]
    fn bf16_in_bf16_out_and_bad_shapes_are_errors() {
        let s = Tensor::randn(0f32, 1.0, (6, 6), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let m = AttnMask { t: 6, past: 0, window: None, scale: 1.0 };
        let p = masked_softmax(&s, m).unwrap();
        assert_eq!(p.dtype(), DType::BF16);
        assert!(max_diff(&p, &composite(&s.to_dtype(DType::F32).unwrap(), m)) < 4e-3);
        let e = masked_softmax(&s, AttnMask { t: 4, ..m }).unwrap_err().to_string();
        assert!(e.contains("rows of 4 queries"), "{e}");
        let q = Tensor::zeros((1, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((1, 4, 7), DType::F32, &Device::Cpu).unwrap();
        assert!(probs(&q, &k, AttnMask { t: 4, ..m }).unwrap_err().to_string().contains("do not pair up"));
    }
}
