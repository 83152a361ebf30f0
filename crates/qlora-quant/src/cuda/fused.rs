//! Fused NF4 projections for decode (inference only, no backward): several weights that read
//! the same `x` in one launch instead of one launch each, because a decode step on a small
//! model is dominated by per-launch cost, not by the bytes of the weights.
//!
//! * [`gemv_multi`]: q, k and v (or any 1..3 weights with the same input size) as one GEMV
//!   over their stacked rows; the output is `[.., n_1 + n_2 + n_3]`, each weight's columns
//!   side by side, bias added. The single GEMV (`crate::cuda::gemv`) is its one-weight case.
//! * [`gemv_glu`]: `act(x Gᵀ + b_g) * (x Uᵀ + b_u)` for a gated MLP (SwiGLU, GeGLU): one block
//!   reads rows r.. of both weights and writes their values.
//!
//! * [`gemv_add_rms_norm`] ([`gemv_add_rms_norm_into`] into caller buffers): one weight's GEMV
//!   whose output goes straight into the next residual add and RMSNorm (o_proj → post-attention
//!   norm, down_proj → the next layer's input norm): the last block to finish computes the norm,
//!   one launch instead of two. The engine's decode step uses it at one row of x (its tail then
//!   loads the row with every load in flight; `fast.rs`, `QLORA_FUSED_NORM=0` turns it off).
//!
//! * [`norm_gemv_multi_into`], [`norm_gemv_glu_into`]: the same launches taking their input as
//!   `norm(resid + pending)`, the residual add and RMSNorm computed by every block in its
//!   prologue (from L1/L2: a few KB) instead of by a launch of its own before the GEMV; block 0
//!   writes the sum for the next residual add. Bit for bit the pair of launches they replace.
//!   Two launches a decode layer fewer (engine `model/fast.rs`), but measured slower than the
//!   launches they replace on Mistral-7B, so off by default ([`norm_prologue_on`]).
//!
//! One inner loop serves all (kernels/nf4.cu `dot_rows`): a block of 4 warps reads a few
//! weight rows, splitting k between the warps in coalesced 128-byte steps, each piece of x
//! loaded once for all the rows, block scales resolved once per block into shared memory.
//!
//! Both apply to 1..=[`GEMV_MAX_ROWS`] rows of x, like the single GEMV. On the CPU each is the
//! unfused composition (the single GEMV's CPU twin, bias add, activation and product as candle
//! ops): that is the twin the CUDA result is checked against, and its rounding is what the
//! kernels reproduce (each product rounded to x's dtype before the bias, the activation and the
//! gate-up product).

use super::pdl::{self, arg};
use super::{MODULE, PTX, gemv, gemv_unsupported, scale_params, tables};
use crate::nf4::{Absmax, Nf4Tensor};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One projection of a fused launch: an NF4 weight `[out, in]` and its optional bias `[out]`
/// (in x's dtype).
#[derive(Debug, Clone)]
pub struct Nf4Proj {
    pub w: Nf4Tensor,
    pub bias: Option<Tensor>,
}

/// The gated activation of [`gemv_glu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GluAct {
    Silu = 0,
    GeluTanh = 1,
    GeluErf = 2,
}

/// Kernel-side description of one weight (mirrors `Nf4Seg` in kernels/nf4.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Seg {
    packed: u64,
    absmax: u64,
    q: u64,
    nested: u64,
    bias: u64,
    offset: f32,
    bs_log2: u32,
    nbs_log2: u32,
    dq: i32,
    rows: u32,
    col0: u32,
}
unsafe impl DeviceRepr for Seg {}

const MAX_SEGS: usize = 3;

/// Whether a GEMV over rows of `k` weights at `m` rows of x runs the `_pf` kernel, whose blocks
/// first ask L2 for their rows (one bulk prefetch a row before the PDL wait, `fill_row_scales`
/// in kernels/nf4.cu): at 1-2 rows of x for `k` up to `QLORA_GEMV_BULK_PREFETCH_KMAX` (default
/// 2048; 0 turns it off), i.e. TinyLlama's q/k/v, o and gate/up and none of Mistral-7B's. On
/// for every GEMV (session 5, H100, same call): TinyLlama 926.8 vs 963.2 µs a step, Mistral-7B
/// 3476.8 vs 3103.4: the short rows gain, the long ones lose.
fn bulk_prefetch(m: usize, k: usize) -> bool {
    static KMAX: OnceLock<usize> = OnceLock::new();
    m <= 2 && k <= *KMAX.get_or_init(|| std::env::var("QLORA_GEMV_BULK_PREFETCH_KMAX").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(2048))
}

/// Whether the GEMVs at one row of x (stacked, gated and with the add + norm tail) load each
/// lane's block scale with its weights, their first loads issued before the PDL wait (`_ls`
/// kernels, `LS` in kernels/nf4.cu), instead of resolving the block's scales into shared memory
/// first: the same results bit for bit. On by default; `QLORA_GEMV_LANE_SCALES=0` turns it off
/// for A/B runs. Measured on an H100 (session 10, GEMV micro-benchmark): a Mistral-7B layer's
/// GEMVs 73.3 -> 66.5 µs, TinyLlama's 24.5 -> 22.1.
/// [`with_lane_scales`] overrides it for the launches of one closure on this thread.
fn lane_scales(m: usize) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    m == 1
        && LANE_SCALES_OVERRIDE
            .with(|o| o.get())
            .unwrap_or_else(|| *ON.get_or_init(|| std::env::var("QLORA_GEMV_LANE_SCALES").map_or(true, |v| v.trim() != "0")))
}

thread_local! {
    static LANE_SCALES_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the GEMVs this thread launches at one row of x using lane scales (`on`) or the
/// block-wide scale phase, whatever `QLORA_GEMV_LANE_SCALES` says: both give the same bits, and
/// the tests check that launch for launch. The setting before the call comes back after it,
/// also when `f` panics.
pub fn with_lane_scales<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LANE_SCALES_OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(LANE_SCALES_OVERRIDE.with(|o| o.replace(Some(on))));
    f()
}

/// The add + norm GEMV's kernel for `m` rows of x of `k` in `blocks` blocks. One row of x: lane
/// scales (`lane_scales`), with two 16-byte steps in flight a warp (`_ls2`, 5 blocks an SM) when
/// the rows are long enough for that core (k >= 4096) and the grid fits the GPU at 5 blocks an
/// SM (TinyLlama's down_proj; measured slower on Mistral-7B's 1024 blocks); without lane scales,
/// the row-by-row scale fill for rows of k <= 2048 (kernels/nf4.cu fill_scales).
fn norm_kernel(dev: &CudaDevice, sfx: &str, m: usize, k: usize, blocks: u32) -> Result<String> {
    let v = if lane_scales(m) {
        if k >= 4096 && blocks <= 5 * multiprocessors(dev)? { "ls2_" } else { "ls_" }
    } else if m == 1 && k <= 2048 {
        "rs_"
    } else {
        ""
    };
    Ok(format!("nf4_gemv_norm_{v}{sfx}_m{m}"))
}

/// The device's multiprocessors (asked once a device).
fn multiprocessors(dev: &CudaDevice) -> Result<u32> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    static CACHE: OnceLock<Mutex<HashMap<DeviceId, u32>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().map_err(|_| candle_core::Error::Msg("fused nf4: SM count cache poisoned".into()))?;
    if let Some(&n) = cache.get(&dev.id()) {
        return Ok(n);
    }
    let n = dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| candle_core::Error::Msg(format!("fused nf4: cannot read the device's SM count: {e:?}")))?;
    let n = u32::try_from(n).unwrap_or(1).max(1);
    cache.insert(dev.id(), n);
    Ok(n)
}

/// [`launch_cfg`] for the stacked, gated or add + norm GEMV: no shared memory for block scales
/// with lane scales.
fn gemv_cfg(n: u32, m: usize, weight_rows: u32, k: usize) -> LaunchConfig {
    let mut cfg = launch_cfg(n, m, weight_rows, k);
    if lane_scales(m) {
        cfg.shared_mem_bytes = 0;
    }
    cfg
}

