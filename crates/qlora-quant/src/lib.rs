//! qlora-quant
