//! One decoder layer covering every supported architecture: the norms, the attention with
//! grouped-query heads, rotary (full or partial) and an optional sliding window, the MLP
//! (gated SiLU/GELU or Phi's plain fc1→GELU→fc2), sequential or parallel residuals.
//! Projections are `Arc<dyn Linear>` so dense, NF4, int8 and LoRA all plug in.

use super::config::{Activation, NormKind};
use crate::linear::ArcLinear;
use crate::ops;
use candle_core::{DType, Result, Tensor};

/// A normalisation layer (RMSNorm, Gemma's `1 + weight` RMSNorm, or LayerNorm).
#[derive(Debug, Clone)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self.kind, &self.bias) {
            (NormKind::Rms, _) => ops::rms_norm(x, &self.weight, self.eps),
            (NormKind::RmsOnePlus, _) => ops::rms_norm_one_plus(x, &self.weight, self.eps),
            (NormKind::LayerNorm, Some(b)) => ops::layer_norm(x, &self.weight, b, self.eps),
            (NormKind::LayerNorm, None) => {
                let zeros = self.weight.zeros_like()?;
                ops::layer_norm(x, &self.weight, &zeros, self.eps)
            }
        }
    }
}

/// The attention block's projections and shape.
#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: ArcLinear,
    pub k_proj: ArcLinear,
    pub v_proj: ArcLinear,
    pub o_proj: ArcLinear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub sliding_window: Option<usize>,
}

/// Per-call context: rotary tables for the new positions and how many positions are cached.
pub struct Step<'a> {
    /// `(cos, sin)` `[T, rotary_dim]`; the fused CUDA decode (one token) computes its own.
    pub tables: Option<(&'a Tensor, &'a Tensor)>,
    /// Positions already in the KV cache before this call.
    pub past: usize,
    /// Training: the differentiable attention (fused masked probabilities with a backward)
    /// rather than candle's fused softmax and a host-built mask.
    pub training: bool,
    /// Set for the fused inference path on CUDA (`model/fast.rs`): the rotary inverse
    /// frequencies for this call's sequence length.
    pub inv_freq: Option<&'a [f32]>,
}

impl Step<'_> {
    pub fn tables(&self) -> Result<(&Tensor, &Tensor)> {
        self.tables.ok_or_else(|| candle_core::Error::Msg("rotary tables were not computed for this step".into()))
    }
}

impl Attention {
    /// `x` is `[B, T, hidden]`; `cache` the layer's cached `(k, v)`, updated in place.
    pub fn forward(&self, x: &Tensor, step: &Step, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let heads = |p: &ArcLinear, n: usize| -> Result<Tensor> { p.forward(x)?.reshape((b, t, n, self.head_dim))?.transpose(1, 2)?.contiguous() };
        let (cos, sin) = step.tables()?;
        let fused = step.training && fused_training(x.device());
        let (q, mut k) = if fused {
            // One kernel each way: rotary and the transpose to heads ([`ops::rope`]).
            let rotated = |p: &ArcLinear, n: usize| ops::rope::rope_heads(&p.forward(x)?.reshape((b, t, n, self.head_dim))?, cos, sin);
            (rotated(&self.q_proj, self.num_heads)?, rotated(&self.k_proj, self.num_kv_heads)?)
        } else {
            (ops::apply_rope(&heads(&self.q_proj, self.num_heads)?, cos, sin)?, ops::apply_rope(&heads(&self.k_proj, self.num_kv_heads)?, cos, sin)?)
        };
        let mut v = heads(&self.v_proj, self.num_kv_heads)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = if fused { self.attend_fused(&q, &k, &v, step.past, scale)? } else { self.attend(&q, &k, &v, step.past, scale, step.training)? };
        let out = out.transpose(1, 2)?.reshape((b, t, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }

    /// Training attention on a GPU, `[B, heads, T, hd]` out: grouped heads side by side (no
    /// `repeat_kv` copies) and the mask made inside the fused probabilities op
    /// ([`ops::attention::probs`]), whose graph keeps one `[B, heads, T, S]` tensor in the
    /// compute dtype.
    fn attend_fused(&self, q: &Tensor, k: &Tensor, v: &Tensor, past: usize, scale: f64) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = self.num_kv_heads;
        let m = ops::attention::AttnMask { t, past, window: self.sliding_window, scale };
        let q = q.reshape((b, nkv, (nh / nkv) * t, hd))?;
        let probs = ops::attention::probs(&q, k, m)?;
        probs.matmul(&v.contiguous()?)?.reshape((b, nh, t, hd))
    }

    /// The composite attention (inference outside the fused CUDA path, and CPU training with
    /// the differentiable softmax), `[B, heads, T, hd]` out.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, past: usize, scale: f64, training: bool) -> Result<Tensor> {
        let t = q.dim(2)?;
        let rep = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(k, rep)?;
        let v = repeat_kv(v, rep)?;
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = match causal_mask(t, past, self.sliding_window, q.device())? {
            Some(mask) => scores.broadcast_add(&mask)?,
            None => scores,
        };
        let probs = if training { ops::softmax_last_dim(&scores)? } else { candle_nn::ops::softmax_last_dim(&scores)? };
        probs.to_dtype(v.dtype())?.matmul(&v)
    }
}

