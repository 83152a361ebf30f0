//! Rebuilds a Hugging Face `tokenizer.json` (plus `tokenizer_config.json` and
//! `generation_config.json`) from the vocabulary, merges, token types and special ids a GGUF
//! carries, as transformers does when it loads a GGUF. Supported: GPT-2-style byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`), with the pre-tokenizer llama.cpp names in
//! `tokenizer.ggml.pre` (SmolLM's digit split, GPT-2's, Llama 3's), and SentencePiece BPE
//! (`"llama"`: Llama 2, TinyLlama, Mistral), whose merges are recovered from the token scores.

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

/// The post-processor that adds BOS and/or EOS around a sequence (Llama's `tokenizer.json`).
fn template_processing(bos: Option<(u32, &String)>, eos: Option<(u32, &String)>) -> serde_json::Value {
    let special = |t: &String, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    for (part, type_id) in [("A", 0), ("B", 1)] {
        let out = if part == "A" { &mut single } else { &mut pair };
        if let Some((_, t)) = bos {
            out.push(special(t, type_id));
        }
        out.push(seq(part, type_id));
        if let Some((_, t)) = eos {
            out.push(special(t, type_id));
        }
    }
    let pair: Vec<_> = single.iter().cloned().chain(pair).collect();
    for (id, t) in bos.into_iter().chain(eos) {
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// Qwen2's split: Llama 3's, but digits one by one.
fn qwen2_split() -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex":
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
        "behavior": "Isolated", "invert": false})
}

fn pre_tokenizer(pre: &str) -> Option<serde_json::Value> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama3" | "llama-bpe" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [llama3_split(), byte_level(false)]}),
        "qwen2" | "deepseek-r1-qwen" => json!({"type": "Sequence", "pretokenizers": [qwen2_split(), byte_level(false)]}),
        _ => return None,
    })
}

/// Merges for a SentencePiece BPE vocabulary stored without them (llama.cpp writes tokens and
/// scores only), as transformers' `generate_merges` recovers them: every split of a token into
/// two tokens of the vocabulary, ranked by the token's score, longer left then right parts
/// first; ties keep vocabulary order.
pub fn sentencepiece_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    // As Python dicts: the last id of a repeated token; scores in first-seen order, last value.
    let vocab: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut order: Vec<&str> = Vec::new();
    let mut score: HashMap<&str, f32> = HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        if score.insert(t, *s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for t in order {
        let mut local: Vec<(&str, &str, f32)> = t
            .char_indices()
            .skip(1)
            .map(|(at, _)| t.split_at(at))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score[t]))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Python's sorted(reverse=True) is stable: equal keys keep their order.
    let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

/// The tokenizer model a GGUF names, as transformers builds it.
enum Kind {
    /// `gpt2`: byte-level BPE with its merges and a pre-tokenizer named in `tokenizer.ggml.pre`.
    ByteLevel(serde_json::Value),
    /// `llama`: a SentencePiece BPE vocabulary (Llama 2, TinyLlama, Mistral): `▁` for spaces,
    /// bytes as `<0xNN>` tokens, merges recovered from the scores when the file has none.
    SentencePiece,
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
        let kind = match model.as_str() {
            "gpt2" => {
                let pre = meta.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or("default".into());
                Kind::ByteLevel(pre_tokenizer(&pre).ok_or_else(|| {
                    err(format!("pre-tokenizer '{pre}' is not supported (supported: default, gpt-2, smollm, starcoder, llama-bpe, qwen2)"))
                })?)
            }
            "llama" => Kind::SentencePiece,
            _ => {
                return Err(err(format!(
                    "tokenizer model '{model}' is not supported; byte-level BPE ('gpt2') and SentencePiece BPE ('llama') tokenizers can be rebuilt"
                )));
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = match (&kind, meta.contains_key("tokenizer.ggml.merges")) {
            (Kind::ByteLevel(_), _) | (Kind::SentencePiece, true) => strings("tokenizer.ggml.merges")?
                .iter()
                .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| err(format!("merge '{m}' has no space"))))
                .collect::<Result<_>>()?,
            (Kind::SentencePiece, false) => {
                let scores: Vec<f32> = get("tokenizer.ggml.scores")?
                    .to_vec()
                    .map_err(|e| err(format!("'tokenizer.ggml.scores': {e}")))?
                    .iter()
                    .map(|x| x.to_f32().map_err(|e| err(format!("'tokenizer.ggml.scores': {e}"))))
                    .collect::<Result<_>>()?;
                if scores.len() != tokens.len() {
                    return Err(err(format!("{} scores for {} tokens", scores.len(), tokens.len())));
                }
                sentencepiece_merges(&tokens, &scores)
            }
        };
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec().map_err(|e| err(e.to_string()))?.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let (bos_id, eos_id) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        let pad_id = id("tokenizer.ggml.padding_token_id");
        let unk_id = id("tokenizer.ggml.unknown_token_id");
        let spm = matches!(kind, Kind::SentencePiece);
        // transformers adds the unknown, BOS and EOS tokens of a SentencePiece vocabulary as
        // special tokens whatever their type says, so "<unk>" in text stays one token.
        let named_special = |i: usize| spm && [unk_id, bos_id, eos_id].contains(&Some(i as u32));
        let mut vocab = Map::new();
        let mut added = Vec::new();
        let mut decoder_cfg = Map::new();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
            let ty = types.get(i).copied().unwrap_or(1);
            let special = ty == TOKEN_CONTROL || named_special(i);
            if special || ty == TOKEN_USER_DEFINED {
                let body = json!({"content": t, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": special});
                decoder_cfg.insert(i.to_string(), body.clone());
                let mut entry = Map::new();
                entry.insert("id".into(), json!(i));
                entry.extend(body.as_object().cloned().unwrap_or_default());
                added.push(serde_json::Value::Object(entry));
            }
        }
        let merges: Vec<serde_json::Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
        let flag = |k: &str| meta.get(k).and_then(|v| v.to_bool().ok());
        // llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise.
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(spm);
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let name = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize)).map(|s| json!(s)).unwrap_or(json!(null));
        let tokenizer = match &kind {
            Kind::ByteLevel(pre_tok) => json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_tok,
                "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}
            }),
            Kind::SentencePiece => json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
                "post_processor": template_processing(
                    add_bos.then(|| bos_id.zip(tokens.get(bos_id? as usize))).flatten(),
                    add_eos.then(|| eos_id.zip(tokens.get(eos_id? as usize))).flatten(),
                ),
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}
            }),
        };
        let mut tc = Map::new();
        tc.insert("add_bos_token".into(), json!(add_bos));
        tc.insert("add_eos_token".into(), json!(add_eos));
        tc.insert("added_tokens_decoder".into(), serde_json::Value::Object(decoder_cfg));
        tc.insert("bos_token".into(), name(bos_id));
        tc.insert("eos_token".into(), name(eos_id));
        tc.insert("pad_token".into(), name(pad_id));
        tc.insert("unk_token".into(), name(unk_id));
        tc.insert("clean_up_tokenization_spaces".into(), json!(false));
        tc.insert("model_max_length".into(), json!(context));
        tc.insert("tokenizer_class".into(), json!(if spm { "LlamaTokenizer" } else { "GPT2Tokenizer" }));
        if spm {
            tc.insert("legacy".into(), json!(false));
        }
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
