//! Inference-only CUDA kernels of the decoder (kernels/infer.cu), as candle custom ops with no
//! backward: a decode step of a small model costs what its launches cost, so each replaces a
//! chain of candle ops (casts, reductions, broadcasts, a copy per token) by one launch.
//!
//! * [`add_rms_norm`]: the residual add and the next RMSNorm (Llama's or Gemma's `1 + w`).
//! * [`kv_append`]: writes k (rotated) and v of new positions into a preallocated cache
//!   `[2, B, kv_heads, capacity, head_dim]`, in place.
//! * [`decode_attention`]: one query token per sequence against the cache (RoPE on q, grouped
//!   heads read in place, sliding window, online softmax). A block per query head (or per group
//!   of 2 or 4 query heads of one kv head, `QLORA_ATT_HG`) reads K/V rows in 16-byte pieces,
//!   the positions spread over 16 warps and merged in the block, 4 rows a lane in flight, the
//!   first 4 loaded before the kernel's programmatic-launch wait. Grouping 4 heads a block (each
//!   K/V row read once for all of them) left 8 blocks on the target models: a few SMs each
//!   walking a long chain of dependent loads.
//! * [`masked_softmax`]: the prefill softmax with the causal / window mask made in the kernel.
//! * [`argmax_rows`] / [`argmax_into`]: the greedy pick of each row (optionally advancing a
//!   device cache length, for a decode step captured with its pick).
//! * [`write_u32`]: a few u32 values from the host into a device tensor (a decode step's
//!   position and token ids before a CUDA graph replays it).
//!
//! The cache length that [`kv_append_at`] and [`decode_attention_at`] work at is either a host
//! value ([`CacheLen::Host`], baked into the launch) or read by the kernels from a u32 device
//! tensor ([`CacheLen::Device`]): with the latter, a decode step captured once in a CUDA graph
//! replays unchanged at every position, the host writing the new length before each replay.
//!
//! They run on CUDA only. Their CPU reference is the engine's unfused path (`ops.rs` and the
//! attention in `model/layers.rs`), whose rounding they follow; `tests/gpu_kernels.rs` checks
//! each against it.

use super::pdl::{self, arg};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp1, InplaceOp3, Layout, Result, Shape, Storage, Tensor};
use std::sync::OnceLock;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/infer.ptx"));
const MODULE: &str = "qlora_quant_infer";
/// Largest rotary half (`rotary_dim / 2`) and head size the kernels take.
pub const MAX_ROPE_HALF: usize = 128;
pub const MAX_HEAD_DIM: usize = 256;

/// Why the attention kernels do not apply to this head size and rotary table, or `None`.
pub fn attention_unsupported(head_dim: usize, inv_freq_len: usize, heads: usize, kv_heads: usize) -> Option<String> {
    if head_dim == 0 || !head_dim.is_multiple_of(8) || head_dim > MAX_HEAD_DIM {
        return Some(format!("head_dim {head_dim} (the kernels take multiples of 8 up to {MAX_HEAD_DIM})"));
    }
    if inv_freq_len > MAX_ROPE_HALF || 2 * inv_freq_len > head_dim {
        return Some(format!("rotary half {inv_freq_len} does not fit head_dim {head_dim}"));
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Some(format!("{heads} heads are not a multiple of {kv_heads} kv heads"));
    }
    None
}

fn suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("inference kernels take f32, f16 or bf16, got {other:?}"),
    })
}

fn cuda_only(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name} runs on CUDA only; on the CPU the engine uses the unfused ops"))
}

/// Address of element `start` of a CUDA storage.
fn ptr_at<T: CudaDType>(s: &CudaStorage, start: usize) -> Result<u64> {
    let c = s.as_cuda_slice::<T>()?;
    Ok(c.device_ptr(c.stream()).0 + (start * std::mem::size_of::<T>()) as u64)
}

fn contiguous_start(l: &Layout, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((o, _)) => Ok(o),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

fn alloc_out(dev: &CudaDevice, dt: DType, n: usize) -> Result<(CudaStorage, u64)> {
    Ok(match dt {
        DType::F32 => {
            let s = CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f32>(n)? }, dev.clone());
            let p = ptr_at::<f32>(&s, 0)?;
            (s, p)
        }
        DType::BF16 => {
            let s = CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<half::bf16>(n)? }, dev.clone());
            let p = ptr_at::<half::bf16>(&s, 0)?;
            (s, p)
        }
        DType::F16 => {
            let s = CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<half::f16>(n)? }, dev.clone());
            let p = ptr_at::<half::f16>(&s, 0)?;
            (s, p)
        }
        other => candle_core::bail!("inference kernels take f32, f16 or bf16, got {other:?}"),
    })
}

fn ptr_of(s: &CudaStorage, start: usize) -> Result<u64> {
    match s.dtype() {
        DType::F32 => ptr_at::<f32>(s, start),
        DType::BF16 => ptr_at::<half::bf16>(s, start),
        DType::F16 => ptr_at::<half::f16>(s, start),
        other => candle_core::bail!("inference kernels take f32, f16 or bf16, got {other:?}"),
    }
}

// ------------------------------------------------------------------ RMSNorm (+ residual)

