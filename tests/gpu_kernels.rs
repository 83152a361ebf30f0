//! The NF4 CUDA kernels against their CPU twins (run only on a machine with an NVIDIA GPU,
//! built with `--features cuda`): dequantize bit for bit in f32/bf16/f16, plain and double
//! quantization, ragged tails; the fused decode GEMV within float tolerance for 1..8 rows;
//! `nf4_linear` on CUDA (fused GEMV for decode, dequantize + cuBLAS above 8 rows, and its
//! backward) against the same op on the CPU.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::{DType, Device, Tensor, Var};
use qlora_studio::quant::{Nf4Options, Nf4Tensor, cuda, nf4_linear};

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
    let cases: &[(&[usize], usize)] =
        &[(&[512, 1024], 64), (&[96, 256], 64), (&[1001], 64), (&[33, 70], 64), (&[64, 512], 128), (&[40, 96], 32), (&[3, 4160], 64)];
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
    // Odd row counts (a block's last rows past the end), k not a whole number of 128-byte
    // steps (2112, 96), blocksizes 32 and 128 beside the default 64.
    let cases = [
        (1000usize, 4096usize, true, 64usize),
        (384, 1024, false, 64),
        (70, 2048, true, 64),
        (37, 2112, true, 64),
        (9, 96, false, 32),
        (130, 1536, true, 128),
    ];
    for (n, k, dq, bs) in cases {
        let opts = Nf4Options { blocksize: bs, double_quant: dq, ..Default::default() };
        let q = Nf4Tensor::quantize_with(&weight(&[n, k], n as u64), &opts).unwrap();
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
                assert!(err < tol, "gemv n {n} k {k} bs {bs} m {m} {dt:?}: relative error {err:.2e} (tolerance {tol:e})");
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
    let k = cuda::GEMV_MAX_K + 64;
    let q = Nf4Tensor::quantize(&weight(&[2, k], 3), false).unwrap();
    assert!(cuda::gemv_unsupported(1, k, &q).unwrap().contains("shared memory"));
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

/// The prefill product through dequantized slabs + cuBLAS writing y in place: one slab, several
/// with a ragged last one, blocksize 128, plain and double quantization, against the CPU op.
#[test]
fn nf4_linear_slabs_match_the_cpu() {
    use qlora_studio::quant::cuda::prefill::nf4_linear_slabs;
    let dev = gpu();
    for (n, k, bs, dq) in [(300usize, 1024usize, 64usize, true), (130, 4160, 128, false)] {
        let opts = Nf4Options { blocksize: bs, double_quant: dq, ..Default::default() };
        let q = Nf4Tensor::quantize_with(&weight(&[n, k], 11), &opts).unwrap();
        let qg = q.to_device(&dev).unwrap();
        for (dt, tol) in [(DType::BF16, 1e-2), (DType::F16, 2e-3)] {
            let x = Tensor::randn(0f32, 1.0, (2, 37, k), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let want = nf4_linear(&x, &q).unwrap();
            let xg = x.to_device(&dev).unwrap();
            for bytes in [1usize, 64 * k * 2, 100 * k * 2, 16 << 20] {
                let got = nf4_linear_slabs(&xg, &qg, bytes).unwrap();
                assert_eq!(got.dims(), &[2, 37, n]);
                let err = rel_err(&got, &want);
                assert!(err < tol, "slabs of {bytes} bytes {n}x{k} bs {bs} dq {dq} {dt:?}: relative error {err:.2e}");
            }
        }
    }
}

// ---------------------------------------------------------------- inference kernels (model/fast.rs)

use qlora_studio::engine::ops;
use qlora_studio::quant::cuda::fused::{GluAct, Nf4Proj, gemv_glu, gemv_multi};
use qlora_studio::quant::cuda::infer;

fn randn(shape: &[usize], dt: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
}

fn proj(n: usize, k: usize, seed: u64, dq: bool, bias: bool, dt: DType) -> Nf4Proj {
    let w = Nf4Tensor::quantize(&weight(&[n, k], seed), dq).unwrap();
    Nf4Proj { w, bias: bias.then(|| randn(&[n], dt)) }
}

fn on_gpu(p: &Nf4Proj) -> Nf4Proj {
    let dev = gpu();
    Nf4Proj { w: p.w.to_device(&dev).unwrap(), bias: p.bias.as_ref().map(|b| b.to_device(&dev).unwrap()) }
}

/// q/k/v in one launch and gate/up with the activation, against the CPU composition of the
/// single GEMV's twin (bias add, activation, product as candle ops), 1..8 rows.
#[test]
fn fused_projections_match_the_cpu_composition() {
    for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        let k = 1024;
        // Row counts that are no multiple of the rows a block reads: blocks straddle two weights.
        let projs = [proj(513, k, 1, true, true, dt), proj(127, k, 2, false, true, dt), proj(130, k, 3, true, false, dt)];
        let gprojs: Vec<Nf4Proj> = projs.iter().map(on_gpu).collect();
        let (gate, up) = (proj(383, k, 4, true, false, dt), proj(383, k, 5, true, true, dt));
        for m in [1usize, 2, 3, 5, 8] {
            let x = randn(&[1, m, k], dt);
            let xg = x.to_device(&gpu()).unwrap();
            let want = gemv_multi(&x, &projs).unwrap();
            let got = gemv_multi(&xg, &gprojs).unwrap();
            assert_eq!(got.dims(), &[1, m, 770]);
            let err = rel_err(&got, &want);
            assert!(err < tol, "gemv_multi m {m} {dt:?}: relative error {err:.2e}");
            for act in [GluAct::Silu, GluAct::GeluTanh, GluAct::GeluErf] {
                let want = gemv_glu(&x, &gate, &up, act).unwrap();
                let got = gemv_glu(&xg, &on_gpu(&gate), &on_gpu(&up), act).unwrap();
                let err = rel_err(&got, &want);
                assert!(err < tol, "gemv_glu {act:?} m {m} {dt:?}: relative error {err:.2e}");
            }
        }
    }
}

/// At one row of x the GEMVs load each lane's block scale with its weights (lane scales, on by
/// default); at two rows they resolve the block's scales into shared memory first. The scale is
/// the same float and each row's sums are added in the same order, so a row's result must be
/// the same bits either way: row 0 of x alone against x stacked over another row, for the
/// stacked GEMV (three weights, biases, blocks straddling weights), the GLU and the add + norm
/// GEMV, in f32 / bf16 / f16, plain and double-quantized scales, and every lane width the core
/// picks (k = 1024: 4 bytes a lane, 2048: 8, 4096 and 5632: 16 with a ragged last step).
#[test]
fn lane_scale_gemvs_equal_the_scale_phase_bit_for_bit() {
    use qlora_studio::quant::cuda::fused::gemv_add_rms_norm;
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for k in [1024usize, 2048, 4096, 5632] {
            for dq in [true, false] {
                let case = format!("{dt:?} k {k} dq {dq}");
                let projs: Vec<Nf4Proj> = [(67, true), (40, false), (23, true)]
                    .iter()
                    .enumerate()
                    .map(|(i, &(n, b))| on_gpu(&proj(n, k, 10 + i as u64, dq, b, dt)))
                    .collect();
                let (gate, up) = (on_gpu(&proj(90, k, 20, dq, true, dt)), on_gpu(&proj(90, k, 21, dq, false, dt)));
                let x2 = randn(&[1, 2, k], dt).to_device(&gpu()).unwrap();
                let x1 = x2.narrow(1, 0, 1).unwrap().contiguous().unwrap();
                let row0 = |t: Tensor| t.narrow(1, 0, 1).unwrap().contiguous().unwrap();
                let (one, two) = (gemv_multi(&x1, &projs).unwrap(), gemv_multi(&x2, &projs).unwrap());
                assert!(bits(&one) == bits(&row0(two)), "{case}: stacked GEMV differs");
                let (one, two) = (gemv_glu(&x1, &gate, &up, GluAct::Silu).unwrap(), gemv_glu(&x2, &gate, &up, GluAct::Silu).unwrap());
                assert!(bits(&one) == bits(&row0(two)), "{case}: GLU differs");
                let p = &projs[0];
                let (r2, w) = (randn(&[1, 2, 67], dt).to_device(&gpu()).unwrap(), randn(&[67], dt).to_device(&gpu()).unwrap());
                let r1 = r2.narrow(1, 0, 1).unwrap().contiguous().unwrap();
                let (s1, _) = gemv_add_rms_norm(&x1, p, &r1, &w, 1e-5, false).unwrap();
                let (s2, _) = gemv_add_rms_norm(&x2, p, &r2, &w, 1e-5, false).unwrap();
                assert!(bits(&s1) == bits(&row0(s2)), "{case}: add + norm GEMV's sum differs");
            }
        }
    }
}

