//! The engine on CUDA against the engine on the CPU (run only on a machine with an NVIDIA GPU,
//! built with `--features cuda`). The tiny random-weight fixtures of `tests/fixtures/tiny/`
//! (the CPU results of which match transformers, see `engine_conformance.rs`) run on CUDA in
//! f32: logits within 1e-3 of the CPU f32 result at every position, the same argmax, and the
//! same greedy ids through the KV cache. In NF4 (double quant), the GPU's fused GEMV / dequant
//! kernels give the CPU's logits within the same tolerance. One-token steps replay a CUDA graph
//! (`model/decode_graph.rs`); the `graph_*` tests check it against the eager fused path (graphs
//! turned off for that cache) and the CPU, across a cache growth, a sliding window and batch 2.
#![cfg(feature = "cuda")]

use qlora_studio::engine::candle_core::{D, DType, Device, IndexOp, Tensor};
use qlora_studio::engine::{KvCache, LoadOptions, Model, Quant};
use std::path::PathBuf;

/// `tests/fixtures/tiny/<name>`, found from the working directory (the GPU machine runs the
/// test binary from another checkout) or from where the crate was built.
fn fixture(name: &str) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let roots = cwd.ancestors().chain(here.ancestors()).map(|p| p.to_path_buf()).collect::<Vec<_>>();
    let root = roots.into_iter().find(|d| d.join("tests/fixtures/tiny").is_dir()).expect("tests/fixtures/tiny not found: run from the repository");
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
    if dev.is_cuda() {
        eprintln!("  cuda graphs: {:?}", cache.graph_stats());
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
    let load = |dtype, device| Model::load(&fixture("llama"), &LoadOptions { quant: Quant::Nf4DoubleQuant, dtype, device }).unwrap();
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

/// One model decoding in lockstep with others: its cache and the last step's logits `[B, V]`.
struct Lane<'a> {
    model: &'a Model,
    cache: KvCache,
}

impl Lane<'_> {
    fn step(&mut self, ids: &[u32], b: usize) -> Tensor {
        let input = Tensor::from_vec(ids.to_vec(), (b, ids.len() / b), self.model.device()).unwrap();
        let l = self.model.forward(&input, Some(&mut self.cache)).unwrap();
        l.i((.., l.dim(1).unwrap() - 1)).unwrap().to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap()
    }
}

/// `steps` tokens after an 8-token prompt for `b` sequences, fed to three lanes in lockstep (the
/// graph's greedy ids): CUDA with graphs, CUDA without, and (when `cpu_tol` is set) the CPU in
/// f32. The graph's logits equal the eager path's (same kernels, positions read from the device
/// instead of launch parameters) and stay within `cpu_tol` of the CPU; returns the graph lane's
/// (captures, replays).
fn graph_vs_eager(name: &str, quant: Quant, dtype: DType, b: usize, steps: usize, cpu_tol: Option<f32>) -> (usize, usize) {
    let ids = input_ids(name);
    let load = |device| Model::load(&fixture(name), &LoadOptions { quant, dtype, device }).unwrap();
    let (gpu_model, cpu_model) = (load(gpu()), load(Device::Cpu));
    let vocab = gpu_model.config().vocab_size as u32;
    let mut graph = Lane { model: &gpu_model, cache: gpu_model.new_cache() };
    let mut eager = Lane { model: &gpu_model, cache: gpu_model.new_cache() };
    eager.cache.set_cuda_graphs(false);
    let mut cpu = Lane { model: &cpu_model, cache: cpu_model.new_cache() };
    let mut input: Vec<u32> = (0..b).flat_map(|r| ids[..8].iter().map(move |&x| (x + 7 * r as u32) % vocab)).collect();
    let (mut vs_eager, mut vs_cpu) = (0f32, 0f32);
    for i in 0..steps {
        let lg = graph.step(&input, b);
        let le = eager.step(&input, b);
        vs_eager = vs_eager.max(max_abs_diff(&lg, &le));
        assert_eq!(argmax(&lg), argmax(&le), "{name} {quant:?} b{b}: greedy ids differ from the eager path at step {i}");
        if cpu_tol.is_some() {
            vs_cpu = vs_cpu.max(max_abs_diff(&lg, &cpu.step(&input, b)));
        }
        input = argmax(&lg);
    }
    let stats = graph.cache.graph_stats();
    eprintln!("{name} {quant:?} {dtype:?} b{b}: {steps} steps, graph vs eager {vs_eager:.1e}, vs cpu {vs_cpu:.1e}, {stats:?}");
    assert_eq!(eager.cache.graph_stats().replays, 0, "the eager lane replayed a graph");
    assert_eq!(stats.failures, 0, "{name}: a capture failed");
    assert_eq!(graph.cache.len(), 8 + steps - 1);
    assert!(vs_eager <= 1e-6, "{name} {quant:?} b{b}: graph logits differ from the eager path by {vs_eager}");
    if let Some(tol) = cpu_tol {
        assert!(vs_cpu <= tol, "{name} {quant:?} b{b}: graph logits differ from the CPU by {vs_cpu}");
    }
    (stats.captures, stats.replays)
}

