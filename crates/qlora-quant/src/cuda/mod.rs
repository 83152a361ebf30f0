//! CUDA kernels for NF4 weights (issue 7), each with a CPU twin in the same custom op.
//!
//! * [`dequantize`]: NF4 (plain or double-quantized absmax) to a dense f32/f16/bf16 tensor,
//!   bit-identical to [`Nf4Tensor::dequantize`] on the CPU (same f32 products, no FMA
//!   contraction, round-to-nearest-even casts); bf16/f16 through the 4-groups-per-thread
//!   kernel, as the prefill product and the training backward dequantize (`dequant_on` is
//!   the one launcher of all of them).
//! * [`gemv`]: the fused decode product `y = x Wᵀ` for 1 to 8 rows of `x`, reading the packed
//!   4-bit weights once (a block of warps splits k over a few rows, coalesced loads, block
//!   scales in shared memory, f32 accumulation; the one-weight case of [`fused::gemv_multi`]).
//!   Its twin computes the same sum in f32 on the CPU from unrounded `code * absmax` weights.
//! * [`linear_fused`]: what `nf4_linear` calls on a CUDA device; `Some` when the fused GEMV
//!   applies, `None` to fall back to dequantize (this kernel) + candle's matmul (or, with slabs
//!   turned on, [`prefill::linear_chunked`]).
//!
//! The kernels live in `kernels/nf4.cu`, compiled to PTX by `build.rs` and embedded here.

use crate::nf4::{Absmax, Nf4Tensor};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Fused NF4 projections for decode (q/k/v in one launch, gate/up with the activation).
pub mod fused;
/// The one `gemm_ex` call (f32 scalars and accumulation) of `lora_gemm` and `train_gemm`.
mod gemm;
/// Inference-only kernels: RMSNorm + residual, KV-cache append, decode attention, prefill softmax.
pub mod infer;
/// `alpha · op(a) · op(b)` in one cuBLAS call, 16-bit operands into 16-bit or f32 (LoRA training).
pub mod lora_gemm;
/// Tensors parked in pinned host memory on a second stream (checkpointed layer inputs).
pub mod offload;
/// Multi-tensor AdamW and gradient norm: one launch over every LoRA tensor (`kernels/optim.cu`).
pub mod optim;
pub(crate) mod pdl;
/// The NF4 product for many rows (prefill, training's forward): dequantize slabs + cuBLAS.
pub mod prefill;
/// Training kernels (LoRA dropout, fused cross-entropy), launched by qlora-train.
pub mod train;
/// `y += a · bᵀ` in place through cuBLAS (a LoRA update accumulated into the base product).
pub mod train_gemm;
mod twin;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/nf4.ptx"));
const MODULE: &str = "qlora_quant_nf4";
/// The most rows of `x` the fused GEMV takes (decode batch); more go through dequantize + cuBLAS.
pub const GEMV_MAX_ROWS: usize = 8;
const TABLE_LEN: usize = 16 + 256;
/// The most input features the fused GEMV takes: a block keeps the scales of its (up to 8)
/// weight rows in shared memory, 8 * (k / 32) floats within the 48 KiB a launch gets unasked.
pub const GEMV_MAX_K: usize = 49_152;

/// The NF4 code and the nested 8-bit code on the device, uploaded once per (device, tables).
fn tables(dev: &CudaDevice, w: &Nf4Tensor) -> Result<Arc<CudaSlice<f32>>> {
    type Cache = HashMap<(DeviceId, Vec<u32>), Arc<CudaSlice<f32>>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let mut host = vec![0f32; TABLE_LEN];
    host[..16].copy_from_slice(w.code());
    if let Absmax::Double(d) = w.absmax() {
        host[16..].copy_from_slice(&d.nested_code[..]);
    }
    let key = (dev.id(), host.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    let mut cache = CACHE.get_or_init(Default::default).lock().map_err(|_| candle_core::Error::Msg("nf4 cuda: table cache poisoned".into()))?;
    if let Some(t) = cache.get(&key) {
        return Ok(t.clone());
    }
    let t = Arc::new(dev.clone_htod(&host)?);
    cache.insert(key, t.clone());
    Ok(t)
}

fn view<'a, T: CudaDType>(st: &'a Storage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(c) = st else { candle_core::bail!("nf4 cuda: the {what} is not on a CUDA device") };
    let Some((o1, o2)) = l.contiguous_offsets() else { candle_core::bail!("nf4 cuda: the {what} is not contiguous") };
    Ok(c.as_cuda_slice::<T>()?.slice(o1..o2))
}