/// One projection's GEMV with the residual add and RMSNorm in its last block
/// (`gemv_add_rms_norm`) against the two launches it replaces (`gemv_multi`, then
/// `infer::add_rms_norm`) on CUDA, and against its CPU composition: the sum bit for bit, the
/// norm within rounding (its sum of squares is added in another order); 1..8 rows, Llama's and
/// Gemma's norm, a weight with a bias, one block and many, and three launches in a row (the
/// block counter goes back to zero after each); its form writing into caller buffers
/// (`gemv_add_rms_norm_into`, the decode graph's) equal to it bit for bit.
#[test]
fn gemv_with_the_add_and_norm_folded_in_matches_the_two_launches() {
    use qlora_studio::quant::cuda::fused::{gemv_add_rms_norm, gemv_add_rms_norm_into};
    for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 5e-3), (DType::F16, 2e-3)] {
        for (n, k, bias) in [(4usize, 256usize, false), (2048, 1024, false), (1000, 2048, true), (4096, 512, false)] {
            let p = proj(n, k, 7 + n as u64, true, bias, dt);
            let gp = on_gpu(&p);
            let w = (randn(&[n], DType::F32) * 0.1).unwrap().to_dtype(dt).unwrap();
            for m in [1usize, 3, 8] {
                let (x, resid) = (randn(&[1, m, k], dt), randn(&[1, m, n], dt));
                let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
                for one_plus in [false, true] {
                    let a = gemv_multi(&g(&x), std::slice::from_ref(&gp)).unwrap();
                    let (s2, n2) = infer::add_rms_norm(&g(&resid), Some(&a), &g(&w), 1e-5, one_plus).unwrap();
                    let (sc, nc) = gemv_add_rms_norm(&x, &p, &resid, &w, 1e-5, one_plus).unwrap();
                    for rep in 0..3 {
                        let (s1, n1) = gemv_add_rms_norm(&g(&x), &gp, &g(&resid), &g(&w), 1e-5, one_plus).unwrap();
                        let case = format!("n {n} k {k} m {m} one_plus {one_plus} {dt:?} launch {rep}");
                        assert_eq!(s1.dims(), &[1, m, n], "{case}");
                        assert!(bits(&s1.to_device(&Device::Cpu).unwrap()) == bits(&s2.to_device(&Device::Cpu).unwrap()), "{case}: sum differs");
                        let err = rel_err(&n1, &n2);
                        assert!(err < tol, "{case}: norm against the two launches, relative error {err:.2e}");
                        let err = rel_err(&n1, &nc);
                        assert!(err < 4.0 * tol + 2e-5, "{case}: norm against the CPU composition, relative error {err:.2e}");
                        assert!(rel_err(&s1, &sc) < 4.0 * tol + 2e-5, "{case}: sum against the CPU composition");
                        let (a_buf, out_buf) = (Tensor::zeros(m * n, dt, &gpu()).unwrap(), Tensor::zeros(2 * m * n, dt, &gpu()).unwrap());
                        let (s3, n3) = gemv_add_rms_norm_into(&g(&x), &gp, &g(&resid), &g(&w), (1e-5, one_plus), &a_buf, &out_buf).unwrap();
                        assert_eq!((s3.dims(), n3.dims()), (s1.dims(), n1.dims()), "{case}: into");
                        assert!(
                            bits(&s3.to_device(&Device::Cpu).unwrap()) == bits(&s1.to_device(&Device::Cpu).unwrap()),
                            "{case}: into, sum differs"
                        );
                        assert!(
                            bits(&n3.to_device(&Device::Cpu).unwrap()) == bits(&n1.to_device(&Device::Cpu).unwrap()),
                            "{case}: into, norm differs"
                        );
                    }
                }
            }
        }
    }
}

