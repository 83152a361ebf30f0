//! A decoder layer's backward written out by hand, for gradient-checkpointed training on the
//! fused path (`layers::fused_training`) of the Llama family (Llama, TinyLlama, Mistral with
//! its sliding window, Qwen2 whose q/k/v biases change nothing backward).
//!
//! Why: through candle's autograd a recomputed layer was ~40 graph nodes, and every
//! gradient a zero-filled tensor plus an add, a sort of the graph and an allocation per node;
//! on Mistral-7B about half of the layer's backward was host time. Here the layer is
//! recomputed from its saved input with no graph at all, keeping exactly what the backward
//! reads ([`Saved`]), then walked back with the fused ops' backward kernels (RMSNorm, rotary,
//! attention probabilities, SwiGLU) and each projection's [`Linear::backward`] (frozen NF4:
//! `dy·W` through a transient dequantize; LoRA: its update's gradients, dropout replayed from
//! the forward's seed). Each activation is dropped once its last use is queued.
//!
//! Layers it does not cover (LayerNorm or Gemma's norm, GELU, Phi's parallel block, the CPU's
//! composite ops) return `None` and the caller keeps autograd. `QLORA_TRAIN_MANUAL_BWD=0`
//! keeps autograd everywhere (side-by-side benchmarks).
//!
//! [`Linear::backward`]: crate::linear::Linear::backward

use super::Model;
use super::config::{Activation, NormKind};
use super::layers::{DecoderLayer, Mlp, Norm, Step, fused_training};
use crate::linear::{ArcLinear, GradSink, Replay};
use crate::ops;
use crate::ops::attention::AttnMask;
use candle_core::{Result, Tensor};

/// Whether checkpointed training differentiates covered layers by hand (default) rather than
/// through autograd (`QLORA_TRAIN_MANUAL_BWD=0`, or [`set_manual_backward`]`(false)`).
pub fn manual_backward_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env = *ON.get_or_init(|| std::env::var("QLORA_TRAIN_MANUAL_BWD").map_or(true, |v| v.trim() != "0"));
    env && !MANUAL_OFF.load(std::sync::atomic::Ordering::Relaxed)
}

static MANUAL_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the recompute before the backward drops the attention probabilities once the
/// attention output is made, and the attention backward makes them again from q and k
/// (`QLORA_TRAIN_KEEP_PROBS=0`), or keeps them (the default): remade, one more `q·kᵀ` and
/// softmax a layer, and `[B, heads, T, T]` (67 MB on Mistral-7B at 4 × 512) less alive
/// through the MLP's backward, where the layer backward's peak is. Kept measured faster in
/// the same H100 call (`bench/gpu/results/h100-2026-11-27-s5-t2-*`, with the warp-per-row
/// softmax): Mistral-7B 7,594 vs 7,448 tok/s (mean of two) at 4.817 vs 4.789 GiB peak,
/// TinyLlama 26,908 vs 25,548 at 1.133 GiB both; session 4 measured 7,090 vs 6,845.
pub fn recompute_probs() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QLORA_TRAIN_KEEP_PROBS").is_ok_and(|v| v.trim() == "0"))
}

/// A callback told the name of each piece of the hand-written forward/backward as it has
/// been queued (profiling: `bench/gpu/train_bench.rs --profile` syncs the device in it and
/// reads the time and the pool's bytes). Per thread; `None` (the default) costs nothing.
pub type PhaseHook = Box<dyn FnMut(&str)>;

thread_local! {
    static PHASE_HOOK: std::cell::RefCell<Option<PhaseHook>> = const { std::cell::RefCell::new(None) };
}

/// Installs (or with `None` removes) this thread's [`PhaseHook`]; returns the previous one.
pub fn set_phase_hook(hook: Option<PhaseHook>) -> Option<PhaseHook> {
    PHASE_HOOK.with(|h| std::mem::replace(&mut *h.borrow_mut(), hook))
}

fn mark(what: &str) {
    PHASE_HOOK.with(|h| {
        if let Ok(mut h) = h.try_borrow_mut()
            && let Some(f) = h.as_mut()
        {
            f(what)
        }
    })
}

/// Turns the hand-written backward off (`false`: autograd everywhere) or back on
/// (process-wide; the environment's `QLORA_TRAIN_MANUAL_BWD=0` still wins): for tests and
/// benchmarks that compare both in one process.
pub fn set_manual_backward(on: bool) {
    MANUAL_OFF.store(!on, std::sync::atomic::Ordering::Relaxed);
}

