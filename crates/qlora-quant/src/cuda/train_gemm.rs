//! In-place CUDA helpers of the hand-written training backward: `y += a · bᵀ` (one cuBLAS
//! product with β = 1 writing into `y`), `acc += dy · W` for an NF4 `W` dequantized a slab of
//! rows at a time, SwiGLU's backward writing its gradients over its inputs, dropout in place.
//! Each saves an activation-sized (or weight-sized) buffer at the moment of the layer backward
//! where the most bytes are alive (`bench/gpu/train_bench.rs --profile`).
//!
//! Why the first: a LoRA projection's training forward is `y = x·Wᵀ + s·dropout(x)·Aᵀ·Bᵀ`; made as a
//! separate delta `d = u·Bᵀ` and an add, it writes `d` (a whole `[rows, out]` tensor, 58 MB on
//! Mistral-7B's MLP at 2048 rows) and reads it back with `y` for the sum. Accumulated into the
//! base product's output, the rank-sized product costs one read and write of `y` and no
//! temporary. The sum is taken in f32 inside cuBLAS and rounded once (the separate add rounds
//! the delta to bf16 first): not bit-identical to `y + d`, a little closer to the exact sum.

use super::gemm::{ColMajor, gemm_f32};
use super::{DequantKernel, dequant_into};
use crate::nf4::Nf4Tensor;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/train.ptx"));
const MODULE: &str = "qlora_quant_train";

/// `y[.., n] += a[.., r] · b[n, r]ᵀ` in place (rows of `y` and `a` flattened; bf16 or f16,
/// all three contiguous, on one CUDA device, `y` owned by nobody else).
pub fn add_matmul_t(y: &Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    let (n, r) = b.dims2()?;
    let n_y = y.dims().last().copied().unwrap_or(0);
    let r_a = a.dims().last().copied().unwrap_or(0);
    if n_y != n || r_a != r || y.elem_count() / n.max(1) != a.elem_count() / r.max(1) {
        candle_core::bail!("add_matmul_t: y {:?} += a {:?} · bᵀ with b {:?}: the shapes do not match", y.dims(), a.dims(), b.dims())
    }
    if y.dtype() != a.dtype() || y.dtype() != b.dtype() || !matches!(y.dtype(), DType::BF16 | DType::F16) {
        candle_core::bail!("add_matmul_t: y, a and b must all be bf16 or all f16, got {:?}, {:?}, {:?}", y.dtype(), a.dtype(), b.dtype())
    }
    y.inplace_op3(a, b, &AddMatmulT)
}

struct AddMatmulT;

fn start(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(o) => Ok(o),
        None => candle_core::bail!("add_matmul_t: {what} is not contiguous"),
    }
}

impl InplaceOp3 for AddMatmulT {
    fn name(&self) -> &'static str {
        "add-matmul-t"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("add_matmul_t runs on CUDA; on the CPU add the product")
    }

    fn cuda_fwd(&self, y: &mut CudaStorage, yl: &Layout, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<()> {
        match y.dtype() {
            DType::BF16 => go::<half::bf16>(y, yl, a, al, b, bl, sys::cudaDataType_t::CUDA_R_16BF),
            DType::F16 => go::<half::f16>(y, yl, a, al, b, bl, sys::cudaDataType_t::CUDA_R_16F),
            other => candle_core::bail!("add_matmul_t takes bf16 or f16, got {other:?}"),
        }
    }
}

