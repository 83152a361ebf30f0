//! Our side of `bench/gpu/run.sh`: the engine on CUDA, measured the way
//! `../shared/gpu/peer/peer_bench.py` measures transformers + peft + bitsandbytes.
//!
//! For one model shape (`--config DIR` holding a real `config.json`, Llama/Mistral layout):
//! writes random bf16 weights (std 0.02, norms 1.0) as safetensors under `--workdir`, loads
//! them on CUDA in bf16, and measures; then swaps every projection for a random NF4
//! (double-quantized, blocks of 64) weight of the same shape, frees the dense ones, and
//! measures again. Random NF4 codes instead of quantizing the random bf16 weights: loading
//! with `Quant::Nf4DoubleQuant` quantizes on the CPU (single-threaded, about a minute for 7B),
//! and the speed of the kernels does not depend on which codes they read.
//!
//! Per storage: GPU memory after load (cuMemGetInfo used, minus what the CUDA context and
//! cuBLAS held before loading), decode tokens/s (prompt 32, 128 new tokens greedy, token ids
//! read back to the host every step as a chat does; one untimed warm-up, median of 3 runs, 2 at
//! batch 8, prefill of the prompt included as in `generate()`), and prefill tokens/s (one
//! forward over 512 tokens, full logits, median of 5 after 2 warm-ups). One JSON object per
//! line on stdout and appended to `--out`, with peer_bench's metric names. `--profile` adds the
//! breakdown of one NF4 decode step (`profile.rs`).
//!
//! A generation is the prompt's forward and pick, then `Model::greedy_decode` as a greedy chat
//! runs it (generate.rs): one-token steps replay a CUDA graph that ends with the pick on the GPU
//! (`crates/qlora-engine/src/model/decode_graph.rs`), each replay queued before the previous
//! one's ids reach the host; each generation pays one eager warm-up step and one capture
//! (`cuda_graphs` in a decode line counts the last run's captures and replays;
//! `QLORA_CUDA_GRAPHS=0` measures without; `QLORA_PIPELINE=0` runs the session-6 loop instead:
//! a forward, candle's argmax and the ids read back a step). At batch 1, `decode_step_us` and
//! `generation_parts_ms` time that per-step loop: the first three steps one by one (eager
//! warm-up, capture + replay, replay) and the median of the next 100, id read back each.

#[path = "common.rs"]
mod common;

use anyhow::{Context, Result, bail};
use qlora_studio::engine::candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
use qlora_studio::engine::candle_core::{D, DType, Device, IndexOp, Tensor};
use qlora_studio::engine::linear::nf4::Nf4Linear;
use qlora_studio::engine::{LoadOptions, Model, Quant};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod profile;

struct Args {
    config: PathBuf,
    name: String,
    out: Option<PathBuf>,
    workdir: PathBuf,
    batches: Vec<usize>,
    profile: bool,
    /// Storages measured (`--quants bf16,nf4`, the default; `nf4` alone skips the bf16 runs).
    quants: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        config: PathBuf::new(),
        name: String::new(),
        out: None,
        workdir: "/tmp".into(),
        batches: vec![1, 8],
        profile: false,
        quants: vec!["bf16".into(), "nf4".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--config" => a.config = v()?.into(),
            "--name" => a.name = v()?,
            "--out" => a.out = Some(v()?.into()),
            "--workdir" => a.workdir = v()?.into(),
            "--profile" => a.profile = true,
            "--batches" => a.batches = v()?.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            "--quants" => a.quants = v()?.split(',').map(String::from).collect(),
            _ => bail!(
                "unknown argument {k}: use --config DIR --name NAME [--out FILE] [--workdir DIR] [--batches 1,8] [--quants bf16,nf4] [--profile]"
            ),
        }
    }
    if a.name.is_empty() || !a.config.join("config.json").is_file() {
        bail!("usage: engine_bench --config DIR (holding config.json) --name NAME [--out FILE]");
    }
    Ok(a)
}

fn used_bytes(dev: &Device) -> Result<usize> {
    dev.synchronize()?;
    let (free, total) = mem_get_info()?;
    Ok(total - free)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rand_ids(vocab: usize, shape: (usize, usize), seed: u64, dev: &Device) -> Result<Tensor> {
    let mut x = seed | 1;
    let ids: Vec<u32> = (0..shape.0 * shape.1)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3 + (x % (vocab as u64 - 3)) as u32
        })
        .collect();
    Ok(Tensor::from_vec(ids, shape, dev)?)
}

