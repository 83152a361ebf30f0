//! The engine's error type. Every variant carries the file, tensor or field that was wrong and
//! says what to do, so the CLI and the app can show it as is.

use std::path::PathBuf;

/// What went wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json (is this a Hugging Face model folder?)")]
    NoWeights { dir: PathBuf },

    #[error("{path} is not a valid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("{path} is truncated: its header declares {declared} bytes of tensor data but the file holds {actual}; download it again")]
    Truncated { path: PathBuf, declared: usize, actual: usize },

    #[error("tensor '{tensor}' in {path}: {reason}")]
    BadTensor { path: PathBuf, tensor: String, reason: String },

    #[error("tensor '{tensor}' is missing from the weights in {dir}; the checkpoint does not match its config.json")]
    MissingTensor { dir: PathBuf, tensor: String },

    #[error("tensor '{tensor}' in {path} has shape {actual:?}, expected {expected:?} from config.json")]
    ShapeMismatch { path: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },

    #[error("tensor '{tensor}' in {path} has dtype {dtype}, which is not supported (use f32, f16, bf16 or bitsandbytes u8)")]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },

    #[error("{path}: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error("{path}: invalid config: {reason}")]
    BadConfig { path: PathBuf, reason: String },

    #[error("unsupported architecture '{model_type}' in {path}; supported model_type values: {supported}")]
    UnsupportedArchitecture { path: PathBuf, model_type: String, supported: String },

    #[error("no tokenizer in {dir}: expected tokenizer.json next to config.json")]
    MissingTokenizer { dir: PathBuf },

    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error(
        "the prompt is {prompt} tokens and {max_new} new tokens were asked for, but the model's context is {context} tokens; shorten the prompt or lower --max-new-tokens"
    )]
    ContextOverflow { prompt: usize, max_new: usize, context: usize },

    #[error("gguf {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },

    #[error("invalid option: {0}")]
    InvalidOption(String),

    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),

    #[error(transparent)]
    Cancelled(#[from] qlora_jobs::Cancelled),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