/// `(s, norm(s))` with `s = x + residual` (or `x` itself), both `[.., h]` in x's dtype.
pub fn add_rms_norm(x: &Tensor, residual: Option<&Tensor>, weight: &Tensor, eps: f64, one_plus: bool) -> Result<(Tensor, Tensor)> {
    let op = RmsNormOp { eps: eps as f32, one_plus };
    let (x, w) = (x.contiguous()?, weight.contiguous()?);
    match residual {
        None => Ok((x.clone(), x.apply_op2_no_bwd(&w, &op)?)),
        Some(a) => {
            let both = x.apply_op3_no_bwd(&a.contiguous()?, &w, &op)?;
            Ok((both.get(0)?, both.get(1)?))
        }
    }
}

struct RmsNormOp {
    eps: f32,
    one_plus: bool,
}

impl RmsNormOp {
    fn launch(&self, x: (&CudaStorage, &Layout), a: Option<(&CudaStorage, &Layout)>, w: (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
        let h = x.1.dims().last().copied().unwrap_or(0);
        let rows = x.1.shape().elem_count() / h.max(1);
        let n_out = if a.is_some() { 2 * rows * h } else { rows * h };
        let (out, op) = alloc_out(x.0.device(), x.0.dtype(), n_out)?;
        self.launch_to(x, a, w, op)?;
        let mut dims = x.1.dims().to_vec();
        if a.is_some() {
            dims.insert(0, 2);
        }
        Ok((out, Shape::from(dims)))
    }

    /// The kernel, writing `s` then `norm(s)` (or only `norm(x)` without `a`) at device address `op`.
    fn launch_to(&self, x: (&CudaStorage, &Layout), a: Option<(&CudaStorage, &Layout)>, w: (&CudaStorage, &Layout), op: u64) -> Result<()> {
        let dt = x.0.dtype();
        let h = x.1.dims().last().copied().unwrap_or(0);
        if w.1.shape().elem_count() != h || h == 0 || w.0.dtype() != dt {
            candle_core::bail!("add_rms_norm: weight {:?} does not match rows of {h} {dt:?}", w.1.dims())
        }
        let rows = x.1.shape().elem_count() / h;
        let dev = x.0.device().clone();
        let xp = ptr_of(x.0, contiguous_start(x.1, "add_rms_norm: x")?)?;
        let wp = ptr_of(w.0, contiguous_start(w.1, "add_rms_norm: weight")?)?;
        let ap = match a {
            Some((s, l)) => {
                if l.dims() != x.1.dims() || s.dtype() != dt {
                    candle_core::bail!("add_rms_norm: residual {:?} differs from x {:?}", l.dims(), x.1.dims())
                }
                ptr_of(s, contiguous_start(l, "add_rms_norm: residual")?)?
            }
            None => 0,
        };
        // 8 elements a thread in one vector access each where the rows allow it (every hidden
        // size of the target models), else the element-wise form.
        let vec = h.is_multiple_of(8) && h <= 8 * 1024 && [xp, ap, wp, op].iter().all(|p| p % 16 == 0);
        let name = if vec { "add_rms_norm_vec" } else { "add_rms_norm" };
        let (mut rows32, mut h32, mut one_plus) = (rows as u32, h as u32, i32::from(self.one_plus));
        let threads = (h.div_ceil(8).next_multiple_of(32)).clamp(32, 1024) as u32;
        let cfg = LaunchConfig { grid_dim: (rows32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (mut xp, mut ap, mut wp, mut op2, mut eps) = (xp, ap, wp, op, self.eps);
        let mut args = [arg(&mut xp), arg(&mut ap), arg(&mut wp), arg(&mut op2), arg(&mut rows32), arg(&mut h32), arg(&mut eps), arg(&mut one_plus)];
        // SAFETY: the arguments are the kernel's, in order; the kernel waits before reading x and a.
        unsafe { pdl::launch(&dev, MODULE, PTX, &format!("{name}_{}", suffix(dt)?), cfg, &mut args) }
    }
}

/// [`add_rms_norm`] with a residual, written into `out` (`[2, ..x's shape]`, contiguous, x's
/// dtype, overlapping neither input) instead of a fresh tensor: `(out[0], out[1])`. A decode
/// step captured as a CUDA graph writes its temporaries into such preallocated buffers, so the
/// graph holds kernel nodes only (no allocation node between two kernels).
pub fn add_rms_norm_into(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f64, one_plus: bool, out: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = RmsNormOp { eps: eps as f32, one_plus };
    let (x, a, w) = (x.contiguous()?, residual.contiguous()?, weight.contiguous()?);
    let inputs = [span(&x)?, span(&a)?];
    let optr = out_ptr(out, 2 * x.elem_count(), x.dtype(), &inputs, "add_rms_norm_into")?;
    {
        let (xs, xl) = x.storage_and_layout();
        let (as_, al) = a.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cuda(xs), Storage::Cuda(as_), Storage::Cuda(ws)) = (&*xs, &*as_, &*ws) else {
            candle_core::bail!("add_rms_norm_into: x, the residual and the weight must be on a CUDA device")
        };
        op.launch_to((xs, xl), Some((as_, al)), (ws, wl), optr)?;
    }
    let mut dims = x.dims().to_vec();
    dims.insert(0, 2);
    let both = out.reshape(dims)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// Device address and byte length of a tensor's elements on CUDA (`(0, 0)` elsewhere), for
/// the overlap check of an `_into` output.
pub(crate) fn span(t: &Tensor) -> Result<(u64, u64)> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*st else { return Ok((0, 0)) };
    let esize = t.dtype().size_in_bytes() as u64;
    let start = ptr_of_any(c, l.start_offset())?;
    let last = l.dims().iter().zip(l.stride()).map(|(d, s)| (d.saturating_sub(1) * s) as u64).sum::<u64>();
    Ok((start, (last + 1) * esize))
}

fn ptr_of_any(s: &CudaStorage, start: usize) -> Result<u64> {
    match s.dtype() {
        DType::U8 => ptr_at::<u8>(s, start),
        DType::U32 => ptr_at::<u32>(s, start),
        _ => ptr_of(s, start),
    }
}

/// The device address of `out`, a preallocated output of `n` elements of `dt`: on CUDA,
/// contiguous from its storage's start, 16-byte aligned and overlapping none of `inputs`.
pub(crate) fn out_ptr(out: &Tensor, n: usize, dt: DType, inputs: &[(u64, u64)], what: &str) -> Result<u64> {
    if out.dtype() != dt || out.elem_count() != n || !out.is_contiguous() {
        candle_core::bail!("{what}: the output buffer {:?} {:?} is not {n} contiguous elements of {dt:?}", out.dims(), out.dtype())
    }
    let (p, bytes) = span(out)?;
    if p == 0 || p % 16 != 0 {
        candle_core::bail!("{what}: the output buffer is not a 16-byte aligned CUDA tensor")
    }
    if inputs.iter().any(|&(q, qb)| q < p + bytes && p < q + qb) {
        candle_core::bail!("{what}: the output buffer overlaps an input; give it its own buffer")
    }
    Ok(p)
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-fused"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only("rms-norm-fused"))
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        self.launch((x, xl), None, (w, wl))
    }
}

impl CustomOp3 for RmsNormOp {
    fn name(&self) -> &'static str {
        "add-rms-norm-fused"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only("add-rms-norm-fused"))
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, a: &CudaStorage, al: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        self.launch((x, xl), Some((a, al)), (w, wl))
    }
}

