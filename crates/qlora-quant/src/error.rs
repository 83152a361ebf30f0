//! Errors of the quantization crate. Each names the tensor or field that was wrong and, where
//! there is one, the fix. They convert into `candle_core::Error` so that callers working in
//! candle's `Result` can use `?` directly.

use candle_core::DType;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    #[error("cannot quantize a {dtype:?} tensor: only f32, f16 and bf16 weights can be quantized")]
    UnsupportedDType { dtype: DType },

    #[error("cannot quantize an empty tensor (shape {shape:?})")]
    Empty { shape: Vec<usize> },

    #[error(
        "value #{index} of the tensor is {value}: NF4/int8 quantization needs finite weights; the checkpoint is corrupt or was saved after a diverged run"
    )]
    NonFinite { index: usize, value: f32 },

    #[error("blocksize {blocksize} is not supported: bitsandbytes uses 32, 64, 128, 256, 512, 1024, 2048 or 4096")]
    BadBlocksize { blocksize: usize },

    #[error("{what}: expected {expected}, found {found}")]
    Mismatch { what: String, expected: String, found: String },

    #[error("quantization state field `{field}`: {reason}")]
    BadQuantState { field: String, reason: String },

    #[error("bitsandbytes checkpoint: tensor '{tensor}' is missing; a 4-bit weight needs {tensor} next to its packed weight")]
    MissingTensor { tensor: String },

    #[error("bitsandbytes checkpoint: tensor '{tensor}': {reason}")]
    BadBnbTensor { tensor: String, reason: String },

    #[error("int8 quantization needs a 2-d [rows, cols] tensor, got shape {shape:?}")]
    NotMatrix { shape: Vec<usize> },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<QuantError> for candle_core::Error {
    fn from(e: QuantError) -> Self {
        match e {
            QuantError::Candle(c) => c,
            other => candle_core::Error::wrap(other),
        }
    }
}

pub type Result<T, E = QuantError> = std::result::Result<T, E>;