/// The name of the stacked (`multi`) or gated (`glu`) GEMV kernel for `m` rows of x of `k`.
/// The folded norm's (`sumsq`, `multi_fold`, `glu_fold`, one row of x) too: their `_ls` forms
/// with lane scales.
fn gemv_kernel(kind: &str, sfx: &str, m: usize, k: usize) -> String {
    if lane_scales(m) && matches!(kind, "multi" | "glu" | "multi_fold" | "glu_fold" | "sumsq") {
        return format!("nf4_gemv_{kind}_ls_{sfx}_m1");
    }
    let pf = if bulk_prefetch(m, k) { "pf_" } else { "" };
    format!("nf4_gemv_{kind}_{pf}{sfx}_m{m}")
}

/// Mirrors `Nf4Multi` in kernels/nf4.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Multi {
    seg: [Seg; MAX_SEGS],
    tables: u64,
    nseg: u32,
    ntotal: u32,
    prefetch: u32,
}
unsafe impl DeviceRepr for Multi {}

/// The device address of a contiguous CUDA tensor's first element.
pub(crate) fn device_ptr<T: CudaDType>(t: &Tensor, what: &str) -> Result<u64> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*st else { candle_core::bail!("fused nf4: the {what} is not on a CUDA device") };
    let Some((o1, _)) = l.contiguous_offsets() else { candle_core::bail!("fused nf4: the {what} is not contiguous") };
    let s = c.as_cuda_slice::<T>()?;
    let (p, _sync) = s.device_ptr(s.stream());
    Ok(p + (o1 * std::mem::size_of::<T>()) as u64)
}

/// Why the fused launch does not apply to `m` rows of `x` (`k` features, `dtype`) and `projs`,
/// or `None` when it does (then the tensors' storage is on CUDA, aligned and contiguous).
pub fn fused_unsupported(m: usize, k: usize, dtype: DType, projs: &[Nf4Proj]) -> Option<String> {
    if projs.is_empty() || projs.len() > MAX_SEGS {
        return Some(format!("{} weights (the fused launch takes 1 to {MAX_SEGS})", projs.len()));
    }
    for p in projs {
        if let Some(why) = gemv_unsupported(m, k, &p.w) {
            return Some(why);
        }
        if !p.w.device().is_cuda() {
            return Some("the weight is not on a CUDA device".into());
        }
        let (_, pl) = p.w.packed().storage_and_layout();
        if pl.contiguous_offsets().is_none_or(|(o, _)| !o.is_multiple_of(16)) {
            return Some("the packed weight is not contiguous and 16-byte aligned".into());
        }
        let nested = projs.iter().find_map(|q| nested_code(&q.w));
        if p.w.code() != projs[0].w.code() || nested_code(&p.w).is_some_and(|n| Some(n) != nested) {
            return Some("the weights use different code tables".into());
        }
        if let Some(b) = &p.bias
            && (b.dtype() != dtype || b.elem_count() != p.w.shape().dims()[0] || !b.is_contiguous())
        {
            return Some("the bias is not a contiguous vector of x's dtype and the weight's rows".into());
        }
    }
    None
}

fn nested_code(w: &Nf4Tensor) -> Option<&[f32; 256]> {
    match w.absmax() {
        Absmax::Plain(_) => None,
        Absmax::Double(d) => Some(&d.nested_code),
    }
}

/// The weight whose tables serve the whole launch: a double-quantized one if any.
fn table_source(projs: &[Nf4Proj]) -> &Nf4Tensor {
    projs.iter().find(|p| nested_code(&p.w).is_some()).map_or(&projs[0].w, |p| &p.w)
}

fn seg<T: CudaDType>(p: &Nf4Proj, col0: u32) -> Result<Seg> {
    let sp = scale_params(&p.w);
    let packed = device_ptr::<u8>(p.w.packed(), "packed weight")?;
    let (absmax, q, nested) = match p.w.absmax() {
        Absmax::Plain(a) => {
            let a = device_ptr::<f32>(a, "absmax")?;
            (a, a, a)
        }
        Absmax::Double(d) => {
            let n = device_ptr::<f32>(&d.nested_absmax, "nested absmax")?;
            (n, device_ptr::<u8>(&d.q, "quantized absmax")?, n)
        }
    };
    let bias = match &p.bias {
        Some(b) => device_ptr::<T>(b, "bias")?,
        None => 0,
    };
    Ok(Seg {
        packed,
        absmax,
        q,
        nested,
        bias,
        offset: sp.offset,
        bs_log2: sp.bs_log2,
        nbs_log2: sp.nbs_log2,
        dq: sp.dq,
        rows: p.w.shape().dims()[0] as u32,
        col0,
    })
}

/// `x [.., k]` times each weight, the outputs side by side: `[.., Σ out]` (bias added).
pub fn gemv_multi(x: &Tensor, projs: &[Nf4Proj]) -> Result<Tensor> {
    if x.device().is_cuda() {
        return x.apply_op1_no_bwd(&MultiOp { projs: projs.to_vec() });
    }
    let parts = projs.iter().map(|p| linear_twin(x, p)).collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, candle_core::D::Minus1)
}

/// `act(x Gᵀ + b_g) * (x Uᵀ + b_u)`, `[.., out]`.
pub fn gemv_glu(x: &Tensor, gate: &Nf4Proj, up: &Nf4Proj, act: GluAct) -> Result<Tensor> {
    if x.device().is_cuda() {
        return x.apply_op1_no_bwd(&GluOp { gate: gate.clone(), up: up.clone(), act });
    }
    let g = linear_twin(x, gate)?;
    let a = match act {
        GluAct::Silu => g.silu()?,
        GluAct::GeluTanh => g.gelu()?,
        GluAct::GeluErf => g.gelu_erf()?,
    };
    a * linear_twin(x, up)?
}

/// [`gemv_multi`] on CUDA written into `out` (`m · Σ out` contiguous elements of x's dtype,
/// overlapping no input) instead of a fresh tensor, returned with x's leading dimensions: a
/// decode step captured as a CUDA graph then holds no allocation node between its kernels.
pub fn gemv_multi_into(x: &Tensor, projs: &[Nf4Proj], out: &Tensor) -> Result<Tensor> {
    let n = projs.iter().map(|p| p.w.shape().dims()[0]).sum();
    into(x, n, out, "gemv_multi_into", |s, l, sfx, yp| {
        let op = MultiOp { projs: projs.to_vec() };
        match s.dtype() {
            DType::F32 => op.launch_to::<f32>(s, l, sfx, yp),
            DType::BF16 => op.launch_to::<half::bf16>(s, l, sfx, yp),
            _ => op.launch_to::<half::f16>(s, l, sfx, yp),
        }
    })
}

/// [`gemv_glu`] on CUDA written into `out`, as [`gemv_multi_into`].
pub fn gemv_glu_into(x: &Tensor, gate: &Nf4Proj, up: &Nf4Proj, act: GluAct, out: &Tensor) -> Result<Tensor> {
    let n = gate.w.shape().dims()[0];
    into(x, n, out, "gemv_glu_into", |s, l, sfx, yp| {
        let op = GluOp { gate: gate.clone(), up: up.clone(), act };
        match s.dtype() {
            DType::F32 => op.launch_to::<f32>(s, l, sfx, yp),
            DType::BF16 => op.launch_to::<half::bf16>(s, l, sfx, yp),
            _ => op.launch_to::<half::f16>(s, l, sfx, yp),
        }
    })
}

/// Checks `out` for `n` outputs per row of `x`, runs `launch` with x's storage and the
/// output's address, and returns `out` shaped `[.., n]`.
fn into(x: &Tensor, n: usize, out: &Tensor, what: &str, launch: impl FnOnce(&CudaStorage, &Layout, &str, u64) -> Result<()>) -> Result<Tensor> {
    let sfx = match x.dtype() {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("{what}: x must be f32, f16 or bf16, got {other:?}"),
    };
    let x = x.contiguous()?;
    let k = x.dims().last().copied().unwrap_or(0);
    let m = x.elem_count() / k.max(1);
    let yp = super::infer::out_ptr(out, m * n, x.dtype(), &[super::infer::span(&x)?], what)?;
    {
        let (st, l) = x.storage_and_layout();
        let Storage::Cuda(s) = &*st else { candle_core::bail!("{what}: x is not on a CUDA device") };
        launch(s, l, sfx, yp)?;
    }
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    out.reshape(dims)
}

