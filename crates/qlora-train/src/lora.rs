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
        let (y, _) = self.base.forward_train(x)?;
        let replay = self.replay_for(x)?;
        let [_, b, us] = replay.saved.as_slice() else { candle_core::bail!("lora forward: replay without A, B, u") };
        let d = us.matmul(&b.t()?)?.reshape(y.shape())?.to_dtype(y.dtype())?;
        Ok(((y + d)?, replay))
    }

    fn replay_for(&self, x: &Tensor) -> Result<Replay> {
        let dt = x.dtype();
        let seed = (self.dropout > 0.0 && self.train_mode.load(Ordering::Relaxed)).then(|| self.next_seed());
        let n_in = self.in_features();
        let x2 = x.reshape((x.elem_count() / n_in.max(1), n_in))?;
        let xd = match seed {
            Some(s) => crate::ops::dropout::dropout(&x2, s, self.dropout)?,
            None => x2,
        };
        let a = self.a.as_tensor().detach().to_dtype(dt)?;
        let b = self.b.as_tensor().detach().to_dtype(dt)?;
        let us = (xd.matmul(&a.t()?)? * self.scale)?;
        Ok(Replay { seed, saved: vec![a, b, us] })
    }

    /// With `s = scale`, `xd = dropout(x)` (replayed from the seed) and `us = s·xd Aᵀ` kept by
    /// the forward: `∂B = dyᵀ us`, `∂u = s·dy B`, `∂A = ∂uᵀ xd`, `∂x = base's + dropout(∂u A)`;
    /// A's and B's gradients in f32 (their dtype). In an order that holds few `x`-sized
    /// tensors at once: `x` and `xd` are gone before the base's dense weight is made, and the
    /// update's input gradient is made after it is gone.
    fn backward(&self, x: Tensor, dy: &Tensor, replay: &Replay, grads: &mut dyn GradSink) -> Result<Tensor> {
        let [a, b, us] = replay.saved.as_slice() else {
            candle_core::bail!("lora backward: the replay was not made by this layer's forward_train")
        };
        let (n_in, n_out) = (self.in_features(), self.out_features());
        let rows = x.elem_count() / n_in.max(1);
        let dy2 = dy.to_dtype(a.dtype())?.reshape((rows, n_out))?;
        grads.add(self.b.as_tensor(), dy2.t()?.matmul(us)?.to_dtype(self.b.dtype())?)?;
        let gu = (dy2.matmul(b)? * self.scale)?;
        drop(dy2);
        let shape = x.shape().clone();
        let mut xd = x.reshape((rows, n_in))?;
        if let Some(s) = replay.seed {
            xd = crate::ops::dropout::dropout(&xd, s, self.dropout)?;
        }
        grads.add(self.a.as_tensor(), gu.t()?.matmul(&xd)?.to_dtype(self.a.dtype())?)?;
        drop(xd);
        let dx = self.base.backward(x, dy, &Replay::default(), grads)?;
        let mut gx = gu.matmul(a)?;
        if let Some(s) = replay.seed {
            gx = crate::ops::dropout::dropout(&gx, s, self.dropout)?;
        }
        let gx = gx.reshape(shape)?.to_dtype(dx.dtype())?;
        dx + gx
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
