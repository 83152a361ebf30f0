//! Merging a PEFT LoRA adapter into its dense base, written as a Hub-style folder that any
//! tool loads without peft: `W' = W + s · B A` (s = alpha/r, or alpha/√r with rsLoRA), in f32,
//! stored back in each tensor's own dtype. Works shard by shard on the safetensors files
//! (memory-mapped), so only one shard is in memory at a time; the index, config, tokenizer
//! and generation files are copied. Each output file is written atomically.

use crate::adapter;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Tensor { path: PathBuf, source: candle_core::Error },
    #[error(transparent)]
    Adapter(#[from] adapter::AdapterError),
}

/// What the merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub merged_modules: usize,
    pub shards: usize,
}

/// Files copied as they are when present.
const COPIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "model.safetensors.index.json",
];

/// Merges `adapter_dir` into `model_dir`, writing `out_dir`.
pub fn merge(model_dir: &Path, adapter_dir: &Path, out_dir: &Path) -> Result<MergeReport, MergeError> {
    let cfg_path = adapter_dir.join(adapter::CONFIG_FILE);
    let bad = |path: &Path, message: String| MergeError::Bad { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| MergeError::Io { path: cfg_path.clone(), source })?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, format!("not valid JSON: {e}")))?;
    let r = cfg["r"].as_f64().ok_or_else(|| bad(&cfg_path, "missing `r`".into()))?;
    let alpha = cfg["lora_alpha"].as_f64().ok_or_else(|| bad(&cfg_path, "missing `lora_alpha`".into()))?;
    let scale = if cfg["use_rslora"].as_bool().unwrap_or(false) { alpha / r.sqrt() } else { alpha / r };
    let lora = adapter::load_tensors(&adapter_dir.join(adapter::WEIGHTS_FILE))?;
    let mut pending: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    for (name, a) in &lora {
        if let Some(module) = name.strip_prefix("base_model.model.").and_then(|n| n.strip_suffix(".lora_A.weight")) {
            let b = lora.get(&adapter::peft_names(module).1).ok_or_else(|| bad(adapter_dir, format!("`{name}` has no matching lora_B")))?;
            pending.insert(format!("{module}.weight"), (a.clone(), b.clone()));
        }
    }
    if pending.is_empty() {
        return Err(bad(adapter_dir, "the adapter holds no lora_A/lora_B tensors".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|source| MergeError::Io { path: out_dir.to_path_buf(), source })?;
    let shards = shard_files(model_dir)?;
    let mut merged = 0;
    for shard in &shards {
        merged += merge_shard(&model_dir.join(shard), &out_dir.join(shard), &mut pending, scale)?;
    }
    if let Some(name) = pending.keys().next() {
        return Err(bad(model_dir, format!("the adapter targets `{name}`, which this model does not have: the adapter is for another base")));
    }
    for f in COPIED {
        let src = model_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|source| MergeError::Io { path: src.clone(), source })?;
            crate::checkpoint::write_file_atomic(&out_dir.join(f), &bytes).map_err(|source| MergeError::Io { path: out_dir.join(f), source })?;
        }
    }
    Ok(MergeReport { merged_modules: merged, shards: shards.len() })
}

/// The model's safetensors files: from the index when sharded.
fn shard_files(dir: &Path) -> Result<Vec<String>, MergeError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| MergeError::Io { path: index.clone(), source })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| MergeError::Bad { path: index.clone(), message: format!("not valid JSON: {e}") })?;
        let mut files: Vec<String> = v["weight_map"]
            .as_object()
            .ok_or_else(|| MergeError::Bad { path: index.clone(), message: "no `weight_map`".into() })?
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    if dir.join("model.safetensors").is_file() {
        return Ok(vec!["model.safetensors".into()]);
    }
    Err(MergeError::Bad {
        path: dir.to_path_buf(),
        message: "no model.safetensors (or index) here: merge needs a dense Hub-style model folder".into(),
    })
}

fn merge_shard(src: &Path, dst: &Path, pending: &mut HashMap<String, (Tensor, Tensor)>, scale: f64) -> Result<usize, MergeError> {
    let terr = |source| MergeError::Tensor { path: src.to_path_buf(), source };
    let mut tensors = candle_core::safetensors::load(src, &Device::Cpu).map_err(terr)?;
    let mut merged = 0;
    for (name, w) in tensors.iter_mut() {
        let Some((a, b)) = pending.remove(name) else { continue };
        if w.dtype() == DType::U8 {
            return Err(MergeError::Bad {
                path: src.to_path_buf(),
                message: format!("`{name}` is quantized; merge needs a dense (f32/bf16/f16) base"),
            });
        }
        let delta = b.to_dtype(DType::F32).and_then(|b| b.matmul(&a.to_dtype(DType::F32)?)).map_err(terr)?;
        if delta.dims() != w.dims() {
            return Err(MergeError::Bad {
                path: src.to_path_buf(),
                message: format!("`{name}` is {:?} but the adapter's update is {:?}: the adapter is for another base", w.dims(), delta.dims()),
            });
        }
        let dt = w.dtype();
        *w = (w.to_dtype(DType::F32).map_err(terr)? + (delta * scale).map_err(terr)?).and_then(|m| m.to_dtype(dt)).map_err(terr)?;
        merged += 1;
    }
    adapter::save_tensors(dst, &tensors)?;
    Ok(merged)
}