fn go<T: CudaDType + DeviceRepr>(
    y: &mut CudaStorage,
    yl: &Layout,
    a: &CudaStorage,
    al: &Layout,
    b: &CudaStorage,
    bl: &Layout,
    dt: sys::cudaDataType_t,
) -> Result<()> {
    let (n, r) = (bl.dims()[0], bl.dims()[1]);
    let m = yl.shape().elem_count() / n.max(1);
    if m == 0 || n == 0 || r == 0 {
        return Ok(());
    }
    let ((y1, y2), (a1, a2), (b1, b2)) = (start(yl, "y")?, start(al, "a")?, start(bl, "b")?);
    let dev = y.device().clone();
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    let av = a.as_cuda_slice::<T>()?.slice(a1..a2);
    let bv = b.as_cuda_slice::<T>()?.slice(b1..b2);
    let mut yv = y.as_cuda_slice_mut::<T>()?.slice_mut(y1..y2);
    let (alpha, beta) = (1f32, 1f32);
    // Column-major: Yᵀ [n, m] (ld n) += op(B)[n, r] · Aᵀ [r, m], B = b as [r, n] column-major
    // transposed, A = a as [r, m] column-major.
    let (bp, _gb) = bv.device_ptr(&stream);
    let (ap, _ga) = av.device_ptr(&stream);
    let (yp, _gy) = yv.device_ptr_mut(&stream);
    // SAFETY: the three buffers hold m·n, m·r and n·r elements of `dt` (checked above), on
    // candle's stream, which the product is queued on.
    unsafe {
        gemm_f32(
            &blas,
            (sys::cublasOperation_t::CUBLAS_OP_T, sys::cublasOperation_t::CUBLAS_OP_N),
            (n, m, r),
            (alpha, beta),
            ColMajor { ptr: bp, dt, ld: r },
            ColMajor { ptr: ap, dt, ld: r },
            ColMajor { ptr: yp, dt, ld: n },
        )
    }?;
    Ok(())
}

/// Bytes of a dense weight slab in [`nf4_backward_add`]: Mistral-7B's MLP weights (117 MB in
/// bf16) go in 4 slabs, its attention weights (34 MB) in 2.
pub const BACKWARD_SLAB_BYTES: usize = 32 << 20;

/// `acc[.., k] += dy[.., n] · W` in place for an NF4 `W` `[n, k]`: W dequantized a slab of
/// rows at a time (at most [`BACKWARD_SLAB_BYTES`]) into one scratch, each slab's product
/// accumulated into `acc` by cuBLAS (β = 1). `acc` and `dy` bf16 or f16 (the same),
/// contiguous; `acc` owned by nobody else.
pub fn nf4_backward_add(acc: &Tensor, dy: &Tensor, w: &Nf4Tensor) -> Result<()> {
    nf4_backward_add_slabs(acc, dy, w, backward_slab_bytes())
}

/// The slab size [`nf4_backward_add`] uses: [`BACKWARD_SLAB_BYTES`], or
/// `QLORA_TRAIN_BWD_SLAB_MIB` MiB when set (read once; for measuring speed against the peak:
/// the slabs run over `dy·W`'s reduction dimension, so each slab's product reads and writes
/// all of `acc` again, 58 MB per slab for Mistral-7B's down projection at 2048 rows).
pub fn backward_slab_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("QLORA_TRAIN_BWD_SLAB_MIB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&m| m > 0)
            .map_or(BACKWARD_SLAB_BYTES, |m| m << 20)
    })
}

/// [`nf4_backward_add`] with slabs of at most `slab_bytes` of the dense weight (whole NF4
/// rows, at least 64 of them; tests take small slabs on small weights).
pub fn nf4_backward_add_slabs(acc: &Tensor, dy: &Tensor, w: &Nf4Tensor, slab_bytes: usize) -> Result<()> {
    let (n, k) = match w.shape().dims() {
        [n, k] => (*n, *k),
        d => candle_core::bail!("nf4_backward_add: weight of shape {d:?}, not [out, in]"),
    };
    let m = acc.elem_count() / k.max(1);
    if acc.dims().last() != Some(&k) || dy.dims().last() != Some(&n) || dy.elem_count() != m * n {
        candle_core::bail!("nf4_backward_add: acc {:?} += dy {:?} · W {:?}: the shapes do not match", acc.dims(), dy.dims(), w.shape().dims())
    }
    if acc.dtype() != dy.dtype() || !matches!(acc.dtype(), DType::BF16 | DType::F16) {
        candle_core::bail!("nf4_backward_add: acc and dy must both be bf16 or f16, got {:?}, {:?}", acc.dtype(), dy.dtype())
    }
    acc.inplace_op2(dy, &BackwardAdd { w: w.clone(), slab_bytes: slab_bytes.max(1) })
}

