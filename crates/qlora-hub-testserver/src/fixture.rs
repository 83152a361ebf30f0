//! Model folders to serve, written at test time: a small repository laid out like a real one
//! on the Hub (config, tokenizer files, a real safetensors file, duplicate weights in other
//! formats, a README, a subfolder), with deterministic pseudo-random weights.

use std::path::{Path, PathBuf};

/// Deterministic bytes (xorshift), so a test's expected checksums never change.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A safetensors file: one F32 tensor per `(name, elements)` with pseudo-random data.
pub fn safetensors_bytes(tensors: &[(&str, usize)], seed: u64) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, n) in tensors {
        header.insert((*name).into(), serde_json::json!({ "dtype": "F32", "shape": [n], "data_offsets": [offset, offset + 4 * n] }));
        offset += 4 * n;
    }
    let mut json = serde_json::to_vec(&header).unwrap_or_default();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&pseudo_random(offset, seed));
    out
}

/// Writes `<root>/<repo>/` with a model of about `weight_bytes` of safetensors weights, plus a
/// `.bin` duplicate, an ONNX copy in `onnx/`, a README and the config and tokenizer files a
/// load needs. Returns the folder.
pub fn tiny_model(root: &Path, repo: &str, weight_bytes: usize) -> std::io::Result<PathBuf> {
    let dir = root.join(repo);
    std::fs::create_dir_all(dir.join("onnx"))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "vocab_size": 256, "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap_or_default())?;
    std::fs::write(dir.join("generation_config.json"), br#"{"bos_token_id": 1, "eos_token_id": 2}"#)?;
    std::fs::write(dir.join("tokenizer.json"), br#"{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}"#)?;
    std::fs::write(dir.join("tokenizer_config.json"), br#"{"chat_template": "{{ messages }}"}"#)?;
    std::fs::write(dir.join("README.md"), b"# tiny test model\n")?;
    let n = weight_bytes / 8;
    let st = safetensors_bytes(&[("model.embed_tokens.weight", n), ("lm_head.weight", n)], 7);
    std::fs::write(dir.join("model.safetensors"), &st)?;
    std::fs::write(dir.join("pytorch_model.bin"), pseudo_random(weight_bytes, 11))?;
    std::fs::write(dir.join("onnx/model.onnx"), pseudo_random(1000, 13))?;
    Ok(dir)
}