// ------------------------------------------------------------------ RoPE parameters

/// Mirrors `RopeParams` in kernels/infer.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RopeParams {
    inv_freq: [f32; MAX_ROPE_HALF],
    rot: u32,
}

fn rope_params(inv_freq: &[f32]) -> Result<RopeParams> {
    if inv_freq.len() > MAX_ROPE_HALF {
        candle_core::bail!("rotary half {} is over the kernels' {MAX_ROPE_HALF}", inv_freq.len())
    }
    let mut p = RopeParams { inv_freq: [0.0; MAX_ROPE_HALF], rot: 2 * inv_freq.len() as u32 };
    p.inv_freq[..inv_freq.len()].copy_from_slice(inv_freq);
    Ok(p)
}

// ------------------------------------------------------------------ cache length

/// Where the kernels take the cache length from.
#[derive(Debug, Clone, Copy)]
pub enum CacheLen<'a> {
    /// Known on the host: the positions already cached before this call (`past`).
    Host(usize),
    /// A u32 device tensor of one element holding the cache length *after* this call's
    /// positions (`past + t`; for one decode token, the attention's `len`), read by the kernels
    /// when they run. The caller keeps it within the cache's capacity (the kernels clamp).
    Device(&'a Tensor),
}

/// The device address of a one-element u32 tensor on CUDA.
fn len_ptr(len: &Tensor) -> Result<u64> {
    if len.dtype() != DType::U32 || len.elem_count() != 1 {
        candle_core::bail!("cache length: need one u32 on the device, got {:?} {:?}", len.dtype(), len.dims())
    }
    let (st, l) = len.storage_and_layout();
    let Storage::Cuda(c) = &*st else { candle_core::bail!("cache length: the tensor is not on a CUDA device") };
    ptr_at::<u32>(c, l.start_offset())
}

/// Writes `values` into the first elements of the contiguous u32 tensor `t` (CUDA or CPU), in
/// stream order on CUDA (no synchronisation).
pub fn write_u32(t: &Tensor, values: &[u32]) -> Result<()> {
    if t.dtype() != DType::U32 || !t.is_contiguous() || values.len() > t.elem_count() {
        candle_core::bail!("write_u32: {} values do not fit a contiguous u32 tensor {:?} {:?}", values.len(), t.dtype(), t.dims())
    }
    t.inplace_op1(&WriteU32 { values: values.to_vec() })
}

struct WriteU32 {
    values: Vec<u32>,
}

impl InplaceOp1 for WriteU32 {
    fn name(&self) -> &'static str {
        "write-u32"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let CpuStorage::U32(d) = s else { candle_core::bail!("write_u32: not a u32 tensor") };
        let at = l.start_offset();
        d[at..at + self.values.len()].copy_from_slice(&self.values);
        Ok(())
    }
    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let dev = s.device().clone();
        let at = l.start_offset();
        let d = s.as_cuda_slice_mut::<u32>()?;
        let mut view = d.slice_mut(at..at + self.values.len());
        dev.memcpy_htod(self.values.as_slice(), &mut view)
    }
}

// ------------------------------------------------------------------ greedy pick

/// The index of each row's largest value of `logits` (`[.., n]`), the first on ties as
/// candle's CPU argmax: a u32 tensor of the leading dims. One launch of 1024 threads a row
/// (candle's CUDA argmax took 27 µs on a 32,000-entry row on an H100, about a thirtieth of a
/// TinyLlama decode step).
pub fn argmax_rows(logits: &Tensor) -> Result<Tensor> {
    let dims = logits.dims();
    let Some((_, lead)) = dims.split_last() else { candle_core::bail!("argmax_rows: a scalar has no rows") };
    let rows = lead.iter().product::<usize>();
    let ids = Tensor::zeros(rows, DType::U32, logits.device())?;
    argmax_into(logits, &ids, None)?;
    ids.reshape(lead)
}

