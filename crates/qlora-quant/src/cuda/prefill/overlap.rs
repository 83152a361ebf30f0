//! The NF4 product for many rows on CUDA with the dequantize done by this file's launch: the
//! whole weight by the 4-groups-per-thread kernel (`nf4_dequant_wide_*`) then one cuBLAS
//! product (**the default**, [`DEFAULT_WIDE_DEQUANT`]), or slabs with the dequantize of slab
//! i+1 on a second stream while cuBLAS multiplies slab i on candle's stream (off by default:
//! [`set_overlap_slabs`]).
//!
//! Measured on an H100 (`--profile`, Mistral-7B shapes, 512 rows of bf16,
//! `bench/gpu/results/h100-2026-11-27-s3-prefill-ours.jsonl`): the wide dequantize 66.3 µs for
//! gate_proj (2.2 TB/s of 2.5 bytes per weight) against 71.0 µs for `nf4_dequant_*`, down_proj
//! 67.3 vs 71.6; the whole 512-token forward 23.23 ms with it against 23.84 ms. The overlap lost
//! at every slab count (gate 158-218 µs vs 155 whole; the forward 26.9 / 28.5 / 30.5 / 56.4 ms
//! with 2 / 3 / 4 / 8 slabs): cuBLAS's bf16 GEMM fills the SMs, so the second stream's
//! dequantize waits rather than running beside it, and smaller products cost more.
//!
//! Ordering on two streams (cudarc's per-allocation events are off in the engine, so it is done
//! here): the second stream first waits for candle's stream (the scratch was just allocated
//! there, from memory whose earlier users ran on that stream); slab i's dequantize waits for the
//! product of slab i-2 (same buffer); slab i's product waits for its dequantize. The scratch is
//! freed on candle's stream after the last product, which waited for the last dequantize.

use super::super::{MODULE, PTX, dequant_on, tables};
use super::{gemm_slab, kernel_for};
use crate::nf4::Nf4Tensor;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys;
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, sys as dsys};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Default number of slabs for the overlapped product: 0 = off (measured slower, module docs).
pub const DEFAULT_OVERLAP_SLABS: usize = 0;
static OVERLAP_SLABS: AtomicUsize = AtomicUsize::new(DEFAULT_OVERLAP_SLABS);

/// Slabs per weight `nf4_linear` uses on CUDA for more than 8 rows (0 = not overlapped).
pub fn overlap_slabs() -> usize {
    OVERLAP_SLABS.load(Ordering::Relaxed)
}

/// Sets the slabs per weight for every later `nf4_linear` on CUDA (0 turns the overlap off);
/// process-wide, for measuring.
pub fn set_overlap_slabs(slabs: usize) {
    OVERLAP_SLABS.store(slabs, Ordering::Relaxed)
}

/// Default for the 4-groups-per-thread dequantize in the prefill product (`nf4_dequant_wide_*`):
/// on, measured faster (module docs).
pub const DEFAULT_WIDE_DEQUANT: bool = true;
static WIDE: AtomicBool = AtomicBool::new(DEFAULT_WIDE_DEQUANT);

/// Whether the prefill product dequantizes with `nf4_dequant_wide_*` (same bits as
/// `nf4_dequant_*`, more loads in flight per thread).
pub fn wide_dequant() -> bool {
    WIDE.load(Ordering::Relaxed)
}

/// Turns the wide dequantize on or off for every later prefill product; process-wide.
pub fn set_wide_dequant(on: bool) {
    WIDE.store(on, Ordering::Relaxed)
}

/// What `nf4_linear` on CUDA does with more than 8 rows of x under the current settings:
/// overlapped slabs ([`overlap_slabs`] ≥ 2), the whole weight through the wide dequantize and
/// one product ([`wide_dequant`]), or `None` (the caller's dequantize + matmul).
pub fn linear_prefill(w: &Nf4Tensor, x: &CudaStorage, xl: &Layout) -> Result<Option<(CudaStorage, Shape)>> {
    match overlap_slabs() {
        s if s >= 2 => linear_overlapped(w, x, xl, s),
        _ if wide_dequant() => linear_slabbed(w, x, xl, 1),
        _ => Ok(None),
    }
}

