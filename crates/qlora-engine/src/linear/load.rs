//! Builds each projection of a checkpoint in the storage the caller asked for (dense, NF4,
//! int8) or the one the checkpoint is in (bitsandbytes pre-quantized 4-bit, announced by
//! `quantization_config` in config.json). Quantizing on load reads each weight straight from
//! the memory-mapped file, so no dense copy of the whole model is ever held.

use super::dense::DenseLinear;
use super::ArcLinear;
use crate::error::{Error, Result};
use crate::model::config::BnbQuant;
use crate::weights::Weights;
use candle_core::{DType, Device};
use std::sync::Arc;

/// The storage requested for the projections of a model loaded from dense weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    /// Keep the checkpoint's weights as they are (in the compute dtype).
    #[default]
    None,
    /// LLM.int8-style: row-wise absmax, int8 values.
    Int8,
    /// bitsandbytes NF4, blocks of 64.
    Nf4,
    /// NF4 with double quantization of the absmax (blocks of 256, 8-bit dynamic map).
    Nf4DoubleQuant,
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" | "dense" => Quant::None,
            "int8" => Quant::Int8,
            "nf4" => Quant::Nf4,
            "nf4-dq" | "nf4_double_quant" => Quant::Nf4DoubleQuant,
            other => return Err(Error::InvalidOption(format!("unknown quantization '{other}' (use none, int8, nf4 or nf4-dq)"))),
        })
    }
}

/// Everything needed to build one projection.
pub struct LinearLoader<'a> {
    pub weights: &'a Weights,
    pub dtype: DType,
    pub device: &'a Device,
    pub quant: Quant,
    /// Set when config.json says the checkpoint itself is bitsandbytes-quantized.
    pub prequantized: Option<BnbQuant>,
}

impl LinearLoader<'_> {
    /// Loads `{name}.weight` (`[out, in]`) and, when `bias`, `{name}.bias`.
    pub fn load(&self, name: &str, in_features: usize, out_features: usize, bias: bool) -> Result<ArcLinear> {
        let w_name = format!("{name}.weight");
        let b = if bias {
            Some(self.weights.get_as(&format!("{name}.bias"), &[out_features], self.dtype, self.device)?)
        } else {
            None
        };
        if let Some(q) = &self.prequantized
            && self.weights.info(&w_name).is_some_and(|i| i.dtype == DType::U8)
        {
            return super::prequantized::load(self, q, name, in_features, out_features, b);
        }
        let w = self.weights.get_as(&w_name, &[out_features, in_features], self.dtype, self.device)?;
        match self.quant {
            Quant::None => Ok(Arc::new(DenseLinear::new(w, b))),
            Quant::Int8 => super::int8::quantize(&w, b, self.dtype),
            Quant::Nf4 => super::nf4::quantize(&w, b, self.dtype, false),
            Quant::Nf4DoubleQuant => super::nf4::quantize(&w, b, self.dtype, true),
        }
    }
}