/// The RMSNorm folded into the GEMVs around it, at one row of x: the projection that adds the
/// residual and writes `s · w` and partial sums of squares (`gemv_add_sumsq_into`), then q/k/v and gate/up
/// taking `norm(s)` from them (`fold_gemv_multi_into`, `fold_gemv_glu_into`), against the
/// unfused launches (`gemv_multi`, `infer::add_rms_norm`, then `gemv_multi` / `gemv_glu` of the
/// normed x) and against the CPU composition of the twins: the sum bit for bit, the partials
/// summing to the sum of squares, the GEMVs within the dtype's rounding (the unfused pair rounds
/// the normed x first). Llama's and Gemma's norm, biases, widths with one and many producer
/// blocks (64 to 4096), both GLU activations, the `_pf` kernels (k <= 2048) and the others; the
/// same launch twice gives the same bits; bad inputs are refused with what to change.
#[test]
fn gemv_with_the_norm_folded_in_matches_the_unfused_launches() {
    use qlora_studio::quant::cuda::fused::{
        FoldedNorm, fold_gemv_glu_into, fold_gemv_multi_into, fold_partials, gemv_add_rms_norm, gemv_add_sumsq_into,
    };
    let dev = gpu();
    let g = |t: &Tensor| t.to_device(&dev).unwrap();
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    for (dt, tol) in [(DType::BF16, 1.5e-2), (DType::F16, 3e-3)] {
        for (n, k_in, bias) in [(64usize, 256usize, false), (2048, 512, true), (4096, 1024, false), (1088, 2048, true)] {
            let o = proj(n, k_in, 11 + n as u64, true, bias, dt);
            let qkv: Vec<Nf4Proj> =
                [(96usize, 1u64, true), (32, 2, false), (32, 3, true)].iter().map(|&(r, seed, b)| proj(r, n, seed + n as u64, true, b, dt)).collect();
            let (gate, up) = (proj(200, n, 4 + n as u64, true, false, dt), proj(200, n, 5 + n as u64, false, true, dt));
            let (go, gqkv, ggate, gup) = (on_gpu(&o), qkv.iter().map(on_gpu).collect::<Vec<_>>(), on_gpu(&gate), on_gpu(&up));
            let w = ((randn(&[n], DType::F32) * 0.1).unwrap() + 1.0).unwrap().to_dtype(dt).unwrap();
            let (x, resid) = (randn(&[1, 1, k_in], dt), randn(&[1, 1, n], dt));
            for one_plus in [false, true] {
                let case = format!("n {n} k {k_in} one_plus {one_plus} {dt:?}");
                let (s_out, xw_out) = (Tensor::zeros(n, dt, &dev).unwrap(), Tensor::zeros(n, dt, &dev).unwrap());
                let part = Tensor::zeros(fold_partials(n), DType::F32, &dev).unwrap();
                let (s, xw) = gemv_add_sumsq_into(&g(&x), &go, &g(&resid), (&g(&w), one_plus), &s_out, &xw_out, &part).unwrap();
                assert_eq!((s.dims(), xw.dims()), (&[1, 1, n][..], &[1, 1, n][..]), "{case}");
                let a = gemv_multi(&g(&x), std::slice::from_ref(&go)).unwrap();
                let (s2, h2) = infer::add_rms_norm(&g(&resid), Some(&a), &g(&w), 1e-5, one_plus).unwrap();
                assert!(bits(&s) == bits(&s2), "{case}: the sum differs from gemv_multi + add_rms_norm's");
                let ss: f64 = cpu(&s).to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
                let ps: f64 = cpu(&part).to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert!((ps - ss).abs() <= 1e-5 * ss, "{case}: the partials sum to {ps}, the squares to {ss}");
                let f = FoldedNorm { xw: &xw, partials: &part, eps: 1e-5 };
                // The CPU composition: the twins' GEMV, add and norm, then the twins' projections.
                let (_, hc) = gemv_add_rms_norm(&x, &o, &resid, &w, 1e-5, one_plus).unwrap();
                let y_out = Tensor::zeros(160, dt, &dev).unwrap();
                let y = fold_gemv_multi_into(&f, &gqkv, &y_out).unwrap();
                assert_eq!(y.dims(), &[1, 1, 160], "{case}");
                let err = rel_err(&y, &gemv_multi(&h2, &gqkv).unwrap());
                assert!(err < tol, "{case}: q/k/v against the unfused launches, relative error {err:.2e}");
                let err = rel_err(&y, &gemv_multi(&hc, &qkv).unwrap());
                assert!(err < 2.0 * tol, "{case}: q/k/v against the CPU composition, relative error {err:.2e}");
                let again = fold_gemv_multi_into(&f, &gqkv, &Tensor::zeros(160, dt, &dev).unwrap()).unwrap();
                assert!(bits(&again) == bits(&y), "{case}: two launches differ");
                for act in [GluAct::Silu, GluAct::GeluTanh] {
                    let y_out = Tensor::zeros(200, dt, &dev).unwrap();
                    let y = fold_gemv_glu_into(&f, &ggate, &gup, act, &y_out).unwrap();
                    let err = rel_err(&y, &gemv_glu(&h2, &ggate, &gup, act).unwrap());
                    assert!(err < tol, "{case} {act:?}: gate/up against the unfused launches, relative error {err:.2e}");
                    let err = rel_err(&y, &gemv_glu(&hc, &gate, &up, act).unwrap());
                    assert!(err < 2.0 * tol, "{case} {act:?}: gate/up against the CPU composition, relative error {err:.2e}");
                }
            }
        }
        // Bad inputs: two rows, partials of the wrong size, an output on top of an input.
        let (n, k_in) = (256, 256);
        let o = on_gpu(&proj(n, k_in, 3, true, false, dt));
        let part = Tensor::zeros(fold_partials(n), DType::F32, &dev).unwrap();
        let w = g(&randn(&[n], dt));
        let buf = |len: usize| Tensor::zeros(len, dt, &dev).unwrap();
        let err = gemv_add_sumsq_into(&g(&randn(&[2, 1, k_in], dt)), &o, &g(&randn(&[2, 1, n], dt)), (&w, false), &buf(2 * n), &buf(2 * n), &part)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one row"), "{dt:?}: {err}");
        let (x, resid) = (g(&randn(&[1, 1, k_in], dt)), g(&randn(&[1, 1, n], dt)));
        let err =
            gemv_add_sumsq_into(&x, &o, &resid, (&w, false), &buf(n), &buf(n), &Tensor::zeros(n, DType::F32, &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("output buffer"), "{dt:?}: {err}");
        let err = gemv_add_sumsq_into(&x, &o, &resid, (&w, false), &resid.flatten_all().unwrap(), &buf(n), &part).unwrap_err().to_string();
        assert!(err.contains("overlaps an input"), "{dt:?}: {err}");
        let f = FoldedNorm { xw: &resid, partials: &Tensor::zeros(8, DType::F32, &dev).unwrap(), eps: 1e-5 };
        let err =
            fold_gemv_multi_into(&f, &[on_gpu(&proj(64, n, 5, true, false, dt))], &Tensor::zeros(64, dt, &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("partials") && err.contains("gemv_add_sumsq_into"), "{dt:?}: {err}");
    }
}

/// The folded norm's three launches (the projection writing `s`, `s · w` and the partial sums of
/// squares; the q/k/v and gate/up GEMVs reading them) with lane scales, their default at one row
/// of x, against the same launches with the block-wide scale phase (`with_lane_scales(false)`):
/// the same bits, in bf16 and f16, plain and double-quantized scales, for every lane width of
/// the core on both sides (the projection's k = 1024, 2048, 4096 and 5632; the GEMVs' k = its
/// n; the q/k/v GEMV at 8 rows a block, its default from k = 4096, with blocks straddling its
/// three weights),
/// the projection's two-steps-in-flight form included (k = 5632 and 2048 outputs: 512
/// blocks, within 5 an SM on an H100) and a Gemma `1 + w` norm; the residual 8-byte aligned (the
/// projection copies its rows early) and not (it loads them at the end).
#[test]
fn folded_norm_lane_scale_gemvs_equal_the_scale_phase_bit_for_bit() {
    use qlora_studio::quant::cuda::fused::{
        FoldedNorm, fold_gemv_glu_into, fold_gemv_multi_into, fold_partials, gemv_add_sumsq_into, with_lane_scales,
    };
    let dev = gpu();
    let g = |t: &Tensor| t.to_device(&dev).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let cases = [
            (1024usize, 1024usize, true, false, 0usize),
            (2048, 5632, true, false, 0),
            (2048, 2048, false, true, 1),
            (4096, 4096, true, false, 0),
            (1088, 4096, false, false, 3),
        ];
        for (n, k_in, dq, one_plus, off) in cases {
            let case = format!("{dt:?} n {n} k {k_in} dq {dq} one_plus {one_plus} residual at +{off}");
            let o = on_gpu(&proj(n, k_in, 31 + n as u64, dq, true, dt));
            let qkv: Vec<Nf4Proj> = [(92usize, 1u64, true), (45, 2, false), (23, 3, true)]
                .iter()
                .map(|&(r, seed, b)| on_gpu(&proj(r, n, seed + n as u64, dq, b, dt)))
                .collect();
            let (gate, up) = (on_gpu(&proj(72, n, 4 + n as u64, dq, true, dt)), on_gpu(&proj(72, n, 5 + n as u64, dq, false, dt)));
            let w = g(&((randn(&[n], DType::F32) * 0.1).unwrap() + 1.0).unwrap().to_dtype(dt).unwrap());
            let (x, resid) = (g(&randn(&[1, 1, k_in], dt)), g(&randn(&[n + off], dt)).narrow(0, off, n).unwrap().reshape((1, 1, n)).unwrap());
            let run = |ls: bool| {
                with_lane_scales(ls, || {
                    let (s_out, xw_out) = (Tensor::zeros(n, dt, &dev).unwrap(), Tensor::zeros(n, dt, &dev).unwrap());
                    let part = Tensor::zeros(fold_partials(n), DType::F32, &dev).unwrap();
                    let (s, xw) = gemv_add_sumsq_into(&x, &o, &resid, (&w, one_plus), &s_out, &xw_out, &part).unwrap();
                    let f = FoldedNorm { xw: &xw, partials: &part, eps: 1e-5 };
                    let y = fold_gemv_multi_into(&f, &qkv, &Tensor::zeros(160, dt, &dev).unwrap()).unwrap();
                    let z = fold_gemv_glu_into(&f, &gate, &up, GluAct::Silu, &Tensor::zeros(72, dt, &dev).unwrap()).unwrap();
                    [bits(&s), bits(&xw), bits(&part), bits(&y), bits(&z)]
                })
            };
            let (phase, lanes) = (run(false), run(true));
            for (i, what) in ["s", "s · w", "partials", "q/k/v", "gate/up"].iter().enumerate() {
                assert!(phase[i] == lanes[i], "{case}: {what} differs between the scale phase and lane scales");
            }
            assert!(lanes[3].iter().any(|&b| b != 0) && lanes[4].iter().any(|&b| b != 0), "{case}: all zeros");
        }
    }
}

/// RMSNorm with the residual add (Llama's and Gemma's) against `ops::rms_norm` on the CPU.
#[test]
fn add_rms_norm_matches_the_unfused_ops() {
    for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 5e-3)] {
        for h in [64usize, 2048, 4096 + 64] {
            let (x, a) = (randn(&[3, h], dt), randn(&[3, h], dt));
            let w = (randn(&[h], DType::F32) * 0.1).unwrap().to_dtype(dt).unwrap();
            let s = (&x + &a).unwrap();
            let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
            for one_plus in [false, true] {
                let want = if one_plus { ops::rms_norm_one_plus(&s, &w, 1e-6) } else { ops::rms_norm(&s, &w, 1e-6) }.unwrap();
                let (gs, gn) = infer::add_rms_norm(&g(&x), Some(&g(&a)), &g(&w), 1e-6, one_plus).unwrap();
                assert_eq!(bits(&gs), bits(&s), "residual sum {h} {dt:?}");
                let err = rel_err(&gn, &want);
                assert!(err < tol, "add_rms_norm h {h} one_plus {one_plus} {dt:?}: relative error {err:.2e}");
                let (_, gn1) = infer::add_rms_norm(&g(&s), None, &g(&w), 1e-6, one_plus).unwrap();
                assert!(rel_err(&gn1, &want) < tol, "rms_norm without residual h {h} {dt:?}");
            }
        }
    }
}

