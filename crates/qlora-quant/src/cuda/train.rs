//! Launchers for the training kernels of `kernels/train.cu` (LoRA dropout from a counter-based
//! hash, the fused cross-entropy that never materialises f32 logits, the attention softmax with
//! its mask made in the kernel, RMSNorm). The custom ops that call them, and their CPU twins,
//! live in `qlora-train` (`ops/`) and the engine (`ops.rs`, `ops/attention.rs`): this module
//! only moves device pointers, so those crates need no PTX of their own.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/train.ptx"));
const MODULE: &str = "qlora_quant_train";

fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("training kernels take f32, bf16 or f16 tensors, got {other:?}"),
    })
}

fn offsets(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(o) => Ok(o),
        None => candle_core::bail!("training kernel: the {what} is not contiguous"),
    }
}

/// `keep(seed, i) ? x[i] * scale : 0` for every element of `x` (contiguous), as `kernels/train.cu`
/// defines `keep`: the hash's top 32 bits below `threshold`.
pub fn dropout(x: &CudaStorage, l: &Layout, seed: u64, threshold: u32, scale: f32) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(x: &CudaStorage, l: &Layout, seed: u64, threshold: u32, scale: f32) -> Result<CudaStorage> {
        let dev = x.device().clone();
        let (o1, o2) = offsets(l, "dropout input")?;
        let n = o2 - o1;
        let src = x.as_cuda_slice::<T>()?.slice(o1..o2);
        let func = dev.get_or_load_custom_func(&format!("dropout_{}", suffix(x.dtype())?), MODULE, PTX)?;
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let n64 = n as u64;
        let blocks = (n.div_ceil(256) as u32).clamp(1, 65535);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = func.builder();
        b.arg(&src);
        b.arg(&mut out);
        b.arg(&n64);
        b.arg(&seed);
        b.arg(&threshold);
        b.arg(&scale);
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
    match x.dtype() {
        DType::F32 => go::<f32>(x, l, seed, threshold, scale),
        DType::BF16 => go::<half::bf16>(x, l, seed, threshold, scale),
        DType::F16 => go::<half::f16>(x, l, seed, threshold, scale),
        other => candle_core::bail!("dropout takes f32, bf16 or f16, got {other:?}"),
    }
}

/// Inputs of the cross-entropy kernels: logits `[rows, vocab]`, labels `[rows]` u32, weights
/// `[rows]` f32, all contiguous on one device.
pub struct CeInputs<'a> {
    pub logits: (&'a CudaStorage, &'a Layout),
    pub labels: (&'a CudaStorage, &'a Layout),
    pub weights: (&'a CudaStorage, &'a Layout),
    pub rows: usize,
    pub vocab: usize,
}

fn ce_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }
}

