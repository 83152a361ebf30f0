//! The NF4 CUDA kernels against their CPU twins (run only on a machine with an NVIDIA GPU,
//! built with `--features cuda`): dequantize bit for bit in f32/bf16/f16, plain and double
//! quantization, ragged tails; the fused decode GEMV within float tolerance for 1..8 rows;
//! `nf4_linear` on CUDA (fused GEMV for decode, dequantize + cuBLAS above 8 rows, and its
//! backward) against the same op on the CPU.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::{DType, Device, Tensor, Var};
use qlora_studio::quant::{cuda, nf4_linear, Nf4Options, Nf4Tensor};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (CUDA device 0) and its driver")
}

/// Random weights with a wide spread of block scales (so the double quantization matters).
fn weight(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            u * (0.01 + ((i / 64) % 17) as f32 * 0.01)
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The values' bits (bf16/f16 upcast to f32 first, which is exact and one-to-one).
fn bits(t: &Tensor) -> Vec<u32> {
    let t = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
    t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let d: f64 = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    let r: f64 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(d.is_finite(), "non-finite difference");
    (d / r.max(1e-30)).sqrt()
}

#[test]
fn dequantize_is_bit_exact_with_the_cpu() {
    let dev = gpu();
    let cases: &[(&[usize], usize)] = &[(&[512, 1024], 64), (&[96, 256], 64), (&[1001], 64), (&[33, 70], 64), (&[64, 512], 128)];
    for (i, (shape, bs)) in cases.iter().enumerate() {
        for dq in [false, true] {
            let opts = Nf4Options { blocksize: *bs, double_quant: dq, ..Default::default() };
            let q = Nf4Tensor::quantize_with(&weight(shape, i as u64 + 1), &opts).unwrap();
            let qg = q.to_device(&dev).unwrap();
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let cpu = q.dequantize(dt).unwrap();
                let twin = cuda::dequantize(&q, dt).unwrap();
                let g = qg.dequantize(dt).unwrap();
                assert!(g.device().is_cuda(), "dequantize of a GPU tensor left the GPU");
                assert_eq!(g.dims(), *shape);
                assert_eq!(bits(&twin), bits(&cpu), "CPU twin {shape:?} bs {bs} dq {dq} {dt:?}");
                let (gb, cb) = (bits(&g), bits(&cpu));
                let bad = gb.iter().zip(&cb).filter(|(a, b)| a != b).count();
                assert_eq!(bad, 0, "{bad} of {} values differ: {shape:?} bs {bs} dq {dq} {dt:?}", cb.len());
            }
        }
    }
}

#[test]
fn fused_gemv_matches_its_cpu_twin() {
    let dev = gpu();
    for (n, k, dq) in [(1000usize, 4096usize, true), (384, 1024, false), (70, 2048, true)] {
        let q = Nf4Tensor::quantize(&weight(&[n, k], n as u64), dq).unwrap();
        let qg = q.to_device(&dev).unwrap();
        for m in 1..=cuda::GEMV_MAX_ROWS {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 8e-3), (DType::F16, 2e-3)] {
                let xc = x.to_dtype(dt).unwrap();
                let want = cuda::gemv(&xc, &q).unwrap();
                let got = cuda::gemv(&xc.to_device(&dev).unwrap(), &qg).unwrap();
                assert_eq!(got.dims(), &[m, n]);
                assert_eq!(got.dtype(), dt);
                let err = rel_err(&got, &want);
                assert!(err < tol, "gemv n {n} k {k} m {m} {dt:?}: relative error {err:.2e} (tolerance {tol:e})");
                // and the twin is x · dequantize(W)ᵀ in f32
                if dt == DType::F32 && m == 1 {
                    let dense = xc.matmul(&q.dequantize(DType::F32).unwrap().t().unwrap()).unwrap();
                    assert!(rel_err(&want, &dense) < 1e-5);
                }
            }
        }
    }
}

#[test]
fn gemv_refuses_what_it_cannot_do() {
    let q = Nf4Tensor::quantize(&weight(&[16, 70], 3), false).unwrap();
    assert!(cuda::gemv_unsupported(1, 70, &q).unwrap().contains("multiple of 32"));
    let q = Nf4Tensor::quantize(&weight(&[16, 64], 3), false).unwrap();
    assert!(cuda::gemv_unsupported(9, 64, &q).unwrap().contains("1 to 8"));
    assert!(cuda::gemv(&Tensor::zeros((9, 64), DType::F32, &Device::Cpu).unwrap(), &q).is_err());
}

/// nf4_linear on the GPU: fused GEMV (m <= 8), dequantize + cuBLAS (m > 8), fallback for odd
/// sizes, and the backward (dequantize again) — all against the CPU op.
#[test]
fn nf4_linear_on_cuda_matches_the_cpu() {
    let dev = gpu();
    for (n, k) in [(512usize, 1024usize), (48, 70)] {
        let q = Nf4Tensor::quantize(&weight(&[n, k], 9), true).unwrap();
        let qg = q.to_device(&dev).unwrap();
        for rows in [1usize, 3, 8, 17, 64] {
            for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, k), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
                let want = nf4_linear(&x, &q).unwrap();
                let got = nf4_linear(&x.to_device(&dev).unwrap(), &qg).unwrap();
                assert_eq!(got.dims(), &[1, rows, n]);
                let err = rel_err(&got, &want);
                assert!(err < tol, "nf4_linear {n}x{k} rows {rows} {dt:?}: relative error {err:.2e}");
            }
        }
        let x = Var::randn(0f32, 1.0, (2, 5, k), &Device::Cpu).unwrap();
        let xg = Var::from_tensor(&x.as_tensor().to_device(&dev).unwrap()).unwrap();
        let gc = nf4_linear(x.as_tensor(), &q).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gg = nf4_linear(xg.as_tensor(), &qg).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let err = rel_err(gg.get(xg.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
        assert!(err < 1e-5, "nf4_linear backward {n}x{k}: relative error {err:.2e}");
    }
}
