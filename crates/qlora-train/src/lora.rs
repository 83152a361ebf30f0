//! Trainable LoRA around a frozen projection: `y = base(x) + scale · dropout(x) Aᵀ Bᵀ`, with
//! `A` (`[r, in]`) and `B` (`[out, r]`) candle `Var`s in f32 (as peft keeps adapter weights in
//! f32 under QLoRA), initialised as peft does (A Kaiming-uniform with a = √5, i.e. uniform in
//! ±1/√in; B zeros). Dropout draws one seed per forward from a per-layer seeded RNG whose state
//! is saved in checkpoints (so a resumed run drops the same units an uninterrupted one would);
//! the mask itself is a hash of (seed, element), computed where the activations are
//! (`crate::ops::dropout`).
//! [`attach`] wraps the targeted projections of an engine model, matching target names
//! the way peft does (the module path equals the name or ends with `.name`).

use crate::data::batch::SplitMix64;
use candle_core::{DType, Device, Result, Tensor, Var};
use qlora_engine::linear::{ArcLinear, GradSink, Linear, Replay, Storage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A frozen base projection with a trainable low-rank update.
#[derive(Debug)]
pub struct TrainLora {
    pub base: ArcLinear,
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    rng: Mutex<SplitMix64>,
    /// Dropout applies only while training (off for evaluation).
    train_mode: AtomicBool,
}

impl TrainLora {
    /// New adapter with peft's initialisation, drawn from `seed`.
    pub fn new(base: ArcLinear, rank: usize, scale: f64, dropout: f64, seed: u64, device: &Device) -> Result<Self> {
        let (n_in, n_out) = (base.in_features(), base.out_features());
        let bound = 1.0 / (n_in as f64).sqrt();
        let mut rng = SplitMix64(seed);
        let a: Vec<f32> = (0..rank * n_in).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, n_in), device)?)?;
        let b = Var::zeros((n_out, rank), DType::F32, device)?;
        Ok(Self { base, a, b, scale, dropout, rng: Mutex::new(SplitMix64(seed ^ 0xD0D0)), train_mode: AtomicBool::new(true) })
    }

    /// Turns dropout on (training) or off (evaluation).
    pub fn set_train_mode(&self, on: bool) {
        self.train_mode.store(on, Ordering::Relaxed);
    }

    /// State of the dropout RNG, for a checkpoint.
    pub fn rng_state(&self) -> u64 {
        self.rng.lock().map(|r| r.0).unwrap_or_else(|p| p.into_inner().0)
    }

    pub fn set_rng_state(&self, s: u64) {
        match self.rng.lock() {
            Ok(mut r) => r.0 = s,
            Err(p) => p.into_inner().0 = s,
        }
    }

    /// The seed of the next dropout draw; advances the RNG (one step per forward, so a
    /// restored state replays the same masks).
    fn next_seed(&self) -> u64 {
        let mut rng = match self.rng.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        rng.next_u64()
    }

    /// The scaled keep mask of the next draw (tests: 0 or `1/(1-p)` per element).
    #[cfg(test)]
    fn dropout_mask(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        crate::ops::dropout::dropout(&Tensor::ones(shape, DType::F32, device)?, self.next_seed(), self.dropout)
    }
}

/// Dense copies of an NF4 base weight above this many bytes are made a slab at a time in the
/// training forward (`qlora_quant::cuda::prefill::nf4_linear_slabs`): Mistral-7B's MLP weights
/// (117 MB in bf16) then never exist whole, 88 MB less at the recompute's peak, for about 6%
/// more time in those products (measured on an H100 for the prefill, module docs there).
#[cfg(feature = "cuda")]
const FORWARD_SLAB_BYTES: usize = 32 << 20;

impl TrainLora {
    /// The frozen base's product for [`Linear::forward_train`].
    fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some((w, bias)) = self.base.as_nf4() {
            let big = w.shape().elem_count() * x.dtype().size_in_bytes() > 2 * FORWARD_SLAB_BYTES;
            if big && x.device().is_cuda() && matches!(x.dtype(), DType::BF16 | DType::F16) && x.is_contiguous() && x.rank() >= 2 {
                let y = qlora_quant::cuda::prefill::nf4_linear_slabs(x, w, FORWARD_SLAB_BYTES)?;
                return match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                };
            }
        }
        self.base.forward_train(x).map(|(y, _)| y)
    }
}

