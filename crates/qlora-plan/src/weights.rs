//! Weight bytes per precision, tensor by tensor, as our engine stores them:
//!
//! * fp32 / bf16 / fp16: every loaded tensor in that dtype (the engine converts on load).
//! * int8: decoder-layer projections as int8 codes plus one f32 absmax per output row
//!   (`qlora_quant::Int8Tensor::storage_bytes`); everything else 16-bit.
//! * NF4: projections as two 4-bit codes per byte plus one f32 absmax per block of 64 and the
//!   16-entry f32 code table (`qlora_quant::Nf4Tensor::storage_bytes`); everything else 16-bit.
//! * NF4 + double quantization: the absmax as u8 per block of 64, one f32 per 256 of those, the
//!   f32 offset and the 256-entry f32 map, plus the NF4 codes and table (bitsandbytes'
//!   `QuantState` with `state2`).

use crate::arch::ArchSpec;
use crate::tensors::{Role, TensorSpec, role_of};
use serde::{Deserialize, Serialize};

/// A weight storage the planner prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
    Int8,
    Nf4,
    Nf4Dq,
}

impl Precision {
    pub const ALL: [Precision; 6] = [Self::Fp32, Self::Bf16, Self::Fp16, Self::Int8, Self::Nf4, Self::Nf4Dq];

    /// The key used in `--json` (`fp32`, `bf16`, `fp16`, `int8`, `nf4`, `nf4_dq`).
    pub fn key(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
            Self::Int8 => "int8",
            Self::Nf4 => "nf4",
            Self::Nf4Dq => "nf4_dq",
        }
    }

    /// Bytes of one activation / dense weight element in this precision's compute dtype.
    pub fn compute_bytes(self) -> u64 {
        if self == Self::Fp32 { 4 } else { 2 }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Self::Int8 | Self::Nf4 | Self::Nf4Dq)
    }
}

/// NF4 block size (bitsandbytes' default, and ours).
pub const NF4_BLOCK: u64 = 64;
/// Blocks of absmax values per nested f32 scale with double quantization.
pub const NF4_DQ_BLOCK: u64 = 256;

/// Bytes of an NF4 tensor of `numel` elements: `ceil(n/2)` codes, `ceil(n/64)` f32 absmax and
/// the 16-entry f32 code table.
pub fn nf4_bytes(numel: u64) -> u64 {
    numel.div_ceil(2) + numel.div_ceil(NF4_BLOCK) * 4 + 16 * 4
}

/// Bytes of a double-quantized NF4 tensor: codes, u8 absmax per block, f32 nested absmax per
/// 256 blocks, f32 offset, 256-entry f32 nested map, 16-entry f32 code table.
pub fn nf4_dq_bytes(numel: u64) -> u64 {
    let blocks = numel.div_ceil(NF4_BLOCK);
    numel.div_ceil(2) + blocks + blocks.div_ceil(NF4_DQ_BLOCK) * 4 + 4 + 256 * 4 + 16 * 4
}

/// Bytes of an int8 `[rows, cols]` weight: one byte each plus an f32 absmax per row.
pub fn int8_bytes(rows: u64, cols: u64) -> u64 {
    rows * cols + rows * 4
}

/// Bytes our engine holds for one tensor in `precision`.
pub fn tensor_bytes(spec: &ArchSpec, t: &TensorSpec, precision: Precision) -> u64 {
    let role = role_of(spec, &t.name);
    if role == Role::Unused {
        return 0;
    }
    let n = t.numel();
    match (precision, role) {
        (Precision::Int8, Role::Projection) => int8_bytes(t.shape[0], n / t.shape[0].max(1)),
        (Precision::Nf4, Role::Projection) => nf4_bytes(n),
        (Precision::Nf4Dq, Role::Projection) => nf4_dq_bytes(n),
        (p, _) => n * p.compute_bytes(),
    }
}

/// Total weight bytes of a model in `precision`.
pub fn weights_bytes(spec: &ArchSpec, tensors: &[TensorSpec], precision: Precision) -> u64 {
    tensors.iter().map(|t| tensor_bytes(spec, t, precision)).sum()
}

/// The largest projection's element count: its dense copy is the transient a quantized
/// matmul dequantizes into.
pub fn largest_projection_numel(spec: &ArchSpec, tensors: &[TensorSpec]) -> u64 {
    tensors.iter().filter(|t| role_of(spec, &t.name) == Role::Projection).map(TensorSpec::numel).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-checked: a 4096×4096 projection (Mistral's q_proj), 16,777,216 weights.
    #[test]
    fn quantized_bytes_of_a_4096_square() {
        let n = 4096 * 4096;
        // NF4: 8,388,608 code bytes + 262,144 blocks × 4 = 1,048,576 + 64 = 9,437,248.
        assert_eq!(nf4_bytes(n), 9_437_248);
        // DQ: 8,388,608 codes + 262,144 u8 absmax + 1,024 nested f32 (4,096) + offset 4
        //     + 256-entry f32 map (1,024) + code table 64 = 8,655,940.
        assert_eq!(nf4_dq_bytes(n), 8_655_940);
        // int8: 16,777,216 + 4,096 rows × 4 = 16,793,600.
        assert_eq!(int8_bytes(4096, 4096), 16_793_600);
    }

    /// Sizes that are not multiples of the blocks round up, as bitsandbytes does.
    #[test]
    fn partial_blocks_round_up() {
        // 65 values: 33 code bytes, 2 blocks × 4, table 64 → 105.
        assert_eq!(nf4_bytes(65), 33 + 8 + 64);
        // 65 values DQ: 33 + 2 + 1 nested × 4 + 4 + 1024 + 64.
        assert_eq!(nf4_dq_bytes(65), 33 + 2 + 4 + 4 + 1024 + 64);
    }
}