fn linear_twin(x: &Tensor, p: &Nf4Proj) -> Result<Tensor> {
    let y = gemv(x, &p.w)?;
    match &p.bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Rows of x and input features, after checking the fused launch applies.
fn rows_and_k(projs: &[Nf4Proj], l: &Layout, dtype: DType) -> Result<(usize, usize)> {
    let k = projs[0].w.shape().dims()[1];
    let m = l.shape().elem_count() / k.max(1);
    if let Some(why) = fused_unsupported(m, k, dtype, projs) {
        candle_core::bail!("fused nf4: {why}")
    }
    if l.contiguous_offsets().is_none() {
        candle_core::bail!("fused nf4: x is not contiguous")
    }
    Ok((m, k))
}

fn x_ptr<T: CudaDType>(s: &CudaStorage, l: &Layout) -> Result<u64> {
    let Some((o1, _)) = l.contiguous_offsets() else { candle_core::bail!("fused nf4: x is not contiguous") };
    if !(o1 * std::mem::size_of::<T>()).is_multiple_of(16) {
        candle_core::bail!("fused nf4: x is not 16-byte aligned")
    }
    let c = s.as_cuda_slice::<T>()?;
    Ok(c.device_ptr(c.stream()).0 + (o1 * std::mem::size_of::<T>()) as u64)
}

fn out_shape(l: &Layout, n: usize) -> Shape {
    let mut dims = l.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

/// Warps per block (`GW` in kernels/nf4.cu): they split k between them.
const WARPS: u32 = 4;

/// Output rows per block for `m` rows of x (`Tile<M>::R` in kernels/nf4.cu).
fn rows_per_block(m: usize) -> u32 {
    match m {
        0 | 1 => 4,
        2..=4 => 2,
        _ => 1,
    }
}

/// Blocks for `n` output rows and the dynamic shared memory for `weight_rows` rows' block scales.
fn launch_cfg(n: u32, m: usize, weight_rows: u32, k: usize) -> LaunchConfig {
    let r = rows_per_block(m);
    let smem = weight_rows * (k as u32 / 32) * 4;
    LaunchConfig { grid_dim: (n.div_ceil(r), 1, 1), block_dim: (32 * WARPS, 1, 1), shared_mem_bytes: smem }
}

/// The stacked GEMV of `projs` on `x` (checked by [`fused_unsupported`] first; used by
/// `gemv_multi` and by the single-weight `crate::cuda::linear_fused`).
pub(super) fn multi_launch(projs: &[Nf4Proj], x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let op = MultiOp { projs: projs.to_vec() };
    match x.dtype() {
        DType::F32 => op.launch::<f32>(x, l, "f32"),
        DType::BF16 => op.launch::<half::bf16>(x, l, "bf16"),
        DType::F16 => op.launch::<half::f16>(x, l, "f16"),
        other => candle_core::bail!("fused nf4: x must be f32, f16 or bf16, got {other:?}"),
    }
}

struct MultiOp {
    projs: Vec<Nf4Proj>,
}

impl MultiOp {
    fn launch<T: CudaDType + DeviceRepr>(&self, s: &CudaStorage, l: &Layout, sfx: &str) -> Result<CudaStorage> {
        let (m, _) = rows_and_k(&self.projs, l, s.dtype())?;
        let dev = s.device().clone();
        let col: usize = self.projs.iter().map(|p| p.w.shape().dims()[0]).sum();
        let y = unsafe { dev.alloc::<T>(m * col)? };
        let yp = y.device_ptr(y.stream()).0;
        self.launch_to::<T>(s, l, sfx, yp)?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }

    /// The kernel, writing `[m, Σ out]` at device address `yp`.
    fn launch_to<T: CudaDType + DeviceRepr>(&self, s: &CudaStorage, l: &Layout, sfx: &str, yp: u64) -> Result<()> {
        let (m, k) = rows_and_k(&self.projs, l, s.dtype())?;
        let dev = s.device().clone();
        let mut segs = [Seg::default(); MAX_SEGS];
        let mut col = 0u32;
        for (i, p) in self.projs.iter().enumerate() {
            segs[i] = seg::<T>(p, col)?;
            col += segs[i].rows;
        }
        let tables = tables(&dev, table_source(&self.projs))?;
        let tp = tables.device_ptr(tables.stream()).0;
        let mut multi = Multi { seg: segs, tables: tp, nseg: self.projs.len() as u32, ntotal: col, prefetch: u32::from(gemv_prefetch_on()) };
        let mut yp = yp;
        let mut xp = x_ptr::<T>(s, l)?;
        let mut k32 = k as u32;
        let cfg = gemv_cfg(col, m, rows_per_block(m), k);
        let mut args = [arg(&mut multi), arg(&mut xp), arg(&mut yp), arg(&mut k32)];
        // SAFETY: the arguments are the kernel's, in order; it waits before reading x or writing y
        // and reads only constant weights, scales and tables before that.
        unsafe { pdl::launch(&dev, MODULE, PTX, &gemv_kernel("multi", sfx, m, k), cfg, &mut args) }
    }
}

impl CustomOp1 for MultiOp {
    fn name(&self) -> &'static str {
        "nf4-gemv-multi"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-gemv-multi runs on CUDA; on the CPU call gemv_multi, which composes the CPU twins")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let n: usize = self.projs.iter().map(|p| p.w.shape().dims()[0]).sum();
        Ok((multi_launch(&self.projs, s, l)?, out_shape(l, n)))
    }
}

struct GluOp {
    gate: Nf4Proj,
    up: Nf4Proj,
    act: GluAct,
}

impl GluOp {
    fn launch<T: CudaDType + DeviceRepr>(&self, s: &CudaStorage, l: &Layout, sfx: &str) -> Result<CudaStorage> {
        let (m, _) = rows_and_k(&[self.gate.clone(), self.up.clone()], l, s.dtype())?;
        let n = self.gate.w.shape().dims()[0];
        let dev = s.device().clone();
        let y = unsafe { dev.alloc::<T>(m * n)? };
        let yp = y.device_ptr(y.stream()).0;
        self.launch_to::<T>(s, l, sfx, yp)?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }

    /// The kernel, writing `[m, out]` at device address `yp`.
    fn launch_to<T: CudaDType + DeviceRepr>(&self, s: &CudaStorage, l: &Layout, sfx: &str, yp: u64) -> Result<()> {
        let projs = [self.gate.clone(), self.up.clone()];
        let (m, k) = rows_and_k(&projs, l, s.dtype())?;
        if self.gate.w.shape() != self.up.w.shape() {
            candle_core::bail!("fused nf4 glu: gate {:?} and up {:?} differ in shape", self.gate.w.shape(), self.up.w.shape())
        }
        let dev = s.device().clone();
        let (mut g, mut u) = (seg::<T>(&self.gate, 0)?, seg::<T>(&self.up, 0)?);
        let mut n = g.rows;
        let tables = tables(&dev, table_source(&projs))?;
        let mut tp = tables.device_ptr(tables.stream()).0;
        let mut yp = yp;
        let mut xp = x_ptr::<T>(s, l)?;
        let (mut act, mut k32) = (self.act as i32, k as u32);
        let cfg = gemv_cfg(n, m, 2 * rows_per_block(m), k);
        let mut args = [arg(&mut g), arg(&mut u), arg(&mut tp), arg(&mut act), arg(&mut xp), arg(&mut yp), arg(&mut n), arg(&mut k32)];
        // SAFETY: as in MultiOp::launch.
        unsafe { pdl::launch(&dev, MODULE, PTX, &gemv_kernel("glu", sfx, m, k), cfg, &mut args) }
    }
}

impl CustomOp1 for GluOp {
    fn name(&self) -> &'static str {
        "nf4-gemv-glu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-gemv-glu runs on CUDA; on the CPU call gemv_glu, which composes the CPU twins")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let n = self.gate.w.shape().dims()[0];
        let y = match s.dtype() {
            DType::F32 => self.launch::<f32>(s, l, "f32")?,
            DType::BF16 => self.launch::<half::bf16>(s, l, "bf16")?,
            DType::F16 => self.launch::<half::f16>(s, l, "f16")?,
            other => candle_core::bail!("fused nf4: x must be f32, f16 or bf16, got {other:?}"),
        };
        Ok((y, out_shape(l, n)))
    }
}

