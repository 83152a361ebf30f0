//! The trained adapter in PEFT's format, so peft, our chat and every other tool read it:
//! `adapter_config.json` (peft's `LoraConfig` fields) and `adapter_model.safetensors` with
//! peft's names (`base_model.model.{module}.lora_A.weight`, `[r, in]`; `lora_B.weight`,
//! `[out, r]`). Also reads such a folder back into trainable layers, for resuming and for
//! starting from an adapter recorded by peft.

use crate::checkpoint::write_file_atomic;
use crate::config::LoraConfig;
use crate::lora::Attached;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    #[error("cannot write adapter {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("adapter {path}: {source}")]
    Tensor { path: PathBuf, source: candle_core::Error },
    #[error("adapter {path}: tensor `{name}` {problem}; the adapter was made for another model or config")]
    Mismatch { path: PathBuf, name: String, problem: String },
}

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// peft's tensor names for a module path.
pub fn peft_names(module: &str) -> (String, String) {
    (format!("base_model.model.{module}.lora_A.weight"), format!("base_model.model.{module}.lora_B.weight"))
}

/// peft's `adapter_config.json` for our LoRA settings.
pub fn peft_config(cfg: &LoraConfig, base_model: &str, targets: &[String]) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// The adapter's tensors by peft name (f32, as trained).
pub fn tensors(layers: &Attached) -> HashMap<String, Tensor> {
    let mut map = HashMap::new();
    for (path, l) in layers {
        let (a, b) = peft_names(path);
        map.insert(a, l.a.as_tensor().clone());
        map.insert(b, l.b.as_tensor().clone());
    }
    map
}

/// Writes the adapter folder (both files atomically).
pub fn save(dir: &Path, layers: &Attached, cfg: &LoraConfig, base_model: &str) -> Result<(), AdapterError> {
    let io = |source| AdapterError::Io { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut targets: Vec<String> = layers.iter().filter_map(|(p, _)| p.rsplit('.').next().map(String::from)).collect();
    targets.sort();
    targets.dedup();
    let json = serde_json::to_vec_pretty(&peft_config(cfg, base_model, &targets)).map_err(|e| io(e.into()))?;
    write_file_atomic(&dir.join(CONFIG_FILE), &json).map_err(io)?;
    save_tensors(&dir.join(WEIGHTS_FILE), &tensors(layers))
}

/// Saves tensors to a safetensors file atomically.
pub fn save_tensors(path: &Path, map: &HashMap<String, Tensor>) -> Result<(), AdapterError> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(map, &tmp).map_err(|source| AdapterError::Tensor { path: path.to_path_buf(), source })?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|source| AdapterError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| AdapterError::Io { path: path.to_path_buf(), source })
}

/// Loads a safetensors file.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, AdapterError> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| AdapterError::Tensor { path: path.to_path_buf(), source })
}

/// Sets the trainable layers' A and B from a peft adapter folder (every attached module must
/// be present with the right shape).
pub fn load_into(dir: &Path, layers: &Attached) -> Result<(), AdapterError> {
    let path = dir.join(WEIGHTS_FILE);
    let map = load_tensors(&path)?;
    for (module, l) in layers {
        let (an, bn) = peft_names(module);
        for (name, var) in [(an, &l.a), (bn, &l.b)] {
            let mismatch = |problem: String| AdapterError::Mismatch { path: path.clone(), name: name.clone(), problem };
            let t = map.get(&name).ok_or_else(|| mismatch("is missing".into()))?;
            if t.dims() != var.dims() {
                return Err(mismatch(format!("has shape {:?}, the layer needs {:?}", t.dims(), var.dims())));
            }
            let t = t.to_dtype(DType::F32).and_then(|t| t.to_device(var.device()));
            let t = t.map_err(|source| AdapterError::Tensor { path: path.clone(), source })?;
            var.set(&t).map_err(|source| AdapterError::Tensor { path: path.clone(), source })?;
        }
    }
    Ok(())
}

/// Reads a peft `adapter_config.json` into our LoRA settings.
pub fn read_config(dir: &Path) -> Result<LoraConfig, AdapterError> {
    let path = dir.join(CONFIG_FILE);
    let bad = |problem: String| AdapterError::Mismatch { path: path.clone(), name: CONFIG_FILE.into(), problem };
    let text = std::fs::read_to_string(&path).map_err(|source| AdapterError::Io { path: path.clone(), source })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
    let targets = match &v["target_modules"] {
        serde_json::Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => return Err(bad("has no `target_modules`".into())),
    };
    Ok(LoraConfig {
        rank: v["r"].as_u64().ok_or_else(|| bad("has no `r`".into()))? as usize,
        alpha: v["lora_alpha"].as_f64().ok_or_else(|| bad("has no `lora_alpha`".into()))?,
        dropout: 0.0,
        rslora: v["use_rslora"].as_bool().unwrap_or(false),
        target_modules: targets,
    })
}

/// Applies a peft adapter folder to a loaded model with our LoRA layers, dropout off: for
/// checking a trained adapter by generating with it. (The engine's own LoRA decorator is the
/// production path for chat.)
pub fn apply(model: &mut qlora_engine::model::Model, dir: &Path) -> Result<Attached, crate::trainer::TrainError> {
    let lora = read_config(dir)?;
    let projections = model.projections();
    let paths: Vec<String> = projections.iter().map(|(p, _)| p.clone()).collect();
    let device = model.device().clone();
    let mut out = Vec::new();
    for (path, base) in projections {
        if !lora.target_modules.iter().any(|t| crate::lora::matches(&path, t)) {
            continue;
        }
        let l = std::sync::Arc::new(crate::lora::TrainLora::new(base, lora.rank, lora.scaling(), 0.0, 0, &device)?);
        model
            .replace_projection(&path, l.clone())
            .map_err(|e| crate::trainer::TrainError::Model { path: dir.to_path_buf(), message: e.to_string() })?;
        out.push((path, l));
    }
    if out.is_empty() {
        return Err(crate::trainer::TrainError::TargetModule { name: lora.target_modules.join(", "), available: crate::lora::available(&paths) });
    }
    load_into(dir, &out)?;
    out.iter().for_each(|(_, l)| l.set_train_mode(false));
    Ok(out)
}
