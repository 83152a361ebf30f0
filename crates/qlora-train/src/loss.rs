//! Masked cross-entropy over the vocabulary, computed a chunk of positions at a time so the
//! `[B, T, vocab]` logits (the largest activation by far: 256k columns for Gemma) never exist
//! whole. The gradient w.r.t. the final hidden states is taken per chunk, so each chunk's
//! logits are freed before the next; the caller then back-propagates that gradient through
//! the model with the surrogate `sum(hidden · grad)`, whose gradient is exactly the chain
//! rule's.
//!
//! The chunk's gradient is written out analytically with the head's weight `W` `[vocab,
//! hidden]` ([`Model::head`], the embeddings when tied): `∂L/∂logits = w·(softmax −
//! onehot)/norm`, `∂L/∂h = ∂L/∂logits · W`, a plain product of row-major operands (no
//! transpose, no copy of the head); the logits `h · Wᵀ` take the transposed view as is (cuBLAS
//! and gemm read it with swapped strides). candle's autograd would also compute (and keep
//! until the end of backward) the gradient of the frozen `[vocab, hidden]` head weight, since
//! its matmul backward differentiates both sides unconditionally: 56 MiB for SmolLM2, 1 GiB
//! for Gemma.
//!
//! On a GPU ([`fused`]) the chunk's 16-bit logits go straight into the cross-entropy kernels of
//! `crate::ops::cross_entropy` (per-row loss, and `∂L/∂logits` in 16-bit), and
//! `∂L/∂h = ∂L/∂logits · W` is one matmul: no autograd weight gradient, no f32 copies of the
//! chunk, and (since the engine exposes the head) no `Wᵀ` copy of an untied head, which the
//! previous version read back as `logits(I) − logits(0)` once per micro-batch (a `[hidden,
//! vocab]` tensor: 0.12 GiB for TinyLlama, 0.24 GiB for Mistral-7B, plus the product's
//! temporaries). At most one chunk's logits and logits gradient exist at a time.

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

/// Loss (`Σ w·nll / norm`) and the gradient of `scale · loss` w.r.t. `hidden` (`[B, T, H]`).
/// `labels` `[B, T]` u32, `weights` `[B, T]` f32.
pub fn loss_and_hidden_grad(model: &Model, hidden: &Tensor, labels: &Tensor, weights: &Tensor, norm: f64, scale: f64) -> Result<(f64, Tensor)> {
    if !hidden.device().is_cpu() {
        return fused(model, hidden, labels, weights, norm, scale);
    }
    let (head, bias) = model.head();
    chunked(hidden, labels, weights, |h, lab, w| analytic_chunk(head, bias, h, lab, w, norm, scale))
}

/// The same through candle's autograd whatever the head (the reference for the closed form).
pub fn loss_and_hidden_grad_autograd(
    model: &Model,
    hidden: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
    norm: f64,
    scale: f64,
) -> Result<(f64, Tensor)> {
    chunked(hidden, labels, weights, |h, lab, w| autograd_chunk(model, h, lab, w, norm, scale))
}

fn chunked(
    hidden: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<(f64, Tensor)>,
) -> Result<(f64, Tensor)> {
    let t = hidden.dim(1)?;
    let mut total = 0f64;
    let mut grads = Vec::new();
    for start in (0..t).step_by(CHUNK) {
        let len = CHUNK.min(t - start);
        let h = hidden.narrow(1, start, len)?.detach();
        let (l, g) = f(&h, &labels.narrow(1, start, len)?, &weights.narrow(1, start, len)?)?;
        total += l;
        grads.push(g);
    }
    Ok((total, Tensor::cat(&grads, 1)?))
}

fn autograd_chunk(model: &Model, h: &Tensor, labels: &Tensor, weights: &Tensor, norm: f64, scale: f64) -> Result<(f64, Tensor)> {
    let h = Var::from_tensor(h)?;
    let l = (chunk_nll(model, h.as_tensor(), labels, weights)? / norm)?;
    let loss = l.to_scalar::<f32>()? as f64;
    let g = (l * scale)?.backward()?;
    let gh = match g.get(h.as_tensor()) {
        Some(gh) => gh.clone(),
        None => h.as_tensor().zeros_like()?,
    };
    Ok((loss, gh))
}

/// `h Wᵀ (+ b)` for `h` `[rows, hidden]`, as a 2-D matmul on the transposed view (candle's
/// 3-D path through candle_nn::Linear copies the whole head for the broadcast batch dim).
fn head_logits(head: &Tensor, bias: Option<&Tensor>, h: &Tensor) -> Result<Tensor> {
    let logits = h.matmul(&head.t()?)?;
    match bias {
        Some(b) => logits.broadcast_add(b),
        None => Ok(logits),
    }
}

