//! The CPU twins of the CUDA kernels: the same arithmetic on the host, so a GPU result can be
//! checked against them (dequantize bit for bit; the GEMV to float tolerance, since the warp
//! sums in another order).

use crate::kernels;
use crate::nf4::Nf4Tensor;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape};

/// The weight's f32 values, unrounded (`code * absmax`), from CPU-resident parts.
fn weight_f32(w: &Nf4Tensor, packed: &[u8]) -> Result<Vec<f32>> {
    let absmax = w.absmax_f32()?.to_device(&candle_core::Device::Cpu)?.to_vec1::<f32>()?;
    Ok(kernels::nf4_dequantize(packed, &absmax, w.code(), w.blocksize(), w.shape().elem_count(), |v| v))
}

fn packed_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u8]> {
    let Some((o1, o2)) = l.contiguous_offsets() else { candle_core::bail!("nf4: packed weight is not contiguous") };
    Ok(&s.as_slice::<u8>()?[o1..o2])
}

pub(super) fn dequantize(w: &Nf4Tensor, s: &CpuStorage, l: &Layout, dtype: DType) -> Result<(CpuStorage, Shape)> {
    let v = weight_f32(w, packed_slice(s, l)?)?;
    let out = match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        other => candle_core::bail!("cannot dequantize NF4 to {other:?}: use f32, f16 or bf16"),
    };
    Ok((out, w.shape().clone()))
}

/// `x Wᵀ` with f32 accumulation, output in x's dtype.
pub(super) fn gemv(w: &Nf4Tensor, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (n, k) = match w.shape().dims() {
        [n, k] => (*n, *k),
        d => candle_core::bail!("nf4 gemv needs a 2-d weight, got {d:?}"),
    };
    let Some((o1, o2)) = l.contiguous_offsets() else { candle_core::bail!("nf4 gemv: x is not contiguous") };
    let x: Vec<f32> = match s {
        CpuStorage::F32(v) => v[o1..o2].to_vec(),
        CpuStorage::BF16(v) => v[o1..o2].iter().map(|v| v.to_f32()).collect(),
        CpuStorage::F16(v) => v[o1..o2].iter().map(|v| v.to_f32()).collect(),
        other => candle_core::bail!("nf4 gemv: x must be f32, f16 or bf16, got {:?}", other.dtype()),
    };
    let packed = w.packed().to_device(&candle_core::Device::Cpu)?;
    let packed: Vec<u8> = packed.to_vec1()?;
    let wf = weight_f32(w, &packed)?;
    let m = x.len() / k;
    let mut y = vec![0f32; m * n];
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (r, out) in yr.iter_mut().enumerate() {
            *out = wf[r * k..(r + 1) * k].iter().zip(xr).map(|(a, b)| a * b).sum();
        }
    }
    let mut dims = l.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    let out = match s.dtype() {
        DType::F32 => CpuStorage::F32(y),
        DType::BF16 => CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect()),
        _ => CpuStorage::F16(y.into_iter().map(half::f16::from_f32).collect()),
    };
    Ok((out, Shape::from(dims)))
}