/// The block scales as kernel arguments `(absmax, q, nested)`; unused pointers repeat a valid one.
enum Scales<'a> {
    Plain(CudaView<'a, f32>),
    Double { q: CudaView<'a, u8>, nested: CudaView<'a, f32> },
}

fn push_scales<'a, 'b: 'a, 'c: 'b>(b: &mut LaunchArgs<'a>, s: &'b Scales<'c>) {
    match s {
        Scales::Plain(a) => {
            b.arg(a);
            b.arg(a);
            b.arg(a);
        }
        Scales::Double { q, nested } => {
            b.arg(nested);
            b.arg(q);
            b.arg(nested);
        }
    }
}

/// Scalar kernel arguments shared by both kernels.
struct ScaleParams {
    offset: f32,
    bs_log2: u32,
    nbs_log2: u32,
    dq: i32,
}

fn scale_params(w: &Nf4Tensor) -> ScaleParams {
    let bs_log2 = w.blocksize().trailing_zeros();
    match w.absmax() {
        Absmax::Plain(_) => ScaleParams { offset: 0.0, bs_log2, nbs_log2: 0, dq: 0 },
        Absmax::Double(d) => ScaleParams { offset: d.offset, bs_log2, nbs_log2: d.nested_blocksize.trailing_zeros(), dq: 1 },
    }
}

/// Runs `f` with the weight's scales viewed on the device (read locks held meanwhile).
fn with_scales<R>(w: &Nf4Tensor, f: impl FnOnce(&Scales<'_>) -> Result<R>) -> Result<R> {
    match w.absmax() {
        Absmax::Plain(a) => {
            let (st, l) = a.storage_and_layout();
            f(&Scales::Plain(view::<f32>(&st, l, "absmax")?))
        }
        Absmax::Double(d) => {
            let (qs, ql) = d.q.storage_and_layout();
            let (ns, nl) = d.nested_absmax.storage_and_layout();
            f(&Scales::Double { q: view::<u8>(&qs, ql, "quantized absmax")?, nested: view::<f32>(&ns, nl, "nested absmax")? })
        }
    }
}

fn dequant_launch<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    kernel: DequantKernel,
    w: &Nf4Tensor,
    packed: &CudaView<'_, u8>,
    packed_start: usize,
) -> Result<CudaSlice<T>> {
    let n = w.shape().elem_count();
    let mut out = unsafe { dev.alloc::<T>(n)? };
    dequant_into(dev, kernel, w, packed, packed_start, (0, n), &mut out)?;
    Ok(out)
}

/// A dequantize kernel of `kernels/nf4.cu` and the groups of 8 elements each of its threads
/// covers: `nf4_dequant_*` 1, `nf4_dequant_wide_*` 4 (same bits, four loads in flight per
/// thread; 2.1-2.2 TB/s against ~2.0 on an H100 for Mistral-7B's gate_proj).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DequantKernel {
    pub name: &'static str,
    pub groups_per_thread: u32,
}

