//! Gradient checkpointing's host offload and the loss's head gradient on CUDA (run only on a
//! machine with an NVIDIA GPU, built with `--features cuda`; the CPU side is
//! `train_checkpoint_offload.rs`):
//!
//! - `HostStash` (qlora-quant `cuda/offload.rs`) gives back bit for bit what was pushed while
//!   the tensors' device memory is freed and reused by other work between push and take, and
//!   holds one tensor's worth of device memory after the forward where keeping them on the
//!   device holds all of them;
//! - the trainer's LoRA gradients with the checkpoints offloaded are those with the
//!   checkpoints on the GPU, exactly (compared with the run-to-run difference of the
//!   on-device path, which is zero when the kernels are deterministic);
//! - the fused loss's `∂L/∂hidden` (now `∂L/∂logits · W`, no `Wᵀ` copy) against the CPU's
//!   autograd, for tied (Qwen2), untied (Llama) and biased (Phi) heads, in f32 and bf16.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::cuda_backend::cudarc::driver::{result, sys};
use qlora_studio::engine::candle_core::{DType, Device, Tensor};
use qlora_studio::engine::linear::Quant;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::quant::cuda::offload::HostStash;
use qlora_studio::train::config::TrainConfig;
use qlora_studio::train::data::batch::Batch;
use qlora_studio::train::lora::Attached;
use qlora_studio::train::loss;
use qlora_studio::train::trainer::stash::{Checkpointing, Stash};
use qlora_studio::train::trainer::{self, step};
use std::path::{Path, PathBuf};

/// `tests/fixtures`, found from the working directory (the GPU machine runs the test binary
/// from another checkout) or from where the crate was built.
fn fixtures() -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    cwd.ancestors()
        .chain(here.ancestors())
        .map(|p| p.join("tests/fixtures"))
        .find(|d| d.join("tiny/llama").is_dir())
        .expect("tests/fixtures/tiny/llama not found: run from the repository")
}

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (CUDA device 0) and its driver")
}

/// Bytes in use in the device's default pool (where candle allocates), after a sync.
fn pool_used(dev: &Device) -> u64 {
    dev.synchronize().unwrap();
    let Device::Cuda(c) = dev else { panic!("not a CUDA device") };
    let p = unsafe { result::device::get_default_mem_pool(c.cuda_stream().context().cu_device()).unwrap() };
    let mut v = 0u64;
    unsafe { result::mem_pool::get_attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &mut v as *mut u64 as *mut _).unwrap() };
    v
}

/// The values' bits (bf16 → f32 is exact).
fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// The chain `x_{i+1} = sin(x_i · W) + i` in bf16, `[4, 256, 1024]` (2 MiB a tensor).
fn next(x: &Tensor, w: &Tensor, i: usize) -> Tensor {
    (x.broadcast_matmul(w).unwrap().sin().unwrap() + i as f64).unwrap()
}

/// Work that allocates and frees a few tensors the size of the stashed ones, so a freed
/// input's memory is handed out again at once (a copy still reading it would see it change).
fn churn(x: &Tensor, w: &Tensor) {
    for _ in 0..3 {
        let y = x.broadcast_matmul(w).unwrap();
        let z = (y.exp().unwrap() * 0.5).unwrap();
        drop(z.sum_all().unwrap());
    }
}

