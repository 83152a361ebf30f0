//! The engine on CUDA against the engine on the CPU (run only on a machine with an NVIDIA GPU,
//! built with `--features cuda`). The tiny random-weight fixtures of `tests/fixtures/tiny/`
//! (the CPU results of which match transformers, see `engine_conformance.rs`) run on CUDA in
//! f32: logits within 1e-3 of the CPU f32 result at every position, the same argmax, and the
//! same greedy ids through the KV cache. In NF4 (double quant), the GPU's fused GEMV / dequant
//! kernels give the CPU's logits within the same tolerance.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::{D, DType, Device, IndexOp, Tensor};
use qlora_studio::engine::{LoadOptions, Model, Quant};
use std::path::PathBuf;

/// `tests/fixtures/tiny/<name>`, found from the working directory (the GPU machine runs the
/// test binary from another checkout) or from where the crate was built.
fn fixture(name: &str) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let roots = cwd.ancestors().chain(here.ancestors()).map(|p| p.to_path_buf()).collect::<Vec<_>>();
    let root = roots
        .into_iter()
        .find(|d| d.join("tests/fixtures/tiny").is_dir())
        .expect("tests/fixtures/tiny not found: run from the repository");
    root.join("tests/fixtures/tiny").join(name)
}

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (CUDA device 0) and its driver")
}

fn input_ids(name: &str) -> Vec<u32> {
    let dir = fixture(name);
    let tensors = if name == "llama_sharded" { fixture("llama") } else { dir };
    let w = qlora_studio::engine::Weights::from_files(&tensors, &[tensors.join("reference.safetensors")]).unwrap();
    w.get("input_ids", &Device::Cpu).unwrap().flatten_all().unwrap().to_dtype(DType::U32).unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn argmax(t: &Tensor) -> Vec<u32> {
    t.to_device(&Device::Cpu).unwrap().argmax(D::Minus1).unwrap().to_vec1().unwrap()
}

/// Full-sequence logits `[T, V]` and 8 greedy steps through the KV cache (ids, step logits).
fn run(model: &Model, ids: &[u32]) -> (Tensor, Vec<u32>, Tensor) {
    let dev = model.device().clone();
    let input = Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap().to_dtype(DType::F32).unwrap();
    let mut cache = model.new_cache();
    let mut input = Tensor::new(&ids[..8], &dev).unwrap().unsqueeze(0).unwrap();
    let (mut out, mut steps) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let l = model.forward(&input, Some(&mut cache)).unwrap();
        let last = l.i((0, l.dim(1).unwrap() - 1)).unwrap().to_dtype(DType::F32).unwrap();
        let next = argmax(&last.unsqueeze(0).unwrap())[0];
        out.push(next);
        steps.push(last.to_device(&Device::Cpu).unwrap());
        input = Tensor::new(&[[next]], &dev).unwrap();
    }
    (logits, out, Tensor::stack(&steps, 0).unwrap())
}

fn check(name: &str, quant: Quant, tol: f32) {
    let ids = input_ids(name);
    let cpu_opts = LoadOptions { quant, ..LoadOptions::default() };
    let gpu_opts = LoadOptions { quant, device: gpu(), ..LoadOptions::default() };
    let cpu = Model::load(&fixture(name), &cpu_opts).unwrap_or_else(|e| panic!("{name} on cpu: {e}"));
    let gpu = Model::load(&fixture(name), &gpu_opts).unwrap_or_else(|e| panic!("{name} on cuda: {e}"));
    let (lc, ic, sc) = run(&cpu, &ids);
    let (lg, ig, sg) = run(&gpu, &ids);
    let all = max_abs_diff(&lg, &lc);
    let step = max_abs_diff(&sg, &sc);
    eprintln!("{name} {quant:?}: cuda vs cpu max |logit diff| {all:.2e}, cached steps {step:.2e}");
    assert!(all <= tol, "{name} {quant:?}: CUDA logits differ from the CPU's by {all}");
    assert_eq!(argmax(&lg), argmax(&lc), "{name} {quant:?}: argmax differs on CUDA");
    assert_eq!(ig, ic, "{name} {quant:?}: greedy ids through the KV cache differ on CUDA");
    assert!(step <= tol, "{name} {quant:?}: cached decode logits differ by {step}");
}

macro_rules! conformance {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check($name, Quant::None, 1e-3);
            check($name, Quant::Nf4DoubleQuant, 1e-3);
        }
    )*};
}

conformance! {
    llama => "llama",
    llama3_rope => "llama3_rope",
    mistral_sliding_window => "mistral",
    phi => "phi",
    gemma => "gemma",
    qwen2 => "qwen2",
    llama_bf16_on_disk => "llama_bf16",
}

/// bf16 compute on CUDA (the decode path the benchmark measures) drifts from f32 no more than
/// bf16 compute on the CPU does: both against the CPU's f32 logits, same NF4 weights.
#[test]
fn llama_nf4_in_bf16_on_cuda() {
    let ids = input_ids("llama");
    let load = |dtype, device| {
        Model::load(&fixture("llama"), &LoadOptions { quant: Quant::Nf4DoubleQuant, dtype, device }).unwrap()
    };
    let (l32, _, _) = run(&load(DType::F32, Device::Cpu), &ids);
    let (lcpu, _, _) = run(&load(DType::BF16, Device::Cpu), &ids);
    let (lgpu, _, _) = run(&load(DType::BF16, gpu()), &ids);
    let (dcpu, dgpu) = (max_abs_diff(&lcpu, &l32), max_abs_diff(&lgpu, &l32));
    let agree = |l: &Tensor| argmax(l).iter().zip(argmax(&l32)).filter(|(a, b)| **a == *b).count();
    let (acpu, agpu) = (agree(&lcpu), agree(&lgpu));
    eprintln!("llama nf4 bf16 vs f32: cuda drift {dgpu:.3} (argmax {agpu}/{n}), cpu drift {dcpu:.3} (argmax {acpu}/{n})", n = ids.len());
    assert!(dgpu <= 1.5 * dcpu + 0.05, "bf16 on CUDA drifts by {dgpu}, bf16 on the CPU by {dcpu}");
    assert!(agpu + 2 >= acpu, "argmax agrees at {agpu} positions on CUDA, {acpu} on the CPU");
}

/// The fused path's KV cache starts at 256 positions and doubles when a generation outlasts
/// it: 300 single-token steps on CUDA give the CPU's logits at every step.
#[test]
fn kv_cache_grows_past_its_first_allocation() {
    let ids = input_ids("llama");
    let load = |device| Model::load(&fixture("llama"), &LoadOptions { device, ..LoadOptions::default() }).unwrap();
    let (cpu, gpu) = (load(Device::Cpu), load(gpu()));
    let (mut cc, mut cg) = (cpu.new_cache(), gpu.new_cache());
    let mut worst = 0f32;
    for i in 0..300 {
        let id = ids[i % ids.len()];
        let lc = cpu.forward(&Tensor::new(&[[id]], &Device::Cpu).unwrap(), Some(&mut cc)).unwrap();
        let lg = gpu.forward(&Tensor::new(&[[id]], gpu.device()).unwrap(), Some(&mut cg)).unwrap();
        worst = worst.max(max_abs_diff(&lg, &lc));
    }
    assert_eq!(cg.len(), 300);
    assert!(worst <= 1e-3, "logits differ by {worst} over 300 cached steps");
}