/// Per row `w · (logsumexp(row) − row[label])`, f32 `[rows]`.
pub fn ce_loss(i: &CeInputs<'_>) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(i: &CeInputs<'_>, dev: &CudaDevice) -> Result<CudaSlice<f32>> {
        let (lo1, lo2) = offsets(i.logits.1, "logits")?;
        let (la1, la2) = offsets(i.labels.1, "labels")?;
        let (w1, w2) = offsets(i.weights.1, "loss weights")?;
        let logits = i.logits.0.as_cuda_slice::<T>()?.slice(lo1..lo2);
        let labels = i.labels.0.as_cuda_slice::<u32>()?.slice(la1..la2);
        let weights = i.weights.0.as_cuda_slice::<f32>()?.slice(w1..w2);
        let func = dev.get_or_load_custom_func(&format!("ce_loss_{}", suffix(i.logits.0.dtype())?), MODULE, PTX)?;
        let mut out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(i.rows)? };
        let v = i.vocab as u32;
        let mut b = func.builder();
        b.arg(&logits);
        b.arg(&labels);
        b.arg(&weights);
        b.arg(&mut out);
        b.arg(&v);
        unsafe { b.launch(ce_cfg(i.rows)) }.w()?;
        Ok(out)
    }
    let dev = i.logits.0.device().clone();
    let out = match i.logits.0.dtype() {
        DType::F32 => go::<f32>(i, &dev)?,
        DType::BF16 => go::<half::bf16>(i, &dev)?,
        DType::F16 => go::<half::f16>(i, &dev)?,
        other => candle_core::bail!("cross-entropy takes f32, bf16 or f16 logits, got {other:?}"),
    };
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Per row `coef · w · (softmax(row) − onehot(label))`, in the logits' dtype `[rows, vocab]`.
pub fn ce_grad(i: &CeInputs<'_>, coef: f32) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(i: &CeInputs<'_>, coef: f32, dev: &CudaDevice) -> Result<CudaStorage> {
        let (lo1, lo2) = offsets(i.logits.1, "logits")?;
        let (la1, la2) = offsets(i.labels.1, "labels")?;
        let (w1, w2) = offsets(i.weights.1, "loss weights")?;
        let logits = i.logits.0.as_cuda_slice::<T>()?.slice(lo1..lo2);
        let labels = i.labels.0.as_cuda_slice::<u32>()?.slice(la1..la2);
        let weights = i.weights.0.as_cuda_slice::<f32>()?.slice(w1..w2);
        let func = dev.get_or_load_custom_func(&format!("ce_grad_{}", suffix(i.logits.0.dtype())?), MODULE, PTX)?;
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(i.rows * i.vocab)? };
        let v = i.vocab as u32;
        let mut b = func.builder();
        b.arg(&logits);
        b.arg(&labels);
        b.arg(&weights);
        b.arg(&mut out);
        b.arg(&v);
        b.arg(&coef);
        unsafe { b.launch(ce_cfg(i.rows)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    let dev = i.logits.0.device().clone();
    match i.logits.0.dtype() {
        DType::F32 => go::<f32>(i, coef, &dev),
        DType::BF16 => go::<half::bf16>(i, coef, &dev),
        DType::F16 => go::<half::f16>(i, coef, &dev),
        other => candle_core::bail!("cross-entropy takes f32, bf16 or f16 logits, got {other:?}"),
    }
}

fn softmax_cfg(rows: usize, cols: usize) -> LaunchConfig {
    let threads = (cols.next_multiple_of(32)).clamp(32, 1024) as u32;
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Softmax over the last dimension of a contiguous f32 tensor (`rows × cols` elements).
pub fn softmax_f32(x: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let dev = x.device().clone();
    let (o1, o2) = offsets(l, "softmax input")?;
    let cols = *l.dims().last().unwrap_or(&1);
    let rows = (o2 - o1) / cols.max(1);
    let src = x.as_cuda_slice::<f32>()?.slice(o1..o2);
    let func = dev.get_or_load_custom_func("softmax_f32", MODULE, PTX)?;
    let mut out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(o2 - o1)? };
    let c = cols as u32;
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&mut out);
    b.arg(&c);
    unsafe { b.launch(softmax_cfg(rows, cols)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `y · (g − Σ y·g)` per row: the softmax's input gradient from its output `y` and the output
/// gradient `g` (both contiguous f32, same shape).
pub fn softmax_bwd_f32(y: (&CudaStorage, &Layout), g: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    let dev = y.0.device().clone();
    let (y1, y2) = offsets(y.1, "softmax output")?;
    let (g1, g2) = offsets(g.1, "softmax gradient")?;
    if y2 - y1 != g2 - g1 {
        candle_core::bail!("softmax backward: output and gradient sizes differ")
    }
    let cols = *y.1.dims().last().unwrap_or(&1);
    let rows = (y2 - y1) / cols.max(1);
    let ys = y.0.as_cuda_slice::<f32>()?.slice(y1..y2);
    let gs = g.0.as_cuda_slice::<f32>()?.slice(g1..g2);
    let func = dev.get_or_load_custom_func("softmax_bwd_f32", MODULE, PTX)?;
    let mut out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(y2 - y1)? };
    let c = cols as u32;
    let mut b = func.builder();
    b.arg(&ys);
    b.arg(&gs);
    b.arg(&mut out);
    b.arg(&c);
    unsafe { b.launch(softmax_cfg(rows, cols)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Llama RMSNorm forward (`rms_fwd`) or its input gradient (`rms_bwd`, with `g`) over rows of
/// `x` (contiguous, f32/bf16/f16), weight `w` (`[cols]`, same dtype).
pub fn rms_norm(x: (&CudaStorage, &Layout), w: (&CudaStorage, &Layout), g: Option<(&CudaStorage, &Layout)>, eps: f32) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        g: Option<(&CudaStorage, &Layout)>,
        eps: f32,
    ) -> Result<CudaStorage> {
        let dev = x.0.device().clone();
        let (x1, x2) = offsets(x.1, "rms_norm input")?;
        let (w1, w2) = offsets(w.1, "rms_norm weight")?;
        let cols = w2 - w1;
        if cols == 0 || (x2 - x1) % cols != 0 {
            candle_core::bail!("rms_norm: weight of {cols} does not divide the input's {} elements", x2 - x1)
        }
        let rows = (x2 - x1) / cols;
        let xs = x.0.as_cuda_slice::<T>()?.slice(x1..x2);
        let ws = w.0.as_cuda_slice::<T>()?.slice(w1..w2);
        let name = format!("rms_{}_{}", if g.is_some() { "bwd" } else { "fwd" }, suffix(x.0.dtype())?);
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(x2 - x1)? };
        let c = cols as u32;
        let gv = match g {
            Some((gs, gl)) => {
                let (g1, g2) = offsets(gl, "rms_norm gradient")?;
                Some(gs.as_cuda_slice::<T>()?.slice(g1..g2))
            }
            None => None,
        };
        let mut b = func.builder();
        b.arg(&xs);
        b.arg(&ws);
        if let Some(gv) = &gv {
            b.arg(gv);
        }
        b.arg(&mut out);
        b.arg(&c);
        b.arg(&eps);
        unsafe { b.launch(softmax_cfg(rows, cols)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
    match x.0.dtype() {
        DType::F32 => go::<f32>(x, w, g, eps),
        DType::BF16 => go::<half::bf16>(x, w, g, eps),
        DType::F16 => go::<half::f16>(x, w, g, eps),
        other => candle_core::bail!("rms_norm takes f32, bf16 or f16, got {other:?}"),
    }
}

/// Which keys each attention row keeps (see `attn_softmax` in `kernels/train.cu`): row `r` is
/// query `r % t` at position `past + r % t`; `window` 0 means no sliding window.
#[derive(Debug, Clone, Copy)]
pub struct AttnMask {
    pub t: u32,
    pub past: u32,
    pub window: u32,
    pub scale: f32,
}

/// Rows a block of the warp-per-row attention softmax takes (one warp each).
const WARP_ROWS: usize = 8;

/// Whether [`attn_softmax`] runs its rows of at most 1024 keys one warp per row (default;
/// `QLORA_ATTN_SOFTMAX_WARP=0` or [`set_attn_softmax_warp`]`(false)` takes the earlier
/// one-block-per-row kernels, for side-by-side measurements and tests).
pub fn attn_softmax_warp() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    let env = *ENV.get_or_init(|| std::env::var("QLORA_ATTN_SOFTMAX_WARP").map_or(true, |v| v.trim() != "0"));
    env && !WARP_OFF.load(Ordering::Relaxed)
}

static WARP_OFF: AtomicBool = AtomicBool::new(false);

/// Turns the warp-per-row attention softmax off (`false`) or back on, process-wide (the
/// environment's `QLORA_ATTN_SOFTMAX_WARP=0` still wins): tests compare both kernels.
pub fn set_attn_softmax_warp(on: bool) {
    WARP_OFF.store(!on, Ordering::Relaxed)
}

/// Elements per lane of the warp kernel for rows of `len` keys (`attn_softmax*_warp{E}_*`),
/// `None` for the block kernels (longer rows, or the warp kernels turned off).
fn warp_elems(len: usize) -> Option<usize> {
    if !attn_softmax_warp() {
        return None;
    }
    [4, 8, 16, 32].into_iter().find(|e| len <= 32 * e)
}

/// `softmax(scale · s)` over each row's kept keys, 0 elsewhere (`bwd` = `None`), or the scores'
/// gradient `scale · p · (dp − Σ p·dp)` from the probabilities `p` (`x`) and their gradient
/// (`bwd`). Contiguous, f32/bf16/f16, the result in the same dtype.
pub fn attn_softmax(x: (&CudaStorage, &Layout), bwd: Option<(&CudaStorage, &Layout)>, m: AttnMask) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(x: (&CudaStorage, &Layout), bwd: Option<(&CudaStorage, &Layout)>, m: AttnMask) -> Result<CudaStorage> {
        let dev = x.0.device().clone();
        let (x1, x2) = offsets(x.1, "attention scores")?;
        let len = *x.1.dims().last().unwrap_or(&1);
        if len == 0 || m.t == 0 || (x2 - x1) % (len * m.t as usize) != 0 {
            candle_core::bail!("attention softmax: {:?} do not hold rows of {} queries", x.1.dims(), m.t)
        }
        let rows = (x2 - x1) / len;
        let xs = x.0.as_cuda_slice::<T>()?.slice(x1..x2);
        let gs = match bwd {
            Some((gs, gl)) => {
                let (g1, g2) = offsets(gl, "attention probabilities' gradient")?;
                if g2 - g1 != x2 - x1 {
                    candle_core::bail!("attention softmax backward: probabilities and gradient sizes differ")
                }
                Some(gs.as_cuda_slice::<T>()?.slice(g1..g2))
            }
            None => None,
        };
        let per_lane = warp_elems(len);
        let bwd_tag = if bwd.is_some() { "_bwd" } else { "" };
        let name = match per_lane {
            Some(e) => format!("attn_softmax{bwd_tag}_warp{e}_{}", suffix(x.0.dtype())?),
            None => format!("attn_softmax{bwd_tag}_{}", suffix(x.0.dtype())?),
        };
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(x2 - x1)? };
        let (len32, rows64) = (len as u32, rows as u64);
        let mut b = func.builder();
        b.arg(&xs);
        if let Some(gs) = &gs {
            b.arg(gs);
        }
        b.arg(&mut out);
        if per_lane.is_some() {
            b.arg(&rows64);
        }
        b.arg(&m.t);
        b.arg(&len32);
        b.arg(&m.past);
        b.arg(&m.window);
        b.arg(&m.scale);
        let cfg = match per_lane {
            Some(_) => {
                LaunchConfig { grid_dim: (rows.div_ceil(WARP_ROWS) as u32, 1, 1), block_dim: (32 * WARP_ROWS as u32, 1, 1), shared_mem_bytes: 0 }
            }
            None => softmax_cfg(rows, len),
        };
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
    match x.0.dtype() {
        DType::F32 => go::<f32>(x, bwd, m),
        DType::BF16 => go::<half::bf16>(x, bwd, m),
        DType::F16 => go::<half::f16>(x, bwd, m),
        other => candle_core::bail!("attention softmax takes f32, bf16 or f16, got {other:?}"),
    }
}

/// Shape of a rotary launch: `x` `[batch, t, heads, hd]` rotated on its first `rot` dims.
#[derive(Debug, Clone, Copy)]
pub struct RopeDims {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub hd: usize,
    pub rot: usize,
}

/// Rotary embedding with the transpose to heads folded in: `x` `[B, T, H, hd]` to `[B, H, T,
/// hd]` (`bwd` false), or the gradient back, `[B, H, T, hd]` to `[B, T, H, hd]` (`bwd` true).
/// `cos`/`sin` f32 `[T, rot]`; everything contiguous.
pub fn rope(x: (&CudaStorage, &Layout), cos: (&CudaStorage, &Layout), sin: (&CudaStorage, &Layout), d: RopeDims, bwd: bool) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(
        x: (&CudaStorage, &Layout),
        cos: (&CudaStorage, &Layout),
        sin: (&CudaStorage, &Layout),
        d: RopeDims,
        bwd: bool,
    ) -> Result<CudaStorage> {
        let dev = x.0.device().clone();
        let (x1, x2) = offsets(x.1, "rope input")?;
        let (c1, c2) = offsets(cos.1, "rope cos table")?;
        let (s1, s2) = offsets(sin.1, "rope sin table")?;
        let n = d.batch * d.t * d.heads * d.hd;
        if x2 - x1 != n || c2 - c1 != d.t * d.rot || s2 - s1 != d.t * d.rot || d.rot > d.hd || !d.rot.is_multiple_of(2) {
            candle_core::bail!("rope: {d:?} does not match the input ({}) or the tables ({}, {})", x2 - x1, c2 - c1, s2 - s1)
        }
        let xs = x.0.as_cuda_slice::<T>()?.slice(x1..x2);
        let cs = cos.0.as_cuda_slice::<f32>()?.slice(c1..c2);
        let ss = sin.0.as_cuda_slice::<f32>()?.slice(s1..s2);
        let name = format!("rope_{}_{}", if bwd { "bwd" } else { "fwd" }, suffix(x.0.dtype())?);
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let (t, heads, hd, rot, n64) = (d.t as u32, d.heads as u32, d.hd as u32, d.rot as u32, n as u64);
        let blocks = (n.div_ceil(256) as u32).clamp(1, 65535 * 16);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = func.builder();
        b.arg(&xs);
        b.arg(&cs);
        b.arg(&ss);
        b.arg(&mut out);
        b.arg(&t);
        b.arg(&heads);
        b.arg(&hd);
        b.arg(&rot);
        b.arg(&n64);
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
    match x.0.dtype() {
        DType::F32 => go::<f32>(x, cos, sin, d, bwd),
        DType::BF16 => go::<half::bf16>(x, cos, sin, d, bwd),
        DType::F16 => go::<half::f16>(x, cos, sin, d, bwd),
        other => candle_core::bail!("rope takes f32, bf16 or f16, got {other:?}"),
    }
}

/// AdamW's update constants, rounded to f32 as candle's affine rounds its f64 scalars (see
/// `adamw_*` in `kernels/train.cu`).
#[derive(Debug, Clone, Copy)]
pub struct AdamWUpdate {
    pub inv_bc2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub decay: f32,
    pub weight_decay: bool,
}

fn elementwise_cfg(n: usize) -> LaunchConfig {
    let blocks = (n.div_ceil(256) as u32).clamp(1, 65535);
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn f32_mut<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<CudaViewMut<'a, f32>> {
    let (a, b) = offsets(l, what)?;
    Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b))
}

fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let (a, b) = offsets(l, what)?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// In place, a moment `x` (f32) from the gradient `g` (f32, same size): `x·beta + g·c`, or
/// `x·beta + g²·c` with `square`.
pub fn adamw_moment(x: (&mut CudaStorage, &Layout), g: (&CudaStorage, &Layout), beta: f32, c: f32, square: bool) -> Result<()> {
    let dev = x.0.device().clone();
    let gs = f32_view(g.0, g.1, "AdamW gradient")?;
    let mut xs = f32_mut(x.0, x.1, "AdamW moment")?;
    let n = gs.len();
    if xs.len() != n {
        candle_core::bail!("AdamW: a moment of {} floats for a gradient of {n}", xs.len())
    }
    let func = dev.get_or_load_custom_func("adamw_moment_f32", MODULE, PTX)?;
    let (n64, sq) = (n as u64, square as u32);
    let mut b = func.builder();
    b.arg(&mut xs);
    b.arg(&gs);
    b.arg(&n64);
    b.arg(&beta);
    b.arg(&c);
    b.arg(&sq);
    unsafe { b.launch(elementwise_cfg(n)) }.w()?;
    Ok(())
}

/// In place, the parameter `w` (f32) from the updated moments `m`, `v` (f32, same size).
pub fn adamw_update(w: (&mut CudaStorage, &Layout), m: (&CudaStorage, &Layout), v: (&CudaStorage, &Layout), c: &AdamWUpdate) -> Result<()> {
    let dev = w.0.device().clone();
    let ms = f32_view(m.0, m.1, "AdamW first moment")?;
    let vs = f32_view(v.0, v.1, "AdamW second moment")?;
    let mut ws = f32_mut(w.0, w.1, "AdamW parameter")?;
    let n = ws.len();
    if ms.len() != n || vs.len() != n {
        candle_core::bail!("AdamW: moments of {} and {} floats for a parameter of {n}", ms.len(), vs.len())
    }
    let func = dev.get_or_load_custom_func("adamw_update_f32", MODULE, PTX)?;
    let (n64, wd) = (n as u64, c.weight_decay as u32);
    let mut b = func.builder();
    b.arg(&mut ws);
    b.arg(&ms);
    b.arg(&vs);
    b.arg(&n64);
    b.arg(&c.inv_bc2);
    b.arg(&c.eps);
    b.arg(&c.step_size);
    b.arg(&c.decay);
    b.arg(&wd);
    unsafe { b.launch(elementwise_cfg(n)) }.w()?;
    Ok(())
}

/// SwiGLU `silu(g) · u` (`dy` = `None`), or its input gradients `[dg; du]` (`2n` elements) from
/// the output gradient `dy`. `g`, `u`, `dy` contiguous, same size and dtype (f32/bf16/f16).
pub fn swiglu(g: (&CudaStorage, &Layout), u: (&CudaStorage, &Layout), dy: Option<(&CudaStorage, &Layout)>) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(
        g: (&CudaStorage, &Layout),
        u: (&CudaStorage, &Layout),
        dy: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage> {
        let dev = g.0.device().clone();
        let (g1, g2) = offsets(g.1, "SwiGLU gate")?;
        let (u1, u2) = offsets(u.1, "SwiGLU up")?;
        let n = g2 - g1;
        if u2 - u1 != n {
            candle_core::bail!("SwiGLU: gate of {n} and up of {} elements", u2 - u1)
        }
        let gs = g.0.as_cuda_slice::<T>()?.slice(g1..g2);
        let us = u.0.as_cuda_slice::<T>()?.slice(u1..u2);
        let ds = match dy {
            Some((s, l)) => {
                let (d1, d2) = offsets(l, "SwiGLU output gradient")?;
                if d2 - d1 != n {
                    candle_core::bail!("SwiGLU backward: gradient of {} elements for {n}", d2 - d1)
                }
                Some(s.as_cuda_slice::<T>()?.slice(d1..d2))
            }
            None => None,
        };
        let name = format!("swiglu_{}_{}", if dy.is_some() { "bwd" } else { "fwd" }, suffix(g.0.dtype())?);
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(if dy.is_some() { 2 * n } else { n })? };
        let n64 = n as u64;
        let mut b = func.builder();
        b.arg(&gs);
        b.arg(&us);
        if let Some(ds) = &ds {
            b.arg(ds);
        }
        b.arg(&mut out);
        b.arg(&n64);
        unsafe { b.launch(elementwise_cfg(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
    match g.0.dtype() {
        DType::F32 => go::<f32>(g, u, dy),
        DType::BF16 => go::<half::bf16>(g, u, dy),
        DType::F16 => go::<half::f16>(g, u, dy),
        other => candle_core::bail!("SwiGLU takes f32, bf16 or f16, got {other:?}"),
    }
}
