//! `alpha · op(a) · op(b)` as one cuBLAS call for the LoRA update's skinny products in training
//! (16-bit operands, the product in their dtype or in f32).
//!
//! Why: the update's products each came with a second kernel: `s · (x·Aᵀ)` and `s · (dy·B)`
//! an elementwise scale after the GEMM, and the adapter gradients `dyᵀ·u`, `∂uᵀ·x` (f32
//! parameters) a cast of the 16-bit product to f32. On Mistral-7B that is ~1,300 launches a
//! step on a host that is barely ahead of the GPU. cuBLAS takes the scale as `alpha` and
//! writes an f32 result from 16-bit operands directly (accumulated in f32 either way), so each
//! pair is one call; the f32 gradients skip the 16-bit rounding in between (closer to the
//! exact product, not bit-identical to the old pair), and a power-of-two scale gives the
//! same bits as the scale applied after. Used by `qlora-train`'s `TrainLora` with
//! on by default (`QLORA_LORA_GEMM=0` turns it off).

use super::gemm::{ColMajor, gemm_f32};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys;
use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Result, Shape, Storage, Tensor};

/// The device address of a contiguous 2-d tensor's first element and its `[rows, cols]`.
fn operand(t: &Tensor, dev: &CudaDevice, what: &str) -> Result<(u64, usize, usize)> {
    let (rows, cols) = t.dims2().map_err(|_| candle_core::Error::Msg(format!("lora gemm: {what} must be 2-d, got {:?}", t.dims())))?;
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*st else { candle_core::bail!("lora gemm: {what} is not on a CUDA device") };
    if c.device().id() != dev.id() {
        candle_core::bail!("lora gemm: the operands are on different CUDA devices");
    }
    if !l.is_contiguous() {
        candle_core::bail!("lora gemm: {what} is not contiguous");
    }
    let stream = dev.cuda_stream();
    let base = match &c.slice {
        CudaStorageSlice::BF16(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(&stream).0,
        _ => candle_core::bail!("lora gemm: {what} must be bf16 or f16, got {:?}", t.dtype()),
    };
    Ok((base + (l.start_offset() * t.dtype().size_in_bytes()) as u64, rows, cols))
}

/// `alpha · op(a) · op(b)` (row-major; `op` transposes where `ta` / `tb`) for 2-d contiguous
/// bf16 or f16 `a` and `b` of one dtype on one CUDA device, as a fresh `[m, n]` tensor of
/// dtype `out` (their dtype or f32), accumulated in f32.
pub fn matmul(a: &Tensor, ta: bool, b: &Tensor, tb: bool, alpha: f32, out: DType) -> Result<Tensor> {
    let candle_core::Device::Cuda(dev) = a.device() else { candle_core::bail!("lora gemm runs on CUDA") };
    if a.dtype() != b.dtype() || (out != a.dtype() && out != DType::F32) {
        candle_core::bail!("lora gemm: operands {:?} and {:?} into {out:?} (one 16-bit dtype, the product in it or f32)", a.dtype(), b.dtype())
    }
    let (ap, ar, ac) = operand(a, dev, "a")?;
    let (bp, br, bc) = operand(b, dev, "b")?;
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if tb { (bc, br) } else { (br, bc) };
    if kb != k {
        candle_core::bail!("lora gemm: op(a) {:?} · op(b) {:?} do not chain", (m, k), (kb, n))
    }
    let dt = match a.dtype() {
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        _ => sys::cudaDataType_t::CUDA_R_16F,
    };
    let (slice, ct) = if m * n == 0 {
        return Tensor::zeros((m, n), out, a.device());
    } else {
        // SAFETY: cuBLAS writes all m·n elements (β = 0) before anything reads them.
        unsafe {
            match out {
                DType::F32 => (CudaStorageSlice::F32(dev.alloc::<f32>(m * n)?), sys::cudaDataType_t::CUDA_R_32F),
                DType::BF16 => (CudaStorageSlice::BF16(dev.alloc::<half::bf16>(m * n)?), dt),
                _ => (CudaStorageSlice::F16(dev.alloc::<half::f16>(m * n)?), dt),
            }
        }
    };
    let stream = dev.cuda_stream();
    let cp = match &slice {
        CudaStorageSlice::F32(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::BF16(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(&stream).0,
        _ => unreachable!("allocated above as f32, bf16 or f16"),
    };
    // Column-major: Cᵀ [n, m] (ld n) = op(B)ᵀ · op(A)ᵀ, where a row-major [r, c] matrix is a
    // column-major [c, r] one with leading dimension c.
    let op = |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
    let (op_b, ldb, op_a, lda) = (op(tb), bc, op(ta), ac);
    let blas = dev.cublas_handle();
    // SAFETY: a, b hold ar·ac and br·bc elements of `dt`, c m·n of `ct` (checked and
    // allocated above), all on candle's stream, which the product is queued on.
    unsafe {
        gemm_f32(
            &blas,
            (op_b, op_a),
            (n, m, k),
            (alpha, 0.0),
            ColMajor { ptr: bp, dt, ld: ldb },
            ColMajor { ptr: ap, dt, ld: lda },
            ColMajor { ptr: cp, dt: ct, ld: n },
        )
    }?;
    let st = CudaStorage { slice, device: dev.clone() };
    Ok(Tensor::from_storage(Storage::Cuda(st), Shape::from((m, n)), BackpropOp::none(), false))
}