/// CPU reference of one decode-attention step: RoPE with tables from `inv`, grouped heads
/// repeated, scores scaled, masked to the window, softmax, weighted sum of v.
fn attention_reference((q, k, v): (&Tensor, &Tensor, &Tensor), (nh, nkv, hd): (usize, usize, usize), window: Option<usize>, inv: &[f32]) -> Tensor {
    let (b, len, _) = k.dims3().unwrap();
    let mut freqs = Vec::new();
    for p in 0..len {
        let row: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
        freqs.extend_from_slice(&row);
        freqs.extend_from_slice(&row);
    }
    let f = Tensor::from_vec(freqs, (len, 2 * inv.len()), &Device::Cpu).unwrap();
    let (cos, sin) = (f.cos().unwrap(), f.sin().unwrap());
    let heads = |t: &Tensor, n: usize, l: usize| t.reshape((b, l, n, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let last = |t: &Tensor| t.narrow(0, len - 1, 1).unwrap();
    let q = ops::apply_rope(&heads(q, nh, 1), &last(&cos), &last(&sin)).unwrap();
    let k = ops::apply_rope(&heads(k, nkv, len), &cos, &sin).unwrap();
    let v = heads(v, nkv, len);
    let rep = |t: &Tensor| {
        let (b, n, s, d) = t.dims4().unwrap();
        t.unsqueeze(2).unwrap().expand((b, n, nh / nkv, s, d)).unwrap().reshape((b, nh, s, d)).unwrap()
    };
    let (k, v) = (rep(&k), rep(&v));
    let scores = (q.contiguous().unwrap().matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt())).unwrap();
    let mut scores = scores.to_dtype(DType::F32).unwrap();
    if let Some(w) = window.filter(|w| *w < len) {
        let m: Vec<f32> = (0..len).map(|j| if j + w < len { f32::NEG_INFINITY } else { 0.0 }).collect();
        scores = scores.broadcast_add(&Tensor::from_vec(m, len, &Device::Cpu).unwrap()).unwrap();
    }
    let p = ops::softmax_last_dim(&scores).unwrap().to_dtype(v.dtype()).unwrap();
    p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, 1, nh * hd)).unwrap()
}