/// [`argmax_rows`] written into `ids` (one u32 a row, contiguous, on the same device). With
/// `len` (one u32 on the device), the kernel then adds one to it: a decode step captured with
/// its pick leaves the next step's token ids and cache length on the device
/// (`qlora-engine`'s model/decode_graph.rs).
pub fn argmax_into(logits: &Tensor, ids: &Tensor, len: Option<&Tensor>) -> Result<()> {
    let logits = logits.contiguous()?;
    let Some(&n) = logits.dims().last() else { candle_core::bail!("argmax_into: a scalar has no rows") };
    let rows = logits.elem_count() / n.max(1);
    if n == 0 || rows == 0 || n > u32::MAX as usize || rows > 65_535 {
        candle_core::bail!("argmax_into: logits {:?} need 1 to 65,535 rows of 1 to 2^32 - 1 values", logits.dims())
    }
    if ids.dtype() != DType::U32 || ids.elem_count() != rows || !ids.is_contiguous() {
        candle_core::bail!("argmax_into: ids {:?} {:?} must be {rows} contiguous u32", ids.dims(), ids.dtype())
    }
    let (xs, xl) = logits.storage_and_layout();
    let (is, il) = ids.storage_and_layout();
    let (Storage::Cuda(xs), Storage::Cuda(is)) = (&*xs, &*is) else { candle_core::bail!("argmax_into: logits and ids must be on a CUDA device") };
    let dt = xs.dtype();
    let dev = xs.device().clone();
    let (mut xp, mut ip) = (ptr_of(xs, contiguous_start(xl, "argmax_into: logits")?)?, ptr_at::<u32>(is, il.start_offset())?);
    let mut lp = match len {
        Some(t) => len_ptr(t)?,
        None => 0,
    };
    let (mut n32, mut ld) = (n as u32, n as u32);
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    let mut args = [arg(&mut xp), arg(&mut n32), arg(&mut ld), arg(&mut ip), arg(&mut lp)];
    // SAFETY: the arguments are the kernel's, in order; it waits before reading the logits.
    unsafe { pdl::launch(&dev, MODULE, PTX, &format!("argmax_rows_{}", suffix(dt)?), cfg, &mut args) }
}

// ------------------------------------------------------------------ KV-cache append

/// Mirrors `KvParams` in kernels/infer.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct KvParams {
    rope: RopeParams,
    b: u32,
    t: u32,
    nkv: u32,
    hd: u32,
    cap: u32,
    past: u32,
    ksb: u64,
    kst: u64,
    vsb: u64,
    vst: u64,
    len_ptr: u64,
}
unsafe impl DeviceRepr for KvParams {}

/// Writes `k` (rotated with `inv_freq` at positions `past ..`) and `v`, both `[B, t, kv_heads *
/// head_dim]` (rows may be strided, features contiguous), into `cache` `[2, B, kv_heads,
/// capacity, head_dim]` at positions `past .. past + t`.
pub fn kv_append(cache: &Tensor, k: &Tensor, v: &Tensor, past: usize, inv_freq: &[f32]) -> Result<()> {
    kv_append_at(cache, k, v, CacheLen::Host(past), inv_freq)
}

/// [`kv_append`] at a position given by [`CacheLen`] (on the device: `len - t`).
pub fn kv_append_at(cache: &Tensor, k: &Tensor, v: &Tensor, at: CacheLen, inv_freq: &[f32]) -> Result<()> {
    let (_, b, nkv, cap, hd) = cache.dims5()?;
    let (kb, t, kn) = k.dims3()?;
    let (past, len_ptr) = match at {
        CacheLen::Host(past) => (past, 0),
        CacheLen::Device(len) => (0, len_ptr(len)?),
    };
    if kb != b || kn != nkv * hd || v.dims() != k.dims() || past + t > cap {
        candle_core::bail!("kv_append: k {:?} / v {:?} at {past} do not fit the cache {:?}", k.dims(), v.dims(), cache.dims())
    }
    cache.inplace_op3(k, v, &KvAppend { past, len_ptr, rope: rope_params(inv_freq)? })
}

struct KvAppend {
    past: usize,
    len_ptr: u64,
    rope: RopeParams,
}

fn rows_strides(l: &Layout, what: &str) -> Result<(usize, u64, u64)> {
    match l.stride() {
        [sb, st, 1] => Ok((l.start_offset(), *sb as u64, *st as u64)),
        s => candle_core::bail!("kv_append: {what} needs contiguous features, got strides {s:?}"),
    }
}

