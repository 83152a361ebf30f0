//! Builds each projection of a checkpoint in the storage the caller asked for (dense, NF4,
//! int8) or the one the checkpoint is in (bitsandbytes pre-quantized 4-bit, announced by
//! `quantization_config` in config.json). Quantizing on load reads each weight straight from
//! the memory-mapped file, so no dense copy of the whole model is ever held.

use super::ArcLinear;
use super::dense::DenseLinear;
use super::int8::Int8Linear;
use super::nf4::Nf4Linear;
use crate::error::{Error, Result};
use crate::model::config::BnbQuant;
use crate::weights::Weights;
use candle_core::{DType, Device};
use qlora_quant::{Int8Tensor, Nf4Tensor};
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
        let b = if bias { Some(self.weights.get_as(&format!("{name}.bias"), &[out_features], self.dtype, self.device)?) } else { None };
        if let Some(q) = &self.prequantized
            && self.weights.info(&w_name).is_some_and(|i| i.dtype == DType::U8)
        {
            return super::prequantized::load(self, q, name, in_features, out_features, b);
        }
        // Quantized storage is computed on the CPU straight from the mapped file, and only the
        // result goes to the device. Copying each dense weight to the GPU first (and an f32
        // copy for the quantizer) left CUDA's stream-ordered pool holding 0.4-2 GiB more than
        // the quantized model at its peak (bench/gpu/memcheck.sh, H100: Phi-2 in NF4 peaked
        // near its bf16 size).
        let shape = [out_features, in_features];
        let dense_on = if self.quant == Quant::None { self.device } else { &Device::Cpu };
        let w = self.weights.get_as(&w_name, &shape, self.dtype, dense_on)?;
        let err = candle_core::Error::from;
        Ok(match self.quant {
            Quant::None => Arc::new(DenseLinear::new(w, b)),
            Quant::Int8 => {
                let q = Int8Tensor::quantize(&w).map_err(err)?;
                let q = Int8Tensor::from_parts(q.codes().to_device(self.device)?, q.row_absmax().to_device(self.device)?, self.dtype).map_err(err)?;
                Arc::new(Int8Linear::new(q, b))
            }
            Quant::Nf4 | Quant::Nf4DoubleQuant => {
                let q = Nf4Tensor::quantize(&w, self.quant == Quant::Nf4DoubleQuant).map_err(err)?;
                Arc::new(Nf4Linear::new(q.to_device(self.device)?, b))
            }
        })
    }
}
