//! Our side of `bench/gpu/run_train.sh`: QLoRA training on CUDA, set up and measured as
//! `../shared/gpu/peer/peer_bench.py`'s `bench_train` does it for transformers + peft +
//! bitsandbytes: LoRA r 16 (alpha 32, dropout 0.05) on all seven projections of an NF4
//! (double-quantized) base computing in bf16, gradient checkpointing, micro-batch 4 × 512
//! random token ids with `labels = ids` (next-token loss over 511 positions a row), AdamW
//! (lr 2e-4, torch's defaults), 3 warm-up + 10 timed steps, tokens/s = 4 · 512 · 10 / time.
//!
//! Peak memory is counted as torch's `max_memory_allocated` counts it: the high-water mark of
//! bytes held by live allocations in the device's stream-ordered pool (candle allocates every
//! tensor there with `cuMemAllocAsync`), reset after the model, LoRA and optimizer exist and
//! before the warm-up steps. Also reported: the pool's reserved high-water mark (torch's
//! `max_reserved`), and the whole process's device memory at that peak (what the planner
//! predicts: the memory in use before the model was loaded, CUDA context and cuBLAS included,
//! plus the pool's peak since just after the NF4 base was in place).
//!
//! The model: a checkpoint written under `--workdir` from `--config DIR/config.json` with every
//! tensor the architecture has (Llama, Mistral, Gemma, Phi, Qwen2 layouts, from the planner's
//! own tensor list), the projections left as file holes (zeros, nothing written), embeddings and
//! head random (std 0.02), norms 1. It is loaded in bf16, then every projection is replaced by
//! a random double-quantized NF4 weight of its shape (random codes: the speed of the kernels
//! does not depend on which codes they read). One JSON object per line on stdout and `--out`.

#[path = "common.rs"]
mod common;

use anyhow::{Context, Result, bail};
use qlora_studio::engine::candle_core::cuda_backend::cudarc::driver::{result, sys};
use qlora_studio::engine::candle_core::{DType, Device, Tensor};
use qlora_studio::engine::linear::nf4::Nf4Linear;
use qlora_studio::engine::{LoadOptions, Model, Quant};
use qlora_studio::train::data::batch::Batch;
use qlora_studio::train::lora::{Attached, TrainLora};
use qlora_studio::train::optim::{AdamW, AdamWParams, Param};
use qlora_studio::train::trainer::stash::{Checkpointing, Stash};
use qlora_studio::train::trainer::step;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const GIB: f64 = (1u64 << 30) as f64;

struct Args {
    config: PathBuf,
    name: String,
    out: Option<PathBuf>,
    workdir: PathBuf,
    steps: usize,
    warm: usize,
    micro_batch: usize,
    seq: usize,
    rank: usize,
    checkpointing: bool,
    profile: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        config: PathBuf::new(),
        name: String::new(),
        out: None,
        workdir: "/tmp".into(),
        steps: 10,
        warm: 3,
        micro_batch: 4,
        seq: 512,
        rank: 16,
        checkpointing: true,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--config" => a.config = v()?.into(),
            "--name" => a.name = v()?,
            "--out" => a.out = Some(v()?.into()),
            "--workdir" => a.workdir = v()?.into(),
            "--steps" => a.steps = v()?.parse()?,
            "--warm" => a.warm = v()?.parse()?,
            "--micro-batch" => a.micro_batch = v()?.parse()?,
            "--seq" => a.seq = v()?.parse()?,
            "--rank" => a.rank = v()?.parse()?,
            "--no-checkpointing" => a.checkpointing = false,
            "--profile" => a.profile = true,
            _ => bail!(
                "unknown argument {k}: use --config DIR --name NAME [--out FILE] [--workdir DIR] [--steps 10] [--warm 3] \
                 [--micro-batch 4] [--seq 512] [--rank 16] [--no-checkpointing] [--profile]"
            ),
        }
    }
    if a.name.is_empty() || !a.config.join("config.json").is_file() {
        bail!("usage: qlora-gpu-train-bench --config DIR (holding config.json) --name NAME [--out FILE]");
    }
    Ok(a)
}