impl InplaceOp3 for KvAppend {
    fn name(&self) -> &'static str {
        "kv-append"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        Err(cuda_only("kv-append"))
    }
    fn cuda_fwd(&self, c: &mut CudaStorage, cl: &Layout, k: &CudaStorage, kl: &Layout, v: &CudaStorage, vl: &Layout) -> Result<()> {
        let dt = c.dtype();
        if k.dtype() != dt || v.dtype() != dt || contiguous_start(cl, "kv_append: cache")? != 0 {
            candle_core::bail!("kv_append: cache, k and v must share a dtype and the cache be a whole contiguous tensor")
        }
        let (_, b, nkv, cap, hd) = cl.shape().dims5()?;
        let t = kl.dims()[1];
        let (ko, ksb, kst) = rows_strides(kl, "k")?;
        let (vo, vsb, vst) = rows_strides(vl, "v")?;
        let p = KvParams {
            rope: self.rope,
            b: b as u32,
            t: t as u32,
            nkv: nkv as u32,
            hd: hd as u32,
            cap: cap as u32,
            past: self.past as u32,
            ksb,
            kst,
            vsb,
            vst,
            len_ptr: self.len_ptr,
        };
        let dev = c.device().clone();
        let (cp, kp, vp) = (ptr_of(c, 0)?, ptr_of(k, ko)?, ptr_of(v, vo)?);
        let threads = ((nkv * hd).next_multiple_of(32)).min(512) as u32;
        let cfg = LaunchConfig { grid_dim: (t as u32, b as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (mut cp, mut kp, mut vp, mut p) = (cp, kp, vp, p);
        let mut args = [arg(&mut cp), arg(&mut kp), arg(&mut vp), arg(&mut p)];
        // SAFETY: the arguments are the kernel's, in order; the kernel waits before any access.
        unsafe { pdl::launch(&dev, MODULE, PTX, &format!("kv_append_{}", suffix(dt)?), cfg, &mut args)? };
        Ok(())
    }
}

// ------------------------------------------------------------------ decode attention

/// Mirrors `AttnParams` in kernels/infer.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AttnParams {
    rope: RopeParams,
    b: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    cap: u32,
    len: u32,
    start: u32,
    scale: f32,
    qsb: u64,
    window: u32,
    len_ptr: u64,
    knew: u64,
    vnew: u64,
    ksb: u64,
    vsb: u64,
    prefetch: u32,
}
unsafe impl DeviceRepr for AttnParams {}

/// Attention of one new token per sequence: `q` `[B, 1, heads * head_dim]` (unrotated; batch
/// rows may be strided) against the first `len` cached positions (the token's own included),
/// only the last `window` of them when set. Returns `[B, 1, heads * head_dim]`.
pub fn decode_attention(q: &Tensor, cache: &Tensor, len: usize, window: Option<usize>, scale: f64, inv_freq: &[f32]) -> Result<Tensor> {
    decode_attention_at(q, cache, CacheLen::Host(len), window, scale, inv_freq)
}

/// [`decode_attention`] with the cache length given by [`CacheLen`] (`Host` holds `len`, the
/// token's own position included, here).
pub fn decode_attention_at(q: &Tensor, cache: &Tensor, len: CacheLen, window: Option<usize>, scale: f64, inv_freq: &[f32]) -> Result<Tensor> {
    let (_, b, nkv, cap, hd) = cache.dims5()?;
    let (qb, t, qn) = q.dims3()?;
    let (len, len_ptr) = attention_len(len)?;
    if qb != b || t != 1 || qn % hd != 0 || len == 0 || len > cap {
        candle_core::bail!("decode_attention: q {:?} with {len} cached positions does not fit the cache {:?}", q.dims(), cache.dims())
    }
    let op = DecodeAttn::new("decode_attention", (len, len_ptr), (hd, qn / hd, nkv), window, scale, inv_freq, None)?;
    q.apply_op2_no_bwd(cache, &op)
}

/// [`kv_append_at`] and [`decode_attention_at`] of one token per sequence in one launch: `k`
/// and `v` (`kv`) `[B, 1, kv_heads * head_dim]` (unrotated; batch rows may be strided, as
/// narrowed from a fused q/k/v output) go into the cache at position `len - 1` (k rotated) and
/// the token attends to the cache with them. Same values as the two calls, bit for bit; one
/// kernel less per layer of a decode step. With `CacheLen::Host`, `len` counts the token's own
/// position.
pub fn decode_attention_append_at(
    q: &Tensor,
    kv: (&Tensor, &Tensor),
    cache: &Tensor,
    len: CacheLen,
    window: Option<usize>,
    scale: f64,
    inv_freq: &[f32],
) -> Result<Tensor> {
    append_attention(q, kv, cache, len, window, scale, inv_freq, None)
}

#[allow(clippy::too_many_arguments)] // as decode_attention_append_into
fn append_attention(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    cache: &Tensor,
    len: CacheLen,
    window: Option<usize>,
    scale: f64,
    inv_freq: &[f32],
    out: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, b, nkv, _, hd) = cache.dims5()?;
    let fresh_ptr = |t: &Tensor, what: &str| -> Result<(u64, u64)> {
        if t.dims() != [b, 1, nkv * hd] || t.dtype() != cache.dtype() || !t.device().same_device(cache.device()) {
            candle_core::bail!("decode_attention_append: {what} {:?} {:?} does not fit the cache {:?}", t.dims(), t.dtype(), cache.dims())
        }
        let (st, l) = t.storage_and_layout();
        let Storage::Cuda(c) = &*st else { candle_core::bail!("decode_attention_append: the {what} is not on a CUDA device") };
        let sb = match l.stride() {
            [sb, _, 1] => *sb as u64,
            s => candle_core::bail!("decode_attention_append: {what} needs contiguous features, got strides {s:?}"),
        };
        Ok((ptr_of(c, l.start_offset())?, sb))
    };
    let (knew, ksb) = fresh_ptr(k, "k")?;
    let (vnew, vsb) = fresh_ptr(v, "v")?;
    let (_, t, _) = q.dims3()?;
    let (hlen, len_ptr) = attention_len(len)?;
    let cap = cache.dim(3)?;
    if t != 1 || hlen == 0 || hlen > cap {
        candle_core::bail!("decode_attention_append: q {:?} with {hlen} cached positions does not fit the cache {:?}", q.dims(), cache.dims())
    }
    let heads = (hd, q.dim(2)? / hd, nkv);
    let op = DecodeAttn::new("decode_attention_append", (hlen, len_ptr), heads, window, scale, inv_freq, Some([knew, vnew, ksb, vsb]))?;
    // k and v stay borrowed (alive) until the launch inside this call has been enqueued.
    match out {
        None => q.apply_op2_no_bwd(cache, &op),
        Some(out) => {
            let n = b * q.dim(2)?;
            let optr = out_ptr(out, n, q.dtype(), &[span(q)?, span(k)?, span(v)?, span(cache)?], "decode_attention_append_into")?;
            {
                let (qs, ql) = q.storage_and_layout();
                let (cs, cl) = cache.storage_and_layout();
                let (Storage::Cuda(qs), Storage::Cuda(cs)) = (&*qs, &*cs) else {
                    candle_core::bail!("decode_attention_append_into: q and the cache must be on a CUDA device")
                };
                op.launch_to(qs, ql, cs, cl, optr)?;
            }
            out.reshape((b, 1, q.dim(2)?))
        }
    }
}