/// `Model::greedy_decode` on CUDA (the pick on the GPU; after the warm-up and capture steps the
/// greedy graph's replays pipelined, each writing the next ids and length itself) gives the ids
/// of the eager path picked on the host, step for step: stopped by its callback at step
/// `stop` (one queued step past it dropped from the cache) and resumed on the same cache.
fn greedy_vs_eager(name: &str, quant: Quant, dtype: DType, b: usize, steps: usize, stop: usize) {
    let ids = input_ids(name);
    let model = Model::load(&fixture(name), &LoadOptions { quant, dtype, device: gpu() }).unwrap();
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..b).flat_map(|r| ids[..8].iter().map(move |&x| (x + 7 * r as u32) % vocab)).collect();
    let mut eager = Lane { model: &model, cache: model.new_cache() };
    eager.cache.set_cuda_graphs(false);
    let mut want = vec![argmax(&eager.step(&prompt, b))];
    for _ in 1..steps {
        let next = argmax(&eager.step(want.last().unwrap(), b));
        want.push(next);
    }
    let mut cache = model.new_cache();
    let input = Tensor::from_vec(prompt.clone(), (b, 8), model.device()).unwrap();
    let l = model.forward(&input, Some(&mut cache)).unwrap();
    let mut got = vec![argmax(&l.i((.., 7)).unwrap())];
    let as_input = |row: &Vec<u32>| Tensor::from_vec(row.clone(), (b, 1), model.device()).unwrap();
    let ran = model
        .greedy_decode(&as_input(&got[0]), &mut cache, steps, |row| {
            got.push(row.to_vec());
            Ok(got.len() < stop)
        })
        .unwrap();
    assert_eq!((ran, cache.len()), (stop - 1, 8 + stop - 1), "{name} b{b}: greedy_decode did not stop where its callback said");
    // A callback that fails ends the decoding like a stop, and its error comes back: the steps
    // queued past it are waited for and taken off the cache, which holds exactly the ids fed.
    let (before, fail_after) = (got.len(), 3);
    let err = model
        .greedy_decode(&as_input(got.last().unwrap()), &mut cache, steps - before, |row| {
            got.push(row.to_vec());
            if got.len() - before == fail_after { Err(qlora_studio::engine::Error::InvalidOption("the callback failed".into())) } else { Ok(true) }
        })
        .unwrap_err();
    assert!(err.to_string().contains("the callback failed"), "{name} b{b}: {err}");
    assert_eq!(cache.len(), 8 + got.len() - 1, "{name} b{b}: a failed callback left queued steps in the cache");
    let more = steps - got.len();
    let resume = as_input(got.last().unwrap());
    let ran = model
        .greedy_decode(&resume, &mut cache, more, |row| {
            got.push(row.to_vec());
            Ok(true)
        })
        .unwrap();
    assert_eq!((ran, cache.len()), (more, 8 + steps - 1));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{name} {quant:?} {dtype:?} b{b}: greedy_decode's ids differ from the eager path's at step {i}");
    }
    let stats = cache.graph_stats();
    eprintln!("{name} {quant:?} {dtype:?} b{b}: greedy_decode {steps} steps, {stats:?}");
    assert_eq!(stats.failures, 0, "{name}: a capture failed");
    assert!(stats.replays >= steps - 4, "{name}: only {} of {steps} steps replayed the greedy graph", stats.replays);
}