/// What goes in a tensor of the synthetic checkpoint: the embeddings and head random, norms 1,
/// the projections (replaced by random NF4 after load) left as holes.
fn fill_of(spec: &qlora_studio::plan::ArchSpec, t: &qlora_studio::plan::tensors::TensorSpec) -> common::Fill {
    if t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight" {
        common::Fill::Random { std: 0.02 }
    } else if t.name.ends_with("norm.weight") {
        common::default_fill(spec, t)
    } else {
        common::Fill::Hole
    }
}

/// The device's default memory pool (where candle's `cuMemAllocAsync` allocations live).
fn pool(dev: &Device) -> Result<sys::CUmemoryPool> {
    let Device::Cuda(c) = dev else { bail!("not a CUDA device") };
    Ok(unsafe { result::device::get_default_mem_pool(c.cuda_stream().context().cu_device())? })
}

fn pool_attr(p: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut v = 0u64;
    unsafe { result::mem_pool::get_attribute(p, attr, &mut v as *mut u64 as *mut _)? };
    Ok(v)
}

/// Resets the pool's high-water marks to the current values (torch's `reset_peak_memory_stats`).
fn reset_peaks(p: sys::CUmemoryPool) -> Result<()> {
    for attr in [sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH] {
        let mut zero = 0u64;
        unsafe { result::mem_pool::set_attribute(p, attr, &mut zero as *mut u64 as *mut _)? };
    }
    Ok(())
}

fn used_bytes(dev: &Device) -> Result<u64> {
    dev.synchronize()?;
    let (free, total) = result::mem_get_info()?;
    Ok((total - free) as u64)
}

/// peer_bench's batches: random ids in `3..vocab`, `labels = ids` (shifted inside the loss).
fn batch(vocab: usize, mb: usize, seq: usize, seed: u64) -> Batch {
    let mut x = seed | 1;
    let ids: Vec<u32> = (0..mb * seq)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3 + (x % (vocab as u64 - 3)) as u32
        })
        .collect();
    let mut labels = vec![0u32; mb * seq];
    let mut weights = vec![0f32; mb * seq];
    for r in 0..mb {
        for t in 0..seq - 1 {
            labels[r * seq + t] = ids[r * seq + t + 1];
            weights[r * seq + t] = 1.0;
        }
    }
    Batch { rows: mb, seq, ids, labels, weights, tokens: mb * seq }
}