/// The KV-cache append (RoPE on k, in place, over two calls) and the decode attention (RoPE
/// on q, grouped heads, sliding window) against the unfused CPU attention.
#[test]
fn kv_append_and_decode_attention_match_the_cpu() {
    let dev = gpu();
    for (dt, tol) in [(DType::F32, 2e-5), (DType::BF16, 2e-2)] {
        for (nh, nkv, hd, rot, len, window, b) in [
            (4usize, 2usize, 16usize, 16usize, 37usize, None, 1usize),
            (8, 2, 64, 64, 200, Some(50), 2),
            (4, 4, 80, 32, 70, None, 3),
            (2, 1, 256, 256, 9, None, 1),
        ] {
            let inv: Vec<f32> = (0..rot / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rot as f32)).collect();
            let q = randn(&[b, 1, nh * hd], dt);
            let kv = randn(&[b, len, 2 * nkv * hd], dt);
            let (k, v) = (kv.narrow(2, 0, nkv * hd).unwrap(), kv.narrow(2, nkv * hd, nkv * hd).unwrap());
            let want = attention_reference((&q, &k.contiguous().unwrap(), &v.contiguous().unwrap()), (nh, nkv, hd), window, &inv);
            let cache = Tensor::zeros((2, b, nkv, 256, hd), dt, &dev).unwrap();
            let kvg = kv.to_device(&dev).unwrap();
            let split = len / 3;
            for (from, n) in [(0, split), (split, len - split)] {
                let kg = kvg.narrow(1, from, n).unwrap().narrow(2, 0, nkv * hd).unwrap();
                let vg = kvg.narrow(1, from, n).unwrap().narrow(2, nkv * hd, nkv * hd).unwrap();
                infer::kv_append(&cache, &kg, &vg, from, &inv).unwrap();
            }
            let got = infer::decode_attention(&q.to_device(&dev).unwrap(), &cache, len, window, 1.0 / (hd as f64).sqrt(), &inv).unwrap();
            assert_eq!(got.dims(), &[b, 1, nh * hd]);
            let err = rel_err(&got, &want);
            assert!(err < tol, "decode attention heads {nh}/{nkv} hd {hd} rot {rot} len {len} window {window:?} {dt:?}: relative error {err:.2e}");
        }
    }
}

