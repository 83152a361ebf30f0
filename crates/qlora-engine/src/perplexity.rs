//! Mean negative log-likelihood and perplexity of a model over a token sequence, the
//! standard way to compare quantizations and adapters. Texts longer than the window are
//! scored with a sliding window (transformers' recipe): each window re-reads up to
//! `window - stride` tokens of context and scores only the tokens not scored before, so
//! every token after the first is predicted exactly once.

use crate::error::{Error, Result};
use crate::model::Model;
use candle_core::{D, DType, Device, IndexOp, Tensor};
use qlora_jobs::CancelToken;

/// The result of a perplexity run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PerplexityReport {
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Tokens whose likelihood was scored (all but the first).
    pub scored_tokens: usize,
    pub windows: usize,
    pub window: usize,
}

/// Sum of `-log p(ids[t+1] | ids[..=t])` for `t` in `from..ids.len()-1`, one forward pass.
fn window_nll(model: &Model, ids: &[u32], from: usize) -> Result<f64> {
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let hidden = model.forward_hidden(&input, None)?.squeeze(0)?;
    let n = ids.len();
    let h = hidden.i(from..n - 1)?;
    let logits = model.logits(&h)?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::new(&ids[from + 1..], model.device())?.unsqueeze(1)?;
    let picked = logp.gather(&targets, 1)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(-picked.iter().map(|&x| x as f64).sum::<f64>())
}

/// Scores `ids` with windows of at most `window` tokens advancing by `stride`.
pub fn perplexity(model: &Model, ids: &[u32], window: usize, stride: usize, cancel: &CancelToken) -> Result<PerplexityReport> {
    if ids.len() < 2 {
        return Err(Error::InvalidOption(format!("the text is {} token(s); perplexity needs at least 2", ids.len())));
    }
    if window < 2 || stride == 0 || stride > window {
        return Err(Error::InvalidOption(format!("window {window} / stride {stride}: need window >= 2 and 1 <= stride <= window")));
    }
    let window = window.min(model.context_len());
    let stride = stride.min(window);
    let (mut total, mut scored, mut windows) = (0.0, 0usize, 0usize);
    // `done`: every target up to this index is scored (index 0 is never a target). With
    // stride == window the first token of each later window has no context and is skipped.
    let mut done = 0usize;
    let mut begin = 0usize;
    loop {
        cancel.check()?;
        let end = (begin + window).min(ids.len());
        let from = done.max(begin) - begin;
        let chunk = &ids[begin..end];
        total += window_nll(model, chunk, from)?;
        scored += end - 1 - (begin + from);
        windows += 1;
        done = end - 1;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = total / scored as f64;
    Ok(PerplexityReport { mean_nll, perplexity: mean_nll.exp(), scored_tokens: scored, windows, window })
}