impl Linear for TrainLora {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        // On the CPU the update is computed in f32 (as peft without autocast); on a GPU in the
        // activations' dtype, as peft under torch.autocast: A and B are cast for the matmuls and
        // their gradients come back in f32 through the cast.
        let dt = if x.device().is_cpu() { DType::F32 } else { x.dtype() };
        if qlora_engine::model::layers::fused_training(x.device()) {
            let dropout = (self.dropout > 0.0 && self.train_mode.load(Ordering::Relaxed))
                .then(|| crate::ops::dropout::Dropout { seed: self.next_seed(), p: self.dropout });
            let op = crate::ops::lora_delta::LoraDelta { dropout, scale: self.scale };
            let d = crate::ops::lora_delta::lora_delta(x, self.a.as_tensor(), self.b.as_tensor(), op)?;
            let d = d.to_dtype(y.dtype())?;
            return y + d;
        }
        let mut xd = x.to_dtype(dt)?;
        if self.dropout > 0.0 && self.train_mode.load(Ordering::Relaxed) {
            xd = crate::ops::dropout::dropout(&xd, self.next_seed(), self.dropout)?;
        }
        // 2-d matmuls over the flattened rows: a broadcast one would expand A and B over the
        // batch and sum their gradients back in backward.
        let n_in = self.in_features();
        let rows = xd.elem_count() / n_in.max(1);
        let u = xd.reshape((rows, n_in))?.matmul(&self.a.as_tensor().to_dtype(dt)?.t()?)?;
        let d = (u.matmul(&self.b.as_tensor().to_dtype(dt)?.t()?)? * self.scale)?;
        let d = d.to_dtype(y.dtype())?.reshape(y.shape())?;
        y + d
    }
    /// The fused path's update `scale · dropout(x) Aᵀ Bᵀ` with no graph (A, B detached), in
    /// x's dtype with A, B cast to it; the replay keeps the seed, the cast A and B, and
    /// `scale · dropout(x) Aᵀ` (`[rows, r]`).
    fn forward_train(&self, x: &Tensor) -> Result<(Tensor, Replay)> {
        let y = self.base_forward(x)?;
        let replay = self.replay_for(x)?;
        let [_, b, us] = replay.saved.as_slice() else { candle_core::bail!("lora forward: replay without A, B, u") };
        // On CUDA the update is accumulated into the base product's output by one cuBLAS call
        // (β = 1): no delta tensor and no separate add. `y` is the base's fresh output, held
        // by nobody else.
        #[cfg(feature = "cuda")]
        if y.device().is_cuda() && y.dtype() == us.dtype() && matches!(y.dtype(), DType::BF16 | DType::F16) && y.is_contiguous() {
            qlora_quant::cuda::train_gemm::add_matmul_t(&y, us, b)?;
            return Ok((y, replay));
        }
        let d = us.matmul(&b.t()?)?.reshape(y.shape())?.to_dtype(y.dtype())?;
        Ok(((y + d)?, replay))
    }

    fn replay_for(&self, x: &Tensor) -> Result<Replay> {
        let mut replay = self.replay_lazy(x)?;
        let n_in = self.in_features();
        let x2 = x.reshape((x.elem_count() / n_in.max(1), n_in))?;
        let xd = match replay.seed {
            Some(s) => crate::ops::dropout::dropout(&x2, s, self.dropout)?,
            None => x2,
        };
        let us = product(&xd, false, &replay.saved[0], true, Some(self.scale), xd.dtype())?;
        replay.saved.push(us);
        Ok(replay)
    }

    /// The seed and the cast A, B only: the backward makes `us` from the dropped input.
    fn replay_lazy(&self, x: &Tensor) -> Result<Replay> {
        let dt = x.dtype();
        let seed = (self.dropout > 0.0 && self.train_mode.load(Ordering::Relaxed)).then(|| self.next_seed());
        let a = self.a.as_tensor().detach().to_dtype(dt)?;
        let b = self.b.as_tensor().detach().to_dtype(dt)?;
        Ok(Replay { seed, saved: vec![a, b] })
    }

    /// With `s = scale`, `xd = dropout(x)` (replayed from the seed) and `us = s·xd Aᵀ` (kept
    /// by the forward, or made here after [`Linear::replay_lazy`]): `∂B = dyᵀ us`,
    /// `∂u = s·dy B`, `∂A = ∂uᵀ xd`, `∂x = dropout(∂u A) + base's`; A's and B's gradients in
    /// f32 (their dtype). In an order that holds few `x`-sized tensors at once: `x` and `xd`
    /// are gone before the update's input gradient is made, and the base's `dy·W` is added
    /// into that gradient (in place on a GPU, `linear::backward_add`).
    fn backward(&self, x: Tensor, dy: &Tensor, replay: &Replay, grads: &mut dyn GradSink) -> Result<Tensor> {
        self.backward_inner(x, dy, replay, grads, false)
    }
    /// The dropout applied over `x` itself (nobody else holds it).
    fn backward_owned(&self, x: Tensor, dy: &Tensor, replay: &Replay, grads: &mut dyn GradSink) -> Result<Tensor> {
        self.backward_inner(x, dy, replay, grads, true)
    }
    fn differentiable_by_hand(&self) -> bool {
        self.base.differentiable_by_hand()
    }
    fn in_features(&self) -> usize {
        self.base.in_features()
    }
    fn out_features(&self) -> usize {
        self.base.out_features()
    }
    fn storage(&self) -> Storage {
        self.base.storage()
    }
    fn dense_weight(&self, dtype: DType) -> Result<Tensor> {
        let delta = (self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?;
        self.base.dense_weight(DType::F32)?.add(&delta)?.to_dtype(dtype)
    }
    fn bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }
    fn storage_bytes(&self) -> usize {
        self.base.storage_bytes() + (self.a.elem_count() + self.b.elem_count()) * 4
    }
}