/// A cache of `Model::new_cache_with_capacity`, dropped, hands its buffers and decode graphs to
/// the model's next cache that fits in them: the next generation (another prompt, another
/// capacity within the same 256-position buffers) replays from its first one-token step,
/// nothing captured, and picks the same ids as the eager path on a cache of its own (the first
/// generation's positions left in the buffers are not read). A cache that needs more
/// positions, or a cache a clone still shares, is not handed on.
#[test]
fn a_new_cache_takes_the_dropped_caches_graphs() {
    let model = Model::load(&fixture("llama"), &LoadOptions { quant: Quant::Nf4DoubleQuant, dtype: DType::BF16, device: gpu() }).unwrap();
    let (ids, vocab) = (input_ids("llama"), model.config().vocab_size as u32);
    let as_input = |v: &[u32]| Tensor::from_vec(v.to_vec(), (1, v.len()), model.device()).unwrap();
    // 8 prompt tokens, then `steps` greedy ids through greedy_decode on `cache`.
    let generate = |cache: &mut KvCache, prompt: &[u32], steps: usize| -> Vec<u32> {
        let l = model.forward(&as_input(prompt), Some(&mut *cache)).unwrap();
        let mut got = argmax(&l.i((.., 7)).unwrap());
        let first = got.clone();
        model
            .greedy_decode(&as_input(&first), cache, steps, |row| {
                got.extend_from_slice(row);
                Ok(true)
            })
            .unwrap();
        got
    };
    let eager_ids = |prompt: &[u32], steps: usize| -> Vec<u32> {
        let mut lane = Lane { model: &model, cache: model.new_cache() };
        lane.cache.set_cuda_graphs(false);
        let mut want = argmax(&lane.step(prompt, 1));
        for _ in 0..steps {
            let next = argmax(&lane.step(&want[want.len() - 1..], 1));
            want.extend(next);
        }
        want
    };
    let (p1, p2): (Vec<u32>, Vec<u32>) = (ids[..8].to_vec(), ids[..8].iter().map(|&x| (x + 11) % vocab).collect());
    let mut first = model.new_cache_with_capacity(8 + 12);
    assert_eq!(generate(&mut first, &p1, 12), eager_ids(&p1, 12), "first generation");
    let s1 = first.graph_stats();
    assert_eq!((s1.captures, s1.failures), (1, 0), "the first cache captures its greedy graph once");
    drop(first);
    let mut second = model.new_cache_with_capacity(8 + 20);
    assert_eq!(generate(&mut second, &p2, 20), eager_ids(&p2, 20), "second generation, on the first cache's buffers");
    let s2 = second.graph_stats();
    assert_eq!((s2.captures, s2.replays, s2.failures), (0, 20, 0), "the second cache replays from its first step: {s2:?}");
    // More positions than the spare buffers hold: a cache of its own, which captures.
    drop(second);
    let mut long = model.new_cache_with_capacity(300);
    assert_eq!(generate(&mut long, &p2, 12), eager_ids(&p2, 12), "a longer cache");
    assert_eq!(long.graph_stats().captures, 1, "a cache that needs more positions took the spare buffers");
    // A cache whose clone is alive is not handed on when dropped.
    drop(long);
    let mut third = model.new_cache_with_capacity(300);
    generate(&mut third, &p1, 4);
    assert_eq!(third.graph_stats().captures, 0, "the longer cache's buffers were not handed on to a cache of the same size");
    let keep = third.clone();
    drop(third);
    let mut fourth = model.new_cache_with_capacity(300);
    generate(&mut fourth, &p1, 4);
    assert_eq!(fourth.graph_stats().captures, 1, "a shared cache's buffers were handed on");
    drop(keep);
}

