//! bitsandbytes pre-quantized 4-bit checkpoints (what `save_pretrained` writes for a model
//! loaded with `BitsAndBytesConfig(load_in_4bit=True, ...)`), read into [`Nf4Tensor`].
//!
//! Per linear layer `<p>.weight`:
//! * `<p>.weight` U8 `[ceil(out·in/2), 1]`: the packed NF4 codes (high nibble first);
//! * `<p>.weight.absmax`: F32 `[blocks]`, or U8 `[blocks]` with double quantization, then also
//!   `<p>.weight.nested_absmax` F32 and `<p>.weight.nested_quant_map` F32 `[256]`;
//! * `<p>.weight.quant_map` F32 `[16]`: the 4-bit code values;
//! * `<p>.weight.quant_state.bitsandbytes__nf4` U8: a JSON blob ([`BnbQuantState`]: `quant_type`,
//!   `blocksize`, `dtype`, `shape`, and `nested_blocksize`/`nested_offset` with double quant).
//!
//! `config.json`'s `quantization_config` is read by [`BnbQuantConfig::from_config`]. Only NF4
//! with `uint8` storage is supported; FP4, 8-bit and other storage dtypes are errors that say so.
//! The stored numbers are used as they are (quant maps included), so the weights dequantize
//! exactly as bitsandbytes' `dequantize_4bit` does.

use crate::error::{QuantError, Result};
use crate::nf4::{Absmax, DoubleQuant, Nf4Tensor};
use candle_core::{DType, Shape, Tensor};
use serde::Deserialize;
use std::sync::Arc;

/// The JSON of `<p>.weight.quant_state.bitsandbytes__nf4`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BnbQuantState {
    pub quant_type: String,
    pub blocksize: usize,
    pub dtype: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub nested_blocksize: Option<usize>,
    #[serde(default)]
    pub nested_dtype: Option<String>,
    #[serde(default)]
    pub nested_offset: Option<f32>,
}

