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
//! **On by default** (`QLORA_PDL=0` turns it off). It pays only where consecutive kernels are
//! adjacent: in a captured CUDA graph, a programmatic edge forms only between two kernel
//! nodes, and while candle allocated each kernel's output with `cuMemAllocAsync` a memory node
//! sat between every two of them (session 4, first measurement: TinyLlama 795.9 vs 798.9
//! tok/s, no gain). Since the decode step writes its layer kernels' outputs into a workspace
//! allocated before the capture (engine `model/fast.rs`, `Workspace`), the graph holds kernel
//! nodes only between the embedding and the head, and PDL measured on an H100 (same binary and
//! machine, NF4 b1, bench/gpu/results/h100-2026-11-27-s4-a2-*): TinyLlama 887.1 vs 816.0 tok/s
//! (1042.7 vs 1160.7 µs a step), Mistral-7B 285.6 vs 272.6 (3379.1 vs 3515.5 µs).

use candle_core::Result;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, sys};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use std::ffi::c_void;
use std::sync::OnceLock;

/// Whether PDL is on: yes unless `QLORA_PDL` is `0`, `false` or `off`.
fn enabled_by_env() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("QLORA_PDL").map(|v| v.trim().to_ascii_lowercase()).as_deref(), Ok("0" | "false" | "off")))
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
pub(crate) unsafe fn launch(
    dev: &CudaDevice,
    module: &str,
    ptx: &'static str,
    name: &str,
    cfg: LaunchConfig,
    args: &mut [*mut c_void],
) -> Result<()> {
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