/// The second stream of `dev`, made once.
fn side_stream(dev: &CudaDevice) -> Result<Arc<CudaStream>> {
    type Streams = HashMap<DeviceId, Arc<CudaStream>>;
    static STREAMS: OnceLock<Mutex<Streams>> = OnceLock::new();
    let mut m = STREAMS.get_or_init(Default::default).lock().map_err(|_| candle_core::Error::Msg("nf4 overlap: stream table poisoned".into()))?;
    if let Some(s) = m.get(&dev.id()) {
        return Ok(s.clone());
    }
    let s = dev.cuda_stream().context().new_stream().w()?;
    m.insert(dev.id(), s.clone());
    Ok(s)
}

fn event(stream: &CudaStream) -> Result<CudaEvent> {
    stream.record_event(Some(dsys::CUevent_flags::CU_EVENT_DISABLE_TIMING)).w()
}

/// `x Wᵀ` with the dequantize overlapped in `slabs` slabs, or `None` when it does not apply
/// (f32, strided x, weight off the device, fewer than 2 slabs).
pub fn linear_overlapped(w: &Nf4Tensor, x: &CudaStorage, xl: &Layout, slabs: usize) -> Result<Option<(CudaStorage, Shape)>> {
    if slabs < 2 {
        return Ok(None);
    }
    linear_slabbed(w, x, xl, slabs)
}

/// `x Wᵀ` in `slabs` slabs: one slab = the whole weight dequantized on candle's stream, then
/// one product; more = overlapped on the second stream.
fn linear_slabbed(w: &Nf4Tensor, x: &CudaStorage, xl: &Layout, slabs: usize) -> Result<Option<(CudaStorage, Shape)>> {
    let (n, k) = match w.shape().dims() {
        [n, k] => (*n, *k),
        _ => return Ok(None),
    };
    if slabs == 0 || !matches!(x.dtype(), DType::BF16 | DType::F16) || k == 0 || n < 128 {
        return Ok(None);
    }
    let m = xl.shape().elem_count() / k;
    let Some((o1, _)) = xl.contiguous_offsets() else { return Ok(None) };
    let (ps, pl) = w.packed().storage_and_layout();
    let Some((p1, p2)) = pl.contiguous_offsets() else { return Ok(None) };
    let Storage::Cuda(pc) = &*ps else { return Ok(None) };
    let packed = pc.as_cuda_slice::<u8>()?.slice(p1..p2);
    let dev = x.device().clone();
    let rows = n.div_ceil(slabs).next_multiple_of(64).min(n);
    let y = match x.dtype() {
        DType::BF16 => {
            let xs = x.as_cuda_slice::<half::bf16>()?.slice(o1..o1 + m * k);
            CudaStorage::wrap_cuda_slice(run::<half::bf16>(&dev, w, (&packed, p1), &xs, (m, n, k), rows, sys::cudaDataType_t::CUDA_R_16BF)?, dev)
        }
        _ => {
            let xs = x.as_cuda_slice::<half::f16>()?.slice(o1..o1 + m * k);
            CudaStorage::wrap_cuda_slice(run::<half::f16>(&dev, w, (&packed, p1), &xs, (m, n, k), rows, sys::cudaDataType_t::CUDA_R_16F)?, dev)
        }
    };
    let mut dims = xl.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Ok(Some((y, Shape::from(dims))))
}

