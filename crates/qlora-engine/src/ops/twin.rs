//! What the CPU twins of the fused custom ops (`attention`, `glu`, `rope`, `fused_rms`) share:
//! a contiguous f32 / bf16 / f16 storage read as f32 values, and f32 results stored back in the
//! op's dtype (rounded once, as the CUDA kernels round their f32 math).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result};

/// The contiguous elements of `s` as f32; `op` names the op in errors.
pub(crate) fn f32s(op: &str, s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: input is not contiguous") };
    Ok(match s {
        CpuStorage::F32(v) => v[a..b].to_vec(),
        CpuStorage::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        other => candle_core::bail!("{op} takes f32, bf16 or f16, got {:?}", other.dtype()),
    })
}

/// `v` as a storage of `dtype` (bf16 and f16 rounded to nearest; anything else stays f32).
pub(crate) fn store(dtype: DType, v: Vec<f32>) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        _ => CpuStorage::F32(v),
    }
}