impl TrainLora {
    /// [`Linear::backward`]; with `owned` the caller holds no other handle to `x`'s storage
    /// and the dropout is applied over it in place (same values, no dropped copy).
    fn backward_inner(&self, x: Tensor, dy: &Tensor, replay: &Replay, grads: &mut dyn GradSink, owned: bool) -> Result<Tensor> {
        let (a, b, kept_us) = match replay.saved.as_slice() {
            [a, b] => (a, b, None),
            [a, b, us] => (a, b, Some(us)),
            _ => candle_core::bail!("lora backward: the replay was not made by this layer's forward_train"),
        };
        let (n_in, n_out) = (self.in_features(), self.out_features());
        let rows = x.elem_count() / n_in.max(1);
        let shape = x.shape().clone();
        let mut xd = x.reshape((rows, n_in))?;
        drop(x);
        if let Some(s) = replay.seed {
            xd = if owned { crate::ops::dropout::dropout_owned(xd, s, self.dropout)? } else { crate::ops::dropout::dropout(&xd, s, self.dropout)? };
        }
        let us = match kept_us {
            Some(us) => us.clone(),
            None => product(&xd, false, a, true, Some(self.scale), xd.dtype())?,
        };
        let dy2 = dy.to_dtype(a.dtype())?.reshape((rows, n_out))?;
        grads.add(self.b.as_tensor(), product(&dy2, true, &us, false, None, self.b.dtype())?)?;
        drop(us);
        let gu = product(&dy2, false, b, false, Some(self.scale), dy2.dtype())?;
        drop(dy2);
        grads.add(self.a.as_tensor(), product(&gu, true, &xd, false, None, self.a.dtype())?)?;
        drop(xd);
        let mut gx = gu.matmul(a)?;
        if let Some(s) = replay.seed {
            gx = crate::ops::dropout::dropout_owned(gx, s, self.dropout)?;
        }
        let gx = gx.reshape(shape)?.to_dtype(dy.dtype())?;
        qlora_engine::linear::backward_add(self.base.as_ref(), dy, gx)
    }
}

