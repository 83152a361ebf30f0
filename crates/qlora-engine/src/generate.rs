//! Text generation: a KV-cached decode loop with greedy or sampled next tokens
//! (temperature, top-k, top-p, min-p, repetition penalty, seeded), stopping on the model's
//! EOS ids, on user stop strings, at `max_new_tokens`, or when the caller's
//! [`CancelToken`] fires (checked after every token). Text is streamed piece by piece
//! through a [`ProgressSink`]; text that might be the start of a stop string is held back
//! until it is known not to be one, so a stop string never reaches the screen.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use candle_core::{D, DType, IndexOp, Tensor};
use qlora_jobs::{CancelToken, ProgressSink};
use rand::{Rng, SeedableRng};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    /// 1.0 is off; transformers' rule (divide positive logits, multiply negative ones).
    pub repetition_penalty: f32,
    pub seed: u64,
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 256, temperature: 0.0, top_k: None, top_p: None, min_p: None, repetition_penalty: 1.0, seed: 0, stop_strings: vec![] }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    Cancelled,
}

/// Streamed while generating.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerateEvent {
    /// New text (may be empty for a token that completes no character yet).
    Token {
        id: u32,
        text: String,
    },
    Done {
        reason: StopReason,
        new_tokens: usize,
    },
}

/// The outcome of a generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub reason: StopReason,
}

/// Generates with a model and its tokenizer.
pub struct Generator<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a Model, tokenizer: &'a Tokenizer) -> Self {
        Self { model, tokenizer }
    }

    /// Checks that the prompt plus `max_new_tokens` fit the model's context.
    pub fn check_context(&self, prompt_len: usize, max_new: usize) -> Result<()> {
        let context = self.model.context_len();
        if prompt_len == 0 {
            return Err(Error::InvalidOption("the prompt is empty".into()));
        }
        if prompt_len + max_new > context {
            return Err(Error::ContextOverflow { prompt: prompt_len, max_new, context });
        }
        Ok(())
    }

    /// Continues `prompt` (token ids) and streams what it writes to `sink`.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        sink: &dyn ProgressSink<GenerateEvent>,
        cancel: &CancelToken,
    ) -> Result<Generation> {
        self.check_context(prompt.len(), opts.max_new_tokens)?;
        let device = self.model.device();
        let mut cache = self.model.new_cache_with_capacity(prompt.len() + opts.max_new_tokens);
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let mut out =
            Accepted { ids: Vec::new(), history: prompt.to_vec(), decoder: StreamDecoder::new(), stops: StopMatcher::new(&opts.stop_strings) };
        let input = Tensor::new(prompt, device)?.unsqueeze(0)?;
        let mut reason = StopReason::MaxTokens;
        'run: {
            if opts.max_new_tokens == 0 {
                break 'run;
            }
            if cancel.is_cancelled() {
                reason = StopReason::Cancelled;
                break 'run;
            }
            // Only the last position's logits (a prompt's full [T, vocab] logits were the
            // largest tensor of a long prefill).
            let last = self.model.forward_last(&input, &mut cache)?.i(0)?.to_dtype(DType::F32)?;
            let mut next = pick(&last, &out.history, opts, &mut rng)?;
            if let Some(r) = out.accept(self.tokenizer, sink, next)? {
                reason = r;
                break 'run;
            }
            if opts.temperature <= 0.0 && opts.repetition_penalty == 1.0 {
                // Greedy: `Model::greedy_decode` picks on the device and, on CUDA, replays the
                // step's graph pipelined (the next step queued before this one's id is read).
                self.model.greedy_decode(&Tensor::new(&[[next]], device)?, &mut cache, opts.max_new_tokens - 1, |row| {
                    if cancel.is_cancelled() {
                        reason = StopReason::Cancelled;
                        return Ok(false);
                    }
                    Ok(match out.accept(self.tokenizer, sink, row[0])? {
                        Some(r) => {
                            reason = r;
                            false
                        }
                        None => true,
                    })
                })?;
                break 'run;
            }
            // Sampling (or a repetition penalty): one token at a time, each one-token step
            // through `Model::forward` (a CUDA graph replay on CUDA).
            for _ in 1..opts.max_new_tokens {
                if cancel.is_cancelled() {
                    reason = StopReason::Cancelled;
                    break;
                }
                let input = Tensor::new(&[[next]], device)?;
                let last = self.model.forward_last(&input, &mut cache)?.i(0)?.to_dtype(DType::F32)?;
                next = pick(&last, &out.history, opts, &mut rng)?;
                if let Some(r) = out.accept(self.tokenizer, sink, next)? {
                    reason = r;
                    break;
                }
            }
        }
        let Accepted { ids, mut stops, .. } = out;
        if reason != StopReason::StopString {
            let rest = stops.flush();
            if !rest.is_empty() {
                sink.emit(GenerateEvent::Token { id: *ids.last().unwrap_or(&0), text: rest });
            }
        }
        sink.emit(GenerateEvent::Done { reason, new_tokens: ids.len() });
        let text = stops.text().to_string();
        Ok(Generation { text, ids, prompt_tokens: prompt.len(), reason })
    }
}

