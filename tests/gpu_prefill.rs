//! The prefill product with the dequantize overlapped on a second stream
//! (`quant::cuda::prefill::nf4_linear_overlapped`) against `nf4_linear` on the CPU: 2 to 5
//! slabs (a ragged last one), plain and double quantization, blocksize 64 and 128, bf16 and
//! f16; and `nf4_linear` itself with the overlap turned on. Needs an NVIDIA GPU and
//! `--features cuda`.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::{DType, Device, Tensor};
use qlora_studio::quant::cuda::prefill;
use qlora_studio::quant::{Nf4Options, Nf4Tensor, nf4_linear};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (CUDA device 0) and its driver")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let d: f64 = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    let n: f64 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    (d / n.max(1e-30)).sqrt()
}

#[test]
fn overlapped_product_matches_the_cpu() {
    let dev = gpu();
    for (n, k, bs, dq) in [(300usize, 1024usize, 64usize, true), (330, 4160, 128, false)] {
        let opts = Nf4Options { blocksize: bs, double_quant: dq, ..Default::default() };
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let q = Nf4Tensor::quantize_with(&w, &opts).unwrap();
        let qg = q.to_device(&dev).unwrap();
        for (dt, tol) in [(DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let x = Tensor::randn(0f32, 1.0, (2, 37, k), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let want = nf4_linear(&x, &q).unwrap();
            let xg = x.to_device(&dev).unwrap();
            for wide in [false, true] {
                prefill::set_wide_dequant(wide);
                for slabs in [1usize, 2, 3, 5] {
                    let got = prefill::nf4_linear_overlapped(&xg, &qg, slabs).unwrap();
                    assert_eq!(got.dims(), &[2, 37, n]);
                    let err = rel_err(&got, &want);
                    assert!(err < tol, "{slabs} slabs wide {wide} {n}x{k} bs {bs} dq {dq} {dt:?}: relative error {err:.2e}");
                }
                for overlap in [0usize, 4] {
                    prefill::set_overlap_slabs(overlap);
                    let got = nf4_linear(&xg, &qg);
                    prefill::set_overlap_slabs(prefill::DEFAULT_OVERLAP_SLABS);
                    let err = rel_err(&got.unwrap(), &want);
                    assert!(err < tol, "nf4_linear overlap {overlap} wide {wide} {n}x{k} {dt:?}: relative error {err:.2e}");
                }
            }
            prefill::set_wide_dequant(prefill::DEFAULT_WIDE_DEQUANT);
        }
    }
}

/// Both dequantize kernels of the prefill product give the CPU's bits, ragged tails included
/// (odd row counts, blocksize 64 and 128, plain and double quantization, bf16 and f16).
#[test]
fn prefill_dequantize_kernels_equal_the_cpu_bit_for_bit() {
    let dev = gpu();
    for (n, k, bs, dq) in [(301usize, 1024usize, 64usize, true), (77, 4160, 128, false), (3, 43, 64, true)] {
        let opts = Nf4Options { blocksize: bs, double_quant: dq, ..Default::default() };
        let q = Nf4Tensor::quantize_with(&Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap(), &opts).unwrap();
        let qg = q.to_device(&dev).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let want = q.dequantize(dt).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for wide in [false, true] {
                prefill::set_wide_dequant(wide);
                let got = prefill::dequantize_prefill(&qg, dt);
                prefill::set_wide_dequant(prefill::DEFAULT_WIDE_DEQUANT);
                let got =
                    got.unwrap().to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let bad = want.iter().zip(&got).position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(bad.is_none(), "wide {wide} {n}x{k} bs {bs} dq {dq} {dt:?}: element {bad:?} differs");
            }
        }
    }
}

#[test]
fn overlapped_product_refuses_what_it_cannot_take() {
    let dev = gpu();
    let q = Nf4Tensor::quantize(&Tensor::randn(0f32, 0.05, (256, 128), &Device::Cpu).unwrap(), false).unwrap().to_device(&dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (16, 128), &dev).unwrap();
    let e = prefill::nf4_linear_overlapped(&x, &q, 2).unwrap_err().to_string();
    assert!(e.contains("needs bf16/f16"), "{e}");
}