/// [`decode_attention_append_at`] written into `out` (`b · heads · head_dim` contiguous
/// elements of q's dtype, overlapping no input) instead of a fresh tensor, returned as
/// `[B, 1, heads * head_dim]`: what a decode step captured as a CUDA graph uses, so that no
/// allocation node sits between its kernels.
#[allow(clippy::too_many_arguments)] // the attention's seven parameters and the output buffer
pub fn decode_attention_append_into(
    q: &Tensor,
    kv: (&Tensor, &Tensor),
    cache: &Tensor,
    len: CacheLen,
    window: Option<usize>,
    scale: f64,
    inv_freq: &[f32],
    out: &Tensor,
) -> Result<Tensor> {
    append_attention(q, kv, cache, len, window, scale, inv_freq, Some(out))
}

struct DecodeAttn {
    len: usize,
    start: usize,
    window: u32,
    len_ptr: u64,
    scale: f32,
    rope: RopeParams,
    /// The folded KV append: device addresses of k and v and their batch strides.
    fresh: Option<[u64; 4]>,
}

impl CustomOp2 for DecodeAttn {
    fn name(&self) -> &'static str {
        "decode-attention"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only("decode-attention"))
    }
    fn cuda_fwd(&self, q: &CudaStorage, ql: &Layout, c: &CudaStorage, cl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (_, b, _, _, _) = cl.shape().dims5()?;
        let (_, _, qn) = ql.shape().dims3()?;
        let (out, op) = alloc_out(q.device(), q.dtype(), b * qn)?;
        self.launch_to(q, ql, c, cl, op)?;
        Ok((out, Shape::from((b, 1, qn))))
    }
}

/// The decode attention's cache length as its kernel takes it: the host count (the token's
/// own position included) and no address, or 1 and the device counter's address.
fn attention_len(len: CacheLen) -> Result<(usize, u64)> {
    Ok(match len {
        CacheLen::Host(len) => (len, 0),
        CacheLen::Device(l) => (1, len_ptr(l)?),
    })
}

impl DecodeAttn {
    /// The op of both entry points once the caller has checked its shapes and `len` (from
    /// [`attention_len`]) against the cache: `(head_dim, heads, kv_heads)` checked against
    /// what the kernel supports (an error naming `what`), the window's first position, the
    /// rotary table.
    fn new(
        what: &str,
        (len, len_ptr): (usize, u64),
        (hd, nh, nkv): (usize, usize, usize),
        window: Option<usize>,
        scale: f64,
        inv_freq: &[f32],
        fresh: Option<[u64; 4]>,
    ) -> Result<Self> {
        if let Some(why) = attention_unsupported(hd, inv_freq.len(), nh, nkv) {
            candle_core::bail!("{what}: {why}")
        }
        let start = window.map_or(0, |w| len.saturating_sub(w));
        let window = u32::try_from(window.unwrap_or(0)).unwrap_or(u32::MAX);
        Ok(DecodeAttn { len, start, window, len_ptr, scale: scale as f32, rope: rope_params(inv_freq)?, fresh })
    }

    /// The kernel, writing the `[B, 1, heads * head_dim]` result at device address `op`.
    fn launch_to(&self, q: &CudaStorage, ql: &Layout, c: &CudaStorage, cl: &Layout, op: u64) -> Result<()> {
        let dt = q.dtype();
        if c.dtype() != dt || contiguous_start(cl, "decode_attention: cache")? != 0 {
            candle_core::bail!("decode_attention: q and the cache must share a dtype and the cache be a whole contiguous tensor")
        }
        let (_, b, nkv, cap, hd) = cl.shape().dims5()?;
        let qn = ql.dims()[2];
        let qsb = match ql.stride() {
            [sb, _, 1] => *sb as u64,
            s => candle_core::bail!("decode_attention: q needs contiguous features, got strides {s:?}"),
        };
        let nh = qn / hd;
        let p = AttnParams {
            rope: self.rope,
            b: b as u32,
            nh: nh as u32,
            nkv: nkv as u32,
            hd: hd as u32,
            cap: cap as u32,
            len: self.len as u32,
            start: self.start as u32,
            scale: self.scale,
            qsb,
            window: self.window,
            len_ptr: self.len_ptr,
            knew: self.fresh.map_or(0, |f| f[0]),
            vnew: self.fresh.map_or(0, |f| f[1]),
            ksb: self.fresh.map_or(0, |f| f[2]),
            vsb: self.fresh.map_or(0, |f| f[3]),
            prefetch: u32::from(attention_prefetch_on()),
        };
        let dev = q.device().clone();
        let (qp, cp) = (ptr_of(q, ql.start_offset())?, ptr_of(c, 0)?);
        let (cfg, hg) = attention_launch(b, nh, nkv, hd);
        let inflight = attention_inflight();
        let name = if hg == 1 && inflight > 2 && self.fresh.is_some() && matches!(dt, DType::BF16 | DType::F16) {
            format!("decode_attn_pw{inflight}_g1_{}", suffix(dt)?)
        } else {
            format!("decode_attn_g{hg}_{}", suffix(dt)?)
        };
        let (mut qp, mut cp, mut op, mut p) = (qp, cp, op, p);
        let mut args = [arg(&mut qp), arg(&mut cp), arg(&mut op), arg(&mut p)];
        // SAFETY: the arguments are the kernel's, in order. The kernel writes nothing before
        // its wait; the `pw` kernels read, before it, the length (the host's, or the device's
        // since before the step, as the L2 prefetch does) and cached rows of earlier steps only.
        unsafe { pdl::launch(&dev, MODULE, PTX, &name, cfg, &mut args) }
    }
}