/// What the backward reads, from the recomputed forward.
///
/// The two norms' outputs (the q/k/v and gate/up projections' input, 16 MiB each on
/// Mistral-7B at 4 × 512) are not kept: the backward makes them again from the layer's input
/// and `x2` (kept anyway for the norms' backward) right before their projections' backward,
/// one RMSNorm launch each, so neither is alive at the layer backward's peak (the end of
/// the recompute, where gate, up and their product are).
struct Saved {
    replay_q: Replay,
    replay_k: Replay,
    replay_v: Replay,
    /// Rotated queries, grouped heads side by side: `[B, kv_heads, rep·T, hd]`.
    q: Tensor,
    /// Rotated keys and the values, `[B, kv_heads, T, hd]`.
    k: Tensor,
    v: Tensor,
    /// Attention probabilities `[B, kv_heads, rep·T, T]`; `None` when the attention
    /// backward remakes them ([`recompute_probs`]).
    p: Option<Tensor>,
    /// Attention output as rows `[B, T, heads·hd]`: o_proj's input.
    attn: Tensor,
    replay_o: Replay,
    /// The residual after attention: the second norm's input.
    x2: Tensor,
    replay_gate: Replay,
    replay_up: Replay,
    gate: Tensor,
    up: Tensor,
    /// `silu(gate)·up`: down's input.
    act: Tensor,
    replay_down: Replay,
}

/// The pieces of a covered layer.
struct Parts<'a> {
    norm1: &'a Norm,
    norm2: &'a Norm,
    gate: &'a ArcLinear,
    up: &'a ArcLinear,
    down: &'a ArcLinear,
}