#[test]
fn greedy_decode_pipelined_matches_the_eager_path() {
    greedy_vs_eager("llama", Quant::Nf4DoubleQuant, DType::F32, 1, 40, 17);
    greedy_vs_eager("llama", Quant::Nf4DoubleQuant, DType::BF16, 1, 40, 23);
    greedy_vs_eager("qwen2", Quant::Nf4DoubleQuant, DType::F32, 2, 24, 9);
    greedy_vs_eager("mistral", Quant::None, DType::F32, 1, 30, 12);
}

/// 300 steps: the cache (256 positions first) grows once, so the graph is captured again.
#[test]
fn graph_llama_across_cache_growth() {
    for quant in [Quant::None, Quant::Nf4DoubleQuant] {
        let (captures, replays) = graph_vs_eager("llama", quant, DType::F32, 1, 300, Some(1e-3));
        assert_eq!(captures, 2, "one capture per cache capacity (256, then 512)");
        assert!(replays >= 290, "only {replays} of 299 decode steps replayed the graph");
    }
}

/// Mistral's sliding window (8 positions) moves with the position read from the device.
#[test]
fn graph_mistral_sliding_window() {
    let (captures, replays) = graph_vs_eager("mistral", Quant::Nf4DoubleQuant, DType::F32, 1, 40, Some(1e-3));
    assert_eq!((captures, replays), (1, 38));
}

/// Batch 2 through the same mechanism, and bf16 NF4 (the benchmark's decode path).
#[test]
fn graph_batch2_and_bf16() {
    let (captures, replays) = graph_vs_eager("qwen2", Quant::Nf4DoubleQuant, DType::F32, 2, 24, Some(1e-3));
    assert_eq!((captures, replays), (1, 22));
    let (captures, replays) = graph_vs_eager("llama", Quant::Nf4DoubleQuant, DType::BF16, 1, 24, None);
    assert_eq!((captures, replays), (1, 22));
}

/// The captured step of a plain NF4 model holds the layers' kernels and no memory node between
/// them: their outputs live in a workspace allocated before the capture (model/fast.rs), so
/// the allocation and free nodes left are the embedding's, the final norm's and the head's,
/// not 14 a layer (each of seven kernels' output allocated and freed), and consecutive kernel
/// nodes can form programmatic (PDL) edges.
#[test]
fn graph_nf4_layers_hold_kernel_nodes_only() {
    let model = Model::load(&fixture("llama"), &LoadOptions { quant: Quant::Nf4DoubleQuant, dtype: DType::BF16, device: gpu() }).unwrap();
    let layers = model.config().num_layers;
    let ids = input_ids("llama");
    let mut lane = Lane { model: &model, cache: model.new_cache() };
    lane.step(&ids[..8], 1);
    for &id in &ids[8..11] {
        lane.step(&[id], 1);
    }
    let s = lane.cache.graph_stats();
    eprintln!("llama NF4 bf16, {layers} layers: {s:?}");
    assert_eq!((s.captures, s.replays, s.failures), (1, 2, 0));
    // Seven launches a layer (five with QLORA_NORM_PROLOGUE=1: the norms in the q/k/v and
    // gate/up GEMVs' prologue), plus the embedding, the first and final norms and the head.
    assert!(s.kernel_nodes >= 5 * layers, "{} kernel nodes for {layers} layers", s.kernel_nodes);
    assert!(s.memory_nodes < 14, "{} memory nodes: the layers' kernels still allocate inside the graph", s.memory_nodes);
}

/// Every architecture's one-token steps go through a graph (Gemma's embedding scale, Phi's
/// LayerNorm and parallel block included): a capture that fails would fall back silently.
#[test]
fn graph_every_architecture_captures() {
    for name in ["llama", "llama3_rope", "phi", "gemma", "qwen2"] {
        let (captures, replays) = graph_vs_eager(name, Quant::Nf4DoubleQuant, DType::F32, 1, 12, Some(1e-3));
        assert_eq!((captures, replays), (1, 10), "{name}");
    }
}

/// Attention of one query token per sequence computed by plain loops in f64 from the same
/// (dtype-rounded) inputs: q `[B, nh*hd]`, k and v `[B, len, nkv*hd]` unrotated, rotary on the
/// first `2 * inv.len()` dims (non-interleaved), the last `window` positions when set.
struct PlainAttention<'a> {
    nh: usize,
    nkv: usize,
    hd: usize,
    inv: &'a [f32],
    window: Option<usize>,
}