/// Whether the LoRA products on CUDA take one cuBLAS call each with the scale and the f32
/// output folded in (`qlora_quant::cuda::lora_gemm`; the default) or candle's matmul followed
/// by a scale or a cast (`QLORA_LORA_GEMM=0`). On by default: measured faster on an H100
/// (Mistral-7B 4 × 512: 7,669 vs 7,511 tok/s with the fused AdamW in both, same call;
/// TinyLlama 27,186 vs 25,408). The adapter gradients come out of cuBLAS in f32 instead of
/// being rounded to bf16 first (torch autocast's rounding), so the bench's loss after 13 steps
/// moves in the fourth decimal (11.110755 → 11.112980); `tests/gpu_train_optim.rs` checks both
/// forms against the CPU in f32. 0 unset, 1 on, 2 off.
static LORA_GEMM: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns the one-call LoRA products on or off for this process (`None`: back to
/// `QLORA_LORA_GEMM`); tests compare the two.
pub fn set_fused_products(on: Option<bool>) {
    LORA_GEMM.store(on.map_or(0, |on| if on { 1 } else { 2 }), Ordering::Relaxed);
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn fused_products() -> bool {
    match LORA_GEMM.load(Ordering::Relaxed) {
        0 => std::env::var("QLORA_LORA_GEMM").map_or(true, |v| v.trim() != "0"),
        v => v == 1,
    }
}

/// `alpha · op(a) · op(b)` (`op` transposes where `ta` / `tb`; `alpha` `None` = no scaling)
/// in dtype `out`, for 2-d `a`, `b`. On CUDA with 16-bit operands one cuBLAS call with the
/// scale and the output dtype folded in; elsewhere candle's matmul, then the scale, then the
/// cast, as the update was written before.
fn product(a: &Tensor, ta: bool, b: &Tensor, tb: bool, alpha: Option<f64>, out: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if a.device().is_cuda()
        && matches!(a.dtype(), DType::BF16 | DType::F16)
        && a.dtype() == b.dtype()
        && (out == a.dtype() || out == DType::F32)
        && a.is_contiguous()
        && b.is_contiguous()
        && fused_products()
    {
        return qlora_quant::cuda::lora_gemm::matmul(a, ta, b, tb, alpha.unwrap_or(1.0) as f32, out);
    }
    let a = if ta { a.t()? } else { a.clone() };
    let b = if tb { b.t()? } else { b.clone() };
    let p = a.matmul(&b)?;
    let p = match alpha {
        Some(s) => (p * s)?,
        None => p,
    };
    p.to_dtype(out)
}

/// Does module path `path` match target name `t` as peft matches `target_modules`?
pub fn matches(path: &str, t: &str) -> bool {
    t == "all-linear" || path == t || path.ends_with(&format!(".{t}"))
}

/// Module names (the last part of each path) available for targeting.
pub fn available(paths: &[String]) -> Vec<String> {
    let mut names: Vec<String> = paths.iter().filter_map(|p| p.rsplit('.').next()).map(String::from).collect();
    names.sort();
    names.dedup();
    names
}

/// The layers LoRA was attached to, in model order, with their module paths.
pub type Attached = Vec<(String, Arc<TrainLora>)>;

#[cfg(test)]
mod tests {
    use super::*;
    use qlora_engine::linear::DenseLinear;

    #[test]
    fn peft_style_matching() {
        assert!(matches("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(!matches("model.layers.0.self_attn.q_proj", "proj"));
        assert!(matches("model.layers.0.mlp.up_proj", "all-linear"));
        let av = available(&["a.q_proj".into(), "b.q_proj".into(), "b.v_proj".into()]);
        assert_eq!(av, vec!["q_proj", "v_proj"]);
    }

    #[test]
    fn starts_as_the_base_and_learns_through_a_and_b() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
        let base: ArcLinear = Arc::new(DenseLinear::new(w, None));
        let l = TrainLora::new(base.clone(), 2, 2.0, 0.0, 1, &dev).unwrap();
        let x = Tensor::new(&[[0.5f32, -1.0]], &dev).unwrap();
        let y0 = base.forward(&x).unwrap();
        let y = l.forward(&x).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), y0.to_vec2::<f32>().unwrap(), "B = 0: no change");
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gb = g.get(l.b.as_tensor()).unwrap();
        assert!(gb.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        let bound = 1.0 / 2f32.sqrt();
        assert!(l.a.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn dropout_is_replayable_from_the_rng_state() {
        let dev = Device::Cpu;
        let base: ArcLinear = Arc::new(DenseLinear::new(Tensor::ones((4, 8), DType::F32, &dev).unwrap(), None));
        let l = TrainLora::new(base, 2, 1.0, 0.5, 3, &dev).unwrap();
        let s = l.rng_state();
        let m1 = l.dropout_mask(&[2, 8], &dev).unwrap().to_vec2::<f32>().unwrap();
        l.set_rng_state(s);
        let m2 = l.dropout_mask(&[2, 8], &dev).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m1, m2);
        assert!(m1.iter().flatten().all(|v| *v == 0.0 || *v == 2.0));
    }
}