/// The KV append folded into the decode attention (`decode_attention_append_at`) against the
/// two launches it replaces (`kv_append_at` then `decode_attention_at`), bit for bit: the
/// attention output and the whole cache afterwards. k and v narrowed from one fused q/k/v row
/// (strided batch rows), 8 query heads per kv head (two blocks per kv head: only the first
/// writes), a window, batch 1-3, the length from the host and from the device, f32/bf16/f16;
/// and the folded form with 4 and 8 cached positions a row slot in flight (bf16/f16: the first
/// loaded before the kernel's wait), over spans longer than one round of the slots.
#[test]
fn decode_attention_with_the_append_folded_in_equals_the_two_launches() {
    use qlora_studio::quant::cuda::infer::CacheLen;
    let dev = gpu();
    // (heads, kv heads, head_dim, rotary dims, cached positions before, window, batch)
    let cases = [
        (4usize, 2usize, 16usize, 16usize, 0usize, None, 1usize),
        (16, 2, 64, 64, 37, None, 2),
        (32, 4, 64, 64, 130, Some(50), 1),
        (8, 8, 80, 32, 5, None, 3),
        (4, 1, 256, 256, 9, Some(4), 2),
        (32, 8, 128, 128, 300, None, 1),
        (32, 4, 64, 64, 610, Some(530), 2),
    ];
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for (nh, nkv, hd, rot, past, window, b) in cases {
            let inv: Vec<f32> = (0..rot / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rot as f32)).collect();
            let (nq, nk) = (nh * hd, nkv * hd);
            let prior = randn(&[b, past.max(1), 2 * nk], dt).to_device(&dev).unwrap();
            let qkv = randn(&[b, 1, nq + 2 * nk], dt).to_device(&dev).unwrap();
            let (q, k, v) = (qkv.narrow(2, 0, nq).unwrap(), qkv.narrow(2, nq, nk).unwrap(), qkv.narrow(2, nq + nk, nk).unwrap());
            let scale = 1.0 / (hd as f64).sqrt();
            let dev_len = Tensor::new(&[(past + 1) as u32], &dev).unwrap();
            let mut results = Vec::new();
            for (folded, on_device, inflight) in
                [(false, false, 2), (true, false, 2), (true, true, 2), (true, false, 4), (true, true, 4), (true, true, 8)]
            {
                let cache = Tensor::zeros((2, b, nkv, (past + 2).max(192), hd), dt, &dev).unwrap();
                if past > 0 {
                    let (pk, pv) = (prior.narrow(2, 0, nk).unwrap(), prior.narrow(2, nk, nk).unwrap());
                    infer::kv_append(&cache, &pk, &pv, 0, &inv).unwrap();
                }
                let len = if on_device { CacheLen::Device(&dev_len) } else { CacheLen::Host(past + 1) };
                let out = if folded {
                    infer::with_attention_inflight(inflight, || {
                        infer::decode_attention_append_at(&q, (&k, &v), &cache, len, window, scale, &inv).unwrap()
                    })
                    .unwrap()
                } else {
                    infer::kv_append_at(&cache, &k, &v, CacheLen::Host(past), &inv).unwrap();
                    infer::decode_attention_at(&q, &cache, len, window, scale, &inv).unwrap()
                };
                assert_eq!(out.dims(), &[b, 1, nq]);
                results.push((bits(&out.to_device(&Device::Cpu).unwrap()), bits(&cache.to_device(&Device::Cpu).unwrap())));
            }
            let case = format!("heads {nh}/{nkv} hd {hd} rot {rot} past {past} window {window:?} b{b} {dt:?}");
            for (i, r) in results.iter().enumerate().skip(1) {
                assert!(r.0 == results[0].0, "{case}: folded attention output differs (variant {i})");
                assert!(r.1 == results[0].1, "{case}: folded KV append left another cache (variant {i})");
            }
        }
    }
}

