//! With the `cuda` feature, compiles `kernels/*.cu` to PTX with nvcc (from `$NVCC` or `PATH`;
//! `../shared/gpu/cuda-env.sh` provides one) for `CUDA_COMPUTE_CAP` (default 90 = H100/H200).
//! `src/cuda/` embeds the PTX with `include_str!`; the driver JIT-compiles it on first use.
//! Without the feature nothing is compiled and no CUDA toolkit is needed.

use std::{env, path::PathBuf, process::Command};

const KERNELS: &[&str] = &["nf4", "train", "infer", "optim"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim_end_matches('a');
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {nvcc} ({e}): the cuda feature needs nvcc; source ../shared/gpu/cuda-env.sh or set NVCC")
            });
        assert!(status.success(), "nvcc failed on {src} (compute capability {cap})");
    }
}
