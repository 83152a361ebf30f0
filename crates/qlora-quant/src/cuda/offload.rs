//! Device tensors parked in pinned host memory and brought back, on a second CUDA stream so
//! the copies overlap the compute (issue 7: gradient checkpointing's saved layer inputs are
//! the largest thing a checkpointed QLoRA forward keeps on the GPU, `[B, T, hidden]` 16-bit a
//! layer: 16 MiB × 32 layers for Mistral-7B at 4 × 512).
//!
//! [`HostStash`] takes tensors in order (`push`) and gives them back in reverse (`take`),
//! the order of a checkpointed backward:
//!
//! * `push(x)`: the copy stream waits for `x` to be produced on candle's stream, copies it
//!   device → host, and records an event. The stash keeps `x` alive until the next `push`;
//!   only then does candle's stream wait on that event and `x` is released, so its memory
//!   (stream-ordered `cuMemFreeAsync` on candle's stream) is never reused while the copy
//!   still reads it, and candle's stream never waits for a copy that has had a whole layer's
//!   compute to finish. The last tensor pushed stays on the device (the backward starts with it).
//! * `take(i)` returns tensor `i` and starts bringing back `i - 1`: a device buffer is
//!   allocated on candle's stream, the copy stream waits for that allocation and copies host →
//!   device; `take(i - 1)` makes candle's stream wait on the copy's event. So the upload of
//!   layer `i - 1`'s input runs while layer `i` is recomputed.
//!
//! Pinned buffers live in a per-device pool, allocated once and reused by later stashes (the
//! copy stream orders a buffer's next download after its last upload). Nothing here reads the
//! host copies on the CPU: they are only DMA targets.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{CUdeviceptr, CUevent_flags};
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream, DevicePtr, result};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Result, Shape, Storage, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Page-locked host memory from `cuMemHostAlloc` (plain, not write-combined).
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain host memory owned by this value; only DMA reads and writes it.
unsafe impl Send for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Only dropped after the copy stream was synchronised (see `Pool::get`).
        let _ = unsafe { result::free_host(self.ptr as _) };
    }
}

/// The copy stream and the free pinned buffers of one device.
struct Side {
    copy: Arc<CudaStream>,
    free: Vec<Pinned>,
    /// Bytes of pinned memory this device's pool has allocated and still holds.
    pinned: usize,
}

fn sides() -> Result<MutexGuard<'static, HashMap<DeviceId, Side>>> {
    static SIDES: OnceLock<Mutex<HashMap<DeviceId, Side>>> = OnceLock::new();
    SIDES.get_or_init(Default::default).lock().map_err(|_| candle_core::Error::Msg("checkpoint offload: stream table poisoned".into()))
}

fn with_side<R>(dev: &CudaDevice, f: impl FnOnce(&mut Side) -> Result<R>) -> Result<R> {
    let mut m = sides()?;
    let side = match m.entry(dev.id()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let copy = dev.cuda_stream().context().new_stream().w()?;
            e.insert(Side { copy, free: Vec::new(), pinned: 0 })
        }
    };
    f(side)
}

impl Side {
    /// A free buffer of at least `bytes` (the smallest that fits), or a new one. When none fits,
    /// the smaller free ones are released first (after the copy stream has drained), so a pool
    /// whose shapes grow does not keep every size it has seen.
    fn get(&mut self, dev: &CudaDevice, bytes: usize) -> Result<Pinned> {
        let fit = self.free.iter().enumerate().filter(|(_, b)| b.len >= bytes).min_by_key(|(_, b)| b.len).map(|(i, _)| i);
        if let Some(i) = fit {
            return Ok(self.free.swap_remove(i));
        }
        if !self.free.is_empty() {
            self.copy.synchronize().w()?;
            self.pinned -= self.free.iter().map(|b| b.len).sum::<usize>();
            self.free.clear();
        }
        dev.cuda_stream().context().bind_to_thread().w()?;
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }.map_err(|e| {
            candle_core::Error::Msg(format!(
                "checkpoint offload: cannot pin {bytes} bytes of host memory ({e}); \
                 set offload_checkpoints: false (or QLORA_OFFLOAD_CHECKPOINTS=0) to keep the checkpoints on the GPU"
            ))
        })? as *mut u8;
        self.pinned += bytes.max(1);
        Ok(Pinned { ptr, len: bytes.max(1) })
    }
}