// ------------------------------------------------------------------ GEMV + residual add + RMSNorm

/// Mirrors `NormTail` in kernels/nf4.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct NormTail {
    resid: u64,
    w: u64,
    out: u64,
    counter: u64,
    eps: f32,
    one_plus: i32,
}
unsafe impl DeviceRepr for NormTail {}

/// The device's counter of finished blocks for [`gemv_add_rms_norm`] (zero between launches:
/// the last block resets it; launches on one device's stream never overlap).
fn block_counter(dev: &CudaDevice) -> Result<u64> {
    type Cache = HashMap<DeviceId, Arc<CudaSlice<u32>>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().map_err(|_| candle_core::Error::Msg("fused nf4: counter cache poisoned".into()))?;
    let c = match cache.get(&dev.id()) {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(dev.alloc_zeros::<u32>(1)?);
            cache.insert(dev.id(), c.clone());
            c
        }
    };
    Ok(c.device_ptr(c.stream()).0)
}

/// `(s, norm(s))` with `s = resid + (x Wᵀ + b)`, RMSNorm with `weight` and `eps` (Gemma's
/// `1 + weight` when `one_plus`), all `[.., out]` in x's dtype: the same values as
/// [`gemv_multi`] of the one projection followed by `infer::add_rms_norm`, in one launch on
/// CUDA (the norm's sum of squares is added in another order: equal within float rounding).
/// On the CPU, that composition of the twins.
pub fn gemv_add_rms_norm(x: &Tensor, proj: &Nf4Proj, resid: &Tensor, weight: &Tensor, eps: f64, one_plus: bool) -> Result<(Tensor, Tensor)> {
    if !x.device().is_cuda() {
        return norm_twin(&gemv_multi(x, std::slice::from_ref(proj))?, resid, weight, eps, one_plus);
    }
    let op = GemvNormOp { proj: proj.clone(), eps: eps as f32, one_plus };
    let both = x.contiguous()?.apply_op3_no_bwd(&resid.contiguous()?, &weight.contiguous()?, &op)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// [`gemv_add_rms_norm`] on CUDA into caller buffers (a decode step captured as a CUDA graph
/// then holds no allocation between its kernels): `a` (`m · n` elements of x's dtype) takes the
/// GEMV's own output, `out` (`2 · m · n`) the sum and then the norm, both returned shaped as
/// `resid`. Neither may overlap an input or the other.
pub fn gemv_add_rms_norm_into(
    x: &Tensor,
    proj: &Nf4Proj,
    resid: &Tensor,
    weight: &Tensor,
    (eps, one_plus): (f64, bool),
    a: &Tensor,
    out: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (x, resid, weight) = (x.contiguous()?, resid.contiguous()?, weight.contiguous()?);
    let n = proj.w.shape().dims()[0];
    let m = resid.elem_count() / n.max(1);
    let what = "gemv_add_rms_norm_into";
    let inputs = [super::infer::span(&x)?, super::infer::span(&resid)?, super::infer::span(&weight)?];
    let ap = super::infer::out_ptr(a, m * n, x.dtype(), &inputs, what)?;
    let op_ = super::infer::out_ptr(out, 2 * m * n, x.dtype(), &[inputs[0], inputs[1], inputs[2], super::infer::span(a)?], what)?;
    let op = GemvNormOp { proj: proj.clone(), eps: eps as f32, one_plus };
    {
        let (xs, xl) = x.storage_and_layout();
        let (rs, rl) = resid.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (Storage::Cuda(xs), Storage::Cuda(rs), Storage::Cuda(ws)) = (&*xs, &*rs, &*ws) else {
            candle_core::bail!("{what}: x, the residual and the norm weight must be on a CUDA device")
        };
        match x.dtype() {
            DType::F32 => op.launch_to::<f32>((xs, xl), (rs, rl), (ws, wl), "f32", ap, op_)?,
            DType::BF16 => op.launch_to::<half::bf16>((xs, xl), (rs, rl), (ws, wl), "bf16", ap, op_)?,
            DType::F16 => op.launch_to::<half::f16>((xs, xl), (rs, rl), (ws, wl), "f16", ap, op_)?,
            other => candle_core::bail!("{what}: x must be f32, f16 or bf16, got {other:?}"),
        }
    }
    Ok((out.narrow(0, 0, m * n)?.reshape(resid.dims())?, out.narrow(0, m * n, m * n)?.reshape(resid.dims())?))
}

/// The CPU twin of the residual add and RMSNorm, rounding as the kernels do.
fn norm_twin(a: &Tensor, resid: &Tensor, weight: &Tensor, eps: f64, one_plus: bool) -> Result<(Tensor, Tensor)> {
    let dt = a.dtype();
    let s = (resid + a)?;
    let sf = s.to_dtype(DType::F32)?;
    let r = (sf.sqr()?.mean_keepdim(candle_core::D::Minus1)? + eps)?.sqrt()?.recip()?;
    let n = sf.broadcast_mul(&r)?;
    let w = weight.to_dtype(DType::F32)?;
    let out = if one_plus { n.broadcast_mul(&(w + 1.0)?)?.to_dtype(dt)? } else { n.to_dtype(dt)?.broadcast_mul(weight)? };
    Ok((s, out))
}

struct GemvNormOp {
    proj: Nf4Proj,
    eps: f32,
    one_plus: bool,
}

impl GemvNormOp {
    fn launch<T: CudaDType + DeviceRepr>(
        &self,
        x: (&CudaStorage, &Layout),
        r: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        sfx: &str,
    ) -> Result<CudaStorage> {
        let (m, _) = rows_and_k(std::slice::from_ref(&self.proj), x.1, x.0.dtype())?;
        let n = self.proj.w.shape().dims()[0];
        let dev = x.0.device().clone();
        let a = unsafe { dev.alloc::<T>(m * n)? };
        let out = unsafe { dev.alloc::<T>(2 * m * n)? };
        self.launch_to::<T>(x, r, w, sfx, a.device_ptr(a.stream()).0, out.device_ptr(out.stream()).0)?;
        drop(a); // stream-ordered free, after the kernel
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    /// The kernel, its GEMV output at device address `ap` (`m · n`), the sum and the norm at `op` (`2 · m · n`).
    fn launch_to<T: CudaDType + DeviceRepr>(
        &self,
        x: (&CudaStorage, &Layout),
        r: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        sfx: &str,
        ap: u64,
        op: u64,
    ) -> Result<()> {
        let projs = std::slice::from_ref(&self.proj);
        let (m, k) = rows_and_k(projs, x.1, x.0.dtype())?;
        let n = self.proj.w.shape().dims()[0];
        if r.1.shape().elem_count() != m * n || r.0.dtype() != x.0.dtype() || w.1.shape().elem_count() != n || w.0.dtype() != x.0.dtype() {
            candle_core::bail!(
                "fused nf4 norm: residual {:?} and norm weight {:?} do not fit {m} rows of {n} {:?}",
                r.1.dims(),
                w.1.dims(),
                x.0.dtype()
            )
        }
        let dev = x.0.device().clone();
        let mut multi = Multi { seg: [seg::<T>(&self.proj, 0)?, Seg::default(), Seg::default()], tables: 0, nseg: 1, ntotal: n as u32, prefetch: 0 };
        let tables = tables(&dev, &self.proj.w)?;
        multi.tables = tables.device_ptr(tables.stream()).0;
        let ptr = |s: &CudaStorage, l: &Layout| -> Result<u64> {
            let Some((o, _)) = l.contiguous_offsets() else { candle_core::bail!("fused nf4 norm: an input is not contiguous") };
            let c = s.as_cuda_slice::<T>()?;
            Ok(c.device_ptr(c.stream()).0 + (o * std::mem::size_of::<T>()) as u64)
        };
        let mut tail = NormTail {
            resid: ptr(r.0, r.1)?,
            w: ptr(w.0, w.1)?,
            out: op,
            counter: block_counter(&dev)?,
            eps: self.eps,
            one_plus: i32::from(self.one_plus),
        };
        let mut xp = x_ptr::<T>(x.0, x.1)?;
        let mut ap = ap;
        let mut k32 = k as u32;
        let cfg = gemv_cfg(n as u32, m, rows_per_block(m), k);
        let mut args = [arg(&mut multi), arg(&mut xp), arg(&mut ap), arg(&mut k32), arg(&mut tail)];
        // SAFETY: the arguments are the kernel's, in order; as MultiOp::launch for PDL.
        let name = norm_kernel(&dev, sfx, m, k, cfg.grid_dim.0)?;
        unsafe { pdl::launch(&dev, MODULE, PTX, &name, cfg, &mut args) }
    }
}

impl CustomOp3 for GemvNormOp {
    fn name(&self) -> &'static str {
        "nf4-gemv-add-rms-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("nf4-gemv-add-rms-norm runs on CUDA; on the CPU call gemv_add_rms_norm, which composes the CPU twins")
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, r: &CudaStorage, rl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let n = self.proj.w.shape().dims()[0];
        let y = match x.dtype() {
            DType::F32 => self.launch::<f32>((x, xl), (r, rl), (w, wl), "f32")?,
            DType::BF16 => self.launch::<half::bf16>((x, xl), (r, rl), (w, wl), "bf16")?,
            DType::F16 => self.launch::<half::f16>((x, xl), (r, rl), (w, wl), "f16")?,
            other => candle_core::bail!("fused nf4: x must be f32, f16 or bf16, got {other:?}"),
        };
        let mut dims = out_shape(xl, n).dims().to_vec();
        dims.insert(0, 2);
        Ok((y, Shape::from(dims)))
    }
}

// ------------------------------------------------------------------ RMSNorm in the GEMV's prologue

/// The input of a GEMV that is the RMSNorm of a residual add, `norm(resid + pending)`
/// (Llama's `rnd(rnd(s · r) · w)`, Gemma's `one_plus`: `rnd(s · r · (1 + w))`), computed by the
/// GEMV's own blocks ([`norm_gemv_multi_into`], [`norm_gemv_glu_into`]) instead of by an
/// `infer::add_rms_norm` launch before it.
#[derive(Debug, Clone, Copy)]
pub struct NormedInput<'a> {
    /// The residual stream `[.., k]`.
    pub resid: &'a Tensor,
    /// The block output still to be added to it, same shape.
    pub pending: &'a Tensor,
    /// The norm's weight `[k]`.
    pub weight: &'a Tensor,
    pub eps: f64,
    pub one_plus: bool,
}