fn run<T: CudaDType + DeviceRepr>(
    dev: &CudaDevice,
    w: &Nf4Tensor,
    (packed, packed_start): (&CudaView<'_, u8>, usize),
    xv: &CudaView<'_, T>,
    (m, n, k): (usize, usize, usize),
    rows: usize,
    dt: sys::cudaDataType_t,
) -> Result<CudaSlice<T>> {
    let main = dev.cuda_stream();
    let wide = wide_dequant();
    let func = load(dev, dt, wide)?;
    let tabs = tables(dev, w)?;
    let mut y = unsafe { dev.alloc::<T>(m * n)? };
    if rows >= n {
        let mut dense = unsafe { dev.alloc::<T>(n * k)? };
        dequant_on(&main, (&func, per_thread(wide)), w, (packed, packed_start), &tabs, (0, n * k), &mut dense)?;
        gemm_slab(dev, &dense, xv, &mut y, (0, n), (m, n, k), dt)?;
        return Ok(y);
    }
    let side = side_stream(dev)?;
    let mut bufs = [unsafe { dev.alloc::<T>(rows * k)? }, unsafe { dev.alloc::<T>(rows * k)? }];
    side.wait(&event(&main)?).w()?;
    let mut freed: [Option<CudaEvent>; 2] = [None, None];
    for (i, r0) in (0..n).step_by(rows).enumerate() {
        let nc = rows.min(n - r0);
        let b = i % 2;
        if let Some(e) = freed[b].take() {
            side.wait(&e).w()?;
        }
        dequant_on(&side, (&func, per_thread(wide)), w, (packed, packed_start), &tabs, (r0 * k, nc * k), &mut bufs[b])?;
        main.wait(&event(&side)?).w()?;
        gemm_slab(dev, &bufs[b], xv, &mut y, (r0, nc), (m, n, k), dt)?;
        freed[b] = Some(event(&main)?);
    }
    Ok(y)
}

/// Groups of 8 elements per thread of the wide (4) or plain (1) dequantize kernel.
fn per_thread(wide: bool) -> u32 {
    if wide { 4 } else { 1 }
}

/// The dequantize kernel for `dt`: the wide one when [`wide_dequant`] is on.
fn load(dev: &CudaDevice, dt: sys::cudaDataType_t, wide: bool) -> Result<CudaFunction> {
    let name = match (wide, dt == sys::cudaDataType_t::CUDA_R_16BF) {
        (true, true) => "nf4_dequant_wide_bf16",
        (true, false) => "nf4_dequant_wide_f16",
        _ => kernel_for(dt),
    };
    Ok(dev.get_or_load_custom_func(name, MODULE, PTX)?.into_cuda_function())
}

/// `x Wᵀ` for `x` on CUDA with the dequantize overlapped in `slabs` slabs (1: the whole weight,
/// then one product, nothing overlapped), with the dequantize kernel [`wide_dequant`] picks
/// (forward only; for tests and measurements: `nf4_linear` takes this path by itself through
/// [`linear_prefill`]).
pub fn nf4_linear_overlapped(x: &Tensor, w: &Nf4Tensor, slabs: usize) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Overlapped { w: w.clone(), slabs })
}

struct Overlapped {
    w: Nf4Tensor,
    slabs: usize,
}

impl candle_core::CustomOp1 for Overlapped {
    fn name(&self) -> &'static str {
        "nf4-linear-overlapped"
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("nf4-linear-overlapped runs on CUDA; on the CPU call nf4_linear")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match linear_slabbed(&self.w, s, l, self.slabs)? {
            Some(r) => Ok(r),
            None => {
                candle_core::bail!("nf4-linear-overlapped: needs bf16/f16 contiguous x, the weight on CUDA, at least 128 rows of W and slabs >= 1")
            }
        }
    }
}

/// `w` dequantized to bf16/f16 on its CUDA device by the kernel [`wide_dequant`] picks, on
/// candle's stream (for tests and measurements of the kernel alone).
pub fn dequantize_prefill(w: &Nf4Tensor, dtype: DType) -> Result<Tensor> {
    w.packed().apply_op1_no_bwd(&Dequant { w: w.clone(), dtype })
}

struct Dequant {
    w: Nf4Tensor,
    dtype: DType,
}

impl candle_core::CustomOp1 for Dequant {
    fn name(&self) -> &'static str {
        "nf4-dequantize-prefill"
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("nf4-dequantize-prefill runs on CUDA; on the CPU call Nf4Tensor::dequantize")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((p1, p2)) = l.contiguous_offsets() else { candle_core::bail!("nf4-dequantize-prefill: the packed weight is not contiguous") };
        let packed = s.as_cuda_slice::<u8>()?.slice(p1..p2);
        let dev = s.device().clone();
        let n = self.w.shape().elem_count();
        let wide = wide_dequant();
        let tabs = tables(&dev, &self.w)?;
        let main = dev.cuda_stream();
        let out = match self.dtype {
            DType::BF16 => {
                let f = load(&dev, sys::cudaDataType_t::CUDA_R_16BF, wide)?;
                let mut o = unsafe { dev.alloc::<half::bf16>(n)? };
                dequant_on(&main, (&f, per_thread(wide)), &self.w, (&packed, p1), &tabs, (0, n), &mut o)?;
                CudaStorage::wrap_cuda_slice(o, dev)
            }
            DType::F16 => {
                let f = load(&dev, sys::cudaDataType_t::CUDA_R_16F, wide)?;
                let mut o = unsafe { dev.alloc::<half::f16>(n)? };
                dequant_on(&main, (&f, per_thread(wide)), &self.w, (&packed, p1), &tabs, (0, n), &mut o)?;
                CudaStorage::wrap_cuda_slice(o, dev)
            }
            other => candle_core::bail!("nf4-dequantize-prefill: bf16 or f16, not {other:?}"),
        };
        Ok((out, self.w.shape().clone()))
    }
}