/// The decode attention's shape: query heads a block serves (`HG` of kernels/infer.cu: 1, 2
/// or 4) and warps a block. Default one head and 16 warps (8 above head size 128): on the target
/// models a kv head has 4-8 query heads, so 4 heads a block left 8 blocks for 132 SMs, each a
/// long chain of dependent loads (session 4: ~10 µs TinyLlama, ~14 µs Mistral-7B at ~100
/// positions). `QLORA_ATT_HG` and `QLORA_ATT_WARPS` (4, 8 or 16) override them for A/B runs;
/// any choice gives the same values bit for bit.
fn attention_shape(hd: usize) -> (usize, usize) {
    static ENV: OnceLock<(Option<usize>, Option<usize>)> = OnceLock::new();
    let (hg, warps) = *ENV.get_or_init(|| {
        let get = |name: &str, ok: &[usize]| std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|v| ok.contains(v));
        (get("QLORA_ATT_HG", &[1, 2, 4]), get("QLORA_ATT_WARPS", &[4, 8, 16]))
    });
    let max_warps = if hd > 128 { 8 } else { 16 };
    (hg.unwrap_or(1), warps.unwrap_or(max_warps).min(max_warps))
}

/// Cached positions a lane's row slot of the decode attention loads before using any (`P` of
/// kernels/infer.cu: 2, 4 or 8). Above 2 (one query head a block, the KV append folded in,
/// bf16/f16), the first of them are loaded before the programmatic-launch wait (`decode_attn_pw*`).
/// Default 4: measured on an H100 (session 11, same binary, alternating, NF4 b1 tok/s,
/// bench/gpu/results/h100-2026-11-27-s11-att-ab.*): TinyLlama 1,296.5 / 1,296.1 against 1,278.6 /
/// 1,284.1 with 2 and 1,238.5 / 1,243.7 with 8 (128 registers, spills); Mistral-7B 372.4 / 372.0
/// against 366.1 / 365.4 and 367.7 / 366.6.
/// `QLORA_ATT_INFLIGHT` sets it for A/B runs, [`with_attention_inflight`] for the launches of
/// one closure on this thread; every choice gives the same bits.
fn attention_inflight() -> usize {
    static ENV: OnceLock<Option<usize>> = OnceLock::new();
    ATT_INFLIGHT_OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        ENV.get_or_init(|| std::env::var("QLORA_ATT_INFLIGHT").ok().and_then(|v| v.trim().parse().ok()).filter(|v| [2, 4, 8].contains(v)))
            .unwrap_or(4)
    })
}

thread_local! {
    static ATT_INFLIGHT_OVERRIDE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the decode attentions this thread launches keeping `p` cached positions a row
/// slot in flight (2, 4 or 8; see `attention_inflight`), whatever `QLORA_ATT_INFLIGHT` says.
/// The setting before the call comes back after it, also when `f` panics.
pub fn with_attention_inflight<R>(p: usize, f: impl FnOnce() -> R) -> Result<R> {
    if ![2, 4, 8].contains(&p) {
        candle_core::bail!("with_attention_inflight: {p} positions in flight (take 2, 4 or 8)")
    }
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ATT_INFLIGHT_OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(ATT_INFLIGHT_OVERRIDE.with(|o| o.replace(Some(p))));
    Ok(f())
}

/// Whether the decode attention prefetches its block's cached K/V rows into L2 before waiting
/// for the previous kernel (the cache of a step is in DRAM by then: the weights streamed
/// through L2 since the last step): on unless `QLORA_ATT_PREFETCH` is `0`, `false` or `off`.
fn attention_prefetch_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("QLORA_ATT_PREFETCH").map(|v| v.trim().to_ascii_lowercase()).as_deref(), Ok("0" | "false" | "off")))
}