impl PlainAttention<'_> {
    fn rope(&self, x: &[f32], pos: usize) -> Vec<f64> {
        let half = self.inv.len();
        (0..self.hd)
            .map(|d| {
                if d >= 2 * half {
                    return x[d] as f64;
                }
                let ang = (pos as f32 * self.inv[d % half]) as f64;
                let partner = if d < half { -(x[d + half] as f64) } else { x[d - half] as f64 };
                x[d] as f64 * ang.cos() + partner * ang.sin()
            })
            .collect()
    }

    fn run(&self, q: &[f32], k: &[f32], v: &[f32], b: usize, len: usize) -> Vec<f32> {
        let (nh, nkv, hd) = (self.nh, self.nkv, self.hd);
        let start = self.window.map_or(0, |w| len.saturating_sub(w));
        let mut out = vec![0f32; b * nh * hd];
        for s in 0..b {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qr = self.rope(&q[(s * nh + h) * hd..][..hd], len - 1);
                let row = |t: &[f32], j: usize| t[((s * len + j) * nkv + kvh) * hd..][..hd].to_vec();
                let scores: Vec<f64> =
                    (start..len).map(|j| qr.iter().zip(self.rope(&row(k, j), j)).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()).collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                let tot: f64 = e.iter().sum();
                let mut acc = vec![0f64; hd];
                for j in start..len {
                    for (a, x) in acc.iter_mut().zip(row(v, j)) {
                        *a += e[j - start] * x as f64;
                    }
                }
                for (d, a) in acc.iter().enumerate() {
                    out[(s * nh + h) * hd + d] = (a / tot) as f32;
                }
            }
        }
        out
    }
}