/// Rows of x the prologue launches take (`GEMV_NORMIN_ALL_M` in kernels/nf4.cu).
pub const NORMIN_MAX_ROWS: usize = 2;

/// Mirrors `NormIn` in kernels/nf4.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct NormInArgs {
    x: u64,
    a: u64,
    w: u64,
    s: u64,
    eps: f32,
    one_plus: i32,
    prefetch: i32,
}
unsafe impl DeviceRepr for NormInArgs {}

/// Which of the engine decode step's GEMVs compute the norm in their prologue: `(q/k/v,
/// gate/up)`. **Neither by default** (the add + RMSNorm launch runs apart); `QLORA_NORM_PROLOGUE`
/// `1` / `on` turns both on, `qkv` or `glu` that one only. Measured on an H100 (session 5, same
/// binary and call, NF4 b1, bench/gpu/results/h100-2026-11-27-s5-d1-*): both on, TinyLlama
/// 954 vs 918 µs a step and Mistral-7B 3796 vs 3538 with q/k/v only (slower: every block pays the
/// prologue, and gate/up has 1.4-3.5 blocks per resident slot); q/k/v only, TinyLlama 908 vs
/// 921 µs but Mistral-7B 3537 vs 3402. It needs fewer, longer-lived blocks to pay.
pub fn norm_prologue_on() -> (bool, bool) {
    static ON: OnceLock<(bool, bool)> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("QLORA_NORM_PROLOGUE").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Ok("1" | "true" | "on") => (true, true),
        Ok("qkv") => (true, false),
        Ok("glu") => (false, true),
        _ => (false, false),
    })
}

/// Whether the prologue launches prefetch their weight rows into L2 before waiting for the
/// previous kernel: on unless `QLORA_NORMIN_PREFETCH` is `0`, `false` or `off`.
fn prefetch_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("QLORA_NORMIN_PREFETCH").map(|v| v.trim().to_ascii_lowercase()).as_deref(), Ok("0" | "false" | "off")))
}

/// Whether the plain stacked GEMV ([`gemv_multi`], o_proj and down_proj in a decode step)
/// prefetches its blocks' weight rows into L2 before waiting for the previous kernel: **off by
/// default**, `QLORA_GEMV_PREFETCH=1` turns it on (an A/B switch; the prologue launches have
/// their own, `QLORA_NORMIN_PREFETCH`). Session 5 on an H100: TinyLlama 914 vs 921 µs a step
/// (noise), Mistral-7B 3434 vs 3402 (slower).
fn gemv_prefetch_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| matches!(std::env::var("QLORA_GEMV_PREFETCH").map(|v| v.trim().to_ascii_lowercase()).as_deref(), Ok("1" | "true" | "on")))
}

/// Largest shared memory a block may take without opting in (block scales + the normed x).
const SMEM_LIMIT: usize = 48 * 1024;

