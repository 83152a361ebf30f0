//! Rebuilds a Hugging Face `tokenizer.json` (plus `tokenizer_config.json` and
//! `generation_config.json`) from the vocabulary, merges, token types and special ids a GGUF
//! carries. Supported: GPT-2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`), with
//! the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre` (SmolLM's digit split, GPT-2's,
//! Llama 3's).

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::{Map, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// llama.cpp token types.
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// The tokenizer files an import writes.
pub struct TokenizerFiles {
    pub tokenizer: serde_json::Value,
    pub tokenizer_config: serde_json::Value,
    pub generation_config: serde_json::Value,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
}

fn llama3_split() -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex":
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
        "behavior": "Isolated", "invert": false})
}

fn pre_tokenizer(pre: &str) -> Option<serde_json::Value> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama3" | "llama-bpe" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [llama3_split(), byte_level(false)]}),
        _ => return None,
    })
}

impl TokenizerFiles {
    pub fn from_gguf(path: &Path, meta: &HashMap<String, Value>, context: usize) -> Result<Self> {
        let err = |reason: String| Error::Gguf { path: path.to_path_buf(), reason };
        let get = |k: &str| meta.get(k).ok_or_else(|| err(format!("metadata key '{k}' is missing")));
        let strings = |k: &str| -> Result<Vec<String>> {
            let v = get(k)?.to_vec().map_err(|e| err(format!("'{k}': {e}")))?;
            v.iter().map(|x| x.to_string().cloned().map_err(|e| err(format!("'{k}': {e}")))).collect()
        };
        let id = |k: &str| meta.get(k).and_then(|v| v.to_u32().ok());
        let model = get("tokenizer.ggml.model")?.to_string().map_err(|e| err(e.to_string()))?.clone();
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model '{model}' is not supported; only byte-level BPE ('gpt2') tokenizers can be rebuilt"
            )));
        }
        let pre = meta.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or("default".into());
        let pre_tok = pre_tokenizer(&pre).ok_or_else(|| {
            err(format!("pre-tokenizer '{pre}' is not supported (supported: default, gpt-2, smollm, starcoder, llama-bpe)"))
        })?;
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec().map_err(|e| err(e.to_string()))?.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let mut vocab = Map::new();
        let mut added = Vec::new();
        let mut decoder_cfg = Map::new();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
            let ty = types.get(i).copied().unwrap_or(1);
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                let entry = json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": ty == TOKEN_CONTROL});
                decoder_cfg.insert(i.to_string(), entry.as_object().map(|o| {
                    let mut o = o.clone();
                    o.remove("id");
                    serde_json::Value::Object(o)
                }).unwrap_or_default());
                added.push(entry);
            }
        }
        let merges: Vec<serde_json::Value> = merges
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])).ok_or_else(|| err(format!("merge '{m}' has no space"))))
            .collect::<Result<_>>()?;
        let tokenizer = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tok,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        });
        let (bos_id, eos_id) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        let pad_id = id("tokenizer.ggml.padding_token_id");
        let unk_id = id("tokenizer.ggml.unknown_token_id");
        let name = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize)).map(|s| json!(s)).unwrap_or(json!(null));
        let flag = |k: &str| meta.get(k).and_then(|v| v.to_bool().ok()).unwrap_or(false);
        let mut tc = Map::new();
        tc.insert("add_bos_token".into(), json!(flag("tokenizer.ggml.add_bos_token")));
        tc.insert("add_eos_token".into(), json!(flag("tokenizer.ggml.add_eos_token")));
        tc.insert("added_tokens_decoder".into(), serde_json::Value::Object(decoder_cfg));
        tc.insert("bos_token".into(), name(bos_id));
        tc.insert("eos_token".into(), name(eos_id));
        tc.insert("pad_token".into(), name(pad_id));
        tc.insert("unk_token".into(), name(unk_id));
        tc.insert("clean_up_tokenization_spaces".into(), json!(false));
        tc.insert("model_max_length".into(), json!(context));
        tc.insert("tokenizer_class".into(), json!("GPT2Tokenizer"));
        if let Some(t) = meta.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()) {
            tc.insert("chat_template".into(), json!(t));
        }
        let generation_config = json!({"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id});
        Ok(Self { tokenizer, tokenizer_config: serde_json::Value::Object(tc), generation_config, bos_id, eos_id, pad_id })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let files: [(&str, &serde_json::Value); 3] = [
            ("tokenizer.json", &self.tokenizer),
            ("tokenizer_config.json", &self.tokenizer_config),
            ("generation_config.json", &self.generation_config),
        ];
        for (name, v) in files {
            let p: PathBuf = dir.join(name);
            crate::gguf::write_json(&p, v)?;
        }
        Ok(())
    }
}
