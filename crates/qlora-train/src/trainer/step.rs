//! One micro-batch forward and backward, returning the loss and each LoRA parameter's
//! gradient. Two ways, same gradients:
//!
//! - whole graph: the model's training-mode forward to the final hidden states, the chunked
//!   loss gives `∂L/∂hidden`, and `sum(hidden · ∂L/∂hidden)` is back-propagated;
//! - gradient checkpointing: the forward keeps only each decoder layer's input (detached);
//!   backward walks the layers in reverse, recomputing one layer at a time from its saved
//!   input (a leaf `Var`) and back-propagating `sum(out · ∂L/∂out)` through it, which yields
//!   that layer's LoRA gradients and `∂L/∂input` for the layer below. Only one layer's
//!   activations exist at a time. Layers the engine differentiates by hand (the fused path
//!   of the Llama family, `qlora_engine::model::backward`) skip the graph in both passes:
//!   the recompute keeps what their backward reads and the gradients come through a sink.

use crate::data::batch::Batch;
use crate::lora::Attached;
use crate::loss::{self, Loss};
use crate::trainer::stash::{Checkpointing, Stash};
use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use qlora_engine::linear::GradSink;
use qlora_engine::model::Model;

/// Loss (this micro-batch's share, `Σ w·nll / norm`) and gradients in parameter order
/// (`a`, `b` of each attached layer), scaled by `scale` (loss scaling).
pub fn micro_step(
    model: &Model,
    lora: &Attached,
    batch: &Batch,
    norm: f64,
    scale: f64,
    checkpointing: impl Into<Checkpointing>,
) -> Result<(f64, Vec<Tensor>)> {
    let (loss, grads) = micro_step_pending(model, lora, batch, norm, scale, checkpointing)?;
    Ok((loss.read()?, grads))
}

/// [`micro_step`] with the loss left on the device: nothing in it waits for the GPU, so the
/// host keeps queueing kernels (the optimizer's too) while the GPU works; read the loss once
/// the step's work is queued.
pub fn micro_step_pending(
    model: &Model,
    lora: &Attached,
    batch: &Batch,
    norm: f64,
    scale: f64,
    checkpointing: impl Into<Checkpointing>,
) -> Result<(Loss, Vec<Tensor>)> {
    let dev = model.device();
    let (ids, labels, weights) = batch_tensors(batch, dev)?;
    let mut grads: Vec<Option<Tensor>> = vec![None; lora.len() * 2];
    let mode = checkpointing.into();
    let loss = if mode.is_on() {
        checkpointed(model, lora, &ids, &labels, &weights, norm, scale, &mut grads, mode)?
    } else {
        let hidden = model.forward_hidden(&ids, None)?;
        let (l, gh) = loss::loss_and_hidden_grad_pending(model, &hidden, &labels, &weights, norm, scale)?;
        let store = (hidden * gh)?.sum_all()?.backward()?;
        collect(lora, &store, &mut grads)?;
        l
    };
    let out = grads
        .into_iter()
        .enumerate()
        .map(|(i, g)| match g {
            Some(g) => Ok(g),
            None => param(lora, i).zeros_like(),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, out))
}

/// `[B, T]` ids (u32), labels (u32) and weights (f32) on the device.
pub fn batch_tensors(batch: &Batch, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let shape = (batch.rows, batch.seq);
    Ok((Tensor::from_slice(&batch.ids, shape, dev)?, Tensor::from_slice(&batch.labels, shape, dev)?, Tensor::from_slice(&batch.weights, shape, dev)?))
}

fn param(lora: &Attached, i: usize) -> &Tensor {
    let l = &lora[i / 2].1;
    if i.is_multiple_of(2) { l.a.as_tensor() } else { l.b.as_tensor() }
}

