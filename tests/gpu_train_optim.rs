//! The multi-tensor optimizer kernels (`qlora-quant/kernels/optim.cu`) against the per-tensor
//! path they replace, on CUDA (run only on a machine with an NVIDIA GPU, built with
//! `--features cuda`):
//!
//! - AdamW over many tensors in one launch equals the three in-place kernels per tensor, and
//!   the CPU composite, to the bit (parameters and both moments; odd sizes, several blocks a
//!   tensor, weight decay on and off, a clipping factor applied while reading the gradient);
//! - the 16-bit shadow copies it writes equal `to_dtype` of the new parameters to the bit;
//! - the global gradient norm from the two-launch sum of squares matches an f64 sum on the CPU;
//! - a LoRA's training forward and backward with its rank-sized products as one cuBLAS call
//!   each (the default; `QLORA_LORA_GEMM=0` turns it off) against the matmul + scale + cast form and the CPU in f32.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::{DType, Device, Tensor, Var};
use qlora_studio::train::optim::{self, AdamW, AdamWParams, Param};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (CUDA device 0) and its driver")
}

const SHAPES: [(usize, usize); 6] = [(16, 320), (200, 16), (7, 33), (1, 1), (16, 4113), (3, 2)];

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// Three steps (the second with a clipping factor) on `dev`, fused or not; the parameters and
/// moments after them.
fn run(dev: &Device, fused: bool, wd: f64, w0: &[Tensor], grads: &[Vec<Tensor>]) -> Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let params: Vec<Param> =
        w0.iter().enumerate().map(|(i, w)| Param { name: format!("p{i}"), var: Var::from_tensor(&w.to_device(dev).unwrap()).unwrap() }).collect();
    let hp = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd };
    let mut opt = AdamW::new(params.clone(), hp).unwrap();
    opt.set_fused(fused);
    for (t, gs) in grads.iter().enumerate() {
        let gs: Vec<Tensor> = gs.iter().map(|g| g.to_device(dev).unwrap()).collect();
        let scale = (t == 1).then_some(0.37);
        opt.step_scaled(&gs, 2e-4, scale).unwrap();
    }
    let (state, _) = opt.state();
    params
        .iter()
        .map(|p| (bits(p.var.as_tensor()), bits(&state[&format!("{}.exp_avg", p.name)]), bits(&state[&format!("{}.exp_avg_sq", p.name)])))
        .collect()
}

#[test]
fn multi_tensor_adamw_equals_the_per_tensor_kernels_to_the_bit() {
    let cpu = Device::Cpu;
    let w0: Vec<Tensor> = SHAPES.iter().map(|&s| Tensor::randn(0f32, 0.1, s, &cpu).unwrap()).collect();
    let grads: Vec<Vec<Tensor>> = (0..3).map(|_| SHAPES.iter().map(|&s| Tensor::randn(0f32, 1e-3, s, &cpu).unwrap()).collect()).collect();
    let dev = gpu();
    for wd in [0.0, 0.01] {
        let fused = run(&dev, true, wd, &w0, &grads);
        let per_tensor = run(&dev, false, wd, &w0, &grads);
        let on_cpu = run(&cpu, false, wd, &w0, &grads);
        for (i, ((f, p), c)) in fused.iter().zip(&per_tensor).zip(&on_cpu).enumerate() {
            assert_eq!(f, p, "wd {wd}: tensor {i} {:?}: fused vs per-tensor kernels", SHAPES[i]);
            assert_eq!(f, c, "wd {wd}: tensor {i} {:?}: fused vs the CPU", SHAPES[i]);
        }
    }
}

#[test]
fn multi_tensor_adamw_writes_shadow_copies_equal_to_to_dtype() {
    use qlora_studio::quant::cuda::optim::{AdamWConsts, AdamWSlot, adamw_multi};
    let dev = gpu();
    for dt in [DType::BF16, DType::F16] {
        let ws: Vec<Tensor> = SHAPES.iter().map(|&s| Tensor::randn(0f32, 0.1, s, &dev).unwrap()).collect();
        let ms: Vec<Tensor> = ws.iter().map(|w| w.zeros_like().unwrap()).collect();
        let vs: Vec<Tensor> = ws.iter().map(|w| w.zeros_like().unwrap()).collect();
        let gs: Vec<Tensor> = SHAPES.iter().map(|&s| Tensor::randn(0f32, 1e-3, s, &dev).unwrap()).collect();
        let shadows: Vec<Tensor> = ws.iter().map(|w| w.zeros_like().unwrap().to_dtype(dt).unwrap()).collect();
        let slots: Vec<AdamWSlot> =
            (0..ws.len()).map(|i| AdamWSlot { w: &ws[i], m: &ms[i], v: &vs[i], g: &gs[i], shadow: (i != 2).then_some(&shadows[i]) }).collect();
        let c = AdamWConsts { b1: 0.9, c1: 0.1, b2: 0.999, c2: 1e-3, inv_bc2: 31.6, eps: 1e-8, step_size: 2e-3, decay: 1.0, ..Default::default() };
        adamw_multi(&slots, &c).unwrap();
        for (i, (w, s)) in ws.iter().zip(&shadows).enumerate() {
            let want = if i == 2 { w.zeros_like().unwrap().to_dtype(dt).unwrap() } else { w.to_dtype(dt).unwrap() };
            let (a, b) = (want.to_dtype(DType::F32).unwrap(), s.to_dtype(DType::F32).unwrap());
            assert_eq!(bits(&a), bits(&b), "{dt:?}: tensor {i}'s shadow (tensor 2 has none: left as it was)");
        }
    }
}

