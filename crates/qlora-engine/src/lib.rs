//! The engine: loads a Hugging Face model folder (Llama, Mistral, Phi-2, Gemma, Qwen2) into
//! candle, in full precision or quantized (NF4, int8), with or without LoRA adapters, and
//! generates text.

pub mod error;
pub mod chat_template;
pub mod generate;
pub mod gguf;
mod gguf_tokenizer;
pub mod linear;
pub mod lora;
pub mod model;
pub mod ops;
pub mod perplexity;
pub mod text_model;
pub mod tokenizer;
pub mod weights;

pub use candle_core;
pub use error::{Error, Result};
pub use linear::{ArcLinear, Linear, Quant, Storage};
pub use model::config::{Arch, ModelConfig};
pub use model::{KvCache, LoadOptions, Model};
pub use text_model::TextModel;
pub use weights::Weights;
