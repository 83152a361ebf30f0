//! bitsandbytes pre-quantized 4-bit checkpoints: `weight` as packed U8 with `weight.absmax`,
//! `weight.quant_map`, optional nested (double-quant) state and the
//! `weight.quant_state.bitsandbytes__nf4` JSON, read by qlora-quant's `bnb_format` into an
//! [`Nf4Tensor`](qlora_quant::Nf4Tensor) and served by the same NF4 linear as a model
//! quantized on load. The stored numbers are used as they are, so the weights dequantize
//! exactly as bitsandbytes' `dequantize_4bit` does.

use super::ArcLinear;
use super::load::LinearLoader;
use super::nf4::Nf4Linear;
use crate::error::{Error, Result};
use crate::model::config::BnbQuant;
use candle_core::Tensor;
use std::sync::Arc;

pub fn load(l: &LinearLoader, q: &BnbQuant, name: &str, in_features: usize, out_features: usize, bias: Option<Tensor>) -> Result<ArcLinear> {
    let w_name = format!("{name}.weight");
    let path = l.weights.file_of(&w_name).map(|p| p.to_path_buf()).unwrap_or_default();
    match q {
        BnbQuant::FourBit { quant_type, .. } if quant_type == "nf4" => {}
        other => {
            return Err(Error::BadTensor {
                path,
                tensor: w_name,
                reason: format!("bitsandbytes {other:?} checkpoints are not supported; only 4-bit NF4 (load_in_4bit, bnb_4bit_quant_type nf4)"),
            });
        }
    }
    let nf4 = qlora_quant::bnb_format::nf4_from_bnb(&w_name, |n| l.weights.get(n, l.device).ok()).map_err(|e| Error::BadTensor {
        path: path.clone(),
        tensor: w_name.clone(),
        reason: e.to_string(),
    })?;
    let dims = nf4.shape().dims().to_vec();
    if dims != [out_features, in_features] {
        return Err(Error::ShapeMismatch { path, tensor: w_name, expected: vec![out_features, in_features], actual: dims });
    }
    Ok(Arc::new(Nf4Linear::new(nf4, bias)))
}