impl DequantKernel {
    /// The fastest kernel for `dtype`: the wide one for bf16/f16 (f32 has only the plain one).
    pub(crate) fn fastest(dtype: DType) -> Result<Self> {
        let (name, groups_per_thread) = match dtype {
            DType::F32 => ("nf4_dequant_f32", 1),
            DType::BF16 => ("nf4_dequant_wide_bf16", 4),
            DType::F16 => ("nf4_dequant_wide_f16", 4),
            other => candle_core::bail!("cannot dequantize NF4 to {other:?}: use f32, f16 or bf16"),
        };
        Ok(Self { name, groups_per_thread })
    }

    /// The one-group-per-thread kernel for `dtype` (the slab experiment of `prefill.rs`).
    pub(crate) fn plain(name: &'static str) -> Self {
        Self { name, groups_per_thread: 1 }
    }
}

/// Elements `range.0 .. range.0 + range.1` of `w` (flattened) into `out[..range.1]` on
/// candle's stream; `packed` is the whole packed weight, starting at element `packed_start`
/// of its storage.
pub(crate) fn dequant_into<T: DeviceRepr>(
    dev: &CudaDevice,
    kernel: DequantKernel,
    w: &Nf4Tensor,
    packed: &CudaView<'_, u8>,
    packed_start: usize,
    range: (usize, usize),
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let func = dev.get_or_load_custom_func(kernel.name, MODULE, PTX)?.into_cuda_function();
    let tabs = tables(dev, w)?;
    dequant_on(&dev.cuda_stream(), (&func, kernel.groups_per_thread), w, (packed, packed_start), &tabs, range, out)
}