/// The prefill softmax with the mask made in the kernel against mask + softmax on the CPU.
#[test]
fn masked_softmax_matches_mask_plus_softmax() {
    use qlora_studio::engine::model::layers::causal_mask;
    for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 8e-3)] {
        // Lengths on both sides of each register-row kernel's limit (128, 256, 512, 1024 keys) and
        // past it (the block-per-row kernel).
        for (t, past, window, rep) in [
            (7usize, 0usize, None, 2usize),
            (33, 5, Some(9), 3),
            (300, 0, None, 1),
            (128, 0, None, 1),
            (100, 29, Some(64), 2),
            (512, 0, None, 1),
            (1000, 24, None, 1),
            (1030, 10, Some(500), 1),
        ] {
            let len = past + t;
            let scores = randn(&[2, rep * t, len], dt);
            let mask = causal_mask(t, past, window, &Device::Cpu).unwrap().unwrap();
            let mask = Tensor::cat(&vec![&mask; rep], 0).unwrap();
            let scaled = (scores.to_dtype(DType::F32).unwrap() * 0.3).unwrap().broadcast_add(&mask).unwrap();
            let want = ops::softmax_last_dim(&scaled).unwrap();
            let got = infer::masked_softmax(&scores.to_device(&gpu()).unwrap(), t, past, window, 0.3).unwrap();
            let err = rel_err(&got, &want);
            assert!(err < tol, "masked softmax t {t} past {past} window {window:?} {dt:?}: relative error {err:.2e}");
        }
    }
}

/// The attention output back to rows (`[B, H, T, D]` → `[B, T, H·D]`) on CUDA against the
/// transpose on the CPU, bit for bit, for head sizes the 16-byte kernel takes and one it
/// does not (the strided copy).
#[test]
fn heads_to_rows_matches_transpose() {
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for (b, h, t, d) in [(1usize, 32usize, 512usize, 128usize), (2, 3, 7, 64), (1, 5, 9, 8), (2, 4, 6, 12)] {
            let x = randn(&[b, h, t, d], dt);
            let want = x.transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap();
            let got = infer::heads_to_rows(&x.to_device(&gpu()).unwrap()).unwrap();
            assert_eq!(got.dims(), &[b, t, h * d]);
            let diff = (got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "heads_to_rows {dt:?} {:?}", (b, h, t, d));
        }
    }
}

/// The q/k/v and gate/up GEMVs with the residual add + RMSNorm computed in their prologue
/// (`norm_gemv_multi_into`, `norm_gemv_glu_into`) against the two launches they replace
/// (`infer::add_rms_norm`, then `gemv_multi` / `gemv_glu`), bit for bit: the sum `s` and the
/// GEMV's output. Llama's and Gemma's norm, 1 and 2 rows, hidden sizes with a partial last
/// warp of the norm kernel (4160 = 520 threads), biases, three weights straddled by blocks,
/// f32/bf16/f16; and the launches refuse an output that overlaps an input.
#[test]
fn gemv_with_the_norm_in_its_prologue_equals_the_two_launches() {
    use qlora_studio::quant::cuda::fused::{NormedInput, norm_gemv_glu_into, norm_gemv_multi_into, normin_unsupported};
    let dev = gpu();
    let g = |t: &Tensor| t.to_device(&dev).unwrap();
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for k in [256usize, 2048, 4160] {
            let projs: Vec<Nf4Proj> = [(130usize, 1u64, true, true), (67, 2, false, false), (67, 3, true, true)]
                .iter()
                .map(|&(n, seed, dq, bias)| on_gpu(&proj(n, k, seed + k as u64, dq, bias, dt)))
                .collect();
            let (gate, up) = (on_gpu(&proj(203, k, 4, true, false, dt)), on_gpu(&proj(203, k, 5, true, true, dt)));
            let w = g(&(randn(&[k], DType::F32) * 0.1).unwrap().to_dtype(dt).unwrap());
            for m in [1usize, 2] {
                let (x, a) = (g(&randn(&[m, 1, k], dt)), g(&randn(&[m, 1, k], dt)));
                for one_plus in [false, true] {
                    let case = format!("k {k} m {m} one_plus {one_plus} {dt:?}");
                    let n = NormedInput { resid: &x, pending: &a, weight: &w, eps: 1e-5, one_plus };
                    assert!(normin_unsupported(&n, &projs, 1).is_none(), "{case}: {:?}", normin_unsupported(&n, &projs, 1));
                    let (s2, h2) = infer::add_rms_norm(&x, Some(&a), &w, 1e-5, one_plus).unwrap();
                    let want_qkv = gemv_multi(&h2, &projs).unwrap();
                    let (s_out, y_out) = (Tensor::zeros(m * k, dt, &dev).unwrap(), Tensor::zeros(m * 264, dt, &dev).unwrap());
                    let (s1, y1) = norm_gemv_multi_into(&n, &projs, &y_out, &s_out).unwrap();
                    assert_eq!(y1.dims(), &[m, 1, 264], "{case}");
                    assert!(bits(&s1) == bits(&s2), "{case}: the sum differs from add_rms_norm's");
                    assert!(bits(&y1) == bits(&want_qkv), "{case}: q/k/v differ from add_rms_norm + gemv_multi");
                    for act in [GluAct::Silu, GluAct::GeluTanh] {
                        let want = gemv_glu(&h2, &gate, &up, act).unwrap();
                        let y_out = Tensor::zeros(m * 203, dt, &dev).unwrap();
                        let (s1, y1) = norm_gemv_glu_into(&n, &gate, &up, act, &y_out, &s_out).unwrap();
                        assert!(bits(&s1) == bits(&s2), "{case} {act:?}: the sum differs");
                        assert!(bits(&y1) == bits(&want), "{case} {act:?}: the GLU differs from add_rms_norm + gemv_glu");
                    }
                }
            }
        }
        // An output on top of an input is refused, with a message that says so.
        let k = 256;
        let projs = vec![on_gpu(&proj(64, k, 9, true, false, dt))];
        let (resid, pending, w) = (g(&randn(&[1, 1, k], dt)), g(&randn(&[1, 1, k], dt)), g(&randn(&[k], dt)));
        let n = NormedInput { resid: &resid, pending: &pending, weight: &w, eps: 1e-5, one_plus: false };
        let y_out = Tensor::zeros(64, dt, &dev).unwrap();
        let err = norm_gemv_multi_into(&n, &projs, &y_out, &pending.flatten_all().unwrap()).unwrap_err().to_string();
        assert!(err.contains("overlaps an input"), "{dt:?}: {err}");
    }
}