/// What a generation has accepted so far: its ids, the ids the repetition penalty sees, and
/// the text decoder and stop strings the tokens go through.
struct Accepted {
    ids: Vec<u32>,
    history: Vec<u32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
}

impl Accepted {
    /// Takes a picked token: `Some(reason)` when the generation ends with it (an end-of-sequence
    /// id, not kept, or a stop string, kept), after emitting its text.
    fn accept(&mut self, tokenizer: &Tokenizer, sink: &dyn ProgressSink<GenerateEvent>, next: u32) -> Result<Option<StopReason>> {
        if tokenizer.eos_ids().contains(&next) {
            return Ok(Some(StopReason::Eos));
        }
        self.ids.push(next);
        self.history.push(next);
        let piece = self.decoder.push(tokenizer, next)?;
        let (text, hit) = self.stops.push(&piece);
        sink.emit(GenerateEvent::Token { id: next, text });
        Ok(hit.then_some(StopReason::StopString))
    }
}

/// Chooses the next token from last-position logits.
pub fn pick(logits: &Tensor, history: &[u32], opts: &GenerateOptions, rng: &mut impl Rng) -> Result<u32> {
    let mut l: Vec<f32> = logits.to_vec1()?;
    if opts.repetition_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in history {
            if let (true, Some(x)) = (seen.insert(t), l.get_mut(t as usize)) {
                *x = if *x < 0.0 { *x * opts.repetition_penalty } else { *x / opts.repetition_penalty };
            }
        }
    }
    if opts.temperature <= 0.0 {
        let t = Tensor::new(l.as_slice(), &candle_core::Device::Cpu)?;
        return Ok(t.argmax(D::Minus1)?.to_scalar::<u32>()?);
    }
    let probs = sampling_probs(&l, opts);
    let r: f64 = rng.random();
    let mut acc = 0.0;
    let mut last = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > 0.0 {
            last = i;
            acc += p;
            if r < acc {
                return Ok(i as u32);
            }
        }
    }
    Ok(last as u32)
}