/// [`dequant_into`] on `stream` with a loaded kernel `func` covering `groups_per_thread`
/// groups of 8 elements per thread (blocks of 256 threads); the one launcher of every
/// dequantize kernel (decode's weights, the prefill product, the training backward's slabs).
pub(crate) fn dequant_on<T: DeviceRepr>(
    stream: &CudaStream,
    (func, groups_per_thread): (&CudaFunction, u32),
    w: &Nf4Tensor,
    (packed, packed_start): (&CudaView<'_, u8>, usize),
    tabs: &CudaSlice<f32>,
    (base, count): (usize, usize),
    out: &mut CudaSlice<T>,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let p = scale_params(w);
    let vec = i32::from(packed_start.is_multiple_of(4) && base.is_multiple_of(8));
    let (n64, base64) = (count as u64, base as u64);
    let groups = count.div_ceil(8) as u32;
    let per_block = groups_per_thread.max(1) * 256;
    let cfg = LaunchConfig { grid_dim: (groups.div_ceil(per_block), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    with_scales(w, |scales| {
        let mut b = stream.launch_builder(func);
        b.arg(packed);
        push_scales(&mut b, scales);
        b.arg(tabs);
        b.arg(&p.offset);
        b.arg(&p.bs_log2);
        b.arg(&p.nbs_log2);
        b.arg(&p.dq);
        b.arg(&vec);
        b.arg(&mut *out);
        b.arg(&n64);
        b.arg(&base64);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    })
}

/// Dequantizes `w` (on the CPU or a CUDA device) to `dtype` through [`Nf4Dequant`].
pub fn dequantize(w: &Nf4Tensor, dtype: DType) -> Result<Tensor> {
    w.packed().apply_op1_no_bwd(&Nf4Dequant { w: w.clone(), dtype })
}

/// Custom op on the packed bytes: the dense weight in `dtype` (f32, f16 or bf16).
pub struct Nf4Dequant {
    pub w: Nf4Tensor,
    pub dtype: DType,
}

impl CustomOp1 for Nf4Dequant {
    fn name(&self) -> &'static str {
        "nf4-dequantize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        twin::dequantize(&self.w, s, l, self.dtype)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((o1, o2)) = l.contiguous_offsets() else { candle_core::bail!("nf4 cuda: packed weight is not contiguous") };
        let dev = s.device().clone();
        let packed = s.as_cuda_slice::<u8>()?.slice(o1..o2);
        let kernel = DequantKernel::fastest(self.dtype)?;
        let out = match self.dtype {
            DType::F32 => CudaStorage::wrap_cuda_slice(dequant_launch::<f32>(&dev, kernel, &self.w, &packed, o1)?, dev),
            DType::BF16 => CudaStorage::wrap_cuda_slice(dequant_launch::<half::bf16>(&dev, kernel, &self.w, &packed, o1)?, dev),
            _ => CudaStorage::wrap_cuda_slice(dequant_launch::<half::f16>(&dev, kernel, &self.w, &packed, o1)?, dev),
        };
        Ok((out, self.w.shape().clone()))
    }
}

/// Why the fused GEMV does not apply to `x` `[.., k]` (m rows) and `w`, or `None` when it does.
pub fn gemv_unsupported(m: usize, k: usize, w: &Nf4Tensor) -> Option<String> {
    let dims = w.shape().dims();
    if dims.len() != 2 || dims[1] != k {
        return Some(format!("weight shape {dims:?} does not take {k} input features"));
    }
    if m == 0 || m > GEMV_MAX_ROWS {
        return Some(format!("{m} rows of x (the fused GEMV takes 1 to {GEMV_MAX_ROWS})"));
    }
    if !k.is_multiple_of(32) || !k.is_multiple_of(w.blocksize()) {
        return Some(format!("{k} input features are not a multiple of 32 and of the blocksize {}", w.blocksize()));
    }
    if k > GEMV_MAX_K {
        return Some(format!("{k} input features (the fused GEMV's block scales fit shared memory up to {GEMV_MAX_K})"));
    }
    None
}

/// `x Wᵀ` through the fused GEMV (CUDA) or its CPU twin; errors when [`gemv_unsupported`].
pub fn gemv(x: &Tensor, w: &Nf4Tensor) -> Result<Tensor> {
    let k = x.dims().last().copied().unwrap_or(0);
    let m = x.elem_count() / k.max(1);
    if let Some(why) = gemv_unsupported(m, k, w) {
        candle_core::bail!("nf4 gemv: {why}")
    }
    x.apply_op1_no_bwd(&Nf4Gemv { w: w.clone() })
}

/// Custom op on `x` `[.., k]`: `x Wᵀ` `[.., n]` for at most [`GEMV_MAX_ROWS`] rows.
pub struct Nf4Gemv {
    pub w: Nf4Tensor,
}

impl CustomOp1 for Nf4Gemv {
    fn name(&self) -> &'static str {
        "nf4-gemv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        twin::gemv(&self.w, s, l)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match linear_fused(&self.w, s, l)? {
            Some(r) => Ok(r),
            None => candle_core::bail!("nf4 gemv: input layout not supported (strided or misaligned x, or packed weight)"),
        }
    }
}

/// The fused GEMV for `nf4_linear` on CUDA, or `None` when it does not apply (more than
/// [`GEMV_MAX_ROWS`] rows, odd sizes, strided or misaligned data).
pub fn linear_fused(w: &Nf4Tensor, x: &CudaStorage, xl: &Layout) -> Result<Option<(CudaStorage, Shape)>> {
    let (n, k) = match w.shape().dims() {
        [n, k] => (*n, *k),
        _ => return Ok(None),
    };
    let m = xl.shape().elem_count() / k.max(1);
    let projs = [fused::Nf4Proj { w: w.clone(), bias: None }];
    if fused::fused_unsupported(m, k, x.dtype(), &projs).is_some() {
        return Ok(None);
    }
    let Some((o1, _)) = xl.contiguous_offsets() else { return Ok(None) };
    if !(o1 * x.dtype().size_in_bytes()).is_multiple_of(16) {
        return Ok(None);
    }
    let y = match x.dtype() {
        DType::F32 | DType::BF16 | DType::F16 => fused::multi_launch(&projs, x, xl)?,
        _ => return Ok(None),
    };
    let mut out_dims = xl.dims().to_vec();
    *out_dims.last_mut().expect("rank >= 1") = n;
    Ok(Some((y, Shape::from(out_dims))))
}