/// LoRA (r, alpha = 2r, dropout 0.05, peft's init) on every projection.
fn attach_lora(model: &mut Model, rank: usize, dev: &Device) -> Result<Attached> {
    let mut out = Vec::new();
    for (i, (path, base)) in model.projections().into_iter().enumerate() {
        let l = Arc::new(TrainLora::new(base, rank, 2.0, 0.05, 1000 + i as u64, dev)?);
        model.replace_projection(&path, l.clone())?;
        out.push((path, l));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let dev = Device::new_cuda(0).context("no CUDA device 0")?;
    Tensor::ones((64, 64), DType::BF16, &dev)?.matmul(&Tensor::ones((64, 64), DType::BF16, &dev)?)?; // cuBLAS up
    let base_used = used_bytes(&dev)?;
    let dir = a.workdir.join(format!("ours_train_{}", a.name));
    let t0 = Instant::now();
    common::write_checkpoint(&a.config, &dir, fill_of)?;
    let write_s = t0.elapsed().as_secs_f64();
    let opts = LoadOptions { dtype: DType::BF16, quant: Quant::None, device: dev.clone() };
    let mut model = Model::load(&dir, &opts)?;
    for (path, lin) in model.projections() {
        let q = common::random_nf4(lin.out_features(), lin.in_features(), &dev)?;
        model.replace_projection(&path, Arc::new(Nf4Linear::new(q, lin.bias().cloned())))?;
    }
    let p = pool(&dev)?;
    unsafe { result::mem_pool::trim_to(p, 0)? };
    dev.synchronize()?;
    reset_peaks(p)?;
    let weights_alloc = pool_attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
    model.set_training(true);
    let lora = attach_lora(&mut model, a.rank, &dev)?;
    let params: Vec<Param> = lora
        .iter()
        .flat_map(|(n, l)| [Param { name: format!("{n}.lora_A"), var: l.a.clone() }, Param { name: format!("{n}.lora_B"), var: l.b.clone() }])
        .collect();
    let trainable: usize = params.iter().map(|p| p.var.elem_count()).sum();
    let mut opt = AdamW::new(params, AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 })?;
    let vocab = model.config().vocab_size;
    let batches: Vec<Batch> = (0..a.warm + a.steps).map(|i| batch(vocab, a.micro_batch, a.seq, 7 + i as u64)).collect();
    dev.synchronize()?;
    let before_alloc = pool_attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
    reset_peaks(p)?;
    let mut losses = Vec::new();
    // Checkpoints offloaded to pinned host memory unless QLORA_OFFLOAD_CHECKPOINTS=0.
    let mode = Checkpointing::from(a.checkpointing);
    let run = |b: &Batch, opt: &mut AdamW| -> Result<f64> {
        let norm = b.target_count() as f64;
        // The loss is read once per step, after the optimizer's kernels are queued.
        let (loss, grads) = step::micro_step_pending(&model, &lora, b, norm, 1.0, mode)?;
        opt.step(&grads, 2e-4)?;
        Ok(loss.read()?)
    };
    for b in &batches[..a.warm] {
        losses.push(run(b, &mut opt)?);
    }
    dev.synchronize()?;
    let t1 = Instant::now();
    for b in &batches[a.warm..] {
        losses.push(run(b, &mut opt)?);
    }
    dev.synchronize()?;
    let dt = t1.elapsed().as_secs_f64();
    let peak_alloc = pool_attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
    let peak_reserved = pool_attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?;
    let toks = a.micro_batch * a.seq * a.steps;
    let (gpu, pinned) = match &dev {
        Device::Cuda(c) => (c.cuda_stream().context().name().unwrap_or_default(), qlora_studio::quant::cuda::offload::pinned_bytes(c)?),
        _ => (String::new(), 0),
    };
    common::emit(
        &a.out,
        json!({
            "metric": "qlora_train", "model": a.name, "value": toks as f64 / dt, "unit": "tok/s",
            "timed_steps": a.steps, "warmup_steps": a.warm, "micro_batch": a.micro_batch, "seq": a.seq, "rank": a.rank,
            "gradient_checkpointing": a.checkpointing, "offload_checkpoints": mode == Checkpointing::Offload,
            "pinned_host_GiB": pinned as f64 / GIB, "time_s": dt, "s_per_step": dt / a.steps as f64,
            "trainable_params": trainable, "loss_first": losses.first(), "loss_last": losses.last(),
            "peak_training_phase": {"max_allocated_GiB": peak_alloc as f64 / GIB, "max_reserved_GiB": peak_reserved as f64 / GIB,
                "note": "cuMemPool USED_MEM_HIGH / RESERVED_MEM_HIGH of the default pool, reset after model + LoRA + AdamW exist, before warm-up"},
            "mem_before_training_GiB": before_alloc as f64 / GIB, "nf4_model_allocated_GiB": weights_alloc as f64 / GIB,
            "process_peak_GiB": (base_used + peak_alloc) as f64 / GIB, "context_and_cublas_GiB": base_used as f64 / GIB,
            "weight_bytes": model.weight_bytes(), "write_s": write_s, "gpu": gpu,
            "lora": "r=16 alpha=32 dropout=0.05 all projections; NF4 double quant base, bf16 compute; AdamW lr 2e-4 wd 0.01 (torch default)",
        }),
    )?;
    if a.profile {
        step_memory(&a, &model, &lora, &batches[0], &mut opt, mode)?;
        profile(&a, &model, &lora, &batches[0], &mut opt, mode)?;
    }
    Ok(())
}