struct BackwardAdd {
    w: Nf4Tensor,
    slab_bytes: usize,
}

impl InplaceOp2 for BackwardAdd {
    fn name(&self) -> &'static str {
        "nf4-backward-add"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("nf4_backward_add runs on CUDA; on the CPU add dy · dequantize(W)")
    }

    fn cuda_fwd(&self, acc: &mut CudaStorage, al: &Layout, dy: &CudaStorage, dl: &Layout) -> Result<()> {
        match acc.dtype() {
            DType::BF16 => backward_add::<half::bf16>((&self.w, self.slab_bytes), acc, al, dy, dl, sys::cudaDataType_t::CUDA_R_16BF),
            DType::F16 => backward_add::<half::f16>((&self.w, self.slab_bytes), acc, al, dy, dl, sys::cudaDataType_t::CUDA_R_16F),
            other => candle_core::bail!("nf4_backward_add takes bf16 or f16, got {other:?}"),
        }
    }
}

fn backward_add<T: CudaDType + DeviceRepr>(
    (w, slab_bytes): (&Nf4Tensor, usize),
    acc: &mut CudaStorage,
    al: &Layout,
    dy: &CudaStorage,
    dl: &Layout,
    dt: sys::cudaDataType_t,
) -> Result<()> {
    let (n, k) = (w.shape().dims()[0], w.shape().dims()[1]);
    let kernel = DequantKernel::fastest(acc.dtype())?;
    let m = al.shape().elem_count() / k.max(1);
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    let ((c1, c2), (d1, d2)) = (start(al, "acc")?, start(dl, "dy")?);
    let (ps, pl) = w.packed().storage_and_layout();
    let Some((p1, p2)) = pl.contiguous_offsets() else { candle_core::bail!("nf4_backward_add: the packed weight is not contiguous") };
    let Storage::Cuda(pc) = &*ps else { candle_core::bail!("nf4_backward_add: the packed weight is not on the GPU") };
    let packed = pc.as_cuda_slice::<u8>()?.slice(p1..p2);
    let dev = acc.device().clone();
    // Slab rows: a multiple of 64 (whole NF4 blocks for any k), about equal slabs.
    let slabs = (n * k * 2).div_ceil(slab_bytes).max(1);
    let rows = n.div_ceil(slabs).next_multiple_of(64).min(n);
    let mut scratch = unsafe { dev.alloc::<T>(rows * k)? };
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    let dv = dy.as_cuda_slice::<T>()?.slice(d1..d2);
    let mut cv = acc.as_cuda_slice_mut::<T>()?.slice_mut(c1..c2);
    let (alpha, beta) = (1f32, 1f32);
    for r0 in (0..n).step_by(rows) {
        let nc = rows.min(n - r0);
        dequant_into(&dev, kernel, w, &packed, p1, (r0 * k, nc * k), &mut scratch)?;
        // Column-major: accᵀ [k, m] (ld k) += slabᵀ [k, nc] (the slab's rows, ld k) ·
        // dyᵀ[r0 .. r0 + nc, :] [nc, m] (ld n).
        let dslab = dv.slice(r0..);
        let (ap, _ga) = scratch.device_ptr(&stream);
        let (bp, _gb) = dslab.device_ptr(&stream);
        let (cp, _gc) = cv.device_ptr_mut(&stream);
        // SAFETY: scratch holds nc·k elements, dy m·n from offset r0 read with ld n, acc m·k;
        // all on candle's stream.
        unsafe {
            gemm_f32(
                &blas,
                (sys::cublasOperation_t::CUBLAS_OP_N, sys::cublasOperation_t::CUBLAS_OP_N),
                (k, m, nc),
                (alpha, beta),
                ColMajor { ptr: ap, dt, ld: k },
                ColMajor { ptr: bp, dt, ld: n },
                ColMajor { ptr: cp, dt, ld: k },
            )
        }?;
    }
    drop(scratch);
    Ok(())
}

fn kernel_suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("in-place training kernels take f32, bf16 or f16, got {other:?}"),
    })
}