// ---------------------------------------------------------------- the GEMV core's lane widths

/// The GEMV core loads 16 bytes a lane from k = 4096 on, 8 bytes from k = 2048, else 4 (1-2
/// rows of x; more rows keep 4): the single, stacked and gated GEMVs at the decode shapes'
/// input sizes (TinyLlama 2048 / 5632, Mistral-7B 4096 / 14336 whose rows are no whole number
/// of 512-byte warp steps), blocksizes 32 / 64 / 128, plain and double-quantized scales,
/// blocks straddling two weights, against the CPU twins.
#[test]
fn wide_lane_gemv_matches_the_cpu_twins() {
    let dev = gpu();
    for (n, k, dq, bs) in
        [(37usize, 4096usize, true, 32usize), (21, 5632, true, 64), (9, 14336, false, 64), (33, 2048, true, 128), (12, 4160, true, 64)]
    {
        let opts = Nf4Options { blocksize: bs, double_quant: dq, ..Default::default() };
        let q = Nf4Tensor::quantize_with(&weight(&[n, k], (n + k) as u64), &opts).unwrap();
        let qg = q.to_device(&dev).unwrap();
        for m in [1usize, 2, 3] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 8e-3), (DType::F16, 2e-3)] {
                let xc = x.to_dtype(dt).unwrap();
                let want = cuda::gemv(&xc, &q).unwrap();
                let got = cuda::gemv(&xc.to_device(&dev).unwrap(), &qg).unwrap();
                let err = rel_err(&got, &want);
                assert!(err < tol, "gemv n {n} k {k} bs {bs} dq {dq} m {m} {dt:?}: relative error {err:.2e} (tolerance {tol:e})");
            }
        }
    }
    for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        for k in [2048usize, 4096, 5632] {
            let projs = [proj(66, k, 11, true, true, dt), proj(7, k, 12, false, false, dt), proj(30, k, 13, true, true, dt)];
            let gprojs: Vec<Nf4Proj> = projs.iter().map(on_gpu).collect();
            let (gate, up) = (proj(45, k, 14, true, true, dt), proj(45, k, 15, true, false, dt));
            for m in [1usize, 2] {
                let x = randn(&[1, m, k], dt);
                let xg = x.to_device(&dev).unwrap();
                let err = rel_err(&gemv_multi(&xg, &gprojs).unwrap(), &gemv_multi(&x, &projs).unwrap());
                assert!(err < tol, "gemv_multi k {k} m {m} {dt:?}: relative error {err:.2e}");
                let want = gemv_glu(&x, &gate, &up, GluAct::Silu).unwrap();
                let err = rel_err(&gemv_glu(&xg, &on_gpu(&gate), &on_gpu(&up), GluAct::Silu).unwrap(), &want);
                assert!(err < tol, "gemv_glu k {k} m {m} {dt:?}: relative error {err:.2e}");
            }
        }
    }
}

/// The greedy pick on the GPU (`infer::argmax_rows` / `argmax_into`) against candle's CPU argmax
/// (the first index of the largest value): 32,000- and 32,001-wide rows (16-byte and
/// element-wise loads), rows whose largest value repeats (ties) or sits at either end, a row of
/// -inf, in f32, bf16 and f16; and `argmax_into` adding one to a device length.
#[test]
fn argmax_rows_match_the_cpu() {
    let dev = gpu();
    for (n, dt) in [(32_000usize, DType::BF16), (32_001, DType::BF16), (32_000, DType::F32), (4_099, DType::F16), (1, DType::F32)] {
        let rows = 6usize;
        let mut v: Vec<f32> = Tensor::randn(0f32, 1f32, (rows, n), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        if n > 8 {
            v[n - 1] = 9.0; // row 0: the largest at the end
            v[n] = 9.0; // row 1: at the start
            for j in [17, 300, n - 2] {
                v[2 * n + j] = 7.5; // row 2: three equal largest values
            }
            for x in &mut v[3 * n..4 * n] {
                *x = f32::NEG_INFINITY; // row 3: nothing but -inf
            }
        }
        let x = Tensor::from_vec(v, (rows, n), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
        let want: Vec<u32> = x.to_dtype(DType::F32).unwrap().argmax(qlora_studio::engine::candle_core::D::Minus1).unwrap().to_vec1().unwrap();
        let got: Vec<u32> = infer::argmax_rows(&x.to_device(&dev).unwrap()).unwrap().to_vec1().unwrap();
        assert_eq!(got, want, "argmax of {rows} rows of {n} {dt:?}");
        if n > 8 {
            assert_eq!(&got[..4], &[n as u32 - 1, 0, 17, 0]);
        }
    }
    let x = Tensor::randn(0f32, 1f32, (2, 1000), &dev).unwrap();
    let ids = Tensor::zeros(2, DType::U32, &dev).unwrap();
    let len = Tensor::new(&[41u32], &dev).unwrap();
    infer::argmax_into(&x, &ids, Some(&len)).unwrap();
    assert_eq!(len.to_vec1::<u32>().unwrap(), [42]);
    assert_eq!(
        ids.to_vec1::<u32>().unwrap(),
        x.to_device(&Device::Cpu).unwrap().argmax(qlora_studio::engine::candle_core::D::Minus1).unwrap().to_vec1::<u32>().unwrap()
    );
    assert!(infer::argmax_into(&x, &Tensor::zeros(3, DType::U32, &dev).unwrap(), None).is_err(), "ids of the wrong length were taken");
}