/// One greedy generation of `new` tokens after `prompt`; returns the seconds it took and how
/// its one-token steps went through CUDA graphs (`QLORA_CUDA_GRAPHS=0` turns them off).
fn generate(model: &Model, prompt: &Tensor, new: usize) -> Result<(f64, serde_json::Value)> {
    let dev = model.device().clone();
    let b = prompt.dim(0)?;
    dev.synchronize()?;
    let t0 = Instant::now();
    let mut cache = model.new_cache_with_capacity(prompt.dim(1)? + new);
    if std::env::var("QLORA_PIPELINE").as_deref() != Ok("0") {
        // As a greedy chat does (generate.rs): the prompt, then `Model::greedy_decode` (the
        // pick on the GPU, replays pipelined), every step's ids handed to the host.
        let logits = model.forward(prompt, Some(&mut cache))?;
        let first: Vec<u32> = logits.i((.., logits.dim(1)? - 1))?.argmax(D::Minus1)?.to_vec1()?;
        let mut n = 1;
        model.greedy_decode(&Tensor::from_vec(first, (b, 1), &dev)?, &mut cache, new - 1, |ids| {
            n += usize::from(!ids.is_empty());
            Ok(true)
        })?;
        anyhow::ensure!(n == new, "greedy_decode ran {n} of {new} steps");
    } else {
        // QLORA_PIPELINE=0: a forward and an argmax a step, the ids read back before the next.
        let mut input = prompt.clone();
        for _ in 0..new {
            let logits = model.forward(&input, Some(&mut cache))?;
            let last = logits.i((.., logits.dim(1)? - 1))?;
            let next: Vec<u32> = last.argmax(D::Minus1)?.to_vec1()?; // to the host, as a chat does
            input = Tensor::from_vec(next, (b, 1), &dev)?;
        }
    }
    dev.synchronize()?;
    Ok((t0.elapsed().as_secs_f64(), serde_json::to_value(cache.graph_stats())?))
}

/// Where one generation's time goes, in ms (each part synchronized, so the parts add up to a
/// little more than an unsynchronized generation): the 32-token prompt's forward with its token
/// read back, the first one-token step (eager), the second (captured as a CUDA graph), and the
/// remaining `new - 3` steps (graph replays).
fn generation_parts(model: &Model, prompt: &Tensor, new: usize) -> Result<serde_json::Value> {
    let dev = model.device().clone();
    let b = prompt.dim(0)?;
    dev.synchronize()?;
    let mut parts = Vec::new();
    let mut t0 = Instant::now();
    let mut cache = model.new_cache_with_capacity(prompt.dim(1)? + new);
    let mut input = prompt.clone();
    for i in 0..new {
        let logits = model.forward(&input, Some(&mut cache))?;
        let last = logits.i((.., logits.dim(1)? - 1))?;
        let next: Vec<u32> = last.argmax(D::Minus1)?.to_vec1()?;
        input = Tensor::from_vec(next, (b, 1), &dev)?;
        if i < 3 || i == new - 1 {
            dev.synchronize()?;
            parts.push(t0.elapsed().as_secs_f64() * 1e3);
            t0 = Instant::now();
        }
    }
    Ok(json!({"prompt_ms": parts[0], "eager_step_ms": parts[1], "capture_step_ms": parts[2], "replays_ms": parts[3], "replays": new - 3}))
}

/// Microseconds of each one-token step of one generation after a 32-token prompt (id read back).
fn step_times(model: &Model, prompt: &Tensor, steps: usize) -> Result<Vec<f64>> {
    let dev = model.device().clone();
    let mut cache = model.new_cache_with_capacity(prompt.dim(1)? + steps + 1);
    let logits = model.forward(prompt, Some(&mut cache))?;
    let mut next: Vec<u32> = logits.i((.., logits.dim(1)? - 1))?.argmax(D::Minus1)?.to_vec1()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        let input = Tensor::from_vec(next, (1, 1), &dev)?;
        let logits = model.forward(&input, Some(&mut cache))?;
        next = logits.i((.., 0))?.argmax(D::Minus1)?.to_vec1()?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times)
}

