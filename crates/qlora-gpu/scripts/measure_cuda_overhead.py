#!/usr/bin/env python3
"""Measures the runtime overheads the planner adds (configs/overheads.json) on a real GPU,
without PyTorch: through the CUDA driver API and cuBLAS directly (ctypes), the way candle's
cudarc uses them. Prints one JSON object.

  context_bytes: device memory used once a process holds the primary context (cuInit +
      cuDevicePrimaryCtxRetain), as the driver reports it (total - free), over the baseline.
  cublas_bytes: more device memory after cublasCreate + cublasLtCreate and one SGEMM and one
      HGEMM (which make cuBLAS allocate its workspace), less the matrices themselves.

Run on the GPU machine:  python3 crates/qlora-gpu/scripts/measure_cuda_overhead.py
(LD_LIBRARY_PATH must reach libcublas.so.13, e.g. the PyTorch venv's nvidia/cu13/lib).
"""
import ctypes, glob, json, os, subprocess

def check(rc, what):
    if rc != 0:
        raise SystemExit(f"{what} failed with {rc}")

def mem(cuda):
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    check(cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
    return total.value - free.value, total.value

def smi():
    q = "memory.used,memory.total,name,driver_version"
    out = subprocess.check_output(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"]).decode()
    used, total, name, driver = [x.strip() for x in out.splitlines()[0].split(",")]
    return int(used) << 20, int(total) << 20, name, driver

def find_lib(name):
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") + glob.glob("/opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib"):
        p = os.path.join(d, name)
        if d and os.path.exists(p):
            return p
    return name

def main():
    base_used, _, name, driver = smi()
    cuda = ctypes.CDLL("libcuda.so.1")
    check(cuda.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    used_ctx, total = mem(cuda)
    smi_ctx = smi()[0]

    lt = ctypes.CDLL(find_lib("libcublasLt.so.13"), mode=ctypes.RTLD_GLOBAL)
    cublas = ctypes.CDLL(find_lib("libcublas.so.13"), mode=ctypes.RTLD_GLOBAL)
    h = ctypes.c_void_p()
    check(cublas.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
    lth = ctypes.c_void_p()
    check(lt.cublasLtCreate(ctypes.byref(lth)), "cublasLtCreate")
    n = 1024
    ptrs = []
    for _ in range(3):
        p = ctypes.c_uint64()
        check(cuda.cuMemAlloc_v2(ctypes.byref(p), n * n * 4), "cuMemAlloc")
        check(cuda.cuMemsetD8_v2(p, 0, n * n * 4), "cuMemset")
        ptrs.append(p)
    matrices = 3 * n * n * 4
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    check(cublas.cublasSgemm_v2(h, 0, 0, n, n, n, ctypes.byref(one), ptrs[0], n, ptrs[1], n, ctypes.byref(zero), ptrs[2], n), "cublasSgemm")
    # cublasGemmEx with CUDA_R_16F (2) and compute CUBLAS_COMPUTE_32F (68), default algo (-1).
    check(cublas.cublasGemmEx(h, 0, 0, n, n, n, ctypes.byref(one), ptrs[0], 2, n, ptrs[1], 2, n, ctypes.byref(zero), ptrs[2], 2, n, 68, -1), "cublasGemmEx f16")
    check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
    used_blas, _ = mem(cuda)
    print(json.dumps({
        "gpu": name, "driver": driver, "total_bytes": total,
        "baseline_used_bytes_nvidia_smi": base_used,
        "context_bytes": used_ctx - base_used,
        "context_bytes_nvidia_smi": smi_ctx - base_used,
        "cublas_bytes": used_blas - used_ctx - matrices,
        "how": "CUDA driver API via ctypes: primary context, then cublasCreate + cublasLtCreate + one SGEMM and one f16 GemmEx 1024^3; device memory from cuMemGetInfo (total - free) over the nvidia-smi baseline",
    }, indent=1))

if __name__ == "__main__":
    main()
