//! The hand-written decoder-layer backward (`qlora_engine::model::backward`) against candle's
//! autograd, on the CPU through the fused ops' CPU twins (the GPU's training path): on the
//! tiny random Llama, Mistral (sliding window 8, shorter than the batch) and Qwen2 (q/k/v
//! biases), f32, LoRA dropout on, the layer's `∂L/∂input` and every LoRA gradient equal
//! autograd's for a random output gradient (dense and NF4 base), and checkpointed micro-steps
//! with AdamW between give the same losses and gradients either way; a layer holding a
//! projection without a declared hand-written backward keeps autograd. Its own binary: the
//! switches are process-wide.

#[path = "support/lora_grads.rs"]
mod lora_grads;

use lora_grads::fixtures;
use qlora_studio::engine::candle_core::{DType, Device, Tensor, TensorId, Var};
use qlora_studio::engine::linear::{ArcLinear, GradSink, Linear, Quant, Storage};
use qlora_studio::engine::model::backward::set_manual_backward;
use qlora_studio::engine::model::layers::set_fused_training_on_cpu;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::train::config::TrainConfig;
use qlora_studio::train::data::batch::Batch;
use qlora_studio::train::lora::Attached;
use qlora_studio::train::optim::{AdamW, AdamWParams, Param};
use qlora_studio::train::{adapter, trainer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The switches are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const ALL: &str = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj";

fn setup(arch: &str, quant: Quant) -> (Model, Attached) {
    setup_targets(arch, quant, ALL)
}

/// LoRA on `targets` (a YAML list's inside); the other projections stay frozen.
fn setup_targets(arch: &str, quant: Quant, targets: &str) -> (Model, Attached) {
    let dir = fixtures().join("tiny").join(arch);
    let mut model = Model::load(&dir, &LoadOptions { dtype: DType::F32, quant, device: Device::Cpu }).unwrap();
    model.set_training(true);
    let yaml = format!(
        "model: {}\nquant: {{kind: none}}\ncompute_dtype: f32\n\
         lora: {{rank: 4, alpha: 8, dropout: 0.1, target_modules: [{targets}]}}\n\
         data: {{files: [unused.jsonl], max_len: 64}}\nmax_steps: 1\n",
        dir.display()
    );
    let lora = trainer::attach(&mut model, &TrainConfig::from_yaml_str(&yaml, None).unwrap()).unwrap();
    // The peft adapter of lora_grads/ (same shapes in the three fixtures): B is non-zero, so
    // every gradient is.
    if targets == ALL {
        adapter::load_into(&fixtures().join("lora_grads/adapter"), &lora).unwrap();
    } else {
        for (_, l) in &lora {
            l.b.set(&Tensor::randn(0f32, 0.1, l.b.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    (model, lora)
}

#[derive(Default)]
struct Collect(HashMap<TensorId, Tensor>);

impl GradSink for Collect {
    fn add(&mut self, p: &Tensor, g: Tensor) -> qlora_studio::engine::candle_core::Result<()> {
        assert!(self.0.insert(p.id(), g).is_none(), "a parameter's gradient was handed over twice");
        Ok(())
    }
}

/// max |a − b| / max |b|; `b` must not be all zeros.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let s: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(s > 0.0, "a zero gradient");
    d / s
}

fn rng_states(lora: &Attached) -> Vec<u64> {
    lora.iter().map(|(_, l)| l.rng_state()).collect()
}

fn restore(lora: &Attached, s: &[u64]) {
    lora.iter().zip(s).for_each(|((_, l), s)| l.set_rng_state(*s));
}

/// Layer `i`'s input gradient and LoRA gradients by autograd and by hand, compared.
fn check_layer(arch: &str, quant: Quant, model: &Model, lora: &Attached, i: usize) {
    let (b, t, h) = (2, 12, model.config().hidden_size);
    let x = Tensor::randn(0f32, 1.0, (b, t, h), &Device::Cpu).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (b, t, h), &Device::Cpu).unwrap();
    let (cos, sin) = model.rope_tables(0, t).unwrap();
    let states = rng_states(lora);
    set_manual_backward(false);
    assert!(!model.layer_has_manual_backward(i, &x));
    let xv = Var::from_tensor(&x).unwrap();
    let out = model.layer_forward(i, xv.as_tensor(), &cos, &sin).unwrap();
    let store = (&out * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    restore(lora, &states);
    set_manual_backward(true);
    assert!(model.layer_has_manual_backward(i, &x), "{arch}: layer {i} is not covered");
    let out2 = model.layer_forward_no_graph(i, &x, &cos, &sin).unwrap().unwrap();
    assert!(!out2.track_op());
    let what = format!("{arch} {quant:?} layer {i}");
    assert!(rel(&out2, &out) < 1e-6, "{what}: forward without graph differs by {}", rel(&out2, &out));
    restore(lora, &states);
    let mut sink = Collect::default();
    let dx = model.layer_backward(i, &x, &dy, &cos, &sin, &mut sink).unwrap().expect("covered");
    let want = store.get(xv.as_tensor()).unwrap();
    assert!(rel(&dx, want) < 1e-5, "{what}: ∂L/∂input differs by {}", rel(&dx, want));
    let prefix = format!("model.layers.{i}.");
    let mine: Vec<_> = lora.iter().filter(|(p, _)| p.starts_with(&prefix)).collect();
    assert_eq!(sink.0.len(), 2 * mine.len(), "{what}: one gradient per A and B");
    for (p, l) in mine {
        for (v, n) in [(&l.a, "A"), (&l.b, "B")] {
            let (got, want) = (&sink.0[&v.as_tensor().id()], store.get(v.as_tensor()).unwrap());
            assert_eq!(got.dtype(), DType::F32);
            assert!(!got.track_op(), "{what}: {p}.{n}'s gradient keeps a graph");
            assert!(rel(got, want) < 1e-5, "{what}: {p}.{n} gradient differs by {}", rel(got, want));
        }
    }
}

#[test]
fn layer_backward_by_hand_equals_autograd() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    set_fused_training_on_cpu(true);
    for (arch, quant) in [("llama", Quant::None), ("llama", Quant::Nf4DoubleQuant), ("mistral", Quant::None), ("qwen2", Quant::None)] {
        let (model, lora) = setup(arch, quant);
        for i in 0..model.num_layers() {
            check_layer(arch, quant, &model, &lora, i);
        }
    }
    // LoRA on two projections: the other five are frozen NF4 (`Linear::backward`'s default).
    let (model, lora) = setup_targets("mistral", Quant::Nf4, "q_proj, v_proj");
    assert_eq!(lora.len(), 2 * model.num_layers());
    for i in 0..model.num_layers() {
        check_layer("mistral (q, v only)", Quant::Nf4, &model, &lora, i);
    }
    set_manual_backward(true);
}

/// Two rows of 20 tokens (past Mistral's window of 8), next-token labels, one unweighted.
fn batch(vocab: u32) -> Batch {
    let (rows, seq) = (2, 20);
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

/// Three checkpointed micro-steps with an AdamW step after each: losses and gradients.
fn steps(arch: &str, manual: bool) -> (Vec<f64>, Vec<Vec<Tensor>>) {
    set_manual_backward(manual);
    let (model, lora) = setup(arch, Quant::None);
    let params = lora
        .iter()
        .flat_map(|(n, l)| [Param { name: format!("{n}.lora_A"), var: l.a.clone() }, Param { name: format!("{n}.lora_B"), var: l.b.clone() }])
        .collect();
    let mut opt = AdamW::new(params, AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }).unwrap();
    let b = batch(model.config().vocab_size as u32);
    let norm = b.target_count() as f64;
    let (mut losses, mut grads) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (l, g) = trainer::step::micro_step(&model, &lora, &b, norm, 1.0, true).unwrap();
        opt.step(&g, 1e-2).unwrap();
        losses.push(l);
        grads.push(g);
    }
    (losses, grads)
}

#[test]
fn checkpointed_steps_by_hand_equal_autograd() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    set_fused_training_on_cpu(true);
    for arch in ["llama", "mistral"] {
        let (want_loss, want_grads) = steps(arch, false);
        let (loss, grads) = steps(arch, true);
        for s in 0..3 {
            let d = (loss[s] - want_loss[s]).abs() / want_loss[s];
            assert!(d < 1e-5, "{arch} step {s}: loss {} by hand vs {} by autograd", loss[s], want_loss[s]);
            // Step 0 is the backward alone; later steps also carry AdamW's first updates, which
            // turn rounding-level differences of near-zero gradient entries into lr-sized ones.
            let tol = if s == 0 { 1e-5 } else { 1e-3 };
            let worst = grads[s].iter().zip(&want_grads[s]).map(|(g, w)| rel(g, w)).fold(0f32, f32::max);
            eprintln!("{arch} step {s}: loss {} (autograd {}), worst gradient rel {worst:e}", loss[s], want_loss[s]);
            assert!(worst < tol, "{arch} step {s}: a gradient differs by {worst} relative");
        }
        assert!(want_loss[2] < want_loss[0], "{arch}: the loss did not go down ({want_loss:?})");
    }
    set_manual_backward(true);
}

/// A decorator that does not declare a hand-written backward (as the engine's inference
/// `LoraLinear`, whose `dense_weight` is the base's): its layer must keep autograd.
#[derive(Debug)]
struct Opaque(ArcLinear);

impl Linear for Opaque {
    fn forward(&self, x: &Tensor) -> qlora_studio::engine::candle_core::Result<Tensor> {
        self.0.forward(x)
    }
    fn in_features(&self) -> usize {
        self.0.in_features()
    }
    fn out_features(&self) -> usize {
        self.0.out_features()
    }
    fn storage(&self) -> Storage {
        self.0.storage()
    }
    fn dense_weight(&self, dtype: DType) -> qlora_studio::engine::candle_core::Result<Tensor> {
        self.0.dense_weight(dtype)
    }
    fn bias(&self) -> Option<&Tensor> {
        self.0.bias()
    }
    fn storage_bytes(&self) -> usize {
        self.0.storage_bytes()
    }
}

#[test]
fn a_layer_with_an_undeclared_projection_keeps_autograd() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    set_fused_training_on_cpu(true);
    set_manual_backward(true);
    let (mut model, _) = setup_targets("llama", Quant::None, "q_proj");
    let path = "model.layers.1.mlp.up_proj";
    let up = model.projections().into_iter().find(|(p, _)| p == path).unwrap().1;
    model.replace_projection(path, Arc::new(Opaque(up))).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 4, model.config().hidden_size), &Device::Cpu).unwrap();
    assert!(model.layer_has_manual_backward(0, &x));
    assert!(!model.layer_has_manual_backward(1, &x), "layer 1 holds a projection without a hand-written backward");
    let (cos, sin) = model.rope_tables(0, 4).unwrap();
    assert!(model.layer_backward(1, &x, &x, &cos, &sin, &mut Collect::default()).unwrap().is_none());
}
