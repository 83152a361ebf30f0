//! With the `cuda` feature, compiles `kernels/*.cu` to PTX with nvcc (from `$NVCC` or `PATH`;
//! `../shared/gpu/cuda-env.sh` provides one) for `CUDA_COMPUTE_CAP` (default 90 = H100/H200).
//! `src/cuda/` embeds the PTX with `include_str!`; the driver JIT-compiles it on first use.
//! Without the feature nothing is compiled and no CUDA toolkit is needed.
//!
//! For compute capability 9.0 it then holds the decode GEMVs to their register budgets
//! (`REGISTER_BUDGETS`, checked with `ptxas -v` on those entries): one register over 64 costs
//! the GEMV a block per SM, which once made the Mistral-7B decode step 15% slower unnoticed.

use std::{env, path::PathBuf, process::Command};

const KERNELS: &[&str] = &["nf4", "train", "infer", "optim"];

/// Kernels of nf4.cu and the most registers each may use on sm_90 (128 threads a block: 64
/// registers hold 8 blocks an SM, 72 hold 7). Session 5: a runtime flag took
/// `nf4_gemv_multi_*_m1` from 64 to 80 and the Mistral-7B NF4 decode step from 3095 to 3565 µs
/// on an H100.
const REGISTER_BUDGETS: &[(&str, u32)] = &[
    ("nf4_gemv_multi_bf16_m1", 64),
    ("nf4_gemv_multi_f16_m1", 64),
    ("nf4_gemv_glu_bf16_m1", 72),
    ("nf4_gemv_glu_f16_m1", 72),
    ("nf4_gemv_norm_bf16_m1", 64),
    ("nf4_gemv_norm_rs_bf16_m1", 64),
    ("nf4_gemv_sumsq_bf16_m1", 72),
    ("nf4_gemv_multi_fold_bf16_m1", 72),
    ("nf4_gemv_glu_fold_bf16_m1", 72),
    ("nf4_gemv_multi_ls_bf16_m1", 64),
    ("nf4_gemv_multi_ls_f16_m1", 64),
    ("nf4_gemv_glu_ls_bf16_m1", 80),
    ("nf4_gemv_glu_ls_f16_m1", 80),
    ("nf4_gemv_norm_ls_bf16_m1", 64),
    ("nf4_gemv_norm_ls2_bf16_m1", 96),
    ("nf4_gemv_sumsq_ls_bf16_m1", 64),
    ("nf4_gemv_sumsq_ls2_bf16_m1", 96),
    ("nf4_gemv_multi_fold_ls_bf16_m1", 64),
    ("nf4_gemv_glu_fold_ls_bf16_m1", 80),
];

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
            .unwrap_or_else(|e| panic!("cannot run {nvcc} ({e}): the cuda feature needs nvcc; source ../shared/gpu/cuda-env.sh or set NVCC"));
        assert!(status.success(), "nvcc failed on {src} (compute capability {cap})");
        if *name == "nf4" && cap == "90" {
            check_registers(&nvcc, &ptx);
        }
    }
}

/// Compiles the budgeted entries of `ptx` with the ptxas next to `nvcc` and fails the build if
/// one uses more registers than its budget.
fn check_registers(nvcc: &str, ptx: &std::path::Path) {
    let ptxas = match PathBuf::from(nvcc).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("ptxas"),
        _ => PathBuf::from("ptxas"),
    };
    let mut cmd = Command::new(&ptxas);
    cmd.args(["-arch=sm_90", "-v", "-o", "/dev/null"]);
    for (entry, _) in REGISTER_BUDGETS {
        cmd.args(["--entry", entry]);
    }
    let out = cmd.arg(ptx).output().unwrap_or_else(|e| panic!("cannot run {} ({e}) to check the GEMVs' registers", ptxas.display()));
    assert!(out.status.success(), "ptxas failed on {}: {}", ptx.display(), String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    let mut current = None;
    let mut seen = 0;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().map(str::to_owned);
        } else if let (Some(name), Some(rest)) = (&current, line.split("Used ").nth(1)) {
            let used: u32 = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let budget = REGISTER_BUDGETS.iter().find(|(e, _)| e == name).map_or(u32::MAX, |b| b.1);
            assert!(
                used <= budget,
                "{name} uses {used} registers on sm_90, over its budget of {budget} (fewer blocks an SM: measure it on an H100 before raising the budget in build.rs)"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, REGISTER_BUDGETS.len(), "ptxas -v reported {seen} of the {} budgeted GEMVs:\n{log}", REGISTER_BUDGETS.len());
}
