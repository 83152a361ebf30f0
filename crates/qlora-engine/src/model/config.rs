//! `config.json` as the Hub writes it (a serde mirror with `Option` fields, accepting both the
//! transformers 4 keys `rope_theta`/`rope_scaling` and the transformers 5 `rope_parameters`),
//! converted into one runtime [`ModelConfig`] the decoder reads. Architecture quirks (Gemma's
//! `1 + weight` norm, Phi's partial rotary, Qwen2's q/k/v biases) are decided here, once.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// The architectures the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    Gelu,
}

/// How rotary frequencies are scaled for long contexts (`rope_type` in the config).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f64 },
    Dynamic { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: usize },
}

/// Normalisation layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// Llama-style RMSNorm: `weight * normalize(x)`.
    Rms,
    /// Gemma's RMSNorm: `normalize(x) * (1 + weight)`, computed in f32.
    RmsOnePlus,
    /// LayerNorm with weight and bias (Phi).
    LayerNorm,
}

/// bitsandbytes quantization of a pre-quantized checkpoint (`quantization_config`).
#[derive(Debug, Clone, PartialEq)]
pub enum BnbQuant {
    /// 4-bit; `quant_type` is "nf4" or "fp4".
    FourBit {
        quant_type: String,
        double_quant: bool,
    },
    EightBit,
}

/// The runtime configuration every part of the decoder reads.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that are rotated (Phi's partial rotary; `head_dim` elsewhere).
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub norm: NormKind,
    pub activation: Activation,
    /// q/k/v projections carry a bias (Qwen2, Phi, `attention_bias`).
    pub qkv_bias: bool,
    /// The attention output projection carries a bias (Phi, `attention_bias`).
    pub o_bias: bool,
    /// MLP projections carry biases (Phi, `mlp_bias`).
    pub mlp_bias: bool,
    /// Phi: attention and MLP read the same normed input and are added together.
    pub parallel_block: bool,
    pub tie_embeddings: bool,
    /// Gemma multiplies embeddings by sqrt(hidden_size).
    pub scale_embeddings: bool,
    /// Per layer: the sliding-window size, if that layer uses one.
    pub sliding_window: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was saved in (`torch_dtype`/`dtype`), if stated.
    pub torch_dtype: Option<String>,
    pub quantization: Option<BnbQuant>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// A serde mirror of `config.json`: every field optional, defaults applied in [`ModelConfig::from_hf`].