impl DecoderLayer {
    /// The layer's pieces when the hand-written backward covers it for input `x`.
    fn parts(&self, x: &Tensor) -> Option<Parts<'_>> {
        let rms = |n: &Norm| n.kind == NormKind::Rms && n.weight.dtype() == x.dtype() && n.weight.rank() == 1;
        let norm2 = self.post_attention_norm.as_ref()?;
        let Mlp::Gated { gate, up, down, act: Activation::Silu } = &self.mlp else { return None };
        let projections = [&self.attn.q_proj, &self.attn.k_proj, &self.attn.v_proj, &self.attn.o_proj, gate, up, down];
        let covered = manual_backward_enabled()
            && fused_training(x.device())
            && rms(&self.input_norm)
            && rms(norm2)
            && projections.iter().all(|l| l.differentiable_by_hand());
        covered.then_some(Parts { norm1: &self.input_norm, norm2, gate, up, down })
    }

    /// Whether [`DecoderLayer::backward`] covers this layer for input `x`.
    pub fn has_manual_backward(&self, x: &Tensor) -> bool {
        self.parts(x).is_some()
    }

    fn mask(&self, t: usize, past: usize) -> AttnMask {
        AttnMask { t, past, window: self.attn.sliding_window, scale: 1.0 / (self.attn.head_dim as f64).sqrt() }
    }

    /// The training forward without an autograd graph (same kernels and dropout draws as
    /// [`DecoderLayer::forward`] on the fused path), and what the backward reads.
    /// With `output` false (the recompute before the backward, whose output nobody reads) the
    /// down projection's product and the last residual add are skipped (`None` out): only
    /// the LoRA state of `down` is made.
    fn forward_saving(&self, x: &Tensor, step: &Step, p: &Parts, output: bool) -> Result<(Option<Tensor>, Saved)> {
        let (b, t, _) = x.dims3()?;
        let at = &self.attn;
        let (nh, nkv, hd) = (at.num_heads, at.num_kv_heads, at.head_dim);
        let (cos, sin) = step.tables()?;
        // Each projection's raw output is consumed inside its block (freed once rotated,
        // transposed or added), not kept to the end of the function under a shadowed name.
        let h1 = p.norm1.forward(x)?;
        let (q, replay_q) = {
            let (q, r) = at.q_proj.forward_train(&h1)?;
            (ops::rope::rope_heads(&q.reshape((b, t, nh, hd))?, cos, sin)?.reshape((b, nkv, (nh / nkv) * t, hd))?, r)
        };
        let (k, replay_k) = {
            let (k, r) = at.k_proj.forward_train(&h1)?;
            (ops::rope::rope_heads(&k.reshape((b, t, nkv, hd))?, cos, sin)?, r)
        };
        let (v, replay_v) = {
            let (v, r) = at.v_proj.forward_train(&h1)?;
            (v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?, r)
        };
        drop(h1);
        mark("fwd q/k/v (norm, projections, rotary)");
        let probs = ops::attention::probs(&q, &k, self.mask(t, step.past))?;
        let attn = probs.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        let probs = if !output && recompute_probs() { None } else { Some(probs) };
        mark("fwd attention (probabilities, P·V)");
        let (x2, replay_o) = {
            let (o, r) = at.o_proj.forward_train(&attn)?;
            ((x + o)?, r)
        };
        mark("fwd o_proj + residual");
        let h2 = p.norm2.forward(&x2)?;
        let (gate, replay_gate) = p.gate.forward_train(&h2)?;
        let (up, replay_up) = p.up.forward_train(&h2)?;
        drop(h2);
        mark("fwd norm2, gate, up");
        let act = ops::glu::swiglu(&gate, &up)?;
        let (out, replay_down) = if output {
            let (m, replay) = p.down.forward_train(&act)?;
            (Some((&x2 + m)?), replay)
        } else {
            (None, p.down.replay_lazy(&act)?)
        };
        mark("fwd swiglu, down");
        let saved = Saved { replay_q, replay_k, replay_v, q, k, v, p: probs, attn, replay_o, x2, replay_gate, replay_up, gate, up, act, replay_down };
        Ok((out, saved))
    }

    /// The training forward with no autograd graph, for the first pass of gradient
    /// checkpointing; `None` when [`DecoderLayer::backward`] does not cover the layer.
    pub fn forward_no_graph(&self, x: &Tensor, step: &Step) -> Result<Option<Tensor>> {
        let Some(p) = self.parts(x) else { return Ok(None) };
        self.forward_saving(&x.detach(), step, &p, true).map(|(out, _)| out)
    }

    /// `∂L/∂x` of this layer at input `x` given `dy = ∂L/∂out`, the LoRA gradients handed to
    /// `grads`: the forward recomputed (LoRA dropout draws from their layers' current RNG
    /// states, as the first pass drew them) and walked back by hand. `None` when the layer is
    /// not covered (nothing recomputed; use autograd).
    pub fn backward(&self, x: &Tensor, dy: &Tensor, step: &Step, grads: &mut dyn GradSink) -> Result<Option<Tensor>> {
        let Some(p) = self.parts(x) else { return Ok(None) };
        // Detached: a `dy` carrying an op graph (autograd's gradient of the layer above) would
        // put one on every gradient made from it, keeping its operands alive.
        let (x, dy) = (x.detach(), &dy.detach());
        let (_, s) = self.forward_saving(&x, step, &p, false)?;
        let Saved { replay_q, replay_k, replay_v, q, k, v, p: probs, attn, replay_o, x2, .. } = s;
        let dx2 = self.mlp_backward(&p, dy, &x2, (s.gate, s.up, s.act), (&s.replay_gate, &s.replay_up, &s.replay_down), grads)?;
        drop(x2);
        let d_attn = self.attn.o_proj.backward(attn, &dx2, &replay_o, grads)?;
        mark("bwd o_proj");
        let (dq, dk, dv) = self.attention_backward(&d_attn, q, k, v, probs, step)?;
        drop(d_attn);
        mark("bwd attention (probabilities, rotary)");
        let at = &self.attn;
        let h1 = p.norm1.forward(&x)?;
        let mut dh1 = at.q_proj.backward(h1.clone(), &dq, &replay_q, grads)?;
        drop(dq);
        mark("bwd q_proj");
        dh1 = (dh1 + at.k_proj.backward(h1.clone(), &dk, &replay_k, grads)?)?;
        drop(dk);
        dh1 = (dh1 + at.v_proj.backward(h1, &dv, &replay_v, grads)?)?;
        drop(dv);
        mark("bwd k_proj, v_proj");
        let dx = ops::fused_rms::rms_norm_bwd(&x, &p.norm1.weight, &dh1, p.norm1.eps)?;
        mark("bwd norm1 + residual");
        Ok(Some((dx2 + dx)?))
    }

    /// From `dy` at the layer's output back to `∂L/∂x2` (the residual after attention).
    #[allow(clippy::too_many_arguments)]
    fn mlp_backward(
        &self,
        p: &Parts,
        dy: &Tensor,
        x2: &Tensor,
        (gate, up, act): (Tensor, Tensor, Tensor),
        (rg, ru, rd): (&Replay, &Replay, &Replay),
        grads: &mut dyn GradSink,
    ) -> Result<Tensor> {
        // `act` and `h2` go to their last users: dropped inside once read. `act` is held by
        // nobody else, so down's LoRA applies its dropout over it in place (no 4th
        // `[rows, intermediate]` buffer next to gate and up). `h2` is made again here (not
        // kept through the recompute's peak, see [`Saved`]).
        let d_act = p.down.backward_owned(act, dy, rd, grads)?;
        mark("bwd down");
        let (d_gate, d_up) = ops::glu::swiglu_bwd_in_place(gate, up, &d_act)?;
        drop(d_act);
        mark("bwd swiglu");
        let h2 = p.norm2.forward(x2)?;
        let mut dh2 = p.gate.backward(h2.clone(), &d_gate, rg, grads)?;
        drop(d_gate);
        mark("bwd gate");
        dh2 = (dh2 + p.up.backward(h2, &d_up, ru, grads)?)?;
        drop(d_up);
        mark("bwd up");
        let out = dy + ops::fused_rms::rms_norm_bwd(x2, &p.norm2.weight, &dh2, p.norm2.eps)?;
        mark("bwd norm2 + residual");
        out
    }

    /// From the attention output's gradient (rows `[B, T, heads·hd]`) to the q, k, v
    /// projections' output gradients (rows).
    fn attention_backward(
        &self,
        d_attn: &Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        probs: Option<Tensor>,
        step: &Step,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = d_attn.dims3()?;
        let at = &self.attn;
        let (nh, nkv, hd) = (at.num_heads, at.num_kv_heads, at.head_dim);
        let (cos, sin) = step.tables()?;
        let d_o = d_attn.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?.reshape((b, nkv, (nh / nkv) * t, hd))?;
        let probs = match probs {
            Some(p) => p,
            None => ops::attention::probs(&q, &k, self.mask(t, step.past))?,
        };
        let dp = d_o.matmul(&v.t()?)?;
        let dv = probs.t()?.matmul(&d_o)?;
        drop((d_o, v));
        let ds = ops::attention::softmax_bwd(&probs, &dp, self.mask(t, step.past))?;
        drop((probs, dp));
        let dq = ds.matmul(&k)?;
        let dk = ds.t()?.matmul(&q)?;
        drop((ds, q, k));
        let dq = ops::rope::rope_heads_bwd(&dq.reshape((b, nh, t, hd))?, cos, sin)?.reshape((b, t, nh * hd))?;
        let dk = ops::rope::rope_heads_bwd(&dk, cos, sin)?.reshape((b, t, nkv * hd))?;
        let dv = dv.transpose(1, 2)?.reshape((b, t, nkv * hd))?;
        Ok((dq, dk, dv))
    }
}

