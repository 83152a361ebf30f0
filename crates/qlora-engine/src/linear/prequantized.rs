//! bitsandbytes pre-quantized 4-bit checkpoints: `weight` as packed U8 with `weight.absmax`,
//! `weight.quant_map`, optional nested (double-quant) state and the
//! `weight.quant_state.bitsandbytes__nf4` JSON, read into qlora-quant's `Nf4Tensor`.

use super::load::LinearLoader;
use super::ArcLinear;
use crate::error::{Error, Result};
use crate::model::config::BnbQuant;
use candle_core::Tensor;

pub fn load(
    _l: &LinearLoader,
    _q: &BnbQuant,
    name: &str,
    _in_features: usize,
    _out_features: usize,
    _bias: Option<Tensor>,
) -> Result<ArcLinear> {
    Err(Error::InvalidOption(format!("{name}: bitsandbytes pre-quantized weights are waiting for qlora-quant")))
}
