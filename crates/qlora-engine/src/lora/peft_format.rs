//! PEFT's on-disk adapter format, read and written as peft 0.21 does.
//!
//! * `adapter_config.json`: [`AdapterConfig`]. Unknown keys are kept and written back, so a
//!   round trip loses nothing; the keys we act on are validated with errors naming the field.
//! * `adapter_model.safetensors`: `base_model.model.<module path>.lora_A.weight` `[r, in]` and
//!   `...lora_B.weight` `[out, r]` (peft strips the adapter name; `...lora_A.default.weight`
//!   is accepted too). Written with `{"format": "pt"}` metadata, atomically (temp + rename).

use super::error::{LoraError, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const PREFIX: &str = "base_model.model.";

/// `target_modules`: a list of module-name suffixes, or one regex matched against the whole
/// module path (peft's `re.fullmatch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl TargetModules {
    /// peft's `check_target_module_exists`: a list entry matches a path equal to it or ending in
    /// `.entry`; a regex must match the whole path.
    pub fn matches(&self, path: &str) -> Result<bool> {
        Ok(match self {
            TargetModules::List(l) => l.iter().any(|t| path == t || path.ends_with(&format!(".{t}"))),
            TargetModules::Regex(r) => {
                regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| LoraError::Invalid(format!("target_modules regex '{r}': {e}")))?.is_match(path)
            }
        })
    }
}

/// The fields of `adapter_config.json` this engine uses; everything else is kept in `extra`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_bias() -> String {
    "none".into()
}
fn default_peft_type() -> String {
    "LORA".into()
}

impl AdapterConfig {
    /// A config as peft 0.21's `LoraConfig(...).save_pretrained` writes it for a causal LM.
    pub fn new(r: usize, lora_alpha: f64, target_modules: Vec<String>, lora_dropout: f64, use_rslora: bool) -> Self {
        let mut extra = Map::new();
        for (k, v) in [
            ("alora_invocation_tokens", Value::Null),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", Value::Bool(false)),
            ("eva_config", Value::Null),
            ("kasa_config", Value::Null),
            ("lora_ga_config", Value::Null),
            ("monteclora_config", Value::Null),
            ("qalora_group_size", Value::from(16)),
            ("use_bdlora", Value::Null),
            ("velora_config", Value::Null),
            ("exclude_modules", Value::Null),
            ("inference_mode", Value::Bool(true)),
            ("init_lora_weights", Value::Bool(true)),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("loftq_config", Value::Object(Map::new())),
            ("lora_bias", Value::Bool(false)),
            ("megatron_config", Value::Null),
            ("megatron_core", Value::String("megatron.core".into())),
            ("peft_version", Value::String("0.21.2".into())),
            ("revision", Value::Null),
            ("target_parameters", Value::Null),
            ("trainable_token_indices", Value::Null),
            ("use_qalora", Value::Bool(false)),
        ] {
            extra.insert(k.into(), v);
        }
        AdapterConfig {
            r,
            lora_alpha,
            target_modules: TargetModules::List(target_modules),
            use_rslora,
            lora_dropout,
            base_model_name_or_path: None,
            bias: "none".into(),
            task_type: Some("CAUSAL_LM".into()),
            peft_type: "LORA".into(),
            fan_in_fan_out: false,
            modules_to_save: None,
            use_dora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            extra,
        }
    }