impl Model {
    /// Whether layer `i`'s training forward and backward run by hand for input `x`
    /// ([`Model::layer_backward`]).
    pub fn layer_has_manual_backward(&self, i: usize, x: &Tensor) -> bool {
        self.training && self.layers[i].has_manual_backward(x)
    }

    /// [`Model::layer_forward`] without an autograd graph, when layer `i` has a hand-written
    /// backward (`None` otherwise).
    pub fn layer_forward_no_graph(&self, i: usize, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
        if !self.training {
            return Ok(None);
        }
        let step = Step { tables: Some((cos, sin)), past: 0, training: true, inv_freq: None };
        self.layers[i].forward_no_graph(x, &step)
    }

    /// Layer `i`'s `∂L/∂input` at `x` (recomputed from it) given `dy = ∂L/∂output`, its LoRA
    /// gradients handed to `grads`; `None` when the layer keeps autograd.
    pub fn layer_backward(&self, i: usize, x: &Tensor, dy: &Tensor, cos: &Tensor, sin: &Tensor, grads: &mut dyn GradSink) -> Result<Option<Tensor>> {
        if !self.training {
            return Ok(None);
        }
        let step = Step { tables: Some((cos, sin)), past: 0, training: true, inv_freq: None };
        self.layers[i].backward(x, dy, &step, grads)
    }
}
