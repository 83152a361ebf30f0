//! The data pipeline's tokenizer and chat template from a model folder, through the engine's
//! [`qlora_engine::tokenizer::Tokenizer`] and Jinja [`qlora_engine::chat_template::ChatTemplate`];
//! a named fallback template (`data.fallback_template`) when the model ships none.

use super::shape::Message;
use super::template::{ChatRenderer, Encoded, TextEncoder, fallback};
use qlora_engine::chat_template::{ChatMessage, ChatTemplate};
use qlora_engine::tokenizer::Tokenizer;
use std::path::Path;

/// The engine's tokenizer as a [`TextEncoder`] (byte offsets from the inner HF tokenizer).
pub struct EngineEncoder {
    pub tok: Tokenizer,
    pad: u32,
}

impl EngineEncoder {
    pub fn new(tok: Tokenizer) -> Self {
        let pad = ["<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|endoftext|>"]
            .iter()
            .find_map(|t| tok.token_to_id(t))
            .or_else(|| tok.eos_ids().first().copied())
            .unwrap_or(0);
        Self { tok, pad }
    }
}

impl TextEncoder for EngineEncoder {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded, String> {
        let e = self.tok.inner().encode(text, add_special_tokens).map_err(|e| e.to_string())?;
        Ok(Encoded { ids: e.get_ids().to_vec(), offsets: e.get_offsets().to_vec() })
    }
    fn eos_id(&self) -> Option<u32> {
        self.tok.eos_ids().first().copied()
    }
    fn pad_id(&self) -> u32 {
        self.pad
    }
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tok.decode(ids, false).map_err(|e| e.to_string())
    }
}

/// The engine's Jinja template as a [`ChatRenderer`].
pub struct EngineTemplate(pub ChatTemplate);

impl ChatRenderer for EngineTemplate {
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let msgs: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage::new(&m.role, &m.content)).collect();
        self.0.render(&msgs, add_generation_prompt).map_err(|e| e.to_string())
    }
}

/// Tokenizer and renderer for a model folder.
pub fn load(dir: &Path, fallback_name: Option<&str>) -> Result<(EngineEncoder, Box<dyn ChatRenderer + Send + Sync>), String> {
    let tok = Tokenizer::from_dir(dir).map_err(|e| e.to_string())?;
    let tmpl = ChatTemplate::from_dir(dir, &tok).map_err(|e| e.to_string())?;
    let renderer: Box<dyn ChatRenderer + Send + Sync> = match (tmpl, fallback_name) {
        (Some(t), _) => Box::new(EngineTemplate(t)),
        (None, Some(name)) => fallback(name).ok_or_else(|| format!("unknown fallback template `{name}`"))?,
        // Raw text data never calls the renderer; chat data gets a clear error.
        (None, None) => Box::new(NoTemplate),
    };
    Ok((EngineEncoder::new(tok), renderer))
}

/// For a model without a chat template when no fallback was named.
struct NoTemplate;

impl ChatRenderer for NoTemplate {
    fn render(&self, _: &[Message], _: bool) -> Result<String, String> {
        Err("the model has no chat template; set data.fallback_template: chatml, or use text data".into())
    }
}