fn elementwise(n: usize) -> LaunchConfig {
    let blocks = (n.div_ceil(256) as u32).clamp(1, 65535);
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// SwiGLU's backward over its inputs: `gate` becomes `∂L/∂gate` and `up` becomes `∂L/∂up`
/// given `dy` (`kernels/train.cu` swiglu_bwd_inplace_*, the arithmetic of swiglu_bwd_*). All
/// three contiguous, one dtype, `n` elements each. `up` is written through its storage
/// although borrowed shared: the caller gives it up (it holds the only handle).
pub fn swiglu_bwd_in_place(g: &mut CudaStorage, gl: &Layout, u: &CudaStorage, ul: &Layout, dy: &CudaStorage, dl: &Layout) -> Result<()> {
    fn go<T: CudaDType + DeviceRepr>(g: &mut CudaStorage, gl: &Layout, u: &CudaStorage, ul: &Layout, dy: &CudaStorage, dl: &Layout) -> Result<()> {
        let ((g1, g2), (u1, u2), (d1, d2)) = (start(gl, "gate")?, start(ul, "up")?, start(dl, "dy")?);
        let n = g2 - g1;
        if u2 - u1 != n || d2 - d1 != n {
            candle_core::bail!("swiglu_bwd_in_place: gate {n}, up {} and dy {} elements", u2 - u1, d2 - d1)
        }
        let dev = g.device().clone();
        let func = dev.get_or_load_custom_func(&format!("swiglu_bwd_inplace_{}", kernel_suffix(g.dtype())?), MODULE, PTX)?;
        let us = u.as_cuda_slice::<T>()?.slice(u1..u2);
        let ds = dy.as_cuda_slice::<T>()?.slice(d1..d2);
        let mut gs = g.as_cuda_slice_mut::<T>()?.slice_mut(g1..g2);
        let n64 = n as u64;
        let mut b = func.builder();
        b.arg(&mut gs);
        b.arg(&us);
        b.arg(&ds);
        b.arg(&n64);
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(())
    }
    if g.dtype() != u.dtype() || g.dtype() != dy.dtype() {
        candle_core::bail!("swiglu_bwd_in_place: gate, up and dy differ in dtype")
    }
    match g.dtype() {
        DType::F32 => go::<f32>(g, gl, u, ul, dy, dl),
        DType::BF16 => go::<half::bf16>(g, gl, u, ul, dy, dl),
        DType::F16 => go::<half::f16>(g, gl, u, ul, dy, dl),
        other => candle_core::bail!("swiglu_bwd_in_place takes f32, bf16 or f16, got {other:?}"),
    }
}

/// Dropout in place: `x[i] = keep(seed, i) ? x[i] · scale : 0` (the mask of
/// `train::dropout`), `x` contiguous.
pub fn dropout_in_place(x: &mut CudaStorage, l: &Layout, seed: u64, threshold: u32, scale: f32) -> Result<()> {
    fn go<T: CudaDType + DeviceRepr>(x: &mut CudaStorage, l: &Layout, seed: u64, threshold: u32, scale: f32) -> Result<()> {
        let (o1, o2) = start(l, "dropout input")?;
        let n = o2 - o1;
        let dev = x.device().clone();
        let func = dev.get_or_load_custom_func(&format!("dropout_inplace_{}", kernel_suffix(x.dtype())?), MODULE, PTX)?;
        let mut xs = x.as_cuda_slice_mut::<T>()?.slice_mut(o1..o2);
        let n64 = n as u64;
        let mut b = func.builder();
        b.arg(&mut xs);
        b.arg(&n64);
        b.arg(&seed);
        b.arg(&threshold);
        b.arg(&scale);
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(())
    }
    match x.dtype() {
        DType::F32 => go::<f32>(x, l, seed, threshold, scale),
        DType::BF16 => go::<half::bf16>(x, l, seed, threshold, scale),
        DType::F16 => go::<half::f16>(x, l, seed, threshold, scale),
        other => candle_core::bail!("dropout_in_place takes f32, bf16 or f16, got {other:?}"),
    }
}
