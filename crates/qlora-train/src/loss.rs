//! Masked cross-entropy over the vocabulary, computed a chunk of positions at a time so the
//! `[B, T, vocab]` logits (the largest activation by far: 256k columns for Gemma) never exist
//! whole. The gradient w.r.t. the final hidden states is taken per chunk (the chunk's hidden
//! states as a leaf `Var`), so each chunk's logits are freed before the next; the caller
//! then back-propagates that gradient through the model with the surrogate
//! `sum(hidden · grad)`, whose gradient is exactly the chain rule's.

use candle_core::{D, DType, Result, Tensor, Var};
use qlora_engine::model::Model;

/// Positions per loss chunk.
pub const CHUNK: usize = 256;

/// `Σ w · nll` over the chunk's positions, in f32 (logits cast up first, as transformers
/// does for its loss).
fn chunk_nll(model: &Model, h: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logits = model.logits(h)?.to_dtype(DType::F32)?;
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = lsm.gather(&labels.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?;
    (picked * weights)?.sum_all()?.neg()
}

/// Loss (`Σ w·nll / norm`) and its gradient w.r.t. `hidden` (`[B, T, H]`).
/// `labels` `[B, T]` u32, `weights` `[B, T]` f32.
pub fn loss_and_hidden_grad(
    model: &Model,
    hidden: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
    norm: f64,
    scale: f64,
) -> Result<(f64, Tensor)> {
    let t = hidden.dim(1)?;
    let mut total = 0f64;
    let mut grads = Vec::new();
    for start in (0..t).step_by(CHUNK) {
        let len = CHUNK.min(t - start);
        let h = Var::from_tensor(&hidden.narrow(1, start, len)?.detach())?;
        let l = chunk_nll(model, h.as_tensor(), &labels.narrow(1, start, len)?, &weights.narrow(1, start, len)?)?;
        let l = (l / norm)?;
        total += l.to_scalar::<f32>()? as f64;
        let g = (l * scale)?.backward()?;
        let gh = match g.get(h.as_tensor()) {
            Some(gh) => gh.clone(),
            None => h.as_tensor().zeros_like()?,
        };
        grads.push(gh);
    }
    Ok((total, Tensor::cat(&grads, 1)?))
}

/// Loss only (no gradient), for evaluation: `(Σ w·nll, Σ w)`.
pub fn loss_sum(model: &Model, hidden: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<(f64, f64)> {
    let t = hidden.dim(1)?;
    let mut total = 0f64;
    for start in (0..t).step_by(CHUNK) {
        let len = CHUNK.min(t - start);
        let h = hidden.narrow(1, start, len)?.detach();
        let l = chunk_nll(model, &h, &labels.narrow(1, start, len)?, &weights.narrow(1, start, len)?)?;
        total += l.to_scalar::<f32>()? as f64;
    }
    let count = weights.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((total, count))
}