#[derive(Debug, Deserialize, Default)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub layer_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub partial_rotary_factor: Option<f64>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub qk_layernorm: Option<bool>,
    bos_token_id: Option<OneOrMany>,
    eos_token_id: Option<OneOrMany>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub quantization_config: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Reads and converts `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json(&path, &text)
    }

    /// Parses config.json text; `path` is named in errors.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| Error::BadConfig { path: path.to_path_buf(), reason: e.to_string() })?;
        Self::from_hf(path, hf)
    }

    pub fn from_hf(path: &Path, hf: HfConfig) -> Result<Self> {
        let bad = |reason: String| Error::BadConfig { path: path.to_path_buf(), reason };
        let model_type = hf.model_type.clone().ok_or_else(|| bad("no 'model_type' field".into()))?;
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| Error::UnsupportedArchitecture {
            path: path.to_path_buf(),
            model_type: model_type.clone(),
            supported: Arch::SUPPORTED.to_string(),
        })?;
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| bad(format!("missing required field '{name}'")));
        let hidden_size = need(hf.hidden_size, "hidden_size")?;
        let num_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        let num_layers = need(hf.num_hidden_layers, "num_hidden_layers")?;
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!("num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})")));
        }
        let head_dim = hf.head_dim.unwrap_or(hidden_size / num_heads);
        let rope = RopeParams::from_hf(&hf).map_err(bad)?;
        let partial = rope.partial_rotary_factor.unwrap_or(if arch == Arch::Phi { 0.5 } else { 1.0 });
        let rotary_dim = ((head_dim as f64) * partial) as usize;
        let act_name = match arch {
            Arch::Gemma => "gelu_pytorch_tanh".to_string(),
            _ => hf
                .hidden_act
                .clone()
                .or(hf.hidden_activation.clone())
                .unwrap_or_else(|| if arch == Arch::Phi { "gelu_new".into() } else { "silu".into() }),
        };
        let activation = match act_name.as_str() {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => return Err(bad(format!("unsupported hidden_act '{other}' (supported: silu, gelu, gelu_new, gelu_pytorch_tanh)"))),
        };
        let (norm, norm_eps) = match arch {
            Arch::Phi => (NormKind::LayerNorm, hf.layer_norm_eps.unwrap_or(1e-5)),
            Arch::Gemma => (NormKind::RmsOnePlus, hf.rms_norm_eps.unwrap_or(1e-6)),
            _ => (NormKind::Rms, hf.rms_norm_eps.unwrap_or(1e-6)),
        };
        if hf.qk_layernorm == Some(true) {
            return Err(bad("qk_layernorm = true is not supported (Phi-2 and the other supported models have it off)".into()));
        }
        let attention_bias = hf.attention_bias.unwrap_or(false);
        let sliding_window = sliding_windows(arch, &hf, num_layers);
        let tie_embeddings = hf.tie_word_embeddings.unwrap_or(matches!(arch, Arch::Gemma));
        let ids = |v: &Option<OneOrMany>| match v {
            None => vec![],
            Some(OneOrMany::One(x)) => vec![*x],
            Some(OneOrMany::Many(x)) => x.clone(),
        };
        let quantization = match &hf.quantization_config {
            None => None,
            Some(q) => Some(parse_bnb(q).map_err(bad)?),
        };
        Ok(Self {
            arch,
            vocab_size: need(hf.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(hf.intermediate_size, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            norm_eps,
            norm,
            activation,
            qkv_bias: matches!(arch, Arch::Qwen2 | Arch::Phi) || attention_bias,
            o_bias: arch == Arch::Phi || attention_bias,
            mlp_bias: arch == Arch::Phi || hf.mlp_bias.unwrap_or(false),
            parallel_block: arch == Arch::Phi,
            tie_embeddings,
            scale_embeddings: arch == Arch::Gemma,
            sliding_window,
            bos_token_id: ids(&hf.bos_token_id).first().copied(),
            eos_token_ids: ids(&hf.eos_token_id),
            torch_dtype: hf.torch_dtype.clone().or(hf.dtype.clone()),
            quantization,
        })
    }

    /// Names of the projections of one decoder layer, as the checkpoint spells them.
    pub fn projection_names(&self) -> &'static [&'static str] {
        match self.arch {
            Arch::Phi => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense", "mlp.fc1", "mlp.fc2"],
            _ => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
        }
    }
}

fn sliding_windows(arch: Arch, hf: &HfConfig, num_layers: usize) -> Vec<Option<usize>> {
    let window = hf.sliding_window;
    match arch {
        Arch::Mistral => vec![window; num_layers],
        Arch::Qwen2 => {
            if let Some(types) = &hf.layer_types {
                return (0..num_layers).map(|i| types.get(i).filter(|t| *t == "sliding_attention").and(window)).collect();
            }
            let first = hf.max_window_layers.unwrap_or(num_layers);
            let on = hf.use_sliding_window.unwrap_or(false);
            (0..num_layers).map(|i| if on && i >= first { window } else { None }).collect()
        }
        _ => vec![None; num_layers],
    }
}

struct RopeParams {
    theta: f64,
    scaling: RopeScaling,
    partial_rotary_factor: Option<f64>,
}

impl RopeParams {
    /// Merges `rope_parameters` (transformers 5) with `rope_theta`/`rope_scaling` (transformers 4).
    fn from_hf(hf: &HfConfig) -> std::result::Result<Self, String> {
        let params = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let get = |k: &str| params.and_then(|p| p.get(k)).and_then(|v| v.as_f64());
        let theta = get("rope_theta").or(hf.rope_theta).unwrap_or(10000.0);
        let kind = params.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))).and_then(|v| v.as_str()).unwrap_or("default");
        let factor = || get("factor").ok_or_else(|| format!("rope_type '{kind}' needs a 'factor'"));
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic { factor: factor()? },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: get("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: get("high_freq_factor").unwrap_or(4.0),
                original_max: get("original_max_position_embeddings").map(|v| v as usize).unwrap_or(8192),
            },
            other => return Err(format!("unsupported rope_type '{other}' (supported: default, linear, dynamic, llama3)")),
        };
        let partial_rotary_factor = get("partial_rotary_factor").or(hf.partial_rotary_factor);
        Ok(Self { theta, scaling, partial_rotary_factor })
    }
}

fn parse_bnb(q: &serde_json::Value) -> std::result::Result<BnbQuant, String> {
    let method = q.get("quant_method").and_then(|v| v.as_str()).unwrap_or("bitsandbytes");
    if method != "bitsandbytes" {
        return Err(format!("quantization_config.quant_method '{method}' is not supported (only bitsandbytes)"));
    }
    let flag = |k: &str| q.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    if flag("load_in_4bit") {
        let quant_type = q.get("bnb_4bit_quant_type").and_then(|v| v.as_str()).unwrap_or("fp4").to_string();
        Ok(BnbQuant::FourBit { quant_type, double_quant: flag("bnb_4bit_use_double_quant") })
    } else if flag("load_in_8bit") {
        Ok(BnbQuant::EightBit)
    } else {
        Err("quantization_config sets neither load_in_4bit nor load_in_8bit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_type_lists_supported() {
        let err = ModelConfig::from_json(Path::new("c.json"), r#"{"model_type":"gpt_neox"}"#).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("gpt_neox") && msg.contains("llama, mistral, phi, gemma, qwen2"), "{msg}");
    }

    #[test]
    fn phi_partial_rotary_from_rope_parameters() {
        let text = r#"{"model_type":"phi","vocab_size":10,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":1,"num_attention_heads":4,
            "rope_parameters":{"partial_rotary_factor":0.4,"rope_theta":10000.0,"rope_type":"default"}}"#;
        let c = ModelConfig::from_json(Path::new("c.json"), text).unwrap();
        assert_eq!((c.head_dim, c.rotary_dim), (8, 3));
        assert_eq!(c.norm, NormKind::LayerNorm);
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias && c.parallel_block);
    }

    #[test]
    fn llama3_rope_scaling_old_keys() {
        let text = r#"{"model_type":"llama","vocab_size":10,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192},"eos_token_id":[1,2]}"#;
        let c = ModelConfig::from_json(Path::new("c.json"), text).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor: 8.0, original_max: 8192, .. }));
        assert_eq!(c.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn gemma_always_uses_tanh_gelu() {
        let text = r#"{"model_type":"gemma","vocab_size":10,"hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":1,"num_attention_heads":4,"head_dim":16,"hidden_act":"gelu"}"#;
        let c = ModelConfig::from_json(Path::new("c.json"), text).unwrap();
        assert_eq!(c.activation, Activation::GeluTanh);
        assert!(c.tie_embeddings && c.scale_embeddings);
        assert_eq!(c.norm, NormKind::RmsOnePlus);
    }

    #[test]
    fn missing_field_is_named() {
        let err = ModelConfig::from_json(Path::new("c.json"), r#"{"model_type":"llama"}"#).unwrap_err();
        assert!(err.to_string().contains("hidden_size"), "{err}");
    }
}
