//! The engine: loads a Hugging Face model folder (Llama, Mistral, Phi-2, Gemma, Qwen2) into
//! candle, in full precision or quantized (NF4, int8, bitsandbytes pre-quantized 4-bit), with
//! or without LoRA adapters, and generates text. The CLI (`qlora generate / perplexity / chat /
//! import-gguf`), the desktop app and the trainer all call the same API:
//!
//! | what | where |
//! |---|---|
//! | load a folder | [`Model::load`]`(dir, &`[`LoadOptions`]`)` (dtype, [`Quant`], device); [`TextModel::load`] adds the [`tokenizer::Tokenizer`] and [`chat_template::ChatTemplate`] |
//! | inference | [`Model::forward`]`(ids [B,T], Some(&mut cache))` with [`Model::new_cache`]; logits `[B,T,V]` in the model dtype |
//! | training | [`Model::set_training`] (differentiable ops only), [`Model::forward_hidden`] + [`Model::logits`] for chunked loss, [`Model::embed`] / [`Model::layer_forward`] / [`Model::final_norm`] for per-layer checkpointing |
//! | LoRA | [`Model::lora_layers`] wraps every projection once (module paths like `model.layers.0.self_attn.q_proj`), then `lora::attach_adapter`, `set_scale_all`, `detach_all`, `create_trainable` |
//! | projections | [`Model::projections`], [`Model::replace_projection`]: `Arc<dyn `[`Linear`]`>` of any storage |
//! | generation | [`generate::Generator::generate`]`(prompt_ids, &GenerateOptions, sink, cancel)`: streams [`generate::GenerateEvent`]s, stops on EOS ids / stop strings / cancel |
//! | chat prompts | [`TextModel::chat_ids`]`(&[ChatMessage])`, [`chat_template::ChatTemplate::render`] |
//! | perplexity | [`perplexity::perplexity`]`(model, ids, window, stride, cancel)` |
//! | GGUF import | [`gguf::import_gguf`]`(file, out_dir)` |
//! | weights | [`Weights`]: validated, memory-mapped safetensors (single or sharded) |
//!
//! Every fallible call returns [`Error`], which names the file, tensor or field at fault.
//! Numerics are checked against transformers / bitsandbytes in `tests/engine_conformance.rs`.
//!
//! ```no_run
//! use qlora_engine::{LoadOptions, Quant, TextModel};
//! use qlora_engine::chat_template::ChatMessage;
//! use qlora_engine::generate::{GenerateEvent, GenerateOptions};
//! use qlora_jobs::CancelToken;
//! let opts = LoadOptions { quant: Quant::Nf4, ..LoadOptions::default() };
//! let tm = TextModel::load("test-assets/SmolLM2-135M-Instruct".as_ref(), &opts)?;
//! let ids = tm.chat_ids(&[ChatMessage::user("What is the capital of France?")])?;
//! let print = |e: GenerateEvent| if let GenerateEvent::Token { text, .. } = e { print!("{text}") };
//! tm.generator().generate(&ids, &GenerateOptions::default(), &print, &CancelToken::new())?;
//! # Ok::<(), qlora_engine::Error>(())
//! ```

pub mod chat_template;
pub mod device;
pub mod error;
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
pub use device::DeviceChoice;
pub use error::{Error, Result};
pub use linear::{ArcLinear, Linear, Quant, Storage};
pub use model::config::{Arch, ModelConfig};
pub use model::{KvCache, LoadOptions, Model};
pub use text_model::TextModel;
pub use weights::Weights;
