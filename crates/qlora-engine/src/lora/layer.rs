//! [`LoraLinear`]: `y = base(x) + s · (dropout(x) Aᵀ) Bᵀ` around any [`Linear`].
//!
//! `s = user_scale · alpha / r` (`alpha / √r` with rsLoRA), as peft's `scaling * set_scale`.
//! The adapter sits behind an `RwLock`, so it can be attached, switched, rescaled or dropped
//! on a loaded model without touching (or reloading) the base weight; user scale 0 skips the
//! LoRA path entirely. In training mode A and B are [`Var`]s and dropout applies to the LoRA
//! input only, as in peft.

use super::error::{LoraError, Result};
use crate::linear::{ArcLinear, DenseLinear, Linear, Storage};
use candle_core::{DType, Tensor, Var};
use std::sync::{Arc, RwLock};

/// One module's LoRA weights and their fixed scaling `alpha / r` (or `alpha / √r`).
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in_features]` (peft's `lora_A.weight`).
    pub a: Tensor,
    /// `[out_features, r]` (peft's `lora_B.weight`).
    pub b: Tensor,
    pub scaling: f64,
    /// Dropout probability on the LoRA input, used in training mode only.
    pub dropout: f64,
    /// `Some` when A and B are trainable (`a`/`b` are then the Vars' tensors).
    pub vars: Option<(Var, Var)>,
}

impl LoraWeights {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
}

struct State {
    adapter: Option<Arc<LoraWeights>>,
    user_scale: f64,
    training: bool,
}

/// A linear layer with an optional LoRA adapter (see the module docs).
pub struct LoraLinear {
    base: ArcLinear,
    name: String,
    state: RwLock<State>,
}

impl std::fmt::Debug for LoraLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("LoraLinear")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("rank", &s.adapter.as_ref().map(|a| a.rank()))
            .field("user_scale", &s.user_scale)
            .finish()
    }
}

impl LoraLinear {
    /// Wraps `base` (module path `name`, e.g. `model.layers.0.self_attn.q_proj`), no adapter yet.
    pub fn new(base: ArcLinear, name: impl Into<String>) -> Self {
        let state = State { adapter: None, user_scale: 1.0, training: false };
        LoraLinear { base, name: name.into(), state: RwLock::new(state) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn base(&self) -> &ArcLinear {
        &self.base
    }

    /// Checks that `w` fits this layer: A `[r, in]`, B `[out, r]`.
    pub fn check_fits(&self, w: &LoraWeights) -> std::result::Result<(), String> {
        let (a, b) = (w.a.dims(), w.b.dims());
        let (i, o) = (self.base.in_features(), self.base.out_features());
        if a.len() != 2 || b.len() != 2 || a[1] != i || b[0] != o || a[0] != b[1] {
            return Err(format!("{}: lora_A is {a:?} and lora_B is {b:?}, the layer needs lora_A [r, {i}] and lora_B [{o}, r]", self.name));
        }
        Ok(())
    }

    /// Attaches (or replaces) the adapter.
    pub fn set_adapter(&self, w: LoraWeights) -> Result<()> {
        self.check_fits(&w).map_err(LoraError::Invalid)?;
        self.write().adapter = Some(Arc::new(w));
        Ok(())
    }

    /// Drops the adapter: the layer is its base again.
    pub fn clear_adapter(&self) -> Option<Arc<LoraWeights>> {
        self.write().adapter.take()
    }

    pub fn adapter(&self) -> Option<Arc<LoraWeights>> {
        self.read().adapter.clone()
    }

    /// Multiplies the adapter's effect (peft's `set_scale`); 0 turns it off.
    pub fn set_user_scale(&self, scale: f64) {
        self.write().user_scale = scale;
    }
    pub fn user_scale(&self) -> f64 {
        self.read().user_scale
    }

    /// Training mode turns LoRA dropout on.
    pub fn set_training(&self, training: bool) {
        self.write().training = training;
    }

    /// The full factor applied to `B·A·x`: `user_scale · scaling`, 0 without an adapter.
    pub fn effective_scale(&self) -> f64 {
        let s = self.read();
        s.adapter.as_ref().map_or(0.0, |a| a.scaling * s.user_scale)
    }

    /// `W + s · B·A` as a dense `[out, in]` tensor of `dtype` (computed in f32).
    pub fn merged_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let w = self.base.dense_weight(DType::F32)?;
        let (adapter, user) = {
            let s = self.read();
            (s.adapter.clone(), s.user_scale)
        };
        let merged = match adapter {
            Some(a) if user != 0.0 => {
                let ba = a.b.to_dtype(DType::F32)?.matmul(&a.a.to_dtype(DType::F32)?)?;
                (w + (ba * (a.scaling * user))?)?
            }
            _ => w,
        };
        merged.to_dtype(dtype)
    }

    /// A plain dense layer with the adapter merged in (base bias kept).
    pub fn merged(&self, dtype: DType) -> candle_core::Result<DenseLinear> {
        let bias = self.base.bias().map(|b| b.to_dtype(dtype)).transpose()?;
        Ok(DenseLinear::new(self.merged_weight(dtype)?, bias))
    }
}

impl Linear for LoraLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.base.forward(x)?;
        let (adapter, user, training) = {
            let s = self.read();
            (s.adapter.clone(), s.user_scale, s.training)
        };
        let Some(a) = adapter else { return Ok(y) };
        let scale = a.scaling * user;
        if scale == 0.0 {
            return Ok(y);
        }
        // peft casts the input to the adapter's dtype and the sum back to the result's.
        let xa = x.to_dtype(a.a.dtype())?;
        let xa = if training && a.dropout > 0.0 { candle_nn::ops::dropout(&xa, a.dropout as f32)? } else { xa };
        let h = xa.broadcast_matmul(&a.a.t()?)?.broadcast_matmul(&a.b.t()?)?;
        let dt = y.dtype();
        y + (h * scale)?.to_dtype(dt)?
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
    /// The BASE weight (without the adapter): use [`LoraLinear::merged_weight`] for `W + s·BA`.
    fn dense_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.base.dense_weight(dtype)
    }
    fn bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }
    fn storage_bytes(&self) -> usize {
        let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
        self.base.storage_bytes() + self.adapter().map_or(0, |a| t(&a.a) + t(&a.b))
    }
}
