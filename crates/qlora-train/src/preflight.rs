//! Preflight: what the data looks like before hours go into training on it. Sample and token
//! counts, a histogram of sample lengths against `max_len`, how many samples get truncated or
//! dropped, and one example with its trained and masked spans marked, so a wrong template or
//! mask is seen at once. A serde report for the app and a text rendering for the CLI.

use crate::data::Dataset;
use crate::data::read::BadRecord;
use crate::data::shape::Shape;
use crate::data::template::TextEncoder;
use serde::Serialize;

/// Number of histogram buckets between 0 and `max_len`.
const BUCKETS: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    pub shape: Shape,
    pub train_samples: usize,
    pub valid_samples: usize,
    /// Tokens fed to the model (after truncation), train split.
    pub train_tokens: usize,
    /// Of those, tokens that carry loss.
    pub trained_tokens: usize,
    pub max_len: usize,
    /// Lengths before truncation, train and validation together.
    pub histogram: Vec<LengthBucket>,
    pub longest: usize,
    pub truncated: usize,
    /// Samples dropped because truncation left no trained token.
    pub dropped_no_target: usize,
    pub bad_records: usize,
    /// The first few bad records, to show.
    pub bad_examples: Vec<BadRecord>,
    pub example: Option<Example>,
}

/// Samples whose length (before truncation) is in `lo..=hi`; the last bucket is `> max_len`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LengthBucket {
    pub lo: usize,
    pub hi: Option<usize>,
    pub count: usize,
}

/// A sample as text, split into spans that are trained or masked.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub source: String,
    pub spans: Vec<Span>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Span {
    pub text: String,
    pub trained: bool,
}

/// Builds the report.
pub fn report(ds: &Dataset, enc: &dyn TextEncoder) -> PreflightReport {
    let all = || ds.train.iter().chain(&ds.valid);
    let width = ds.max_len.div_ceil(BUCKETS).max(1);
    let mut histogram: Vec<LengthBucket> = (0..BUCKETS)
        .map(|b| LengthBucket { lo: b * width + 1, hi: Some(((b + 1) * width).min(ds.max_len)), count: 0 })
        .filter(|b| b.hi.is_some_and(|h| b.lo <= h))
        .collect();
    histogram.push(LengthBucket { lo: ds.max_len + 1, hi: None, count: 0 });
    for p in all() {
        let len = p.tokens.full_len;
        let last = histogram.len() - 1;
        let i = if len > ds.max_len { last } else { ((len.max(1) - 1) / width).min(last) };
        histogram[i].count += 1;
    }
    let example = ds.train.first().map(|p| Example { source: p.source.to_string(), spans: spans(&p.tokens.ids, &p.tokens.targets, enc) });
    PreflightReport {
        shape: ds.shape,
        train_samples: ds.train.len(),
        valid_samples: ds.valid.len(),
        train_tokens: ds.train.iter().map(|p| p.tokens.ids.len()).sum(),
        trained_tokens: ds.train.iter().map(|p| p.tokens.trained_tokens()).sum(),
        max_len: ds.max_len,
        histogram,
        longest: all().map(|p| p.tokens.full_len).max().unwrap_or(0),
        truncated: all().filter(|p| p.tokens.truncated()).count(),
        dropped_no_target: ds.no_target,
        bad_records: ds.bad.len(),
        bad_examples: ds.bad.iter().take(5).cloned().collect(),
        example,
    }
}

/// Groups consecutive tokens with the same mask and decodes each group.
fn spans(ids: &[u32], targets: &[bool], enc: &dyn TextEncoder) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut start = 0;
    for i in 1..=ids.len() {
        if i == ids.len() || targets[i] != targets[start] {
            let text = enc.decode(&ids[start..i]).unwrap_or_else(|e| format!("<undecodable: {e}>"));
            out.push(Span { text, trained: targets[start] });
            start = i;
        }
    }
    out
}

impl PreflightReport {
    /// The report for a terminal. Trained text is shown between `[[` and `]]`.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "data: {:?} format, {} train + {} validation samples\n\
             tokens: {} in training samples, {} of them trained (loss)\n\
             max_len {}: longest sample {}, {} truncated, {} dropped (nothing left to train)\n",
            self.shape,
            self.train_samples,
            self.valid_samples,
            self.train_tokens,
            self.trained_tokens,
            self.max_len,
            self.longest,
            self.truncated,
            self.dropped_no_target,
        );
        if self.bad_records > 0 {
            s += &format!("bad records skipped: {}\n", self.bad_records);
            for b in &self.bad_examples {
                s += &format!("  {}: {}\n", b.source, b.message);
            }
        }
        s += "sample lengths (tokens, before truncation):\n";
        let most = self.histogram.iter().map(|b| b.count).max().unwrap_or(0).max(1);
        for b in &self.histogram {
            let label = match b.hi {
                Some(h) => format!("{:>6}-{:<6}", b.lo, h),
                None => format!("  >{:<10}", self.max_len),
            };
            let bar = "#".repeat((b.count * 40).div_ceil(most));
            s += &format!("  {label} {:>6} {bar}\n", b.count);
        }
        if let Some(ex) = &self.example {
            s += &format!("example ({}), trained text in [[ ]]:\n", ex.source);
            for sp in &ex.spans {
                if sp.trained { s += &format!("[[{}]]", sp.text) } else { s += &sp.text }
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataConfig, DataFormat, LossOn};
    use crate::data::template::{ChatMl, testing::ByteTok};

    fn cfg(file: std::path::PathBuf, max_len: usize) -> DataConfig {
        DataConfig {
            files: vec![file],
            format: DataFormat::Auto,
            max_len,
            truncation: true,
            packing: false,
            validation_split: 0.0,
            loss_on: LossOn::Assistant,
            skip_bad_lines: true,
            fallback_template: None,
            system_prompt: None,
        }
    }

    #[test]
    fn report_counts_truncation_bad_lines_and_marks_spans() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.jsonl");
        let long = "x".repeat(100);
        std::fs::write(&p, format!("{{\"instruction\":\"Q\",\"output\":\"A\"}}\n{{bad\n{{\"instruction\":\"{long}\",\"output\":\"B\"}}\n")).unwrap();
        // the long sample's reply lies beyond 60 tokens: it is dropped, not trained on nothing
        let ds = crate::data::prepare(&cfg(p, 60), 0, &ChatMl, &ByteTok).unwrap();
        let r = report(&ds, &ByteTok);
        assert_eq!((r.train_samples, r.bad_records, r.dropped_no_target), (1, 1, 1));
        assert_eq!(r.histogram.iter().map(|b| b.count).sum::<usize>(), 1);
        let ex = r.example.as_ref().unwrap();
        let trained: String = ex.spans.iter().filter(|s| s.trained).map(|s| s.text.as_str()).collect();
        assert_eq!(trained, "A<|im_end|>\n");
        let text = r.to_text();
        assert!(text.contains("[[A<|im_end|>\n]]"), "{text}");
        assert!(text.contains("bad records skipped: 1"), "{text}");
    }
}