    /// Reads and validates `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(LoraError::MissingFile { path });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| LoraError::Io { path: path.clone(), source })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| LoraError::BadJson { path: path.clone(), reason: e.to_string() })?;
        let Value::Object(map) = &value else {
            return Err(LoraError::BadJson { path, reason: "expected a JSON object".into() });
        };
        check_fields(&path, map)?;
        let cfg: AdapterConfig = serde_json::from_value(value).map_err(|e| LoraError::BadJson { path: path.clone(), reason: e.to_string() })?;
        cfg.validate(&path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, reason: String| Err(LoraError::BadField { path: path.into(), field: field.into(), reason });
        if self.peft_type != "LORA" {
            return bad("peft_type", format!("'{}' is not supported; only LORA adapters can be loaded", self.peft_type));
        }
        if self.r == 0 {
            return bad("r", "must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return bad("lora_alpha", format!("{} is not a finite number", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("lora_dropout", format!("{} is not in [0, 1)", self.lora_dropout));
        }
        if self.use_dora {
            return bad("use_dora", "DoRA adapters are not supported; use a plain LoRA adapter".into());
        }
        if self.bias != "none" {
            return bad("bias", format!("'{}' is not supported: only bias \"none\" (peft's default)", self.bias));
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out", "true is for GPT-2 style Conv1D layers, which this engine does not load".into());
        }
        if let TargetModules::Regex(r) = &self.target_modules {
            regex::Regex::new(r).map_err(|e| LoraError::BadField { path: path.into(), field: "target_modules".into(), reason: e.to_string() })?;
        }
        Ok(())
    }

    /// Rank and alpha for one module path, honouring `rank_pattern` / `alpha_pattern` (a key
    /// matches a path equal to it or ending in `.key`).
    pub fn rank_alpha_for(&self, path: &str) -> (usize, f64) {
        let hit = |k: &String| path == k || path.ends_with(&format!(".{k}"));
        let r = self.rank_pattern.iter().find(|(k, _)| hit(k)).map_or(self.r, |(_, v)| *v);
        let a = self.alpha_pattern.iter().find(|(k, _)| hit(k)).map_or(self.lora_alpha, |(_, v)| *v);
        (r, a)
    }

    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scaling_for(&self, path: &str) -> f64 {
        let (r, alpha) = self.rank_alpha_for(path);
        if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 }
    }

    /// Writes `dir/adapter_config.json` atomically (pretty-printed, sorted keys, as peft).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let value = serde_json::to_value(self).map_err(|e| LoraError::Invalid(e.to_string()))?;
        let sorted: BTreeMap<String, Value> = match value {
            Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let text = serde_json::to_string_pretty(&sorted).map_err(|e| LoraError::Invalid(e.to_string()))?;
        atomic_write(&dir.join(CONFIG_FILE), text.as_bytes())
    }
}

/// Checks presence and type of the fields we use, so an error names the field.
fn check_fields(path: &Path, map: &Map<String, Value>) -> Result<()> {
    let bad = |field: &str, reason: &str| LoraError::BadField { path: path.into(), field: field.into(), reason: reason.into() };
    for field in ["r", "lora_alpha", "target_modules"] {
        if map.get(field).is_none_or(Value::is_null) {
            return Err(bad(field, "is missing; peft writes it in every LoRA adapter_config.json"));
        }
    }
    let is_uint = |v: &Value| v.as_u64().is_some();
    let is_num = |v: &Value| v.is_number();
    let is_bool = |v: &Value| v.is_boolean();
    let is_str = |v: &Value| v.is_string();
    let is_targets = |v: &Value| v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    type Check<'a> = (&'a str, &'a dyn Fn(&Value) -> bool, &'a str);
    let checks: [Check; 9] = [
        ("r", &is_uint, "must be a positive integer"),
        ("lora_alpha", &is_num, "must be a number"),
        ("target_modules", &is_targets, "must be a list of module names or one regex string"),
        ("use_rslora", &is_bool, "must be true or false"),
        ("lora_dropout", &is_num, "must be a number"),
        ("use_dora", &is_bool, "must be true or false"),
        ("fan_in_fan_out", &is_bool, "must be true or false"),
        ("bias", &is_str, "must be a string"),
        ("peft_type", &is_str, "must be a string"),
    ];
    for (field, ok, reason) in checks {
        if let Some(v) = map.get(field).filter(|v| !v.is_null() && !ok(v)) {
            return Err(bad(field, &format!("{reason}, found {v}")));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| LoraError::Io { path: dir.into(), source })?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("adapter")));
    std::fs::write(&tmp, bytes).map_err(|source| LoraError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| LoraError::Io { path: path.into(), source })
}