#[test]
fn fused_global_norm_matches_an_f64_sum() {
    let dev = gpu();
    let gs: Vec<Tensor> = SHAPES.iter().map(|&s| Tensor::randn(0f32, 1.0, s, &dev).unwrap()).collect();
    let want: f64 = gs
        .iter()
        .flat_map(|g| g.flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap())
        .map(|x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let got = optim::global_norm(&gs).unwrap();
    assert!((got - want).abs() <= 1e-12 * want, "fused norm {got} vs {want}");
    assert_eq!(got, optim::global_norm(&gs).unwrap(), "the same sum twice (a fixed order)");
    let bf: Vec<Tensor> = gs.iter().map(|g| g.to_dtype(DType::BF16).unwrap()).collect();
    let n16 = optim::global_norm(&bf).unwrap();
    assert!((n16 - want).abs() < 1e-2 * want, "bf16 gradients: {n16} vs {want}");
}

/// The gradients a hand-written backward hands over, in order.
#[derive(Default)]
struct Grads(Vec<Tensor>);

impl qlora_studio::engine::linear::GradSink for Grads {
    fn add(&mut self, _p: &Tensor, g: Tensor) -> qlora_studio::engine::candle_core::Result<()> {
        self.0.push(g);
        Ok(())
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let f32_cpu = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let (a, b) = (f32_cpu(a), f32_cpu(b));
    let d = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    d / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt().max(1e-30)
}

/// The LoRA's training forward and backward with its rank-sized products as one cuBLAS call
/// each (scale as alpha, f32 gradients written directly: `lora::set_fused_products`, on by
/// default, `QLORA_LORA_GEMM=0` turns it off) against candle's matmul + scale + cast, bf16 on the GPU, and both against the CPU
/// in f32 (the same dropout mask everywhere). A power-of-two scale (2.0) gives the same
/// rank-sized product; 1.5 one bf16 rounding apart.
#[test]
fn lora_products_in_one_call_match_matmul_then_scale_and_cast() {
    use qlora_studio::engine::linear::{ArcLinear, DenseLinear, Linear};
    use qlora_studio::train::lora::{TrainLora, set_fused_products};
    use std::sync::Arc;
    let cpu = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (96, 320), &cpu).unwrap();
    let b0 = Tensor::randn(0f32, 0.05, (96, 16), &cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 48, 320), &cpu).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (2, 48, 96), &cpu).unwrap();
    for scale in [2.0, 1.5] {
        let run = |dev: &Device, dt: DType, fused: bool| {
            set_fused_products(Some(fused));
            let base: ArcLinear = Arc::new(DenseLinear::new(w.to_dtype(dt).unwrap().to_device(dev).unwrap(), None));
            let l = TrainLora::new(base, 16, scale, 0.05, 11, dev).unwrap();
            l.b.set(&b0.to_device(dev).unwrap()).unwrap();
            let (x, dy) = (x.to_dtype(dt).unwrap().to_device(dev).unwrap(), dy.to_dtype(dt).unwrap().to_device(dev).unwrap());
            let s0 = l.rng_state();
            let (y, r) = l.forward_train(&x).unwrap();
            let mut g = Grads::default();
            let dx = l.backward(x.clone(), &dy, &r, &mut g).unwrap();
            // The lazy replay (no kept product) takes the other branch of the backward.
            l.set_rng_state(s0);
            let r2 = l.replay_lazy(&x).unwrap();
            let mut g2 = Grads::default();
            let dx2 = l.backward_owned(x.copy().unwrap(), &dy, &r2, &mut g2).unwrap();
            set_fused_products(None);
            let [gb, ga] = [g.0[0].clone(), g.0[1].clone()];
            assert_eq!((gb.dtype(), ga.dtype()), (DType::F32, DType::F32));
            (y, dx, ga, gb, dx2, g2.0)
        };
        let (yf, dxf, gaf, gbf, dx2f, g2f) = run(&gpu(), DType::BF16, true);
        let (yc, dxc, gac, gbc, _, _) = run(&gpu(), DType::BF16, false);
        let (y32, dx32, ga32, gb32, _, _) = run(&cpu, DType::F32, false);
        for (what, f, c, r) in
            [("y", &yf, &yc, &y32), ("x gradient", &dxf, &dxc, &dx32), ("A gradient", &gaf, &gac, &ga32), ("B gradient", &gbf, &gbc, &gb32)]
        {
            assert!(rel(f, c) < 1e-2, "scale {scale}: {what}: one call vs matmul + scale + cast: {}", rel(f, c));
            // No further from f32 than the old form (a little closer: one rounding less).
            assert!(rel(f, r) <= rel(c, r) * 1.05 + 1e-6, "scale {scale}: {what}: vs f32 {} (old form {})", rel(f, r), rel(c, r));
        }
        assert!(rel(&dx2f, &dxf) < 1e-2, "lazy replay's x gradient: {}", rel(&dx2f, &dxf));
        assert!(rel(&g2f[1], &gaf) < 1e-2 && rel(&g2f[0], &gbf) < 1e-2, "lazy replay's A / B gradients");
    }
}