/// Why the prologue launch does not apply to `n` and `projs` (`weight_rows` weight rows a
/// block: 1 for [`norm_gemv_multi_into`]'s tile, 2 for the GLU's), or `None` when it does.
pub fn normin_unsupported(n: &NormedInput, projs: &[Nf4Proj], weight_rows: usize) -> Option<String> {
    let (dt, k) = (n.resid.dtype(), n.resid.dims().last().copied().unwrap_or(0));
    let m = n.resid.elem_count() / k.max(1);
    if !n.resid.device().is_cuda() {
        return Some("the residual is not on a CUDA device".into());
    }
    if n.pending.dims() != n.resid.dims() || n.pending.dtype() != dt || n.weight.dtype() != dt || n.weight.elem_count() != k {
        return Some(format!(
            "pending {:?} and norm weight {:?} do not fit the residual {:?} {dt:?}",
            n.pending.dims(),
            n.weight.dims(),
            n.resid.dims()
        ));
    }
    if m == 0 || m > NORMIN_MAX_ROWS || !k.is_multiple_of(8) || k > 8192 {
        return Some(format!("{m} rows of {k} (the prologue takes 1 to {NORMIN_MAX_ROWS} rows of a multiple of 8 up to 8192)"));
    }
    if let Some(why) = fused_unsupported(m, k, dt, projs) {
        return Some(why);
    }
    let scales = (weight_rows * rows_per_block(m) as usize * (k / 32) * 4).next_multiple_of(16);
    if scales + m * k * dt.size_in_bytes() > SMEM_LIMIT {
        return Some(format!("{m} rows of {k} {dt:?} do not fit a block's shared memory"));
    }
    for (t, what) in [(n.resid, "residual"), (n.pending, "pending output"), (n.weight, "norm weight")] {
        let p = match dt {
            DType::F32 => device_ptr::<f32>(t, what),
            DType::BF16 => device_ptr::<half::bf16>(t, what),
            _ => device_ptr::<half::f16>(t, what),
        };
        match p {
            Ok(p) if p % 16 == 0 => {}
            Ok(_) => return Some(format!("the {what} is not 16-byte aligned")),
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// What both prologue launches need: rows, features, the kernel's `NormIn`, the output's
/// address, and `s` shaped like the residual.
struct Prologue {
    m: usize,
    k: usize,
    args: NormInArgs,
    yp: u64,
    s: Tensor,
}

fn prologue<T: CudaDType>(n: &NormedInput, projs: &[Nf4Proj], weight_rows: usize, y: (&Tensor, usize), s: &Tensor, what: &str) -> Result<Prologue> {
    if let Some(why) = normin_unsupported(n, projs, weight_rows) {
        candle_core::bail!("{what}: {why}")
    }
    let k = n.resid.dims().last().copied().unwrap_or(0);
    let m = n.resid.elem_count() / k;
    let inputs = [super::infer::span(n.resid)?, super::infer::span(n.pending)?, super::infer::span(n.weight)?];
    let sp = super::infer::out_ptr(s, m * k, n.resid.dtype(), &inputs, what)?;
    let all = [inputs[0], inputs[1], inputs[2], super::infer::span(s)?];
    let yp = super::infer::out_ptr(y.0, m * y.1, n.resid.dtype(), &all, what)?;
    let args = NormInArgs {
        x: device_ptr::<T>(n.resid, "residual")?,
        a: device_ptr::<T>(n.pending, "pending output")?,
        w: device_ptr::<T>(n.weight, "norm weight")?,
        s: sp,
        eps: n.eps as f32,
        one_plus: i32::from(n.one_plus),
        prefetch: i32::from(prefetch_on()),
    };
    Ok(Prologue { m, k, args, yp, s: s.reshape(n.resid.dims())? })
}

/// Grid and block as [`launch_cfg`], plus the normed x's `m · k` elements of `esize` bytes in
/// the dynamic shared memory after the scales (16-byte aligned: `xs_offset` in kernels/nf4.cu).
fn prologue_cfg(n: u32, m: usize, weight_rows: u32, k: usize, esize: usize) -> LaunchConfig {
    let mut cfg = launch_cfg(n, m, weight_rows, k);
    cfg.shared_mem_bytes = (cfg.shared_mem_bytes as usize).next_multiple_of(16) as u32 + (m * k * esize) as u32;
    cfg
}

fn y_shaped(y: &Tensor, resid: &Tensor, n: usize) -> Result<Tensor> {
    let mut dims = resid.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    y.reshape(dims)
}

/// `(s, y)` with `s = resid + pending` and `y` = [`gemv_multi`] of `norm(s)` with `projs`,
/// written into `s_out` and `y_out` (preallocated, contiguous, x's dtype, overlapping no input
/// nor each other): one launch instead of `infer::add_rms_norm` and the GEMV, equal to that
/// pair bit for bit (the kernel repeats the norm kernel's arithmetic). Checked by
/// [`normin_unsupported`] with one weight row a block first.
pub fn norm_gemv_multi_into(n: &NormedInput, projs: &[Nf4Proj], y_out: &Tensor, s_out: &Tensor) -> Result<(Tensor, Tensor)> {
    let cols: usize = projs.iter().map(|p| p.w.shape().dims()[0]).sum();
    match n.resid.dtype() {
        DType::F32 => normin_multi::<f32>(n, projs, cols, y_out, s_out, "f32"),
        DType::BF16 => normin_multi::<half::bf16>(n, projs, cols, y_out, s_out, "bf16"),
        DType::F16 => normin_multi::<half::f16>(n, projs, cols, y_out, s_out, "f16"),
        other => candle_core::bail!("norm_gemv_multi_into: x must be f32, f16 or bf16, got {other:?}"),
    }
}

fn normin_multi<T: CudaDType + DeviceRepr>(
    n: &NormedInput,
    projs: &[Nf4Proj],
    cols: usize,
    y_out: &Tensor,
    s_out: &Tensor,
    sfx: &str,
) -> Result<(Tensor, Tensor)> {
    let pro = prologue::<T>(n, projs, 1, (y_out, cols), s_out, "norm_gemv_multi_into")?;
    let dev = match n.resid.device() {
        candle_core::Device::Cuda(d) => d.clone(),
        _ => candle_core::bail!("norm_gemv_multi_into: the residual is not on a CUDA device"),
    };
    let mut segs = [Seg::default(); MAX_SEGS];
    let mut col = 0u32;
    for (i, p) in projs.iter().enumerate() {
        segs[i] = seg::<T>(p, col)?;
        col += segs[i].rows;
    }
    let tables = tables(&dev, table_source(projs))?;
    let mut multi = Multi { seg: segs, tables: tables.device_ptr(tables.stream()).0, nseg: projs.len() as u32, ntotal: col, prefetch: 0 };
    let (mut yp, mut k32, mut nin) = (pro.yp, pro.k as u32, pro.args);
    let cfg = prologue_cfg(col, pro.m, rows_per_block(pro.m), pro.k, std::mem::size_of::<T>());
    let mut args = [arg(&mut multi), arg(&mut yp), arg(&mut k32), arg(&mut nin)];
    // SAFETY: the arguments are the kernel's, in order; it waits before reading the residual,
    // the pending output or writing anything, and reads only constant weights, scales and
    // tables before that.
    unsafe { pdl::launch(&dev, MODULE, PTX, &format!("nf4_gemv_multi_normin_{sfx}_m{}", pro.m), cfg, &mut args)? };
    Ok((pro.s, y_shaped(y_out, n.resid, cols)?))
}

/// `(s, y)` with `s = resid + pending` and `y` = [`gemv_glu`] of `norm(s)`, into `s_out` and
/// `y_out`, as [`norm_gemv_multi_into`] (bit for bit the norm launch and the GLU GEMV).
pub fn norm_gemv_glu_into(n: &NormedInput, gate: &Nf4Proj, up: &Nf4Proj, act: GluAct, y_out: &Tensor, s_out: &Tensor) -> Result<(Tensor, Tensor)> {
    match n.resid.dtype() {
        DType::F32 => normin_glu::<f32>(n, gate, up, act, y_out, s_out, "f32"),
        DType::BF16 => normin_glu::<half::bf16>(n, gate, up, act, y_out, s_out, "bf16"),
        DType::F16 => normin_glu::<half::f16>(n, gate, up, act, y_out, s_out, "f16"),
        other => candle_core::bail!("norm_gemv_glu_into: x must be f32, f16 or bf16, got {other:?}"),
    }
}

fn normin_glu<T: CudaDType + DeviceRepr>(
    n: &NormedInput,
    gate: &Nf4Proj,
    up: &Nf4Proj,
    act: GluAct,
    y_out: &Tensor,
    s_out: &Tensor,
    sfx: &str,
) -> Result<(Tensor, Tensor)> {
    if gate.w.shape() != up.w.shape() {
        candle_core::bail!("norm_gemv_glu_into: gate {:?} and up {:?} differ in shape", gate.w.shape(), up.w.shape())
    }
    let projs = [gate.clone(), up.clone()];
    let rows = gate.w.shape().dims()[0];
    let pro = prologue::<T>(n, &projs, 2, (y_out, rows), s_out, "norm_gemv_glu_into")?;
    let dev = match n.resid.device() {
        candle_core::Device::Cuda(d) => d.clone(),
        _ => candle_core::bail!("norm_gemv_glu_into: the residual is not on a CUDA device"),
    };
    let (mut g, mut u) = (seg::<T>(gate, 0)?, seg::<T>(up, 0)?);
    let tables = tables(&dev, table_source(&projs))?;
    let mut tp = tables.device_ptr(tables.stream()).0;
    let (mut act, mut yp, mut n32, mut k32, mut nin) = (act as i32, pro.yp, rows as u32, pro.k as u32, pro.args);
    let cfg = prologue_cfg(n32, pro.m, 2 * rows_per_block(pro.m), pro.k, std::mem::size_of::<T>());
    let mut args = [arg(&mut g), arg(&mut u), arg(&mut tp), arg(&mut act), arg(&mut yp), arg(&mut n32), arg(&mut k32), arg(&mut nin)];
    // SAFETY: as in normin_multi.
    unsafe { pdl::launch(&dev, MODULE, PTX, &format!("nf4_gemv_glu_normin_{sfx}_m{}", pro.m), cfg, &mut args)? };
    Ok((pro.s, y_shaped(y_out, n.resid, rows)?))
}

// ------------------------------------------------------------------ RMSNorm folded into the GEMVs

/// Mirrors `SumSq` in kernels/nf4.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SumSqArgs {
    resid: u64,
    w: u64,
    s: u64,
    xw: u64,
    partials: u64,
    one_plus: i32,
    early: i32,
}
unsafe impl DeviceRepr for SumSqArgs {}

/// Whether the folded norm's projection, with lane scales, copies its rows of the residual and
/// the norm weight into shared memory right after its wait (`SumSqHook` in kernels/nf4.cu; both
/// 8-byte aligned): its blocks' last step then reads no global memory. On unless
/// `QLORA_SUMSQ_EARLY=0` (A/B runs); the same bits either way.
fn sumsq_early() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("QLORA_SUMSQ_EARLY").map_or(true, |v| v.trim() != "0"))
}