/// One module's (A, B) pair read from an adapter file, keyed by module path.
pub type LoraPairs = BTreeMap<String, (Tensor, Tensor)>;

/// Reads `dir/adapter_model.safetensors` into (A, B) pairs keyed by module path
/// (`model.layers.0.self_attn.q_proj`), converted to `dtype` when given.
pub fn load_weights(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<LoraPairs> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        let bin = dir.join("adapter_model.bin");
        let hint = if bin.is_file() { " (found adapter_model.bin: re-save it with safe_serialization=True)" } else { "" };
        return Err(LoraError::BadSafetensors { path, reason: format!("missing{hint}") });
    }
    let tensors =
        candle_core::safetensors::load(&path, device).map_err(|e| LoraError::BadSafetensors { path: path.clone(), reason: e.to_string() })?;
    let mut half: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (name, t) in tensors {
        let unexpected = |reason: &str| LoraError::UnexpectedTensor { path: path.clone(), tensor: name.clone(), reason: reason.into() };
        let rest = name.strip_prefix(PREFIX).ok_or_else(|| unexpected("names start with 'base_model.model.'"))?;
        let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight").or(rest.strip_suffix(".lora_A.default.weight")) {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight").or(rest.strip_suffix(".lora_B.default.weight")) {
            (m, 1)
        } else {
            return Err(unexpected("only lora_A / lora_B weights are supported (no DoRA magnitudes, biases or embeddings)"));
        };
        if t.rank() != 2 {
            return Err(unexpected(&format!("a LoRA weight is 2-d, this one has shape {:?}", t.dims())));
        }
        let t = match dtype {
            Some(d) => t.to_dtype(d)?,
            None => t,
        };
        let slot = half.entry(module.to_string()).or_default();
        if which == 0 { slot.0 = Some(t) } else { slot.1 = Some(t) }
    }
    let mut out = LoraPairs::new();
    for (module, pair) in half {
        match pair {
            (Some(a), Some(b)) => {
                out.insert(module, (a, b));
            }
            (a, _) => {
                let missing = if a.is_none() { "lora_A" } else { "lora_B" };
                return Err(LoraError::BadSafetensors { path, reason: format!("module '{module}' has no {missing} weight") });
            }
        }
    }
    if out.is_empty() {
        return Err(LoraError::BadSafetensors { path, reason: "holds no LoRA weights".into() });
    }
    Ok(out)
}

/// Writes (A, B) pairs as peft names them, with `{"format": "pt"}` metadata, atomically.
pub fn save_weights(dir: &Path, pairs: &LoraPairs) -> Result<PathBuf> {
    let mut named: Vec<(String, &Tensor)> = Vec::new();
    for (module, (a, b)) in pairs {
        named.push((format!("{PREFIX}{module}.lora_A.weight"), a));
        named.push((format!("{PREFIX}{module}.lora_B.weight"), b));
    }
    named.sort_by(|x, y| x.0.cmp(&y.0));
    let mut header = Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in &named {
        let (dt, bytes) = tensor_bytes(t)?;
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(name.clone(), serde_json::json!({"dtype": dt, "shape": t.dims(), "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).map_err(|e| LoraError::Invalid(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + h.len() + data.len());
    file.extend_from_slice(&(h.len() as u64).to_le_bytes());
    file.extend_from_slice(&h);
    file.extend_from_slice(&data);
    let path = dir.join(WEIGHTS_FILE);
    atomic_write(&path, &file)?;
    Ok(path)
}

fn tensor_bytes(t: &Tensor) -> Result<(&'static str, Vec<u8>)> {
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    Ok(match t.dtype() {
        DType::F32 => ("F32", flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F16 => ("F16", flat.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::BF16 => ("BF16", flat.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        other => return Err(LoraError::Invalid(format!("cannot save a LoRA weight of dtype {other:?}"))),
    })
}