/// One chunk's loss and `∂(scale·L)/∂h` in closed form, for a head `logits = h Wᵀ (+ b)`.
fn analytic_chunk(
    head: &Tensor,
    bias: Option<&Tensor>,
    h: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
    norm: f64,
    scale: f64,
) -> Result<(f64, Tensor)> {
    let (b, c, hd) = h.dims3()?;
    let logits = head_logits(head, bias, &h.reshape((b * c, hd))?)?.reshape((b, c, head.dim(0)?))?;
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    drop(logits);
    let idx = labels.unsqueeze(D::Minus1)?;
    let picked = lsm.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?;
    let loss = ((picked * weights)?.sum_all()?.neg()? / norm)?.to_scalar::<f32>()? as f64;
    let coef = (weights * (scale / norm))?.unsqueeze(D::Minus1)?;
    let soft = lsm.exp()?.broadcast_mul(&coef)?;
    let dlogits = soft.scatter_add(&idx, &coef.neg()?, D::Minus1)?;
    // 2-D matmul: a broadcast one would copy the [vocab, hidden] head for the batch dim.
    let (b, c, v) = dlogits.dims3()?;
    let gh = dlogits.to_dtype(head.dtype())?.reshape((b * c, v))?.matmul(head)?;
    Ok((loss, gh.reshape((b, c, head.dim(1)?))?.to_dtype(h.dtype())?))
}

/// A loss that may still be on its device: reading it waits for every kernel queued before
/// it, so a training step reads it once, after the step's backward is queued.
#[derive(Debug, Clone)]
pub enum Loss {
    Ready(f64),
    /// `sum / norm`, `sum` a scalar on the device.
    Pending {
        sum: Tensor,
        norm: f64,
    },
}

impl Loss {
    /// The value (a device synchronisation when pending).
    pub fn read(&self) -> Result<f64> {
        match self {
            Loss::Ready(v) => Ok(*v),
            Loss::Pending { sum, norm } => Ok(sum.to_dtype(DType::F64)?.to_scalar::<f64>()? / norm),
        }
    }
}

/// [`loss_and_hidden_grad`] with the loss left on the device (GPU) until [`Loss::read`].
pub fn loss_and_hidden_grad_pending(
    model: &Model,
    hidden: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
    norm: f64,
    scale: f64,
) -> Result<(Loss, Tensor)> {
    if !hidden.device().is_cpu() {
        return fused_pending(model, hidden, labels, weights, norm, scale);
    }
    let (l, g) = loss_and_hidden_grad(model, hidden, labels, weights, norm, scale)?;
    Ok((Loss::Ready(l), g))
}

/// [`loss_and_hidden_grad`] through the fused cross-entropy kernels (the GPU path; the CPU
/// twins of the kernels make it run anywhere).
pub fn fused(model: &Model, hidden: &Tensor, labels: &Tensor, weights: &Tensor, norm: f64, scale: f64) -> Result<(f64, Tensor)> {
    let (l, g) = fused_pending(model, hidden, labels, weights, norm, scale)?;
    Ok((l.read()?, g))
}

/// [`fused`] with the loss left on the device.
pub fn fused_pending(model: &Model, hidden: &Tensor, labels: &Tensor, weights: &Tensor, norm: f64, scale: f64) -> Result<(Loss, Tensor)> {
    use crate::ops::cross_entropy::{ce_grad, ce_loss};
    let (b, t, hd) = hidden.dims3()?;
    let (head, bias) = model.head();
    let mut total: Option<Tensor> = None;
    let mut grads = Vec::new();
    for start in (0..t).step_by(CHUNK) {
        let len = CHUNK.min(t - start);
        let rows = b * len;
        let h = hidden.narrow(1, start, len)?.detach().contiguous()?.reshape((rows, hd))?;
        let lab = labels.narrow(1, start, len)?.contiguous()?.reshape(rows)?;
        let w = weights.narrow(1, start, len)?.contiguous()?.reshape(rows)?;
        let logits = head_logits(head, bias, &h)?;
        let l = ce_loss(&logits, &lab, &w)?.sum_all()?;
        total = Some(match total {
            Some(acc) => (acc + l)?,
            None => l,
        });
        let dl = ce_grad(&logits, &lab, &w, scale / norm)?;
        drop(logits);
        grads.push(dl.matmul(head)?.reshape((b, len, hd))?);
    }
    let loss = match total {
        Some(sum) => Loss::Pending { sum, norm },
        None => Loss::Ready(0.0),
    };
    Ok((loss, Tensor::cat(&grads, 1)?.to_dtype(hidden.dtype())?))
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
