//! The NF4 product for many rows of `x` (prefill, training's forward) on CUDA. What
//! `nf4_linear` takes by default above 8 rows of bf16/f16 is [`linear_prefill`] (in
//! `prefill/overlap.rs`): the whole weight dequantized by the wide kernel, then one cuBLAS
//! product writing `y`. This file keeps the earlier experiment, slabs on one stream: the weight
//! dequantized a slab of rows at a time into one reused scratch and cuBLAS writing each slab's
//! columns of `y` in place (`ldc = n`). **Off by default** ([`DEFAULT_CHUNK_BYTES`] = 0).
//!
//! Why it was tried: dequantizing a whole Mistral-7B projection (up to 117 MB in bf16) writes
//! it to DRAM and the product reads it back, about 2.5 bytes moved per weight beside a product
//! that is compute-bound at 512 rows. A slab of a few MiB written into the same scratch each
//! time could stay in the 50 MB L2 between the dequantize and the product. Measured on an H100
//! (`--profile`, Mistral-7B, 512 rows, bf16): gate 190 µs whole vs 202 / 243 / 298 / 445 µs in
//! slabs of 32 / 16 / 8 / 4 MiB; the whole 512-token forward 32.6 ms vs 35.9 / 41.5 / 48.5 /
//! 66.0 ms. Smaller products lose more to cuBLAS than the L2 saves. Kept, tested, for the
//! measurement; the two-stream overlap of `prefill/overlap.rs` measured slower as well.

use super::{DequantKernel, dequant_into};
use crate::nf4::Nf4Tensor;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};

mod overlap;
pub use overlap::{
    DEFAULT_OVERLAP_SLABS, DEFAULT_WIDE_DEQUANT, dequantize_prefill, linear_overlapped, linear_prefill, nf4_linear_overlapped, overlap_slabs,
    set_overlap_slabs, set_wide_dequant, wide_dequant,
};

/// Default slab size in bytes of the dense weight: 0 = no slabs (measured faster, above).
pub const DEFAULT_CHUNK_BYTES: usize = 0;
static CHUNK_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_CHUNK_BYTES);

/// The slab size `nf4_linear` uses on CUDA for more than 8 rows of x.
pub fn chunk_bytes() -> usize {
    CHUNK_BYTES.load(Ordering::Relaxed)
}

/// Sets the slab size for every later `nf4_linear` (0 = dequantize the whole weight, then one
/// product); for measuring, process-wide.
pub fn set_chunk_bytes(bytes: usize) {
    CHUNK_BYTES.store(bytes, Ordering::Relaxed)
}

/// Rows of W per slab for `k` input features: a multiple of 64 rows, at least 64.
fn slab_rows(bytes: usize, k: usize, esize: usize, n: usize) -> usize {
    let r = (bytes / (k * esize).max(1)) / 64 * 64;
    r.max(64).min(n)
}

/// `x Wᵀ` through slabs of `bytes`, or `None` when this path does not apply (f32, strided or
/// misaligned x, packed weight off the device, slabs off).
pub fn linear_chunked(w: &Nf4Tensor, x: &CudaStorage, xl: &Layout, bytes: usize) -> Result<Option<(CudaStorage, Shape)>> {
    let (n, k) = match w.shape().dims() {
        [n, k] => (*n, *k),
        _ => return Ok(None),
    };
    if bytes == 0 || !matches!(x.dtype(), DType::BF16 | DType::F16) || k == 0 || n == 0 {
        return Ok(None);
    }
    let m = xl.shape().elem_count() / k;
    let Some((o1, _)) = xl.contiguous_offsets() else { return Ok(None) };
    let (ps, pl) = w.packed().storage_and_layout();
    let Some((p1, p2)) = pl.contiguous_offsets() else { return Ok(None) };
    let Storage::Cuda(pc) = &*ps else { return Ok(None) };
    let packed = pc.as_cuda_slice::<u8>()?.slice(p1..p2);
    let dev = x.device().clone();
    let rows = slab_rows(bytes, k, 2, n);
    let y = match x.dtype() {
        DType::BF16 => CudaStorage::wrap_cuda_slice(
            slabs::<half::bf16>(&dev, w, (&packed, p1), x.as_cuda_slice::<half::bf16>()?, o1, (m, n, k), rows, sys::cudaDataType_t::CUDA_R_16BF)?,
            dev,
        ),
        _ => CudaStorage::wrap_cuda_slice(
            slabs::<half::f16>(&dev, w, (&packed, p1), x.as_cuda_slice::<half::f16>()?, o1, (m, n, k), rows, sys::cudaDataType_t::CUDA_R_16F)?,
            dev,
        ),
    };
    let mut dims = xl.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Ok(Some((y, Shape::from(dims))))
}