/// Grid, block and shared memory of the decode attention, and its kernel's head-group size: a
/// block per (kv head, group of `hg` of its query heads, sequence), its warps striding over the
/// positions (at most 8 above head size 128, to keep the per-warp partial outputs within 48 KB
/// of shared memory).
fn attention_launch(b: usize, nh: usize, nkv: usize, hd: usize) -> (LaunchConfig, usize) {
    let (hg, warps) = attention_shape(hd);
    let groups = (nh / nkv).div_ceil(hg);
    // q rotated, each warp's partial output, and the fresh token's k and v.
    let floats = hg * hd + warps * hg * (hd + 2) + 2 * hd;
    let cfg = LaunchConfig {
        grid_dim: ((nkv * groups) as u32, b as u32, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: (floats * std::mem::size_of::<f32>()) as u32,
    };
    (cfg, hg)
}

// ------------------------------------------------------------------ prefill softmax

/// Softmax over the last dimension of `scores` `[.., rows, len]` (contiguous), scaled by
/// `scale`, row `r` being query `r % t` at position `past + r % t`: keys after it, or outside
/// the last `window` positions, get probability 0. Same dtype out.
pub fn masked_softmax(scores: &Tensor, t: usize, past: usize, window: Option<usize>, scale: f64) -> Result<Tensor> {
    if t == 0 || scores.rank() < 2 || scores.dim(candle_core::D::Minus2)? % t != 0 {
        candle_core::bail!("masked_softmax: scores {:?} do not hold rows of {t} queries", scores.dims())
    }
    scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax { t, past, window: window.unwrap_or(0), scale: scale as f32 })
}

struct MaskedSoftmax {
    t: usize,
    past: usize,
    window: usize,
    scale: f32,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only("masked-softmax"))
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dt = s.dtype();
        let len = l.dims().last().copied().unwrap_or(0);
        let rows = l.shape().elem_count() / len.max(1);
        let dev = s.device().clone();
        let sp = ptr_of(s, contiguous_start(l, "masked_softmax: scores")?)?;
        let (out, op) = alloc_out(&dev, dt, rows * len)?;
        let (t, len32, past, window) = (self.t as u32, len as u32, self.past as u32, self.window as u32);
        // Rows of up to 1024 keys: one warp a row with the row in registers (one read of the
        // scores); longer rows: one block a row, three passes.
        let per_lane = [4usize, 8, 16, 32].into_iter().find(|p| len <= 32 * p);
        let (func, cfg) = match per_lane {
            Some(p) => {
                const WARPS: usize = 8;
                let func = dev.get_or_load_custom_func(&format!("masked_softmax_w{p}_{}", suffix(dt)?), MODULE, PTX)?;
                (func, LaunchConfig { grid_dim: (rows.div_ceil(WARPS) as u32, 1, 1), block_dim: (32 * WARPS as u32, 1, 1), shared_mem_bytes: 0 })
            }
            None => {
                let func = dev.get_or_load_custom_func(&format!("masked_softmax_{}", suffix(dt)?), MODULE, PTX)?;
                let threads = (len.next_multiple_of(32)).clamp(32, 256) as u32;
                (func, LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
            }
        };
        let rows32 = rows as u32;
        let mut b = func.builder();
        b.arg(&sp);
        b.arg(&op);
        if per_lane.is_some() {
            b.arg(&rows32);
        }
        b.arg(&t);
        b.arg(&len32);
        b.arg(&past);
        b.arg(&window);
        b.arg(&self.scale);
        unsafe { b.launch(cfg) }.w()?;
        Ok((out, l.shape().clone()))
    }
}

// ------------------------------------------------------------------ heads back to rows

/// `x` `[B, H, T, D]` as `[B, T, H·D]` (the attention output back to one row per token): one
/// 16-byte copy per thread on CUDA where `D` × the element size is a multiple of 16 and `x`
/// is contiguous and aligned; candle's strided copy otherwise (and on the CPU).
pub fn heads_to_rows(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let esize = x.dtype().size_in_bytes();
    let fits = x.device().is_cuda() && (d * esize).is_multiple_of(16) && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16);
    if !fits {
        return x.transpose(1, 2)?.reshape((b, t, h * d));
    }
    x.contiguous()?.apply_op1_no_bwd(&HeadsToRows)?.reshape((b, t, h * d))
}

struct HeadsToRows;

impl CustomOp1 for HeadsToRows {
    fn name(&self) -> &'static str {
        "heads-to-rows"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only("heads-to-rows"))
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let &[b, h, t, d] = l.dims() else { candle_core::bail!("heads_to_rows: {:?} is not [B, H, T, D]", l.dims()) };
        let dt = s.dtype();
        let sp = ptr_of(s, contiguous_start(l, "heads_to_rows: input")?)?;
        let dev = s.device().clone();
        let (out, op) = alloc_out(&dev, dt, b * h * t * d)?;
        if sp % 16 != 0 || op % 16 != 0 {
            candle_core::bail!("heads_to_rows: input or output not 16-byte aligned")
        }
        let pieces = (d * dt.size_in_bytes() / 16) as u32;
        let n = (b * h * t) as u64 * pieces as u64;
        let func = dev.get_or_load_custom_func("heads_to_rows_16b", MODULE, PTX)?;
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (h32, t32) = (h as u32, t as u32);
        let mut bld = func.builder();
        bld.arg(&sp);
        bld.arg(&op);
        bld.arg(&h32);
        bld.arg(&t32);
        bld.arg(&pieces);
        bld.arg(&n);
        unsafe { bld.launch(cfg) }.w()?;
        Ok((out, Shape::from((b, t, h, d))))
    }
}

/// Turns off cudarc's per-allocation event bookkeeping for `dev` when candle drives it with a
/// single stream (the events are only used to order several streams; on one stream every
/// allocation still creates and destroys two of them). Returns whether it was turned off.
pub fn single_stream_fast_alloc(dev: &CudaDevice) -> bool {
    let stream = dev.cuda_stream();
    if stream.context().is_in_multi_stream_mode() {
        return false;
    }
    // SAFETY: with one stream there is nothing for the events to order (cudarc itself skips
    // them unless several streams exist); see `CudaContext::disable_event_tracking`.
    unsafe { dev.disable_event_tracking() };
    true
}
