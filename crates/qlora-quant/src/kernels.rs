//! Slice-level NF4 and double-quantization kernels on the CPU, written to follow
//! bitsandbytes 0.50.2 operation for operation (see `codebook.rs` for the tables). Everything
//! above works on candle tensors; everything here is plain arithmetic on `&[f32]`/`&[u8]`.

use crate::codebook::{nf4_bucket, nf4_midpoints, Lut8};
use crate::torch_sum::torch_mean_f32;

/// Blocks of `blocksize` over the flattened values; the last may be short.
pub fn n_blocks(n: usize, blocksize: usize) -> usize {
    n.div_ceil(blocksize)
}

/// NF4-quantizes `x` (already f32: bnb upcasts f16/bf16 exactly, so the result is the same).
/// Returns the packed codes (first value of each pair in the HIGH nibble, an odd count padded
/// with code 7 = 0.0) and one f32 absmax per block.
///
/// Follows bnb's default (CPU) `quantize_4bit` exactly, quirks included:
/// full blocks are scaled by a multiply with `1 / max(absmax, 1e-38)` and store the raw absmax
/// (0.0 for an all-zero block, whose codes are then 7); the ragged last block is scaled by a
/// division and stores the clamped absmax (1e-38 when all zero).
pub fn nf4_quantize(x: &[f32], blocksize: usize, code: &[f32; 16]) -> (Vec<u8>, Vec<f32>) {
    let mid = nf4_midpoints(code);
    let n = x.len();
    let mut codes = Vec::with_capacity(n + 1);
    let mut absmax = Vec::with_capacity(n_blocks(n, blocksize));
    for block in x.chunks(blocksize) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let clamped = am.max(1e-38);
        if block.len() == blocksize {
            let inv = 1.0f32 / clamped;
            codes.extend(block.iter().map(|v| nf4_bucket((v * inv).clamp(-1.0, 1.0), &mid)));
            absmax.push(am);
        } else {
            codes.extend(block.iter().map(|v| nf4_bucket((v / clamped).clamp(-1.0, 1.0), &mid)));
            absmax.push(clamped);
        }
    }
    if n % 2 == 1 {
        codes.push(nf4_bucket(0.0, &mid));
    }
    let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

/// Dequantizes packed NF4 codes: `code[c] * absmax[block]` in f32, then `cast` (bnb converts
/// the f32 product to the output dtype with round-to-nearest-even).
pub fn nf4_dequantize<T>(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    blocksize: usize,
    n: usize,
    cast: impl Fn(f32) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let half_block = blocksize / 2;
    for (b, bytes) in packed.chunks(half_block).enumerate() {
        let scale = absmax[b];
        for byte in bytes {
            out.push(cast(code[(byte >> 4) as usize] * scale));
            out.push(cast(code[(byte & 0x0f) as usize] * scale));
        }
    }
    out.truncate(n);
    out
}

/// Double quantization of the absmax values as bnb does it: `offset = absmax.mean()` (torch's
/// f32 summation order, `torch_threads` intra-op threads), then `absmax - offset` quantized
/// blockwise (`nested_blocksize`, 256) with the dynamic map through bnb's CPU lookup table.
/// Returns (codes, offset, nested absmax).
pub fn dq_quantize(absmax: &[f32], nested_blocksize: usize, torch_threads: usize) -> (Vec<u8>, f32, Vec<f32>) {
    let offset = torch_mean_f32(absmax, torch_threads);
    let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let lut = Lut8::dynamic();
    let mut q = Vec::with_capacity(centered.len());
    let mut nested = Vec::with_capacity(n_blocks(centered.len(), nested_blocksize));
    for block in centered.chunks(nested_blocksize) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        nested.push(am);
        if am == 0.0 {
            q.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        q.extend(block.iter().map(|v| lut.code(v * inv)));
    }
    (q, offset, nested)
}

/// Rebuilds f32 absmax from its double quantization: `code[q] * nested_absmax[block] + offset`,
/// two f32 roundings in that order as bnb's `dequantize_blockwise(...) + offset`.
pub fn dq_dequantize(q: &[u8], offset: f32, nested_absmax: &[f32], code: &[f32; 256], nested_blocksize: usize) -> Vec<f32> {
    q.chunks(nested_blocksize)
        .zip(nested_absmax)
        .flat_map(|(block, scale)| block.iter().map(move |c| code[*c as usize] * scale + offset))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::NF4_CODE;

    #[test]
    fn hand_checked_block() {
        // absmax 2.0: scaled values -1, -0.35, 0, 0.05, 0.5, 1 -> codes 0, 3, 7, 8, 12, 15.
        let mut x = vec![0f32; 64];
        x[..6].copy_from_slice(&[-2.0, -0.7, 0.0, 0.1, 1.0, 2.0]);
        let (packed, absmax) = nf4_quantize(&x, 64, &NF4_CODE);
        assert_eq!(absmax, vec![2.0]);
        assert_eq!(packed.len(), 32);
        assert_eq!(&packed[..3], &[0x03, 0x78, 0xcf]);
        assert!(packed[3..].iter().all(|b| *b == 0x77), "zeros are code 7");
        let deq = nf4_dequantize(&packed, &absmax, &NF4_CODE, 64, 64, |v| v);
        assert_eq!(deq[0], -2.0);
        assert_eq!(deq[1], NF4_CODE[3] * 2.0);
        assert_eq!(deq[5], 2.0);
    }

    #[test]
    fn zero_blocks_and_ragged_tail() {
        // one all-zero full block, then a ragged all-zero block of 3 (odd count: padded nibble)
        let x = vec![0f32; 67];
        let (packed, absmax) = nf4_quantize(&x, 64, &NF4_CODE);
        assert_eq!(absmax, vec![0.0, 1e-38]);
        assert_eq!(packed.len(), 34);
        assert!(packed.iter().all(|b| *b == 0x77));
        let deq = nf4_dequantize(&packed, &absmax, &NF4_CODE, 64, 67, |v| v);
        assert_eq!(deq.len(), 67);
        assert!(deq.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn double_quant_roundtrip_is_close() {
        let absmax: Vec<f32> = (0..300).map(|i| 0.01 + (i as f32 * 0.37).sin().abs() * 0.1).collect();
        let (q, offset, nested) = dq_quantize(&absmax, 256, 1);
        assert_eq!(nested.len(), 2);
        let back = dq_dequantize(&q, offset, &nested, crate::codebook::dynamic_map(), 256);
        for (a, b) in absmax.iter().zip(&back) {
            assert!((a - b).abs() < 0.01 * 0.1 + 1e-4, "{a} vs {b}");
        }
    }
}