/// The compute type candle's own 16-bit products use (so results match its matmul).
fn compute_type(dt: sys::cudaDataType_t) -> sys::cublasComputeType_t {
    let reduced = match dt {
        sys::cudaDataType_t::CUDA_R_16BF => candle_core::cuda_backend::gemm_reduced_precision_bf16(),
        _ => candle_core::cuda_backend::gemm_reduced_precision_f16(),
    };
    match (dt, reduced) {
        (sys::cudaDataType_t::CUDA_R_16BF, true) => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
        (_, true) => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16F,
        _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    }
}

/// The compute type and the dequantize kernel for a 16-bit `dt`.
fn kernel_for(dt: sys::cudaDataType_t) -> &'static str {
    if dt == sys::cudaDataType_t::CUDA_R_16BF { "nf4_dequant_bf16" } else { "nf4_dequant_f16" }
}

/// One slab's product on candle's stream: `y[:, r0 .. r0 + nc] = x · slabᵀ`.
#[allow(clippy::too_many_arguments)]
fn gemm_slab<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    scratch: &CudaSlice<T>,
    xv: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>,
    y: &mut CudaSlice<T>,
    (r0, nc): (usize, usize),
    (m, n, k): (usize, usize, usize),
    dt: sys::cudaDataType_t,
) -> Result<()> {
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    let (alpha, beta) = (1f32, 0f32);
    // Column-major: C[nc, m] (ldc n, at y + r0) = op(A)[nc, k] · B[k, m], A = the slab
    // ([k, nc] column-major, transposed), B = x ([k, m] column-major).
    let (a, _ga) = scratch.device_ptr(&stream);
    let (b, _gb) = xv.device_ptr(&stream);
    let mut yv = y.slice_mut(r0..);
    let (c, _gc) = yv.device_ptr_mut(&stream);
    unsafe {
        gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            nc as i32,
            m as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            a as *const _,
            dt,
            k as i32,
            b as *const _,
            dt,
            k as i32,
            (&beta) as *const f32 as *const _,
            c as *mut _,
            dt,
            n as i32,
            compute_type(dt),
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .w()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn slabs<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    w: &Nf4Tensor,
    (packed, packed_start): (&candle_core::cuda_backend::cudarc::driver::CudaView<'_, u8>, usize),
    x: &CudaSlice<T>,
    x_start: usize,
    (m, n, k): (usize, usize, usize),
    rows: usize,
    dt: sys::cudaDataType_t,
) -> Result<CudaSlice<T>> {
    let mut y = unsafe { dev.alloc::<T>(m * n)? };
    let mut scratch = unsafe { dev.alloc::<T>(rows * k)? };
    let xv = x.slice(x_start..x_start + m * k);
    for r0 in (0..n).step_by(rows) {
        let nc = rows.min(n - r0);
        dequant_into(dev, DequantKernel::plain(kernel_for(dt)), w, packed, packed_start, (r0 * k, nc * k), &mut scratch)?;
        gemm_slab(dev, &scratch, &xv, &mut y, (r0, nc), (m, n, k), dt)?;
    }
    Ok(y)
}

/// `x Wᵀ` for `x` on CUDA through slabs of `bytes` (forward only; for tests and measurements:
/// `nf4_linear` takes this path by itself with [`chunk_bytes`]).
pub fn nf4_linear_slabs(x: &Tensor, w: &Nf4Tensor, bytes: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Slabs { w: w.clone(), bytes })
}

struct Slabs {
    w: Nf4Tensor,
    bytes: usize,
}

impl candle_core::CustomOp1 for Slabs {
    fn name(&self) -> &'static str {
        "nf4-linear-slabs"
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("nf4-linear-slabs runs on CUDA; on the CPU call nf4_linear")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match linear_chunked(&self.w, s, l, self.bytes)? {
            Some(r) => Ok(r),
            None => candle_core::bail!("nf4-linear-slabs: needs bf16/f16 contiguous x, the weight on CUDA and bytes > 0"),
        }
    }
}