fn bench_model(a: &Args, model: &Model, quant: &str, wbytes: usize) -> Result<()> {
    let (dev, vocab) = (model.device().clone(), model.config().vocab_size);
    for &b in &a.batches {
        let prompt = rand_ids(vocab, (b, 32), 1234 + b as u64, &dev)?;
        let (tw, _) = generate(model, &prompt, 128)?;
        let mut runs = Vec::new();
        let mut graphs = json!(null);
        for _ in 0..if b == 1 { 3 } else { 2 } {
            let (s, g) = generate(model, &prompt, 128)?;
            runs.push(s);
            graphs = g;
        }
        let med = median(runs.clone());
        common::emit(
            &a.out,
            json!({"metric": "decode_tok_s", "model": a.name, "quant": quant, "batch": b,
            "value": (b * 128) as f64 / med, "new_tokens": 128, "prompt_len": 32, "runs_s": runs,
            "ms_per_step": 1e3 * med / 128.0, "warmup_s": tw, "weight_bytes_per_token": wbytes,
            "cuda_graphs": graphs}),
        )?;
        common::emit(
            &a.out,
            json!({"metric": "generation_parts_ms", "model": a.name, "quant": quant, "batch": b,
            "new_tokens": 128, "prompt_len": 32, "value": generation_parts(model, &prompt, 128)?}),
        )?;
        if b == 1 {
            let t = step_times(model, &prompt, 103)?;
            common::emit(
                &a.out,
                json!({"metric": "decode_step_us", "model": a.name, "quant": quant, "batch": 1,
                "first_three": &t[..3], "value": median(t[3..].to_vec()), "steady_steps": t.len() - 3}),
            )?;
        }
    }
    let ids = rand_ids(vocab, (1, 512), 99, &dev)?;
    let mut times = Vec::new();
    for i in 0..7 {
        dev.synchronize()?;
        let t0 = Instant::now();
        let logits = model.forward(&ids, None)?;
        dev.synchronize()?;
        drop(logits);
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let med = median(times.clone());
    common::emit(
        &a.out,
        json!({"metric": "prefill_tok_s", "model": a.name, "quant": quant, "seq": 512,
        "value": 512.0 / med, "median_s": med, "runs_s": times}),
    )
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let dev = Device::new_cuda(0).context("no CUDA device 0")?;
    Tensor::ones((64, 64), DType::BF16, &dev)?.matmul(&Tensor::ones((64, 64), DType::BF16, &dev)?)?; // cuBLAS up
    let base = used_bytes(&dev)?;
    let dir = a.workdir.join(format!("ours_{}", a.name));
    let t0 = Instant::now();
    common::write_checkpoint(&a.config, &dir, common::default_fill)?;
    let write_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let opts = LoadOptions { dtype: DType::BF16, quant: Quant::None, device: dev.clone() };
    let mut model = Model::load(&dir, &opts)?;
    let used = used_bytes(&dev)?.saturating_sub(base);
    let embed = model.embed_weight().elem_count() * 2;
    common::emit(
        &a.out,
        json!({"metric": "mem_after_load", "model": a.name, "quant": "bf16",
        "allocated_GiB": used as f64 / (1u64 << 30) as f64, "load_s": t0.elapsed().as_secs_f64(), "write_s": write_s,
        "weight_bytes": model.weight_bytes(), "how": "cuMemGetInfo used after load minus before (context, cuBLAS)"}),
    )?;
    if a.quants.iter().any(|q| q == "bf16") {
        bench_model(&a, &model, "bf16", model.weight_bytes() - embed)?;
    }

    let t0 = Instant::now();
    for (path, lin) in model.projections() {
        let q = common::random_nf4(lin.out_features(), lin.in_features(), &dev)?;
        model.replace_projection(&path, Arc::new(Nf4Linear::new(q, None)))?;
    }
    let used = used_bytes(&dev)?.saturating_sub(base);
    common::emit(
        &a.out,
        json!({"metric": "mem_after_load", "model": a.name, "quant": "nf4",
        "allocated_GiB": used as f64 / (1u64 << 30) as f64, "load_s": t0.elapsed().as_secs_f64(),
        "weight_bytes": model.weight_bytes(),
        "how": "bf16 load, then every projection replaced by random double-quantized NF4; cuMemGetInfo used minus before load"}),
    )?;
    if a.profile {
        profile::profile(&model, 96, |mut v| {
            v["model"] = json!(a.name);
            common::emit(&a.out, v)
        })?;
    }
    if a.quants.iter().any(|q| q == "nf4") {
        bench_model(&a, &model, "nf4", model.weight_bytes() - embed)?;
    }
    Ok(())
}
