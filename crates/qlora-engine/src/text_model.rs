//! A model together with its tokenizer and chat template: what the CLI, the chat window and
//! the trainer's evaluation all need to turn messages into token ids and back.
//!
//! ```no_run
//! use qlora_engine::{TextModel, LoadOptions};
//! use qlora_engine::chat_template::ChatMessage;
//! use qlora_engine::generate::{GenerateOptions, Generator};
//! use qlora_jobs::{CancelToken, NoProgress};
//! let tm = TextModel::load("test-assets/SmolLM2-135M-Instruct".as_ref(), &LoadOptions::default())?;
//! let ids = tm.chat_ids(&[ChatMessage::user("What is the capital of France?")])?;
//! let out = tm.generator().generate(&ids, &GenerateOptions::default(), &NoProgress, &CancelToken::new())?;
//! println!("{}", out.text);
//! # Ok::<(), qlora_engine::Error>(())
//! ```

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};
use crate::generate::Generator;
use crate::model::{LoadOptions, Model};
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// A loaded model, its tokenizer and (if it has one) its chat template.
#[derive(Debug)]
pub struct TextModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl TextModel {
    /// Loads weights, tokenizer and chat template from a model folder.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let tokenizer = Tokenizer::from_dir(dir)?;
        let template = ChatTemplate::from_dir(dir, &tokenizer)?;
        let model = Model::load(dir, opts)?;
        Ok(Self { model, tokenizer, template })
    }

    /// Token ids of a chat rendered with the model's template, ready for the assistant's turn.
    pub fn chat_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let template = self.template.as_ref().ok_or_else(|| {
            Error::ChatTemplate(format!(
                "{} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); use a raw prompt",
                self.model.dir().display()
            ))
        })?;
        let text = template.render(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Token ids of a raw prompt (the tokenizer adds BOS if it is configured to).
    pub fn raw_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    pub fn generator(&self) -> Generator<'_> {
        Generator::new(&self.model, &self.tokenizer)
    }
}

/// Convenience for front ends: the messages for one user prompt with an optional system prompt.
pub fn single_turn(system: Option<&str>, prompt: &str) -> Vec<ChatMessage> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage::system(s));
    }
    m.push(ChatMessage::user(prompt));
    m
}