/// Probabilities after temperature, top-k, top-p and min-p (transformers' order), renormalised.
pub fn sampling_probs(logits: &[f32], opts: &GenerateOptions) -> Vec<f64> {
    let t = opts.temperature;
    let scaled: Vec<f64> = logits.iter().map(|&x| x as f64 / t).collect();
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    let mut keep = order.len();
    if let Some(k) = opts.top_k.filter(|k| *k > 0) {
        keep = keep.min(k);
    }
    let max = scaled[order[0]];
    let exp: Vec<f64> = order[..keep].iter().map(|&i| (scaled[i] - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    if let Some(p) = opts.top_p.filter(|p| *p < 1.0) {
        let mut acc = 0.0;
        for (n, e) in exp.iter().enumerate() {
            acc += e / total;
            if acc >= p {
                keep = keep.min(n + 1);
                break;
            }
        }
    }
    if let Some(m) = opts.min_p.filter(|m| *m > 0.0) {
        // min-p relative to the top probability: exp[0] / total is the largest.
        let threshold = m * exp[0] / total;
        keep = keep.min(exp.iter().take_while(|e| **e / total >= threshold).count().max(1));
    }
    let mut probs = vec![0.0; scaled.len()];
    let kept: f64 = exp[..keep].iter().sum();
    for (n, &i) in order[..keep].iter().enumerate() {
        probs[i] = exp[n] / kept;
    }
    probs
}

/// Finds user stop strings in streamed text, holding back a tail that could begin one.
#[derive(Debug)]
struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), text: String::new(), emitted: 0 }
    }

    /// Adds a piece; returns the text now safe to show and whether a stop string was hit
    /// (the text is then cut just before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let search_from = self.emitted.saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        let search_from = (0..=search_from).rev().find(|i| self.text.is_char_boundary(*i)).unwrap_or(0);
        let hit = self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str()).map(|p| p + search_from)).min();
        if let Some(at) = hit {
            self.text.truncate(at);
            let out = self.text.get(self.emitted..).unwrap_or("").to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        let mut safe = self.text.len();
        for s in &self.stops {
            for n in (1..s.len()).rev() {
                if s.is_char_boundary(n) && self.text.ends_with(&s[..n]) {
                    safe = safe.min(self.text.len() - n);
                    break;
                }
            }
        }
        let safe = safe.max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_pieces_is_held_back_and_cut() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("Hello </"), ("Hello ".to_string(), false));
        assert_eq!(m.push("en"), (String::new(), false));
        assert_eq!(m.push("d> more"), (String::new(), true));
        assert_eq!(m.text(), "Hello ");
    }

    #[test]
    fn false_alarm_is_released() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("a <"), ("a ".to_string(), false));
        assert_eq!(m.push("b"), ("<b".to_string(), false));
    }

    #[test]
    fn top_k_top_p_min_p() {
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let base = GenerateOptions { temperature: 1.0, ..Default::default() };
        let p = sampling_probs(&logits, &GenerateOptions { top_k: Some(2), ..base.clone() });
        assert!(p[2] == 0.0 && p[3] == 0.0 && (p[0] + p[1] - 1.0).abs() < 1e-12);
        // softmax(3,2,1,0) = .644, .237, .087, .032: top_p .85 keeps two.
        let p = sampling_probs(&logits, &GenerateOptions { top_p: Some(0.85), ..base.clone() });
        assert!(p[1] > 0.0 && p[2] == 0.0);
        // min_p .2: threshold .129 keeps .644 and .237.
        let p = sampling_probs(&logits, &GenerateOptions { min_p: Some(0.2), ..base.clone() });
        assert!(p[1] > 0.0 && p[2] == 0.0);
        let p = sampling_probs(&logits, &base);
        assert!((p[0] - 0.6439142598879722).abs() < 1e-9);
    }

    #[test]
    fn repetition_penalty_and_seeded_sampling() {
        let logits = Tensor::new(&[2.0f32, 1.9, -1.0], &candle_core::Device::Cpu).unwrap();
        let greedy = GenerateOptions { repetition_penalty: 1.2, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        // token 0 seen: 2.0 / 1.2 = 1.67 < 1.9
        assert_eq!(pick(&logits, &[0], &greedy, &mut rng).unwrap(), 1);
        let s = GenerateOptions { temperature: 1.0, seed: 7, ..Default::default() };
        let draw = |seed| {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            (0..20).map(|_| pick(&logits, &[], &s, &mut r).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }
}
