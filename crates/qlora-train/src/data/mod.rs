//! The training data: files read ([`read`]), records put in one shape ([`shape`]), rendered
//! with the chat template and tokenized with a loss mask ([`tokenize`]), truncated, split into
//! train and validation, and served as micro-batches in a seeded order ([`batch`]) that a
//! resumed run can pick up at any position.

pub mod batch;
pub mod model_text;
pub mod read;
pub mod shape;
pub mod template;
pub mod tokenize;

use crate::config::DataConfig;
use read::{BadRecord, Source};
use shape::{Sample, Shape};
use std::path::PathBuf;
use template::{ChatRenderer, TextEncoder};
use tokenize::Tokenized;

/// What went wrong preparing the data. Each variant names the file (and line) and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("cannot read dataset {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset {path}: unknown file type; use .jsonl, .json, .csv or .parquet")]
    UnknownExtension { path: PathBuf },
    #[error("{at}: {message} (fix the record, or set data.skip_bad_lines: true to skip and count it)")]
    BadRecord { at: Source, message: String },
    #[error("{at}: sample is {len} tokens, longer than data.max_len = {max_len}; raise max_len or set data.truncation: true")]
    TooLong { at: Source, len: usize, max_len: usize },
    #[error("the dataset is empty ({files}): no usable sample{skipped}")]
    Empty { files: String, skipped: String },
}

/// A sample ready for training, with where it came from.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub source: Source,
    pub sample: Sample,
    pub tokens: Tokenized,
}

/// The whole dataset, split and counted.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub shape: Shape,
    pub train: Vec<Prepared>,
    pub valid: Vec<Prepared>,
    /// Records skipped because they were bad (only with `skip_bad_lines`).
    pub bad: Vec<BadRecord>,
    /// Samples dropped because no trained token was left after truncation.
    pub no_target: usize,
    pub max_len: usize,
}

/// Reads, shapes, tokenizes, truncates and splits the data the config names.
pub fn prepare(cfg: &DataConfig, seed: u64, renderer: &dyn ChatRenderer, enc: &dyn TextEncoder) -> Result<Dataset, DataError> {
    let mut bad = Vec::new();
    let mut records = Vec::new();
    for f in &cfg.files {
        records.extend(read::read_file(f, cfg.skip_bad_lines, &mut bad)?);
    }
    let mut shape = Shape::from_format(cfg.format);
    let mut all = Vec::new();
    let mut no_target = 0;
    for r in records {
        let result = (|| {
            let s = match shape {
                Some(s) => s,
                None => *shape.insert(Shape::detect(&r)?),
            };
            let sample = shape::to_sample(&r, s, cfg.system_prompt.as_deref())?;
            let tokens =
                tokenize::tokenize(&sample, renderer, enc, cfg.loss_on).map_err(|message| DataError::BadRecord { at: r.source.clone(), message })?;
            Ok::<_, DataError>(Prepared { source: r.source.clone(), sample, tokens })
        })();
        let mut p = match result {
            Ok(p) => p,
            Err(DataError::BadRecord { at, message }) if cfg.skip_bad_lines => {
                bad.push(BadRecord { source: at, message });
                continue;
            }
            Err(e) => return Err(e),
        };
        if p.tokens.ids.len() > cfg.max_len {
            if !cfg.truncation {
                return Err(DataError::TooLong { at: p.source, len: p.tokens.ids.len(), max_len: cfg.max_len });
            }
            tokenize::truncate(&mut p.tokens, cfg.max_len);
        }
        if p.tokens.trained_tokens() == 0 {
            no_target += 1;
            continue;
        }
        all.push(p);
    }
    if all.is_empty() {
        let files = cfg.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        let skipped = match (bad.len(), no_target) {
            (0, 0) => String::new(),
            (b, n) => format!("; {b} bad record(s) skipped, {n} with no trained token after truncation"),
        };
        return Err(DataError::Empty { files, skipped });
    }
    let (train, valid) = split(all, cfg.validation_split, seed);
    Ok(Dataset { shape: shape.unwrap_or(Shape::Text), train, valid, bad, no_target, max_len: cfg.max_len })
}

/// Holds out `fraction` of the samples (at least one when fraction > 0 and there are two or
/// more), chosen by a seeded shuffle so the split is the same on resume.
fn split(mut all: Vec<Prepared>, fraction: f64, seed: u64) -> (Vec<Prepared>, Vec<Prepared>) {
    if fraction <= 0.0 || all.len() < 2 {
        return (all, Vec::new());
    }
    let n_valid = ((all.len() as f64 * fraction).round() as usize).clamp(1, all.len() - 1);
    let order = batch::permutation(all.len(), seed ^ SPLIT_SALT);
    let valid_idx: std::collections::HashSet<usize> = order[..n_valid].iter().copied().collect();
    let mut train = Vec::new();
    let mut valid = Vec::new();
    for (i, p) in all.drain(..).enumerate() {
        if valid_idx.contains(&i) { valid.push(p) } else { train.push(p) }
    }
    (train, valid)
}

/// Keeps the split's shuffle independent of the epoch shuffles drawn from the same seed.
const SPLIT_SALT: u64 = 0x5eed_0000_0000_0001;