/// Whether training on `device` takes the fused ops: rotary, attention and SwiGLU here
/// (`ops::rope`, `ops::attention`, `ops::glu`), the LoRA update in the trainer. On a GPU, yes,
/// unless `QLORA_TRAIN_FUSED=0` (the composite ops, for side-by-side benchmarks). The CPU keeps
/// the composite ops, whose memory the planner's CPU activation formula counts
/// (`tests/train_memory_demo.rs` holds it to ±10%), unless [`set_fused_training_on_cpu`].
pub fn fused_training(device: &candle_core::Device) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let here = !device.is_cpu() || FUSED_ON_CPU.load(std::sync::atomic::Ordering::Relaxed);
    here && *ENABLED.get_or_init(|| std::env::var("QLORA_TRAIN_FUSED").map_or(true, |v| v != "0"))
}

static FUSED_ON_CPU: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes training on the CPU take the fused ops too, through their CPU twins (process-wide):
/// for tests that hold the GPU's training path to the reference (peft) without a GPU.
pub fn set_fused_training_on_cpu(on: bool) {
    FUSED_ON_CPU.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, n, s, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, n, rep, s, d))?.reshape((b, n * rep, s, d))
}

/// `[T, past + T]` additive mask (0 or -inf): causal, and within the sliding window if any.
/// `None` when nothing is masked (a single new token without a window).
pub fn causal_mask(t: usize, past: usize, window: Option<usize>, device: &candle_core::Device) -> Result<Option<Tensor>> {
    let total = past + t;
    if t == 1 && window.is_none_or(|w| total <= w) {
        return Ok(None);
    }
    let mut m = vec![0f32; t * total];
    for i in 0..t {
        let q = past + i;
        for j in 0..total {
            let outside = window.is_some_and(|w| j + w <= q);
            if j > q || outside {
                m[i * total + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (t, total), device).map(Some)
}

/// The feed-forward block: gated (`down(act(gate(x)) * up(x))`) or plain (`fc2(act(fc1(x)))`).
#[derive(Debug, Clone)]
pub enum Mlp {
    Gated { gate: ArcLinear, up: ArcLinear, down: ArcLinear, act: Activation },
    Plain { fc1: ArcLinear, fc2: ArcLinear, act: Activation },
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Silu => x.silu(),
        Activation::GeluTanh => ops::gelu_tanh(x),
        Activation::Gelu => x.gelu_erf(),
    }
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// With `fused` (training on a GPU), a SiLU-gated MLP takes the fused SwiGLU op
    /// ([`ops::glu`]): one kernel each way instead of the composite's two and ~twelve.
    pub fn forward_with(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        match self {
            Mlp::Gated { gate, up, down, act: Activation::Silu } if fused => down.forward(&ops::glu::swiglu(&gate.forward(x)?, &up.forward(x)?)?),
            Mlp::Gated { gate, up, down, act } => {
                let h = (activate(&gate.forward(x)?, *act)? * up.forward(x)?)?;
                down.forward(&h)
            }
            Mlp::Plain { fc1, fc2, act } => fc2.forward(&activate(&fc1.forward(x)?, *act)?),
        }
    }
}

/// One decoder layer. Phi has a single `input_layernorm` feeding attention and MLP in
/// parallel; the others have a second norm before the MLP.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_norm: Norm,
    pub post_attention_norm: Option<Norm>,
    pub attn: Attention,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn forward(&self, x: &Tensor, step: &Step, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let fused = step.training && fused_training(x.device());
        let h = self.input_norm.forward(x)?;
        let a = self.attn.forward(&h, step, cache)?;
        match &self.post_attention_norm {
            None => x + a + self.mlp.forward_with(&h, fused)?,
            Some(norm) => {
                let x = (x + a)?;
                let m = self.mlp.forward_with(&norm.forward(&x)?, fused)?;
                x + m
            }
        }
    }

    /// The layer's projections with their module path suffixes (`self_attn.q_proj`, ...).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut ArcLinear)> {
        let a = &mut self.attn;
        let (o_name, mut v): (&'static str, Vec<(&'static str, &mut ArcLinear)>) = match &mut self.mlp {
            Mlp::Gated { gate, up, down, .. } => ("self_attn.o_proj", vec![("mlp.gate_proj", gate), ("mlp.up_proj", up), ("mlp.down_proj", down)]),
            Mlp::Plain { fc1, fc2, .. } => ("self_attn.dense", vec![("mlp.fc1", fc1), ("mlp.fc2", fc2)]),
        };
        let mut out: Vec<(&'static str, &mut ArcLinear)> = vec![
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            (o_name, &mut a.o_proj),
        ];
        out.append(&mut v);
        out
    }
}