/// The `quantization_config` of a bitsandbytes checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbQuantConfig {
    pub load_in_4bit: bool,
    pub load_in_8bit: bool,
    pub quant_type: String,
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype` (e.g. "float32", "bfloat16").
    pub compute_dtype: Option<String>,
    pub quant_storage: String,
    /// `llm_int8_skip_modules`: modules left unquantized.
    pub skip_modules: Vec<String>,
}

fn bad(tensor: &str, reason: impl Into<String>) -> QuantError {
    QuantError::BadBnbTensor { tensor: tensor.into(), reason: reason.into() }
}

/// torch dtype name as bnb writes it (`"float32"`, `"bfloat16"`, `"float16"`) to a candle dtype.
pub fn dtype_from_torch(name: &str) -> Option<DType> {
    match name.trim_start_matches("torch.") {
        "float32" | "float" => Some(DType::F32),
        "bfloat16" => Some(DType::BF16),
        "float16" | "half" => Some(DType::F16),
        _ => None,
    }
}

impl BnbQuantConfig {
    /// Reads `config["quantization_config"]`; `Ok(None)` when absent or not bitsandbytes.
    pub fn from_config(config: &serde_json::Value) -> Result<Option<Self>> {
        let Some(q) = config.get("quantization_config") else { return Ok(None) };
        if q.get("quant_method").and_then(|v| v.as_str()) != Some("bitsandbytes") {
            return Ok(None);
        }
        let field = |k: &str| q.get(k).filter(|v| !v.is_null());
        let flag = |k: &str| field(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let text = |k: &str, d: &str| field(k).and_then(|v| v.as_str()).unwrap_or(d).to_string();
        let cfg = BnbQuantConfig {
            load_in_4bit: flag("load_in_4bit") || flag("_load_in_4bit"),
            load_in_8bit: flag("load_in_8bit") || flag("_load_in_8bit"),
            quant_type: text("bnb_4bit_quant_type", "fp4"),
            double_quant: flag("bnb_4bit_use_double_quant"),
            compute_dtype: field("bnb_4bit_compute_dtype").and_then(|v| v.as_str()).map(String::from),
            quant_storage: text("bnb_4bit_quant_storage", "uint8"),
            skip_modules: field("llm_int8_skip_modules")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default(),
        };
        let fail = |f: &str, r: String| Err(QuantError::BadQuantState { field: format!("quantization_config.{f}"), reason: r });
        if cfg.load_in_8bit {
            return fail("load_in_8bit", "8-bit bitsandbytes checkpoints are not supported; load the original weights with --quant int8".into());
        }
        if !cfg.load_in_4bit {
            return fail("load_in_4bit", "neither load_in_4bit nor load_in_8bit is set".into());
        }
        if cfg.quant_type != "nf4" {
            return fail("bnb_4bit_quant_type", format!("'{}' is not supported: only nf4 checkpoints load", cfg.quant_type));
        }
        if cfg.quant_storage != "uint8" {
            return fail("bnb_4bit_quant_storage", format!("'{}' is not supported: only uint8 storage", cfg.quant_storage));
        }
        Ok(Some(cfg))
    }
}

/// Parses the `quant_state.bitsandbytes__nf4` blob (a U8 tensor holding JSON).
pub fn parse_quant_state(tensor: &str, blob: &Tensor) -> Result<BnbQuantState> {
    if blob.dtype() != DType::U8 {
        return Err(bad(tensor, format!("expected U8 bytes of JSON, found {:?}", blob.dtype())));
    }
    let bytes = blob.flatten_all()?.to_vec1::<u8>()?;
    let st: BnbQuantState = serde_json::from_slice(&bytes).map_err(|e| bad(tensor, format!("not valid quant-state JSON: {e}")))?;
    if st.quant_type != "nf4" {
        return Err(bad(tensor, format!("quant_type '{}' is not supported: only nf4", st.quant_type)));
    }
    Ok(st)
}

/// Builds the NF4 weight `<weight>` (e.g. `model.layers.0.self_attn.q_proj.weight`) from a
/// checkpoint, `get(name)` returning the stored tensor of that name if any.
pub fn nf4_from_bnb(weight: &str, get: impl Fn(&str) -> Option<Tensor>) -> Result<Nf4Tensor> {
    let need = |suffix: &str| {
        let name = if suffix.is_empty() { weight.to_string() } else { format!("{weight}.{suffix}") };
        get(&name).map(|t| (name.clone(), t)).ok_or(QuantError::MissingTensor { tensor: name })
    };
    let (qs_name, blob) = need("quant_state.bitsandbytes__nf4")?;
    let st = parse_quant_state(&qs_name, &blob)?;
    let dtype = dtype_from_torch(&st.dtype).ok_or_else(|| bad(&qs_name, format!("dtype '{}' is not float32/float16/bfloat16", st.dtype)))?;
    let (pname, packed) = need("")?;
    if packed.dtype() != DType::U8 {
        return Err(bad(
            &pname,
            format!("packed 4-bit weight must be U8, found {:?} (bnb_4bit_quant_storage other than uint8 is not supported)", packed.dtype()),
        ));
    }
    let (map_name, map) = need("quant_map")?;
    let code: [f32; 16] = map
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .try_into()
        .map_err(|v: Vec<f32>| bad(&map_name, format!("expected 16 code values, found {}", v.len())))?;
    let (aname, absmax) = need("absmax")?;
    let absmax = match st.nested_blocksize {
        None => Absmax::Plain(absmax),
        Some(nested_blocksize) => {
            let offset = st.nested_offset.ok_or_else(|| bad(&qs_name, "nested_blocksize without nested_offset"))?;
            if absmax.dtype() != DType::U8 {
                return Err(bad(&aname, format!("double-quantized absmax must be U8, found {:?}", absmax.dtype())));
            }
            let (_, nested_absmax) = need("nested_absmax")?;
            let (nm_name, nm) = need("nested_quant_map")?;
            let nested_code: [f32; 256] = nm
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .try_into()
                .map_err(|v: Vec<f32>| bad(&nm_name, format!("expected 256 code values, found {}", v.len())))?;
            Absmax::Double(DoubleQuant {
                q: absmax,
                offset,
                nested_absmax: nested_absmax.to_dtype(DType::F32)?,
                nested_code: Arc::new(nested_code),
                nested_blocksize,
            })
        }
    };
    Nf4Tensor::from_parts(packed, absmax, code, st.blocksize, Shape::from(st.shape.clone()), dtype).map_err(|e| bad(weight, e.to_string()))
}
