//! `config.json` as the Hub writes it (a serde mirror with `Option` fields) and the few numbers
//! of it the planner needs, decided with the same rules as the engine's own config
//! (`qlora_engine::model::config`): which projections carry biases, whether the LM head is tied,
//! GQA head counts, head_dim, sliding window. The planner keeps its own copy so it can plan a
//! model without linking candle; `tests/plan_engine_bytes.rs` checks both agree on real models.

use crate::PlanError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The architectures the engine runs (the same list as `qlora_engine::model::config::Arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Phi,
    Gemma,
    Qwen2,
}

impl Arch {
    pub const SUPPORTED: &'static str = "llama, mistral, phi, gemma, qwen2";

    /// The `model_type` of `config.json` this architecture is read from.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Phi => "phi",
            Arch::Gemma => "gemma",
            Arch::Qwen2 => "qwen2",
        }
    }
    fn from_model_type(s: &str) -> Option<Self> {
        Some(match s {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "phi" => Arch::Phi,
            "gemma" => Arch::Gemma,
            "qwen2" => Arch::Qwen2,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    quantization_config: Option<serde_json::Value>,
}

/// The shape facts of a model, from its config.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchSpec {
    pub arch: Arch,
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub head_dim: u64,
    pub max_position_embeddings: u64,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Phi: one norm per layer, attention and MLP in parallel, LayerNorm with bias, plain MLP.
    pub parallel_block: bool,
    /// Sliding window of each layer that has one (the engine masks with it; its KV cache is
    /// not capped by it, so the planner does not cap either).
    pub sliding_window: Option<u64>,
    /// `torch_dtype` / `dtype`: the dtype the checkpoint is published in.
    pub torch_dtype: Option<String>,
    /// The checkpoint is bitsandbytes pre-quantized (`quantization_config` present).
    pub prequantized: bool,
}

impl ArchSpec {
    /// Parses config.json text; `path` is named in errors.
    pub fn from_json(path: &Path, text: &str) -> Result<Self, PlanError> {
        let bad = |reason: String| PlanError::BadConfig { path: path.to_path_buf(), reason };
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let model_type = hf.model_type.clone().ok_or_else(|| bad("no 'model_type' field".into()))?;
        let arch = Arch::from_model_type(&model_type)
            .ok_or_else(|| PlanError::UnsupportedArchitecture { path: path.to_path_buf(), model_type: model_type.clone() })?;
        let need = |v: Option<usize>, name: &str| {
            v.filter(|n| *n > 0).map(|n| n as u64).ok_or_else(|| bad(format!("missing or zero required field '{name}'")))
        };
        let hidden_size = need(hf.hidden_size, "hidden_size")?;
        let num_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = hf.num_key_value_heads.map_or(num_heads, |n| n as u64);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!("num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})")));
        }
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let sliding_window = match arch {
            Arch::Mistral => hf.sliding_window,
            Arch::Qwen2 if hf.use_sliding_window == Some(true) => hf.sliding_window,
            _ => None,
        }
        .map(|w| w as u64);
        let _ = hf.max_window_layers;
        Ok(ArchSpec {
            arch,
            vocab_size: need(hf.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(hf.intermediate_size, "intermediate_size")?,
            num_layers: need(hf.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim: hf.head_dim.map_or(hidden_size / num_heads, |d| d as u64),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048) as u64,
            tie_embeddings: hf.tie_word_embeddings.unwrap_or(arch == Arch::Gemma),
            qkv_bias: matches!(arch, Arch::Qwen2 | Arch::Phi) || attention_bias,
            o_bias: arch == Arch::Phi || attention_bias,
            mlp_bias: arch == Arch::Phi || hf.mlp_bias.unwrap_or(false),
            parallel_block: arch == Arch::Phi,
            sliding_window,
            torch_dtype: hf.torch_dtype.or(hf.dtype),
            prequantized: hf.quantization_config.is_some(),
        })
    }

    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, PlanError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| PlanError::Io { path: path.clone(), reason: e.to_string() })?;
        Self::from_json(&path, &text)
    }

    /// Output width of q_proj (heads × head_dim; not always hidden_size: Gemma 7B).
    pub fn q_dim(&self) -> u64 {
        self.num_heads * self.head_dim
    }
    /// Output width of k_proj and v_proj (GQA: kv_heads × head_dim).
    pub fn kv_dim(&self) -> u64 {
        self.num_kv_heads * self.head_dim
    }
    /// Bytes of one element of the published checkpoint (2 unless it says float32).
    pub fn checkpoint_dtype_bytes(&self) -> u64 {
        match self.torch_dtype.as_deref() {
            Some("float32") => 4,
            _ => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<ArchSpec, PlanError> {
        ArchSpec::from_json(Path::new("config.json"), json)
    }

    #[test]
    fn gemma_ties_its_head_and_takes_head_dim_from_the_config() {
        let s = spec(
            r#"{"model_type":"gemma","hidden_size":3072,"intermediate_size":24576,"num_hidden_layers":28,
            "num_attention_heads":16,"num_key_value_heads":16,"head_dim":256,"vocab_size":256000}"#,
        )
        .unwrap();
        assert!(s.tie_embeddings);
        assert_eq!((s.q_dim(), s.kv_dim()), (4096, 4096), "gemma-7b: q width 16*256 is not hidden 3072");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_a_window_only_when_switched_on() {
        let base = r#""model_type":"qwen2","hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,
            "num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,"sliding_window":32768"#;
        let off = spec(&format!("{{{base},\"use_sliding_window\":false}}")).unwrap();
        assert!(off.qkv_bias && !off.o_bias && !off.mlp_bias);
        assert_eq!(off.sliding_window, None);
        assert_eq!(off.kv_dim(), 128);
        let on = spec(&format!("{{{base},\"use_sliding_window\":true}}")).unwrap();
        assert_eq!(on.sliding_window, Some(32768));
    }

    #[test]
    fn bad_configs_name_the_field_and_the_fix() {
        let e = spec(r#"{"model_type":"gpt2"}"#).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("llama, mistral"), "{e}");
        let e = spec(r#"{"model_type":"llama","hidden_size":64}"#).unwrap_err().to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = spec(
            r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":6,"num_key_value_heads":4,
            "intermediate_size":1,"num_hidden_layers":1,"vocab_size":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("multiple"), "{e}");
        assert!(spec("{").unwrap_err().to_string().contains("config.json"));
    }
}