/// `n` standard normal values from `seed` (xorshift64 and Box-Muller): fixed data, so a bound
/// checked on them holds or fails the same way every run.
fn seeded_normal(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

/// The decode attention kernel at the edges of how it splits the work (a block per kv head and
/// group of up to 4 query heads, head rows over 1-32 lanes, positions over the warps): length
/// 1, lengths that are no multiple of a warp's or the block's step, a window smaller than one
/// step, 7 and 9 query heads per kv head (a partial group), head sizes 8-256, batch 8; against
/// plain f64 loops, with the length given on the host and read from the device (equal bits);
/// on seeded data.
#[test]
fn decode_attention_edges_match_plain_loops() {
    use qlora_studio::quant::cuda::infer::{self, CacheLen};
    let dev = gpu();
    // (heads, kv heads, head_dim, rotary dims, len, window, batch)
    let cases = [
        (4usize, 2usize, 64usize, 64usize, 1usize, None, 1usize),
        (8, 1, 64, 64, 65, None, 1),
        (7, 1, 128, 64, 33, None, 2),
        (9, 3, 80, 32, 130, Some(3), 3),
        (2, 2, 8, 8, 300, Some(200), 1),
        (4, 1, 256, 256, 257, None, 8),
        (3, 3, 16, 16, 97, Some(97), 4),
        (32, 8, 128, 128, 1000, Some(700), 1),
    ];
    for (dt, tol) in [(DType::F32, 2e-5), (DType::BF16, 2e-2)] {
        for (nh, nkv, hd, rot, len, window, b) in cases {
            let inv: Vec<f32> = (0..rot / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rot as f32)).collect();
            // Seeded data: with unseeded data the bf16 case of 8-wide heads once came out at 3.2e-2
            // (5.7e-3 to 7.8e-3 in other runs), its error ratio large where the output is small.
            let seed = (nh * 1_000_003 + hd * 1009 + len * 31 + b) as u64;
            let data = |shape: (usize, usize, usize), s: u64| {
                Tensor::from_vec(seeded_normal(shape.0 * shape.1 * shape.2, s), shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
            };
            let q = data((b, 1, nh * hd), seed);
            let k = data((b, len, nkv * hd), seed + 1);
            let v = data((b, len, nkv * hd), seed + 2);
            let flat = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = PlainAttention { nh, nkv, hd, inv: &inv, window }.run(&flat(&q), &flat(&k), &flat(&v), b, len);
            let cache = Tensor::zeros((2, b, nkv, len.next_multiple_of(64) + 64, hd), dt, &dev).unwrap();
            let g = |t: &Tensor| t.to_device(&dev).unwrap();
            infer::kv_append(&cache, &g(&k), &g(&v), 0, &inv).unwrap();
            let scale = 1.0 / (hd as f64).sqrt();
            let host = infer::decode_attention(&g(&q), &cache, len, window, scale, &inv).unwrap();
            let dev_len = Tensor::new(&[len as u32], &dev).unwrap();
            let device = infer::decode_attention_at(&g(&q), &cache, CacheLen::Device(&dev_len), window, scale, &inv).unwrap();
            let (got, dgot) = (flat(&host.to_device(&Device::Cpu).unwrap()), flat(&device.to_device(&Device::Cpu).unwrap()));
            assert_eq!(host.dims(), &[b, 1, nh * hd]);
            assert!(got.iter().zip(&dgot).all(|(a, b)| a.to_bits() == b.to_bits()), "length on the device gives other values");
            let num: f64 = got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
            let err = (num / den).sqrt();
            eprintln!("decode attention {nh}/{nkv} hd {hd} rot {rot} len {len} window {window:?} b{b} {dt:?}: {err:.1e}");
            assert!(err < tol, "decode attention {nh}/{nkv} hd {hd} len {len} window {window:?} b{b} {dt:?}: relative error {err:.2e}");
        }
    }
}

/// add + RMSNorm in both kernel forms (8 elements a thread with vector loads where rows are
/// multiples of 8 and 16-byte aligned, else element-wise: odd sizes, a row starting off the
/// alignment) against the unfused ops on the CPU; the residual sum bit for bit.
#[test]
fn add_rms_norm_both_forms_match_the_unfused_ops() {
    use qlora_studio::engine::ops;
    use qlora_studio::quant::cuda::infer;
    for (dt, tol) in [(DType::F32, 1e-6), (DType::BF16, 5e-3)] {
        for (h, skip) in [(8usize, 0usize), (4104, 0), (8192, 0), (100, 0), (2048, 1), (8200, 0)] {
            let rows = 3;
            let r = |n: usize| Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            // x is a view starting `skip` elements into its buffer, on the CPU and on the GPU.
            let view = |t: &Tensor| t.narrow(0, skip, rows * h).unwrap().reshape((rows, h)).unwrap();
            let big = r(rows * h + skip);
            let (x, a) = (view(&big), r(rows * h).reshape((rows, h)).unwrap());
            let w = (r(h).to_dtype(DType::F32).unwrap() * 0.1).unwrap().to_dtype(dt).unwrap();
            let s = (&x + &a).unwrap();
            let g = |t: &Tensor| t.to_device(&gpu()).unwrap();
            let xg = view(&g(&big));
            for one_plus in [false, true] {
                let want = if one_plus { ops::rms_norm_one_plus(&s, &w, 1e-6) } else { ops::rms_norm(&s, &w, 1e-6) }.unwrap();
                let (gs, gn) = infer::add_rms_norm(&xg, Some(&g(&a)), &g(&w), 1e-6, one_plus).unwrap();
                let same = |p: &Tensor, q: &Tensor| {
                    let f = |t: &Tensor| {
                        t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    };
                    f(p).iter().zip(f(q)).all(|(a, b)| a.to_bits() == b.to_bits())
                };
                assert!(same(&gs, &s), "residual sum h {h} skip {skip} {dt:?}");
                let err = rms_rel(&gn, &want);
                assert!(err < tol, "add_rms_norm h {h} skip {skip} one_plus {one_plus} {dt:?}: relative error {err:.2e}");
                let (_, gn1) = infer::add_rms_norm(&g(&s), None, &g(&w), 1e-6, one_plus).unwrap();
                assert!(rms_rel(&gn1, &want) < tol, "rms_norm without residual h {h} {dt:?}");
            }
        }
    }
}

/// Root-mean-square relative difference of `a` from `b`.
fn rms_rel(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (a, b) = (f(a), f(b));
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}
