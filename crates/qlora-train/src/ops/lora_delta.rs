//! The LoRA update `scale · dropout(x) Aᵀ Bᵀ` as one custom op with a hand-written backward,
//! for training on a GPU.
//!
//! Why: from candle ops the update was a dozen graph nodes per projection (dropout, two casts,
//! two matmuls, the scale), and candle's backward of those is about thirty kernels, every
//! gradient accumulated into a freshly zeroed tensor; with seven projections a layer that was
//! most of the layer's launches. Here the forward runs the same kernels at the storage level
//! (the graph keeps `x`, `A`, `B` and the result), and the backward is the chain rule written
//! out: recompute `dropout(x)` from its seed and `u = dropout(x) Aᵀ`, then `∂B = s·∂dᵀ u`,
//! `∂u = s·∂d B`, `∂A = ∂uᵀ dropout(x)`, `∂x = dropout(∂u A)`, in the activations' dtype with
//! `A`, `B` cast to it as peft under autocast (their gradients come back in f32).

use crate::ops::dropout::Dropout;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The update's constants: dropout draw (seed, probability; `None` when off) and scale.
#[derive(Debug, Clone, Copy)]
pub struct LoraDelta {
    pub dropout: Option<Dropout>,
    pub scale: f64,
}

impl LoraDelta {
    /// `(rows, in, r, out)` from x `[.., in]` (rows = the leading dims' product), A `[r, in]`,
    /// B `[out, r]`.
    fn dims(&self, lx: &Layout, la: &Layout, lb: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (Some((&n_in, lead)), &[r, a_in], &[out, b_r]) = (lx.dims().split_last(), la.dims(), lb.dims()) else {
            candle_core::bail!("lora update: x {:?}, A {:?}, B {:?}: A and B must be 2-d", lx.dims(), la.dims(), lb.dims())
        };
        if a_in != n_in || b_r != r || !lx.is_contiguous() || !la.is_contiguous() || !lb.is_contiguous() {
            candle_core::bail!(
                "lora update: x {:?}, A {:?}, B {:?} do not chain (contiguous [.., in], [r, in], [out, r])",
                lx.dims(),
                la.dims(),
                lb.dims()
            )
        }
        Ok((lead.iter().product(), n_in, r, out))
    }

    /// x's dims with the last one replaced by `out`.
    fn out_shape(lx: &Layout, out: usize) -> Shape {
        let mut dims = lx.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        Shape::from(dims)
    }

    /// The forward on any backend, given how to apply the dropout there.
    fn fwd<S: BackendStorage>(
        &self,
        (x, lx): (&S, &Layout),
        (a, la): (&S, &Layout),
        (b, lb): (&S, &Layout),
        drop: impl Fn(&S, &Layout) -> Result<(S, Shape)>,
    ) -> Result<(S, Shape)> {
        let (rows, n_in, r, out) = self.dims(lx, la, lb)?;
        let dt = x.dtype();
        let lx2 = Layout::contiguous_with_offset((rows, n_in), lx.start_offset());
        let dropped = match self.dropout {
            Some(_) => Some(drop(x, &lx2)?.0),
            None => None,
        };
        let (xd, lxd) = match &dropped {
            Some(s) => (s, Layout::contiguous((rows, n_in))),
            None => (x, lx2),
        };
        let a16 = a.to_dtype(la, dt)?;
        let b16 = b.to_dtype(lb, dt)?;
        let at = Layout::contiguous((r, n_in)).transpose(0, 1)?;
        let u = xd.matmul(&a16, (1, rows, r, n_in), &lxd, &at)?;
        let bt = Layout::contiguous((out, r)).transpose(0, 1)?;
        let d = u.matmul(&b16, (1, rows, out, r), &Layout::contiguous((rows, r)), &bt)?;
        let d = d.affine(&Layout::contiguous((rows, out)), self.scale, 0.0)?;
        Ok((d, Self::out_shape(lx, out)))
    }
}