/// Mirrors `FoldIn` in kernels/nf4.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FoldInArgs {
    partials: u64,
    np: u32,
    eps: f32,
}
unsafe impl DeviceRepr for FoldInArgs {}

/// The widest residual stream the folded norm takes: the next GEMV's threads sum at most
/// `FOLD_P4 · 4 · 128` partials (kernels/nf4.cu), one per 4 rows of the projection.
pub const FOLD_MAX_WIDTH: usize = 4096;

/// The partial sums of squares a projection with `n` outputs writes ([`gemv_add_sumsq_into`]):
/// one per block of 4 output rows.
pub fn fold_partials(n: usize) -> usize {
    n.div_ceil(4)
}

/// The RMSNorm of a residual stream `s`, folded into the GEMVs that read it: what
/// [`gemv_add_sumsq_into`] wrote for it (`s` times the norm's weight, and the partial sums of
/// squares of `s`) and the norm's `eps`. [`fold_gemv_multi_into`] and [`fold_gemv_glu_into`]
/// take it as their input `norm(s)`.
#[derive(Debug, Clone, Copy)]
pub struct FoldedNorm<'a> {
    /// `s · w` (Gemma's `one_plus`: `s · (1 + w)`) `[.., k]`, one row.
    pub xw: &'a Tensor,
    /// `[fold_partials(k)]` f32.
    pub partials: &'a Tensor,
    pub eps: f64,
}

/// Why the folded norm does not apply to a residual stream `[.., n]` of `dtype` with `rows`
/// rows, or `None` when it does: one row of bf16 or f16, `n` a multiple of 16 up to
/// [`FOLD_MAX_WIDTH`].
pub fn fold_unsupported(rows: usize, n: usize, dtype: DType) -> Option<String> {
    if rows != 1 || !matches!(dtype, DType::BF16 | DType::F16) || !n.is_multiple_of(16) || n > FOLD_MAX_WIDTH {
        return Some(format!("{rows} rows of {n} {dtype:?} (the folded norm takes one row of bf16 or f16, a multiple of 16 up to {FOLD_MAX_WIDTH})"));
    }
    None
}

/// `(s, xw)`: `s = resid + (x Wᵀ + b)` into `s_out`, and what the next GEMVs need to apply the
/// RMSNorm of `s` with `weight` (Gemma's `1 + weight` when `one_plus`): `xw = s · weight` into
/// `xw_out` (both returned shaped as `resid`) and the partial sums of squares of `s` into
/// `partials` (`[fold_partials(n)]` f32). One launch and no serial tail (the last block of
/// [`gemv_add_rms_norm_into`] normalises the whole row alone); `s` is bit for bit that launch's
/// sum. One row of x; the buffers may overlap no input nor each other.
pub fn gemv_add_sumsq_into(
    x: &Tensor,
    proj: &Nf4Proj,
    resid: &Tensor,
    (weight, one_plus): (&Tensor, bool),
    s_out: &Tensor,
    xw_out: &Tensor,
    partials: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let what = "gemv_add_sumsq_into";
    let (x, resid) = (x.contiguous()?, resid.contiguous()?);
    let n = proj.w.shape().dims()[0];
    let k = x.dims().last().copied().unwrap_or(0);
    let (m, dt) = (x.elem_count() / k.max(1), x.dtype());
    if let Some(why) = fold_unsupported(m, n, dt) {
        candle_core::bail!("{what}: {why}")
    }
    if resid.elem_count() != n || resid.dtype() != dt || weight.elem_count() != n || weight.dtype() != dt {
        candle_core::bail!(
            "{what}: the residual {:?} {:?} or the norm weight {:?} {:?} does not fit one row of {n} {dt:?}",
            resid.dims(),
            resid.dtype(),
            weight.dims(),
            weight.dtype()
        )
    }
    if let Some(why) = fused_unsupported(m, k, dt, std::slice::from_ref(proj)) {
        candle_core::bail!("{what}: {why}")
    }
    let inputs = [super::infer::span(&x)?, super::infer::span(&resid)?, super::infer::span(weight)?];
    let sp = super::infer::out_ptr(s_out, n, dt, &inputs, what)?;
    let xp = super::infer::out_ptr(xw_out, n, dt, &[inputs[0], inputs[1], inputs[2], super::infer::span(s_out)?], what)?;
    let outs = [inputs[0], inputs[1], inputs[2], super::infer::span(s_out)?, super::infer::span(xw_out)?];
    let pp = super::infer::out_ptr(partials, fold_partials(n), DType::F32, &outs, what)?;
    match dt {
        DType::BF16 => sumsq_launch::<half::bf16>(&x, proj, (&resid, weight, one_plus), (sp, xp, pp), "bf16")?,
        _ => sumsq_launch::<half::f16>(&x, proj, (&resid, weight, one_plus), (sp, xp, pp), "f16")?,
    }
    Ok((s_out.reshape(resid.dims())?, xw_out.reshape(resid.dims())?))
}

fn sumsq_launch<T: CudaDType + DeviceRepr>(
    x: &Tensor,
    proj: &Nf4Proj,
    (resid, weight, one_plus): (&Tensor, &Tensor, bool),
    (sp, xwp, pp): (u64, u64, u64),
    sfx: &str,
) -> Result<()> {
    let Device::Cuda(dev) = x.device() else { candle_core::bail!("gemv_add_sumsq_into: x is not on a CUDA device") };
    let n = proj.w.shape().dims()[0];
    let k = x.dims().last().copied().unwrap_or(0);
    let tables = tables(dev, &proj.w)?;
    let mut multi = Multi {
        seg: [seg::<T>(proj, 0)?, Seg::default(), Seg::default()],
        tables: tables.device_ptr(tables.stream()).0,
        nseg: 1,
        ntotal: n as u32,
        prefetch: 0,
    };
    let mut xp = aligned_ptr::<T>(x, "x")?;
    let mut k32 = k as u32;
    let (rp, wp) = (device_ptr::<T>(resid, "residual")?, device_ptr::<T>(weight, "norm weight")?);
    let mut sq = SumSqArgs {
        resid: rp,
        w: wp,
        s: sp,
        xw: xwp,
        partials: pp,
        one_plus: i32::from(one_plus),
        early: i32::from(sumsq_early() && rp % 8 == 0 && wp % 8 == 0),
    };
    let cfg = gemv_cfg(n as u32, 1, rows_per_block(1), k);
    // As the add + norm GEMV (`norm_kernel`): two steps in flight where the grid fits at 5 an SM.
    let mut kernel = gemv_kernel("sumsq", sfx, 1, k);
    if lane_scales(1) && k >= 4096 && cfg.grid_dim.0 <= 5 * multiprocessors(dev)? {
        kernel = format!("nf4_gemv_sumsq_ls2_{sfx}_m1");
    }
    let mut args = [arg(&mut multi), arg(&mut xp), arg(&mut k32), arg(&mut sq)];
    // SAFETY: the arguments are the kernel's, in order; it waits before reading x or the
    // residual and before writing s and the partials (as MultiOp::launch for PDL).
    unsafe { pdl::launch(dev, MODULE, PTX, &kernel, cfg, &mut args) }
}

/// A contiguous CUDA tensor's device address, checked 16-byte aligned.
fn aligned_ptr<T: CudaDType>(t: &Tensor, what: &str) -> Result<u64> {
    let p = device_ptr::<T>(t, what)?;
    if p % 16 != 0 {
        candle_core::bail!("fused nf4: the {what} is not 16-byte aligned")
    }
    Ok(p)
}

/// Checks `f` against the GEMVs' input width `k` and returns the kernels' `FoldIn`.
fn fold_args(f: &FoldedNorm, k: usize, what: &str) -> Result<FoldInArgs> {
    if let Some(why) = fold_unsupported(f.xw.elem_count() / k.max(1), k, f.xw.dtype()) {
        candle_core::bail!("{what}: {why}")
    }
    let np = fold_partials(k);
    if f.partials.dtype() != DType::F32 || f.partials.elem_count() != np {
        candle_core::bail!("{what}: the partials {:?} {:?} are not {np} f32 (gemv_add_sumsq_into's)", f.partials.dims(), f.partials.dtype())
    }
    Ok(FoldInArgs { partials: aligned_ptr::<f32>(f.partials, "partials")?, np: np as u32, eps: f.eps as f32 })
}

