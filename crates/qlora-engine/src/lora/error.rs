//! Errors of LoRA adapters: each names the adapter file, field, tensor or module at fault and
//! says what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraError {
    #[error("{path} not found: a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors")]
    MissingFile { path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: field `{field}`: {reason}")]
    BadField { path: PathBuf, field: String, reason: String },

    #[error("{path}: {reason}")]
    BadJson { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("{path}: tensor '{tensor}' is not a LoRA weight this engine understands ({reason})")]
    UnexpectedTensor { path: PathBuf, tensor: String, reason: String },

    #[error("adapter {path} does not fit this model: {problems}. Was it trained for another base model?")]
    DoesNotFit { path: PathBuf, problems: String },

    #[error("target module(s) {missing} match no linear layer of the base model (available: {available})")]
    NoSuchModule { missing: String, available: String },

    #[error("invalid LoRA setting: {0}")]
    Invalid(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<LoraError> for candle_core::Error {
    fn from(e: LoraError) -> Self {
        match e {
            LoraError::Candle(c) => c,
            other => candle_core::Error::wrap(other),
        }
    }
}

pub type Result<T, E = LoraError> = std::result::Result<T, E>;
