//! Launchers for the multi-tensor optimizer kernels of `kernels/optim.cu`: AdamW over every
//! LoRA tensor of a model in one launch, and the global gradient norm's sum of squares in two.
//!
//! Why: a Mistral-7B run with rank 16 on all seven projections has 448 LoRA tensors; three
//! kernels each (two moments, the update) made the optimizer step ~1,350 launches, 10 ms of an
//! H100 step, host-bound, for 42 M parameters that one pass over memory updates in well under
//! a millisecond. Here each tensor is a descriptor (device addresses and length) in one small
//! array uploaded per step, and the blocks of one grid are spread over the tensors by a table
//! of first blocks. The arithmetic is the per-tensor kernels' (`adamw_*` in `train.cu`), so
//! the result is the same to the bit; `qlora-train`'s `ops/adamw.rs` keeps the CPU twin.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Result, Shape, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"));
const MODULE: &str = "qlora_quant_optim";

/// Elements of one tensor a block covers (256 threads, 16 elements each).
const CHUNK: usize = 4096;
const THREADS: u32 = 256;

pub use crate::adamw::AdamWConsts;

// SAFETY: a plain `repr(C)` struct of 4-byte fields, passed by value as the kernel expects.
unsafe impl DeviceRepr for AdamWConsts {}

/// One parameter's tensors: `w`, `m`, `v` updated in place, `g` read (all f32, contiguous,
/// the same length); `shadow` (bf16 or f16, the same length) receives the new `w` rounded.
#[derive(Debug, Clone, Copy)]
pub struct AdamWSlot<'a> {
    pub w: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    pub g: &'a Tensor,
    pub shadow: Option<&'a Tensor>,
}

/// The device address of `t`'s first element and its length: `t` on `dev`, contiguous, of
/// dtype `dtype`.
fn address(t: &Tensor, dev: &CudaDevice, dtype: DType, what: &str) -> Result<(u64, usize)> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*st else { candle_core::bail!("multi-tensor {what}: the tensor is not on a CUDA device") };
    if c.device().id() != dev.id() {
        candle_core::bail!("multi-tensor {what}: the tensors are on different CUDA devices");
    }
    if t.dtype() != dtype || !l.is_contiguous() {
        candle_core::bail!("multi-tensor {what}: expected a contiguous {dtype:?} tensor, got {:?} (contiguous: {})", t.dtype(), l.is_contiguous())
    }
    let stream = dev.cuda_stream();
    let base = match &c.slice {
        CudaStorageSlice::F32(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::BF16(s) => s.device_ptr(&stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(&stream).0,
        _ => candle_core::bail!("multi-tensor {what}: {:?} tensors are not supported", t.dtype()),
    };
    Ok((base + (l.start_offset() * dtype.size_in_bytes()) as u64, t.elem_count()))
}

fn device_of(t: &Tensor, what: &str) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => candle_core::bail!("multi-tensor {what}: the tensors are not on a CUDA device"),
    }
}

/// Each tensor's first block for lengths `ns` and the grid's block count.
fn first_blocks(ns: impl Iterator<Item = usize>) -> Result<(Vec<u32>, u32)> {
    let mut firsts = Vec::new();
    let mut next = 0usize;
    for n in ns {
        firsts.push(next as u32);
        next += n.div_ceil(CHUNK);
    }
    if next > u32::MAX as usize / 2 {
        candle_core::bail!("multi-tensor kernel: {next} blocks are too many for one launch")
    }
    Ok((firsts, next as u32))
}