/// Where a real step's peak is: one `micro_step_pending` + `AdamW::step` exactly as timed
/// (no device syncs inside, the gradients accumulated), with the engine's phase hook reading
/// the pool's bytes in use and its high-water mark at every piece of every layer (forward and
/// recompute + backward) and resetting the mark. Prints the pieces with the highest marks
/// and the step's overall peak (the timed run's figure, from the same code).
fn step_memory(a: &Args, model: &Model, lora: &Attached, b: &Batch, opt: &mut AdamW, mode: Checkpointing) -> Result<()> {
    use qlora_studio::engine::model::backward::set_phase_hook;
    use std::cell::RefCell;
    use std::rc::Rc;
    let dev = model.device().clone();
    let p = pool(&dev)?;
    let n = model.num_layers();
    let used = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT;
    let high = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    dev.synchronize()?;
    reset_peaks(p)?;
    let start = pool_attr(p, used)?;
    // (forward q/k/v marks seen, [(label, bytes in use at the mark, high-water mark since the previous mark)])
    type Marks = Rc<RefCell<(usize, Vec<(String, u64, u64)>)>>;
    let log: Marks = Rc::new(RefCell::new((0, Vec::new())));
    let record = |log: &Marks, what: String| -> Result<()> {
        let (u, h) = (pool_attr(p, used)?, pool_attr(p, high)?);
        reset_peaks(p)?;
        log.borrow_mut().1.push((what, u, h));
        Ok(())
    };
    let l2 = log.clone();
    set_phase_hook(Some(Box::new(move |what: &str| {
        let mut g = l2.borrow_mut();
        if what.starts_with("fwd q/k/v") {
            g.0 += 1;
        }
        let k = g.0.saturating_sub(1);
        let label = if k < n { format!("forward layer {k}: {what}") } else { format!("backward layer {}: {what}", (2 * n - 1).saturating_sub(k)) };
        drop(g);
        let (u, h) = (pool_attr(p, used).unwrap_or(0), pool_attr(p, high).unwrap_or(0));
        let _ = reset_peaks(p);
        l2.borrow_mut().1.push((label, u, h));
    })));
    let norm = b.target_count() as f64;
    let r = step::micro_step_pending(model, lora, b, norm, 1.0, mode);
    set_phase_hook(None);
    let (loss, grads) = r?;
    record(&log, "backward's end (last norm1, return)".into())?;
    opt.step(&grads, 2e-4)?;
    record(&log, "AdamW step".into())?;
    drop(grads);
    loss.read()?;
    dev.synchronize()?;
    record(&log, "gradients dropped, synced".into())?;
    let gib = |v: u64| v as f64 / GIB;
    let phases = &log.borrow().1;
    let peak = phases.iter().map(|x| x.2).max().unwrap_or(0);
    let mut top: Vec<&(String, u64, u64)> = phases.iter().collect();
    top.sort_by_key(|x| std::cmp::Reverse(x.2));
    common::emit(
        &a.out,
        json!({"metric": "qlora_train_step_memory", "model": a.name, "layers": n,
        "start_GiB": gib(start), "step_high_GiB": gib(peak), "pieces": phases.len(),
        "highest": top.iter().take(16).map(|(k, u, h)| json!({"piece": k, "used_after_GiB": gib(*u), "high_GiB": gib(*h)})).collect::<Vec<_>>(),
        "tail": phases.iter().rev().take(3).map(|(k, u, h)| json!({"piece": k, "used_after_GiB": gib(*u), "high_GiB": gib(*h)})).collect::<Vec<_>>()}),
    )
}

/// One phase of [`profile`]: name, ms, host ms, pool bytes in use at its start and end, and
/// the pool's high-water mark during it.
type Phase = (String, f64, f64, [u64; 3]);

/// Phase timer: each `lap` syncs the device, records the time since the last lap (and the
/// host's share of it: time to queue, before the sync) and the pool's bytes, then resets the
/// pool's high-water mark.
struct Laps {
    dev: Device,
    p: sys::CUmemoryPool,
    start: u64,
    t: Instant,
    times: Vec<Phase>,
}