impl CustomOp3 for LoraDelta {
    fn name(&self) -> &'static str {
        "lora-delta"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), (s3, l3), |s, l| match &self.dropout {
            Some(d) => d.cpu_fwd(s, l),
            None => candle_core::bail!("lora update: no dropout to apply"),
        })
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
        self.fwd((s1, l1), (s2, l2), (s3, l3), |s, l| match &self.dropout {
            Some(d) => d.cuda_fwd(s, l),
            None => candle_core::bail!("lora update: no dropout to apply"),
        })
    }
    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _d: &Tensor, gd: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dt, x_dims) = (x.dtype(), x.dims().to_vec());
        let (n_in, out) = (a.dim(1)?, b.dim(0)?);
        let rows = x.elem_count() / n_in.max(1);
        let gs = (gd.to_dtype(dt)?.reshape((rows, out))? * self.scale)?;
        let x2 = x.reshape((rows, n_in))?;
        let x = &x2;
        let xd = match &self.dropout {
            Some(d) => x.apply_op1_no_bwd(d)?,
            None => x.clone(),
        };
        let (a16, b16) = (a.to_dtype(dt)?, b.to_dtype(dt)?);
        let u = xd.matmul(&a16.t()?)?;
        let gb = gs.t()?.matmul(&u)?.to_dtype(b.dtype())?;
        let gu = gs.matmul(&b16)?;
        let ga = gu.t()?.matmul(&xd)?.to_dtype(a.dtype())?;
        let gxd = gu.matmul(&a16)?;
        let gx = match &self.dropout {
            Some(d) => gxd.apply_op1_no_bwd(d)?,
            None => gxd,
        }
        .reshape(x_dims)?;
        // Detached: built from A, B (variables) and x, these would keep their op graphs (and
        // the [rows, out] / [rows, in] operands) alive as long as the gradients live, i.e.
        // until the optimizer step, for every layer.
        Ok((Some(gx.detach()), Some(ga.detach()), Some(gb.detach())))
    }
}

/// `scale · dropout(x) Aᵀ Bᵀ` for x `[.., in]` (f32/bf16/f16), A `[r, in]`, B `[out, r]`
/// (any float dtype, cast to x's), differentiable in all three; `[.., out]` in x's dtype. (No
/// reshape around it: each reshape node costs a zeroed tensor and an add in candle's backward.)
pub fn lora_delta(x: &Tensor, a: &Tensor, b: &Tensor, op: LoraDelta) -> Result<Tensor> {
    if !matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("lora update takes f32, bf16 or f16 activations, got {:?}", x.dtype())
    }
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
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
    fn equals_the_composite_with_and_without_dropout() {
        let dev = Device::Cpu;
        for dropout in [None, Some(Dropout { seed: 99, p: 0.25 })] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, 24), &dev).unwrap()).unwrap();
            let a = Var::from_tensor(&Tensor::randn(0f32, 0.2, (4, 24), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.2, (10, 4), &dev).unwrap()).unwrap();
            let up = Tensor::randn(0f32, 1.0, (3, 4, 10), &dev).unwrap();
            let xd = match dropout {
                Some(d) => crate::ops::dropout::dropout(x.as_tensor(), d.seed, d.p).unwrap(),
                None => x.as_tensor().clone(),
            };
            let xd = xd.reshape((12, 24)).unwrap();
            let want = (xd.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap() * 2.0).unwrap();
            let want = want.reshape((3, 4, 10)).unwrap();
            let got = lora_delta(x.as_tensor(), a.as_tensor(), b.as_tensor(), LoraDelta { dropout, scale: 2.0 }).unwrap();
            assert!(max_diff(&want, &got) < 1e-6, "{dropout:?}: forward differs by {}", max_diff(&want, &got));
            let gw = (&want * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = (&got * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, what) in [(&x, "x"), (&a, "A"), (&b, "B")] {
                let (p, q) = (gw.get(v.as_tensor()).unwrap(), gg.get(v.as_tensor()).unwrap());
                assert_eq!(q.dtype(), DType::F32);
                // Regression (GPU peak 4.97 instead of 2.84 GiB on TinyLlama): gradients that
                // carried op graphs kept every layer's operands alive until the optimizer step.
                assert!(!q.track_op(), "{dropout:?}: the {what} gradient keeps an op graph");
                assert!(max_diff(p, q) < 1e-5, "{dropout:?}: {what} gradient differs by {}", max_diff(p, q));
            }
        }
    }

    #[test]
    fn shapes_that_do_not_chain_are_errors() {
        let z = |s: (usize, usize)| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        let e = lora_delta(&z((3, 8)), &z((2, 7)), &z((5, 2)), LoraDelta { dropout: None, scale: 1.0 }).unwrap_err();
        assert!(e.to_string().contains("do not chain"), "{e}");
        let e = lora_delta(&z((3, 7)), &z((2, 7)), &Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(), LoraDelta { dropout: None, scale: 1.0 })
            .unwrap_err();
        assert!(e.to_string().contains("must be 2-d"), "{e}");
        let e = lora_delta(&z((3, 8)), &z((2, 7)), &z((5, 2)), LoraDelta { dropout: None, scale: 1.0 }).unwrap_err();
        assert!(e.to_string().contains("do not chain"), "{e}");
    }
}
