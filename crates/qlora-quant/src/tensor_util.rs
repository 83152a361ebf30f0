//! Small helpers to read CPU tensors without copying and to validate inputs.

use crate::error::{QuantError, Result};
use candle_core::{Storage, Tensor, WithDType};

pub(crate) fn on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu()
}

/// Runs `f` on the contiguous CPU data of `t` (no copy). Errors on a non-CPU or strided tensor.
pub(crate) fn with_cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("internal: expected a CPU tensor, found one on {:?}", t.device().location()) };
    let data = cpu.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(f(&data[start..end])),
        None => candle_core::bail!("internal: expected a contiguous tensor"),
    }
}

/// The values of a 1-d-able tensor as a Vec (a copy; from any device).
pub(crate) fn cpu_vec<T: WithDType>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

pub(crate) fn check_finite(x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite { index, value: x[index] }),
        None => Ok(()),
    }
}
