//! Masked cross-entropy over 16-bit logits without f32 copies: [`ce_loss`] gives each row's
//! `w · nll` in f32, [`ce_grad`] each row's `coef · w · (softmax − onehot)` in the logits'
//! dtype. Both read the logits as f32 one element at a time (as transformers upcasts them for
//! its loss). On CUDA one block per row (`kernels/train.cu`); on the CPU the same sums in f64.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

fn rows_vocab(l: &Layout) -> Result<(usize, usize)> {
    match l.dims() {
        [r, v] => Ok((*r, *v)),
        d => candle_core::bail!("cross-entropy takes 2-d logits [rows, vocab], got {d:?}"),
    }
}

fn cpu_parts<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    s3: &'a CpuStorage,
    l3: &Layout,
) -> Result<(Vec<f32>, &'a [u32], &'a [f32])> {
    let off = |l: &Layout, what: &str| l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("cross-entropy: {what} not contiguous")));
    let (a, b) = off(l1, "logits")?;
    let logits: Vec<f32> = match s1 {
        CpuStorage::F32(v) => v[a..b].to_vec(),
        CpuStorage::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        other => candle_core::bail!("cross-entropy takes f32, bf16 or f16 logits, got {:?}", other.dtype()),
    };
    let (la, lb) = off(l2, "labels")?;
    let (wa, wb) = off(l3, "weights")?;
    Ok((logits, &s2.as_slice::<u32>()?[la..lb], &s3.as_slice::<f32>()?[wa..wb]))
}

/// `(max, Σ exp(x − max))` of a row, in f64.
fn stats(row: &[f32]) -> (f64, f64) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64;
    (m, row.iter().map(|x| (*x as f64 - m).exp()).sum())
}

#[cfg(feature = "cuda")]
fn cuda_inputs<'a>(
    s1: &'a candle_core::CudaStorage,
    l1: &'a Layout,
    s2: &'a candle_core::CudaStorage,
    l2: &'a Layout,
    s3: &'a candle_core::CudaStorage,
    l3: &'a Layout,
) -> Result<qlora_quant::cuda::train::CeInputs<'a>> {
    let (rows, vocab) = rows_vocab(l1)?;
    Ok(qlora_quant::cuda::train::CeInputs { logits: (s1, l1), labels: (s2, l2), weights: (s3, l3), rows, vocab })
}

struct CeLoss;

impl CustomOp3 for CeLoss {
    fn name(&self) -> &'static str {
        "ce-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, v) = rows_vocab(l1)?;
        let (logits, labels, weights) = cpu_parts(s1, l1, s2, l2, s3, l3)?;
        let out = (0..rows)
            .map(|r| {
                let row = &logits[r * v..(r + 1) * v];
                let (m, s) = stats(row);
                let lab = labels[r] as usize;
                let picked = if lab < v { row[lab] as f64 } else { m };
                if weights[r] == 0.0 { 0.0 } else { (weights[r] as f64 * (m + s.ln() - picked)) as f32 }
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(rows)))
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
        let i = cuda_inputs(s1, l1, s2, l2, s3, l3)?;
        Ok((qlora_quant::cuda::train::ce_loss(&i)?, Shape::from(i.rows)))
    }
}

struct CeGrad {
    coef: f32,
}

impl CustomOp3 for CeGrad {
    fn name(&self) -> &'static str {
        "ce-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, v) = rows_vocab(l1)?;
        let (logits, labels, weights) = cpu_parts(s1, l1, s2, l2, s3, l3)?;
        let mut g = vec![0f32; rows * v];
        for r in 0..rows {
            let c = weights[r] as f64 * self.coef as f64;
            if c == 0.0 {
                continue;
            }
            let row = &logits[r * v..(r + 1) * v];
            let (m, s) = stats(row);
            for (j, x) in row.iter().enumerate() {
                let p = (*x as f64 - m).exp() / s;
                g[r * v + j] = (c * (p - if j == labels[r] as usize { 1.0 } else { 0.0 })) as f32;
            }
        }
        let out = match s1.dtype() {
            DType::BF16 => CpuStorage::BF16(g.into_iter().map(half::bf16::from_f32).collect()),
            DType::F16 => CpuStorage::F16(g.into_iter().map(half::f16::from_f32).collect()),
            _ => CpuStorage::F32(g),
        };
        Ok((out, Shape::from((rows, v))))
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
        let i = cuda_inputs(s1, l1, s2, l2, s3, l3)?;
        Ok((qlora_quant::cuda::train::ce_grad(&i, self.coef)?, Shape::from((i.rows, i.vocab))))
    }
}

fn check(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<()> {
    let (rows, _) = logits.dims2()?;
    if labels.dims() != [rows] || weights.dims() != [rows] || labels.dtype() != DType::U32 || weights.dtype() != DType::F32 {
        candle_core::bail!(
            "cross-entropy: labels must be [{rows}] u32 and weights [{rows}] f32, got {:?} {:?} and {:?} {:?}",
            labels.dims(),
            labels.dtype(),
            weights.dims(),
            weights.dtype()
        )
    }
    Ok(())
}

/// Each row's `w · (logsumexp(row) − row[label])`, f32 `[rows]` (0 where `w = 0`).
pub fn ce_loss(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    check(logits, labels, weights)?;
    logits.contiguous()?.apply_op3_no_bwd(&labels.contiguous()?, &weights.contiguous()?, &CeLoss)
}

/// `coef · w · (softmax(row) − onehot(label))` per row, `[rows, vocab]` in the logits' dtype.
pub fn ce_grad(logits: &Tensor, labels: &Tensor, weights: &Tensor, coef: f64) -> Result<Tensor> {
    check(logits, labels, weights)?;
    logits.contiguous()?.apply_op3_no_bwd(&labels.contiguous()?, &weights.contiguous()?, &CeGrad { coef: coef as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    #[test]
    fn matches_log_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2., 3., 0.5], [0.1, -2., 4., 1.], [1., 1., 1., 1.]], &dev).unwrap();
        let labels = Tensor::new(&[2u32, 0, 1], &dev).unwrap();
        let weights = Tensor::new(&[1f32, 0.5, 0.], &dev).unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let picked = lsm.gather(&labels.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap();
        let want = (picked.neg().unwrap() * &weights).unwrap().to_vec1::<f32>().unwrap();
        let got = ce_loss(&logits, &labels, &weights).unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let g = ce_grad(&logits, &labels, &weights, 2.0).unwrap().to_vec2::<f32>().unwrap();
        let p = lsm.exp().unwrap().to_vec2::<f32>().unwrap();
        for (r, (lab, w)) in [(2usize, 1f32), (0, 0.5), (1, 0.)].into_iter().enumerate() {
            for j in 0..4 {
                let want = 2.0 * w * (p[r][j] - if j == lab { 1.0 } else { 0.0 });
                assert!((g[r][j] - want).abs() < 1e-6, "row {r} col {j}: {} vs {want}", g[r][j]);
            }
        }
    }
}
