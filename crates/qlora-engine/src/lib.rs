//! The engine: loads a Hugging Face model folder (Llama, Mistral, Phi-2, Gemma, Qwen2) into
//! candle, in full precision or quantized (NF4, int8), with or without LoRA adapters, and
//! generates text.

pub mod linear;
pub mod lora;