impl Laps {
    fn new(dev: &Device) -> Result<Self> {
        let p = pool(dev)?;
        dev.synchronize()?;
        reset_peaks(p)?;
        let start = pool_attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        Ok(Self { dev: dev.clone(), p, start, t: Instant::now(), times: Vec::new() })
    }

    fn lap(&mut self, what: &str) -> Result<()> {
        let host = self.t.elapsed().as_secs_f64() * 1e3;
        self.dev.synchronize()?;
        let end = pool_attr(self.p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        let high = pool_attr(self.p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        self.times.push((what.to_string(), self.t.elapsed().as_secs_f64() * 1e3, host, [self.start, end, high]));
        reset_peaks(self.p)?;
        self.start = end;
        self.t = Instant::now();
        Ok(())
    }
}

/// Where one step's time and memory go: the same work as `micro_step` (the hand-written
/// layer path where the engine covers the layer, autograd otherwise) + `AdamW::step`, phase
/// by phase with a device sync after each (so the phases add up to a bit more than a step).
/// The last layer's recompute and backward are split into their pieces through the engine's
/// phase hook (`model::backward::set_phase_hook`). Each phase also says how long the host
/// took to queue it (`host_ms`): a phase whose host time is close to its total is
/// launch-bound. Memory: the pool's bytes in use when the phase starts and ends and its
/// `USED_MEM_HIGH` during the phase. Then each projection of layer 0 alone (NF4 dequantize,
/// base product, LoRA forward, LoRA backward), 3 repetitions each after one warm-up.
fn profile(a: &Args, model: &Model, lora: &Attached, b: &Batch, opt: &mut AdamW, mode: Checkpointing) -> Result<()> {
    use qlora_studio::engine::model::backward::set_phase_hook;
    use std::cell::RefCell;
    use std::rc::Rc;
    let dev = model.device().clone();
    let laps = Rc::new(RefCell::new(Laps::new(&dev)?));
    let lap = |what: &str| laps.borrow_mut().lap(what);
    let (ids, labels, weights) = step::batch_tensors(b, &dev)?;
    let (cos, sin) = model.rope_tables(0, b.seq)?;
    lap("setup")?;
    let mut x = model.embed(&ids)?.detach();
    let mut inputs = Stash::new(&dev, model.num_layers(), mode)?;
    let n = model.num_layers();
    let mut rng_before = Vec::new();
    for i in 0..n {
        inputs.push(&x)?;
        rng_before.push(lora.iter().map(|(_, l)| l.rng_state()).collect::<Vec<_>>());
        x = match model.layer_forward_no_graph(i, &x, &cos, &sin)? {
            Some(y) => y,
            None => model.layer_forward(i, &x, &cos, &sin)?.detach(),
        };
    }
    lap("forward (all layers, no graph kept)")?;
    let hidden = model.final_norm(&x)?;
    let (_, gh) = qlora_studio::train::loss::loss_and_hidden_grad(model, &hidden, &labels, &weights, b.target_count() as f64, 1.0)?;
    lap("loss + its hidden gradient")?;
    let mut g = gh;
    let mut sink = ProfileSink::default();
    for i in (0..n).rev() {
        for (j, (_, l)) in lora.iter().enumerate() {
            l.set_rng_state(rng_before[i][j]);
        }
        let input = inputs.take(i)?;
        if i == n - 1 {
            lap("last layer's input back")?;
            let l2 = laps.clone();
            set_phase_hook(Some(Box::new(move |what: &str| {
                let _ = l2.borrow_mut().lap(&format!("layer {}: {what}", n - 1));
            })));
        }
        if let Some(dx) = model.layer_backward(i, &input, &g, &cos, &sin, &mut sink)? {
            g = dx;
        } else {
            let input = qlora_studio::engine::candle_core::Var::from_tensor(&input)?;
            let out = model.layer_forward(i, input.as_tensor(), &cos, &sin)?;
            let store = (out * &g)?.sum_all()?.backward()?;
            g = store.get(input.as_tensor()).cloned().context("no input gradient")?;
        }
        if i == n - 1 {
            set_phase_hook(None);
            lap("layer recompute + backward (last layer, rest)")?;
        }
    }
    lap("recompute + backward, the other layers")?;
    let grads: Vec<Tensor> = opt.params().iter().map(|p| p.var.as_tensor().zeros_like()).collect::<Result<_, _>>()?;
    lap("zero grads")?;
    opt.step(&grads, 2e-4)?;
    lap("AdamW step")?;
    drop((g, grads, sink));
    projection_profile(a, model, lora, &mut laps.borrow_mut())?;
    let gib = |v: u64| v as f64 / GIB;
    let times = &laps.borrow().times;
    common::emit(
        &a.out,
        json!({"metric": "qlora_train_profile", "model": a.name, "layers": n, "offload_checkpoints": mode == Checkpointing::Offload,
        "manual_backward": model.layer_has_manual_backward(n - 1, &x),
        "ms": times.iter().map(|(k, v, h, [s, e, hi])| json!({"phase": k, "ms": v, "host_ms": h,
            "used_start_GiB": gib(*s), "used_end_GiB": gib(*e), "used_high_GiB": gib(*hi)})).collect::<Vec<_>>()}),
    )
}

/// The gradients of the profiled layer backward, dropped (the profile needs only the work).
#[derive(Default)]
struct ProfileSink(Vec<Tensor>);

impl qlora_studio::engine::linear::GradSink for ProfileSink {
    fn add(&mut self, _p: &Tensor, g: Tensor) -> qlora_studio::engine::candle_core::Result<()> {
        self.0.push(g);
        if self.0.len() > 14 {
            self.0.remove(0);
        }
        Ok(())
    }
}

/// Layer 0's seven projections one by one on `[micro_batch·seq, in]` bf16 rows.
fn projection_profile(a: &Args, model: &Model, lora: &Attached, laps: &mut Laps) -> Result<()> {
    use qlora_studio::engine::linear::Linear;
    let dev = model.device().clone();
    let rows = a.micro_batch * a.seq;
    let mut sink = ProfileSink::default();
    for (path, l) in lora.iter().filter(|(p, _)| p.starts_with("model.layers.0.")) {
        let name = path.rsplit('.').next().unwrap_or(path);
        let x = Tensor::randn(0f32, 1.0, (rows, l.in_features()), &dev)?.to_dtype(DType::BF16)?;
        let dy = Tensor::randn(0f32, 1e-3, (rows, l.out_features()), &dev)?.to_dtype(DType::BF16)?;
        for rep in 0..4 {
            let tag = |what: &str| {
                format!("proj {name} [{rows}x{}->{}] {what}{}", l.in_features(), l.out_features(), if rep == 0 { " (warm-up)" } else { "" })
            };
            laps.lap("proj gap")?;
            let w = l.base.dense_weight(DType::BF16)?;
            laps.lap(&tag("dequantize"))?;
            let y = x.matmul(&w.t()?)?;
            laps.lap(&tag("x·Wᵀ (dense, candle)"))?;
            drop((w, y));
            let (y, _) = l.base.forward_train(&x)?;
            laps.lap(&tag("base forward (nf4_linear)"))?;
            drop(y);
            let (y, r) = l.forward_train(&x)?;
            laps.lap(&tag("LoRA forward_train"))?;
            drop(y);
            let dx = l.backward(x.clone(), &dy, &r, &mut sink)?;
            laps.lap(&tag("LoRA backward"))?;
            drop(dx);
            // The LoRA's own parts: its forward's replay (dropout, x·Aᵀ) and the base's
            // `acc += dy·W` alone (LoRA backward minus this is the adapter's share).
            let acc = x.zeros_like()?;
            laps.lap("proj gap")?;
            let r = l.replay_for(&x)?;
            laps.lap(&tag("LoRA replay_for (dropout + scaled x·Aᵀ)"))?;
            let dx = qlora_studio::engine::linear::backward_add(l.base.as_ref(), &dy, acc)?;
            laps.lap(&tag("base backward_add alone"))?;
            drop((dx, r));
        }
    }
    laps.times.retain(|(k, ..)| k != "proj gap" && !k.ends_with("(warm-up)"));
    Ok(())
}
