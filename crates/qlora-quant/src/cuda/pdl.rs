//! Kernel launches with programmatic dependent launch (PDL, Hopper and later) for the decode
//! step's kernels. A decode step of a small model is a chain of short kernels, each waiting for
//! the previous one to drain before it even starts: launch latency plus the first loads of
//! every kernel (an NF4 GEMV's block scales and first weight pieces, a norm's weight) sit on the
//! critical path. Launched with `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`, a
//! kernel may start while its predecessor still runs; it does everything that does not depend
//! on the predecessor's output (weights, scales, tables: never written during a step), then
//! waits in `griddepcontrol.wait` until the predecessor has completed and its writes are
//! visible, and only then reads its inputs and writes anything. Stream capture records the
//! same launches as programmatic edges of the CUDA graph.
//!
//! Only kernels that call `pdl_wait()` before their first dependent read and first write may
//! be launched this way (`kernels/nf4.cu` GEMVs, `kernels/infer.cu` norm, KV append and decode
//! attention); each also calls `pdl_launch_dependents()` after its wait, so the next kernel is
//! scheduled as this one's blocks get going. On a GPU before compute capability 9.0 the same
//! kernels are launched the ordinary way (their wait is then a no-op).
//!
//! **Off by default** (`QLORA_PDL=1` turns it on): measured on an H100 (session 4), the NF4
//! decode step replayed as a CUDA graph was no faster with it (TinyLlama 795.9 vs 798.9 tok/s,
//! Mistral-7B 242.7 vs 245.0, same binary and machine). The likely reason: candle allocates
//! each kernel's output with `cuMemAllocAsync`, so in the captured graph a memory-allocation
//! node sits between every two kernels, and a programmatic edge only forms between adjacent
//! kernel nodes. It needs the step's temporaries allocated outside the capture (or the graph's
//! allocation nodes moved off the kernel chain) before it can pay.

use candle_core::cuda_backend::cudarc::driver::{sys, LaunchConfig};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;
use std::ffi::c_void;
use std::sync::OnceLock;

/// Whether `QLORA_PDL` turns PDL on (off by default; `1`, `true` or `on` turn it on).
fn enabled_by_env() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| matches!(std::env::var("QLORA_PDL").as_deref(), Ok("1" | "true" | "on")))
}

/// Whether `dev` supports PDL (compute capability 9.0 or later).
fn supported(dev: &CudaDevice) -> bool {
    let major = dev.cuda_stream().context().attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
    major.is_ok_and(|m| m >= 9)
}

/// Launches kernel `name` of `module` (`ptx`) on `dev`'s stream with `args` (one pointer per
/// kernel parameter, to a value laid out as the kernel declares it), with PDL where it applies.
///
/// # Safety
/// `args` must match the kernel's parameters in number, order and layout, every device
/// address among them must stay valid until the kernel has run, and the kernel must wait
/// (`griddepcontrol.wait`) before its first read of another kernel's output and its first write.
pub(crate) unsafe fn launch(dev: &CudaDevice, module: &str, ptx: &'static str, name: &str, cfg: LaunchConfig, args: &mut [*mut c_void]) -> Result<()> {
    let func = dev.get_or_load_custom_func(name, module, ptx)?;
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().w()?;
    // SAFETY: a plain C struct (an id and a union of plain values): all zeros is valid.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let pdl = enabled_by_env() && supported(dev);
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(pdl),
    };
    unsafe { sys::cuLaunchKernelEx(&config, func.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }.result().w()
}

/// The kernel-parameter pointer of one argument value.
pub(crate) fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}