/// Pinned host bytes the offload pool of `dev` holds (for benchmarks and the planner).
pub fn pinned_bytes(dev: &CudaDevice) -> Result<usize> {
    Ok(sides()?.get(&dev.id()).map_or(0, |s| s.pinned))
}

fn event(stream: &CudaStream) -> Result<CudaEvent> {
    stream.record_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING)).w()
}

/// The device address of a contiguous tensor's first element.
fn address(t: &Tensor, stream: &CudaStream) -> Result<CUdeviceptr> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*st else { candle_core::bail!("checkpoint offload: the tensor is not on a CUDA device") };
    if !l.is_contiguous() {
        candle_core::bail!("checkpoint offload: the tensor is not contiguous");
    }
    let base = match &c.slice {
        CudaStorageSlice::U8(s) => s.device_ptr(stream).0,
        CudaStorageSlice::U32(s) => s.device_ptr(stream).0,
        CudaStorageSlice::I64(s) => s.device_ptr(stream).0,
        CudaStorageSlice::BF16(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F32(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F64(s) => s.device_ptr(stream).0,
        _ => candle_core::bail!("checkpoint offload: {:?} tensors are not supported", c.dtype()),
    };
    Ok(base + (l.start_offset() * t.dtype().size_in_bytes()) as CUdeviceptr)
}

/// A fresh contiguous device tensor of `shape` and `dtype`, contents unset until written.
fn alloc(dev: &CudaDevice, dtype: DType, shape: &Shape) -> Result<Tensor> {
    let n = shape.elem_count();
    // SAFETY: every byte is written by the upload before candle's stream may read it.
    let slice = unsafe {
        match dtype {
            DType::U8 => CudaStorageSlice::U8(dev.alloc(n)?),
            DType::U32 => CudaStorageSlice::U32(dev.alloc(n)?),
            DType::I64 => CudaStorageSlice::I64(dev.alloc(n)?),
            DType::BF16 => CudaStorageSlice::BF16(dev.alloc(n)?),
            DType::F16 => CudaStorageSlice::F16(dev.alloc(n)?),
            DType::F32 => CudaStorageSlice::F32(dev.alloc(n)?),
            DType::F64 => CudaStorageSlice::F64(dev.alloc(n)?),
            other => candle_core::bail!("checkpoint offload: {other:?} tensors are not supported"),
        }
    };
    let st = CudaStorage { slice, device: dev.clone() };
    Ok(Tensor::from_storage(Storage::Cuda(st), shape.clone(), BackpropOp::none(), false))
}

enum Slot {
    /// Kept on the device (the last one pushed).
    Device(Tensor),
    /// Downloaded (or being downloaded) to `buf`.
    Host {
        buf: Pinned,
        dtype: DType,
        shape: Shape,
    },
    /// Being uploaded into `t`; `ready` fires when done.
    Uploading {
        t: Tensor,
        ready: CudaEvent,
        buf: Pinned,
    },
    Taken,
}

/// Tensors parked in pinned host memory between a forward and a backward (see the module docs).
pub struct HostStash {
    dev: CudaDevice,
    copy: Arc<CudaStream>,
    slots: Vec<Slot>,
    /// How many tensors will be pushed: the last stays on the device.
    expected: usize,
    /// The last tensor downloaded and its copy's event: released on the next push.
    in_flight: Option<(Tensor, CudaEvent)>,
}

impl HostStash {
    /// A stash for `expected` tensors on `dev` (a CUDA device).
    pub fn new(dev: &Device, expected: usize) -> Result<Self> {
        let Device::Cuda(dev) = dev else { candle_core::bail!("checkpoint offload: needs a CUDA device") };
        let copy = with_side(dev, |s| Ok(s.copy.clone()))?;
        Ok(Self { dev: dev.clone(), copy, slots: Vec::with_capacity(expected), expected, in_flight: None })
    }

    /// Number of tensors pushed so far.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Lets candle's stream go on only once the last download has read its tensor, and drops
    /// the stash's hold on that tensor.
    fn release_in_flight(&mut self) -> Result<()> {
        if let Some((t, copied)) = self.in_flight.take() {
            self.dev.cuda_stream().wait(&copied).w()?;
            drop(t);
        }
        Ok(())
    }

    /// Parks `x`: a device → host copy on the copy stream (the last of `expected` stays).
    pub fn push(&mut self, x: &Tensor) -> Result<()> {
        self.release_in_flight()?;
        if self.slots.len() + 1 >= self.expected {
            self.slots.push(Slot::Device(x.clone()));
            return Ok(());
        }
        let x = x.contiguous()?;
        let bytes = x.elem_count() * x.dtype().size_in_bytes();
        let buf = with_side(&self.dev, |s| s.get(&self.dev, bytes))?;
        let main = self.dev.cuda_stream();
        self.copy.wait(&event(&main)?).w()?;
        let src = address(&x, &self.copy)?;
        // SAFETY: `buf` holds at least `bytes` pinned bytes; `x` stays alive (in `in_flight`)
        // until candle's stream has waited on `copied`.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(buf.ptr, bytes);
            result::memcpy_dtoh_async(dst, src, self.copy.cu_stream()).w()?;
        }
        let copied = event(&self.copy)?;
        self.slots.push(Slot::Host { buf, dtype: x.dtype(), shape: x.shape().clone() });
        self.in_flight = Some((x, copied));
        Ok(())
    }

    /// Starts uploading tensor `i` if it is on the host.
    fn prefetch(&mut self, i: usize) -> Result<()> {
        let Some(slot) = self.slots.get_mut(i) else { return Ok(()) };
        if !matches!(slot, Slot::Host { .. }) {
            return Ok(());
        }
        let Slot::Host { buf, dtype, shape } = std::mem::replace(slot, Slot::Taken) else { return Ok(()) };
        let t = alloc(&self.dev, dtype, &shape)?;
        let main = self.dev.cuda_stream();
        self.copy.wait(&event(&main)?).w()?;
        let dst = address(&t, &self.copy)?;
        let bytes = shape.elem_count() * dtype.size_in_bytes();
        // SAFETY: the download into `buf` was queued earlier on the same copy stream; `t` is
        // not read by candle's stream before it waits on `ready`.
        unsafe {
            let src = std::slice::from_raw_parts(buf.ptr as *const u8, bytes);
            result::memcpy_htod_async(dst, src, self.copy.cu_stream()).w()?;
        }
        let ready = event(&self.copy)?;
        self.slots[i] = Slot::Uploading { t, ready, buf };
        Ok(())
    }

    /// Tensor `i`, on the device (candle's stream ordered after its upload), and the upload of
    /// tensor `i - 1` started. Each tensor can be taken once.
    pub fn take(&mut self, i: usize) -> Result<Tensor> {
        self.release_in_flight()?;
        self.prefetch(i)?;
        if i > 0 {
            self.prefetch(i - 1)?;
        }
        let slot = match self.slots.get_mut(i) {
            Some(s) => std::mem::replace(s, Slot::Taken),
            None => candle_core::bail!("checkpoint offload: tensor {i} was never stashed ({} were)", self.slots.len()),
        };
        match slot {
            Slot::Device(t) => Ok(t),
            Slot::Uploading { t, ready, buf } => {
                self.dev.cuda_stream().wait(&ready).w()?;
                self.give_back(buf)?;
                Ok(t)
            }
            Slot::Host { .. } | Slot::Taken => candle_core::bail!("checkpoint offload: tensor {i} was already taken"),
        }
    }

    fn give_back(&self, buf: Pinned) -> Result<()> {
        with_side(&self.dev, |s| {
            s.free.push(buf);
            Ok(())
        })
    }
}

impl Drop for HostStash {
    /// Orders candle's stream after every pending copy (a tensor may not be freed while the
    /// copy stream reads or writes it) and returns the buffers to the pool.
    fn drop(&mut self) {
        let main = self.dev.cuda_stream();
        if let Some((_, copied)) = &self.in_flight {
            let _ = main.wait(copied);
        }
        for slot in std::mem::take(&mut self.slots) {
            match slot {
                Slot::Uploading { t, ready, buf } => {
                    let _ = main.wait(&ready);
                    drop(t);
                    let _ = self.give_back(buf);
                }
                Slot::Host { buf, .. } => {
                    let _ = self.give_back(buf);
                }
                Slot::Device(_) | Slot::Taken => {}
            }
        }
    }
}