/// [`gemv_multi`] of `norm(s)` (`f`) with `projs`, into `y_out`, returned shaped `[.., Σ out]`
/// as `s`: the GEMV of `s · w` with its sums times 1 / rms(s), the partial sums of squares
/// summed by every block. Equal to `infer::add_rms_norm` then [`gemv_multi`] within the dtype's
/// rounding (that pair rounds `s · 1 / rms(s)` to the dtype before the weight).
pub fn fold_gemv_multi_into(f: &FoldedNorm, projs: &[Nf4Proj], y_out: &Tensor) -> Result<Tensor> {
    match f.xw.dtype() {
        DType::BF16 => fold_multi::<half::bf16>(f, projs, y_out, "bf16"),
        DType::F16 => fold_multi::<half::f16>(f, projs, y_out, "f16"),
        other => candle_core::bail!("fold_gemv_multi_into: s must be bf16 or f16, got {other:?}"),
    }
}

fn fold_multi<T: CudaDType + DeviceRepr>(f: &FoldedNorm, projs: &[Nf4Proj], y_out: &Tensor, sfx: &str) -> Result<Tensor> {
    let what = "fold_gemv_multi_into";
    let k = f.xw.dims().last().copied().unwrap_or(0);
    if let Some(why) = fused_unsupported(1, k, f.xw.dtype(), projs) {
        candle_core::bail!("{what}: {why}")
    }
    let Device::Cuda(dev) = f.xw.device() else { candle_core::bail!("{what}: s is not on a CUDA device") };
    let mut fin = fold_args(f, k, what)?;
    let cols: usize = projs.iter().map(|p| p.w.shape().dims()[0]).sum();
    let mut yp = super::infer::out_ptr(y_out, cols, f.xw.dtype(), &[super::infer::span(f.xw)?, super::infer::span(f.partials)?], what)?;
    let mut segs = [Seg::default(); MAX_SEGS];
    let mut col = 0u32;
    for (i, p) in projs.iter().enumerate() {
        segs[i] = seg::<T>(p, col)?;
        col += segs[i].rows;
    }
    let tables = tables(dev, table_source(projs))?;
    let mut multi = Multi { seg: segs, tables: tables.device_ptr(tables.stream()).0, nseg: projs.len() as u32, ntotal: col, prefetch: 0 };
    let mut xp = aligned_ptr::<T>(f.xw, "folded input")?;
    let mut k32 = k as u32;
    let mut cfg = gemv_cfg(col, 1, rows_per_block(1), k);
    let mut kernel = gemv_kernel("multi_fold", sfx, 1, k);
    if lane_scales(1) && qkv_fold_rows(k) == 8 {
        cfg.grid_dim.0 = col.div_ceil(8);
        kernel = format!("nf4_gemv_multi_fold_ls_r8_{sfx}_m1");
    }
    let mut args = [arg(&mut multi), arg(&mut xp), arg(&mut yp), arg(&mut k32), arg(&mut fin)];
    // SAFETY: as in MultiOp::launch; the folded input and the partials are read after the wait.
    unsafe { pdl::launch(dev, MODULE, PTX, &kernel, cfg, &mut args)? };
    y_shaped(y_out, f.xw, cols)
}

/// Rows a block of the folded stacked (q/k/v) GEMV with lane scales for rows of `k`: 8 from
/// k = 4096 (`nf4_gemv_multi_fold_ls_r8_*`, as the gate/up GEMV's 4 + 4: half the blocks, 6 an
/// SM, each lane 8 rows' loads in flight), else 4; `QLORA_QKV_ROWS=4|8` sets it for A/B runs.
/// The same bits either way. Measured on an H100 (session 11, same binary, alternating, NF4 b1
/// tok/s, bench/gpu/results/h100-2026-11-27-s11-qkv8-ab.*): Mistral-7B (k = 4096) 385.8 /
/// 386.1 / 385.6 at 8 against 376.8 / 377.2 / 377.5 at 4; TinyLlama (k = 2048) 1,311.1 /
/// 1,332.7 against 1,345.9 / 1,342.2.
fn qkv_fold_rows(k: usize) -> usize {
    static ROWS: OnceLock<Option<usize>> = OnceLock::new();
    ROWS.get_or_init(|| std::env::var("QLORA_QKV_ROWS").ok().and_then(|v| v.trim().parse().ok()).filter(|v| [4, 8].contains(v)))
        .unwrap_or(if k >= 4096 { 8 } else { 4 })
}

/// Rows of gate (and of up) a block of the folded gate/up GEMV with lane scales: 4, or 2 with
/// `QLORA_GLU_ROWS=2` (`nf4_gemv_glu_fold_ls_r2_*`: twice the blocks, 8 an SM at 64 registers
/// instead of 6 at 80). The same bits either way.
fn glu_fold_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| std::env::var("QLORA_GLU_ROWS").ok().and_then(|v| v.trim().parse().ok()).filter(|v| [2, 4].contains(v)).unwrap_or(4))
}

/// [`gemv_glu`] of `norm(s)` (`f`), into `y_out`, as [`fold_gemv_multi_into`].
pub fn fold_gemv_glu_into(f: &FoldedNorm, gate: &Nf4Proj, up: &Nf4Proj, act: GluAct, y_out: &Tensor) -> Result<Tensor> {
    match f.xw.dtype() {
        DType::BF16 => fold_glu::<half::bf16>(f, gate, up, act, y_out, "bf16"),
        DType::F16 => fold_glu::<half::f16>(f, gate, up, act, y_out, "f16"),
        other => candle_core::bail!("fold_gemv_glu_into: s must be bf16 or f16, got {other:?}"),
    }
}

fn fold_glu<T: CudaDType + DeviceRepr>(f: &FoldedNorm, gate: &Nf4Proj, up: &Nf4Proj, act: GluAct, y_out: &Tensor, sfx: &str) -> Result<Tensor> {
    let what = "fold_gemv_glu_into";
    let k = f.xw.dims().last().copied().unwrap_or(0);
    let projs = [gate.clone(), up.clone()];
    if let Some(why) = fused_unsupported(1, k, f.xw.dtype(), &projs) {
        candle_core::bail!("{what}: {why}")
    }
    if gate.w.shape() != up.w.shape() {
        candle_core::bail!("{what}: gate {:?} and up {:?} differ in shape", gate.w.shape(), up.w.shape())
    }
    let Device::Cuda(dev) = f.xw.device() else { candle_core::bail!("{what}: s is not on a CUDA device") };
    let mut fin = fold_args(f, k, what)?;
    let (mut g, mut u) = (seg::<T>(gate, 0)?, seg::<T>(up, 0)?);
    let mut n = g.rows;
    let mut yp = super::infer::out_ptr(y_out, n as usize, f.xw.dtype(), &[super::infer::span(f.xw)?, super::infer::span(f.partials)?], what)?;
    let tables = tables(dev, table_source(&projs))?;
    let mut tp = tables.device_ptr(tables.stream()).0;
    let mut xp = aligned_ptr::<T>(f.xw, "folded input")?;
    let (mut act, mut k32) = (act as i32, k as u32);
    let mut cfg = gemv_cfg(n, 1, 2 * rows_per_block(1), k);
    let mut kernel = gemv_kernel("glu_fold", sfx, 1, k);
    if lane_scales(1) && glu_fold_rows() == 2 {
        cfg.grid_dim.0 = n.div_ceil(2);
        kernel = format!("nf4_gemv_glu_fold_ls_r2_{sfx}_m1");
    }
    let mut args = [arg(&mut g), arg(&mut u), arg(&mut tp), arg(&mut act), arg(&mut xp), arg(&mut yp), arg(&mut n), arg(&mut k32), arg(&mut fin)];
    // SAFETY: as in fold_multi.
    unsafe { pdl::launch(dev, MODULE, PTX, &kernel, cfg, &mut args)? };
    y_shaped(y_out, f.xw, n as usize)
}