#[test]
fn host_stash_gives_back_what_was_pushed_while_the_memory_is_reused() {
    let dev = gpu();
    let Device::Cuda(c) = &dev else { unreachable!() };
    // As in training: one stream, cudarc's per-allocation events off (the model does this on load).
    qlora_studio::quant::cuda::infer::single_stream_fast_alloc(c);
    let layers = 12;
    let x0 = Tensor::randn(0f32, 1.0, (4, 256, 1024), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
    let w = (Tensor::randn(0f32, 1.0, (1024, 1024), &Device::Cpu).unwrap() / 32.0).unwrap().to_dtype(DType::BF16).unwrap().to_device(&dev).unwrap();
    let size = (4 * 256 * 1024 * 2) as u64;
    let mut want = Vec::new();
    let mut x = x0.clone();
    for i in 0..layers {
        want.push(bits(&x));
        x = next(&x, &w, i);
    }
    drop(x);

    // Inputs kept on the device, for the memory comparison.
    let base = pool_used(&dev);
    let mut kept = Stash::new(&dev, layers, Checkpointing::OnDevice).unwrap();
    let mut x = x0.clone();
    for i in 0..layers {
        kept.push(&x).unwrap();
        x = next(&x, &w, i);
    }
    drop(x);
    let on_device = pool_used(&dev) - base;
    drop(kept);

    let base = pool_used(&dev);
    let mut stash = HostStash::new(&dev, layers).unwrap();
    let mut x = x0.clone();
    for i in 0..layers {
        stash.push(&x).unwrap();
        churn(&x, &w);
        x = next(&x, &w, i);
    }
    drop(x);
    let offloaded = pool_used(&dev) - base;
    eprintln!("after {layers} pushes of {size} bytes: {on_device} bytes on the device kept, {offloaded} offloaded");
    // x0 is held by the test itself (counted in `base`): the device stash adds the other
    // inputs, the offloaded one only the last input (it stays for the backward).
    assert!(on_device >= (layers as u64 - 1) * size, "the device stash holds {on_device} bytes");
    assert!(offloaded <= size + size / 2, "the offloaded stash still holds {offloaded} bytes of the device");
    assert!(qlora_studio::quant::cuda::offload::pinned_bytes(c).unwrap() >= (layers - 1) * size as usize);

    for i in (0..layers).rev() {
        let got = stash.take(i).unwrap();
        churn(&got, &w);
        assert_eq!(got.dims(), &[4, 256, 1024]);
        assert!(bits(&got) == want[i], "tensor {i} came back different");
    }
    assert!(stash.take(3).unwrap_err().to_string().contains("already taken"));

    // A second stash reuses the pool's pinned buffers.
    let pinned = qlora_studio::quant::cuda::offload::pinned_bytes(c).unwrap();
    drop(stash);
    let mut again = HostStash::new(&dev, layers).unwrap();
    let mut x = x0.clone();
    for i in 0..layers {
        again.push(&x).unwrap();
        x = next(&x, &w, i);
    }
    assert_eq!(qlora_studio::quant::cuda::offload::pinned_bytes(c).unwrap(), pinned, "pinned buffers were not reused");
    for i in (0..layers).rev() {
        assert!(bits(&again.take(i).unwrap()) == want[i], "second use: tensor {i} came back different");
    }
}

fn config(model: &Path) -> TrainConfig {
    let yaml = format!(
        "model: {}\nquant: {{kind: nf4, double_quant: true}}\ncompute_dtype: bf16\n\
         lora: {{rank: 4, alpha: 8, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}\n\
         data: {{files: [unused.jsonl], max_len: 64}}\nmax_steps: 1\ngradient_checkpointing: true\n",
        model.display()
    );
    TrainConfig::from_yaml_str(&yaml, None).unwrap()
}

fn setup(dev: &Device) -> (Model, Attached) {
    let dir = fixtures().join("tiny/llama");
    let opts = LoadOptions { dtype: DType::BF16, quant: Quant::Nf4DoubleQuant, device: dev.clone() };
    let mut model = Model::load(&dir, &opts).unwrap();
    model.set_training(true);
    let lora = trainer::attach(&mut model, &config(&dir)).unwrap();
    qlora_studio::train::adapter::load_into(&fixtures().join("lora_grads/adapter"), &lora).unwrap();
    (model, lora)
}

/// Two rows of 24 tokens, next-token labels, one position unweighted.
fn batch(vocab: u32) -> Batch {
    let (rows, seq) = (2, 24);
    let ids: Vec<u32> = (0..rows * seq).map(|i| (i as u32 * 37 + 5) % vocab).collect();
    let mut labels = vec![0; rows * seq];
    let mut weights = vec![0.0; rows * seq];
    for r in 0..rows {
        for t in 0..seq - 1 {
            labels[r * seq + t] = ids[r * seq + t + 1];
            weights[r * seq + t] = if t == 3 { 0.0 } else { 1.0 };
        }
    }
    Batch { rows, seq, ids, labels, weights, tokens: rows * seq }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    a.sub(&b).unwrap().abs().unwrap().max_all().unwrap().to_device(&Device::Cpu).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn trainer_gradients_with_offloaded_checkpoints_equal_those_kept_on_the_gpu() {
    let dev = gpu();
    let (model, lora) = setup(&dev);
    assert!(Stash::new(&dev, model.num_layers(), Checkpointing::Offload).unwrap().offloads());
    let b = batch(model.config().vocab_size as u32);
    let norm = b.target_count() as f64;
    let rng: Vec<u64> = lora.iter().map(|(_, l)| l.rng_state()).collect();
    let run = |mode: Checkpointing| {
        for ((_, l), s) in lora.iter().zip(&rng) {
            l.set_rng_state(*s);
        }
        step::micro_step(&model, &lora, &b, norm, 1.0, mode).unwrap()
    };
    let (l_dev, g_dev) = run(Checkpointing::OnDevice);
    let (l_ctl, g_ctl) = run(Checkpointing::OnDevice);
    let (l_off, g_off) = run(Checkpointing::Offload);
    let mut worst_ctl = 0f32;
    let mut worst_off = 0f32;
    for (i, ((d, c), o)) in g_dev.iter().zip(&g_ctl).zip(&g_off).enumerate() {
        let scale = d.abs().unwrap().max_all().unwrap().to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0, "gradient {i} is zero");
        worst_ctl = worst_ctl.max(max_abs(c, d));
        worst_off = worst_off.max(max_abs(o, d));
    }
    eprintln!("loss {l_dev} / {l_ctl} / {l_off}; max |Δgrad| run to run {worst_ctl:e}, offloaded {worst_off:e}");
    assert!((l_off - l_dev).abs() <= (l_ctl - l_dev).abs(), "loss {l_off} offloaded vs {l_dev}");
    assert!(worst_off <= worst_ctl, "offloaded gradients differ by {worst_off:e}, run to run by {worst_ctl:e}");
}

#[test]
fn fused_loss_hidden_gradient_matches_the_cpu_for_every_kind_of_head() {
    let dev = gpu();
    for name in ["qwen2", "llama", "phi"] {
        let dir = fixtures().join("tiny").join(name);
        let load = |device: &Device, dtype| {
            let mut m = Model::load(&dir, &LoadOptions { dtype, quant: Quant::None, device: device.clone() }).unwrap();
            m.set_training(true);
            m
        };
        let cpu = load(&Device::Cpu, DType::F32);
        let (t, v) = (300, cpu.config().vocab_size as u32); // two loss chunks
        let ids = Tensor::from_vec((0..t as u32).map(|i| (i * 7 + 3) % v).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec((0..t as u32).map(|i| (i * 5 + 2) % v).collect::<Vec<_>>(), (1, t), &Device::Cpu).unwrap();
        let wts: Vec<f32> = (0..t).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
        let weights = Tensor::from_vec(wts, (1, t), &Device::Cpu).unwrap();
        let hidden = cpu.forward_hidden(&ids, None).unwrap();
        let (want_l, want_g) = loss::loss_and_hidden_grad_autograd(&cpu, &hidden, &labels, &weights, 200.0, 2.0).unwrap();
        let scale = want_g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
            let m = load(&dev, dtype);
            let h = hidden.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
            let (lab, w) = (labels.to_device(&dev).unwrap(), weights.to_device(&dev).unwrap());
            let (l, g) = loss::loss_and_hidden_grad(&m, &h, &lab, &w, 200.0, 2.0).unwrap();
            assert_eq!(g.dims(), hidden.dims());
            let diff = max_abs(&g.to_device(&Device::Cpu).unwrap(), &want_g);
            eprintln!("{name} {dtype:?}: loss {l} vs {want_l}, max |Δ ∂L/∂h| {diff:e} of {scale:e}");
            assert!((l - want_l).abs() <= tol * want_l.abs(), "{name} {dtype:?}: loss {l} vs {want_l}");
            assert!(diff <= tol as f32 * scale, "{name} {dtype:?}: ∂L/∂h differs by {diff} (max {scale})");
        }
    }
}