fn cfg(blocks: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One AdamW step over all `slots` in one launch (see `adamw_multi_f32` in `optim.cu`).
/// Empty tensors are skipped; every shadow must have the same dtype (bf16 or f16).
pub fn adamw_multi(slots: &[AdamWSlot], c: &AdamWConsts) -> Result<()> {
    let slots: Vec<&AdamWSlot> = slots.iter().filter(|s| s.w.elem_count() > 0).collect();
    let Some(first) = slots.first() else { return Ok(()) };
    let dev = device_of(first.w, "AdamW")?;
    let mut c = *c;
    c.shadow_kind = 0;
    let mut desc: Vec<u64> = Vec::with_capacity(slots.len() * 6);
    for s in &slots {
        let (w, n) = address(s.w, &dev, DType::F32, "AdamW parameter")?;
        let (m, nm) = address(s.m, &dev, DType::F32, "AdamW first moment")?;
        let (v, nv) = address(s.v, &dev, DType::F32, "AdamW second moment")?;
        let (g, ng) = address(s.g, &dev, DType::F32, "AdamW gradient")?;
        if nm != n || nv != n || ng != n {
            candle_core::bail!("AdamW: a parameter of {n} floats with moments of {nm}, {nv} and a gradient of {ng}")
        }
        let shadow = match s.shadow {
            Some(t) => {
                let kind = match t.dtype() {
                    DType::BF16 => 1,
                    DType::F16 => 2,
                    other => candle_core::bail!("AdamW: a shadow copy must be bf16 or f16, got {other:?}"),
                };
                if c.shadow_kind != 0 && c.shadow_kind != kind {
                    candle_core::bail!("AdamW: shadow copies of two dtypes in one step")
                }
                c.shadow_kind = kind;
                let (p, ns) = address(t, &dev, t.dtype(), "AdamW shadow copy")?;
                if ns != n {
                    candle_core::bail!("AdamW: a shadow copy of {ns} elements for a parameter of {n}")
                }
                p
            }
            None => 0,
        };
        desc.extend_from_slice(&[w, m, v, g, shadow, n as u64]);
    }
    let (firsts, blocks) = first_blocks(slots.iter().map(|s| s.w.elem_count()))?;
    let desc = dev.clone_htod(&desc)?;
    let firsts_d = dev.clone_htod(&firsts)?;
    let func = dev.get_or_load_custom_func("adamw_multi_f32", MODULE, PTX)?;
    let (count, chunk) = (firsts.len() as u32, CHUNK as u64);
    let mut b = func.builder();
    b.arg(&desc);
    b.arg(&firsts_d);
    b.arg(&count);
    b.arg(&chunk);
    b.arg(&c);
    // SAFETY: every descriptor holds live device addresses of `n` elements of the dtypes the
    // kernel reads and writes (checked above); the tensors outlive the launch on this stream.
    unsafe { b.launch(cfg(blocks)) }.w()?;
    Ok(())
}

/// The sum of squares of all elements of `gs` (f32, contiguous, one device) as an f64 scalar
/// tensor on that device, summed in f64 in a fixed order (deterministic).
pub fn sum_squares(gs: &[&Tensor]) -> Result<Tensor> {
    let gs: Vec<&&Tensor> = gs.iter().filter(|g| g.elem_count() > 0).collect();
    let Some(first) = gs.first() else { candle_core::bail!("sum_squares: no non-empty tensor") };
    let dev = device_of(first, "sum of squares")?;
    let mut desc: Vec<u64> = Vec::with_capacity(gs.len() * 2);
    for g in &gs {
        let (p, n) = address(g, &dev, DType::F32, "gradient norm")?;
        desc.extend_from_slice(&[p, n as u64]);
    }
    let (firsts, blocks) = first_blocks(gs.iter().map(|g| g.elem_count()))?;
    let desc = dev.clone_htod(&desc)?;
    let firsts_d = dev.clone_htod(&firsts)?;
    // SAFETY: every partial is written by its block before the second kernel reads it.
    let mut partials: CudaSlice<f64> = unsafe { dev.alloc::<f64>(blocks as usize)? };
    let mut out: CudaSlice<f64> = unsafe { dev.alloc::<f64>(1)? };
    let (count, chunk) = (firsts.len() as u32, CHUNK as u64);
    let func = dev.get_or_load_custom_func("sumsq_multi_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&desc);
    b.arg(&firsts_d);
    b.arg(&count);
    b.arg(&chunk);
    b.arg(&mut partials);
    // SAFETY: the descriptors hold live f32 addresses of `n` elements each.
    unsafe { b.launch(cfg(blocks)) }.w()?;
    let func = dev.get_or_load_custom_func("sum_partials_f64", MODULE, PTX)?;
    let n = blocks as u64;
    let mut b = func.builder();
    b.arg(&partials);
    b.arg(&n);
    b.arg(&mut out);
    // SAFETY: `partials` holds `blocks` values, `out` one.
    unsafe { b.launch(cfg(1)) }.w()?;
    let st = CudaStorage { slice: CudaStorageSlice::F64(out), device: dev.clone() };
    Ok(Tensor::from_storage(Storage::Cuda(st), Shape::from(()), BackpropOp::none(), false))
}
