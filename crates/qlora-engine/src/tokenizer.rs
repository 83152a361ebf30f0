//! The model's tokenizer (`tokenizer.json`, via the tokenizers crate) together with what
//! generation needs from the other files of the folder: the special tokens named in
//! `tokenizer_config.json` and the end-of-sequence ids from `generation_config.json`,
//! `config.json` and the tokenizer, merged (Llama 3 and chat models stop on several).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A tokenizer plus the special tokens of its model folder.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    extra_special: Vec<(String, String)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).field("eos_ids", &self.eos_ids).finish()
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": "..."}`.
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

pub(crate) fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::BadConfig { path: path.to_path_buf(), reason: format!("not valid JSON: {e}") })
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and the special tokens of the folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::MissingTokenizer { dir: dir.to_path_buf() });
        }
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer { path: path.clone(), reason: format!("cannot be loaded: {e}") })?;
        let tc = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let bos_token = token_text(tc.get("bos_token"));
        let eos_token = token_text(tc.get("eos_token"));
        let extra_special = ["pad_token", "unk_token"].iter().filter_map(|k| token_text(tc.get(*k)).map(|v| (k.to_string(), v))).collect();
        let mut eos_ids = Vec::new();
        if let Some(gc) = read_json_opt(&dir.join("generation_config.json"))? {
            eos_ids.extend(ids_of(gc.get("eos_token_id")));
        }
        if let Some(c) = read_json_opt(&dir.join("config.json"))? {
            eos_ids.extend(ids_of(c.get("eos_token_id")));
        }
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|x| seen.insert(*x));
        Ok(Self { inner, path, bos_token, eos_token, eos_ids, extra_special })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer { path: self.path.clone(), reason: e.to_string() }
    }

    /// Token ids of `text`; `add_special_tokens` lets the tokenizer's post-processor add BOS
    /// (right for raw prompts, wrong for chat-template output, which has its own).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.err(e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Other special tokens for chat templates (`pad_token`, `unk_token`).
    pub fn extra_special_tokens(&self) -> &[(String, String)] {
        &self.extra_special
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a growing list of ids into text pieces as they become complete UTF-8 (a character
/// can span several byte-level tokens), for token-by-token streaming.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the new complete text, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(piece)
    }

    /// All text decoded so far.
    pub fn text(&self, tok: &Tokenizer) -> Result<String> {
        tok.decode(&self.ids, true)
    }
}
