//! The cuBLAS call behind the hand-written training products (`lora_gemm`, `train_gemm`):
//! `gemm_ex` with f32 scalars, f32 accumulation and tensor cores allowed.
//!
//! Why: each of those products spelled out the same nineteen arguments, of which only the
//! operands, their shapes and the two scalars differ; one function keeps the compute type and
//! the algorithm the same for all of them.

use candle_core::Result;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, result::gemm_ex, sys};

/// A column-major matrix as cuBLAS takes it: device address, element type, leading dimension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ColMajor {
    pub ptr: u64,
    pub dt: sys::cudaDataType_t,
    pub ld: usize,
}

/// `c = alpha · op_a(a) · op_b(b) + beta · c`, all column-major, `c` `[m, n]` and `k` the inner
/// dimension (cuBLAS's order of arguments), accumulated in f32, queued on `blas`'s stream.
///
/// # Safety
/// `a`, `b` and `c` hold every element their shapes and leading dimensions reach, of their
/// element types, and stay alive until the product has run on that stream.
pub(crate) unsafe fn gemm_f32(
    blas: &CudaBlas,
    (op_a, op_b): (sys::cublasOperation_t, sys::cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    (alpha, beta): (f32, f32),
    a: ColMajor,
    b: ColMajor,
    c: ColMajor,
) -> Result<()> {
    // SAFETY: the caller's (above); alpha and beta are read on the host before the call returns.
    unsafe {
        gemm_ex(
            *blas.handle(),
            op_a,
            op_b,
            m as i32,
            n as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            a.ptr as *const _,
            a.dt,
            a.ld as i32,
            b.ptr as *const _,
            b.dt,
            b.ld as i32,
            (&beta) as *const f32 as *const _,
            c.ptr as *mut _,
            c.dt,
            c.ld as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .w()?;
    Ok(())
}