/// Adds the store's gradients of every LoRA parameter into `acc`.
fn collect(lora: &Attached, store: &GradStore, acc: &mut [Option<Tensor>]) -> Result<()> {
    for (i, slot) in acc.iter_mut().enumerate() {
        if let Some(g) = store.get(param(lora, i)) {
            *slot = Some(match slot.take() {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            });
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn checkpointed(
    model: &Model,
    lora: &Attached,
    ids: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
    norm: f64,
    scale: f64,
    grads: &mut [Option<Tensor>],
    mode: Checkpointing,
) -> Result<Loss> {
    let t = ids.dim(1)?;
    let (cos, sin) = model.rope_tables(0, t)?;
    let mut inputs = Stash::new(model.device(), model.num_layers(), mode)?;
    let mut x = model.embed(ids)?.detach();
    // LoRA dropout must draw the same masks when a layer is recomputed: remember each
    // layer's RNG states before its first forward, replay them before the recompute.
    let mut rng_before = Vec::with_capacity(model.num_layers());
    for i in 0..model.num_layers() {
        inputs.push(&x)?;
        rng_before.push(rng_states(lora, i));
        x = match model.layer_forward_no_graph(i, &x, &cos, &sin)? {
            Some(y) => y,
            None => model.layer_forward(i, &x, &cos, &sin)?.detach(),
        };
    }
    let rng_after: Vec<(usize, u64)> = (0..lora.len()).map(|j| (j, lora[j].1.rng_state())).collect();
    let (l, mut g) = loss_and_top_grad(model, x, labels, weights, norm, scale)?;
    for i in (0..model.num_layers()).rev() {
        for &(j, state) in &rng_before[i] {
            lora[j].1.set_rng_state(state);
        }
        let input = inputs.take(i)?;
        // Covered layers: recomputed and differentiated by hand, no graph (model/backward.rs).
        if let Some(dx) = model.layer_backward(i, &input, &g, &cos, &sin, &mut Sink::new(lora, grads))? {
            g = dx;
            continue;
        }
        let input = Var::from_tensor(&input)?;
        let out = model.layer_forward(i, input.as_tensor(), &cos, &sin)?;
        let store = (out * &g)?.sum_all()?.backward()?;
        collect(lora, &store, grads)?;
        g = store.get(input.as_tensor()).cloned().map_or_else(|| input.as_tensor().zeros_like(), Ok)?;
    }
    for (j, state) in rng_after {
        lora[j].1.set_rng_state(state);
    }
    Ok(l)
}

/// The loss and `∂L/∂x` at the last layer's output `x` (through the final norm). Everything
/// else made here is gone when it returns: `x`, its `Var` copy and the gradient store (whose
/// entry for the copy is the gradient returned, shared) would otherwise stay alive through
/// the whole backward, three `[B, T, hidden]` tensors (48 MiB on Mistral-7B at 4 × 512)
/// at its peak, next to the accumulated LoRA gradients.
fn loss_and_top_grad(model: &Model, x: Tensor, labels: &Tensor, weights: &Tensor, norm: f64, scale: f64) -> Result<(Loss, Tensor)> {
    let top = Var::from_tensor(&x)?;
    drop(x);
    let hidden = model.final_norm(top.as_tensor())?;
    let (l, gh) = loss::loss_and_hidden_grad_pending(model, &hidden.detach(), labels, weights, norm, scale)?;
    let store = (hidden * gh)?.sum_all()?.backward()?;
    let g = store.get(top.as_tensor()).cloned().map_or_else(|| top.as_tensor().zeros_like(), Ok)?;
    Ok((l, g))
}

/// The gradients of a hand-written layer backward into the step's slots (`a`, `b` of each
/// attached layer, in order), added to what a slot already holds.
struct Sink<'a> {
    lora: &'a Attached,
    acc: &'a mut [Option<Tensor>],
}

impl<'a> Sink<'a> {
    fn new(lora: &'a Attached, acc: &'a mut [Option<Tensor>]) -> Self {
        Self { lora, acc }
    }
}

impl GradSink for Sink<'_> {
    fn add(&mut self, p: &Tensor, g: Tensor) -> Result<()> {
        let Some(i) = (0..self.acc.len()).find(|&i| param(self.lora, i).id() == p.id()) else {
            candle_core::bail!("layer backward: a gradient for a tensor that is no attached LoRA parameter ({:?})", p.dims())
        };
        let slot = &mut self.acc[i];
        *slot = Some(match slot.take() {
            Some(prev) => (prev + g)?,
            None => g,
        });
        Ok(())
    }
}

/// `(index in lora, rng state)` of the LoRA layers inside decoder layer `layer`.
fn rng_states(lora: &Attached, layer: usize) -> Vec<(usize, u64)> {
    let prefix = format!("model.layers.{layer}.");
    lora.iter().enumerate().filter(|(_, (p, _))| p.starts_with(&prefix)).map(|(j, (_, l))| (j, l.rng_state())).collect()
}
