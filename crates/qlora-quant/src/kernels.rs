//! Slice-level NF4 and double-quantization kernels on the CPU, written to follow
//! bitsandbytes 0.50.2 operation for operation (see `codebook.rs` for the tables). Everything
//! above works on candle tensors; everything here is plain arithmetic on `&[f32]`/`&[u8]`.

use crate::codebook::{Lut8, nf4_bucket, nf4_midpoints};
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
    // Blocks are independent: split into runs of whole blocks (an even number of values,
    // since blocksizes are even) and quantize them on all cores; the bytes are the same.
    let parts = par_chunks(x, blocksize, |part| nf4_quantize_serial(part, blocksize, code));
    let mut packed = Vec::with_capacity(x.len().div_ceil(2));
    let mut absmax = Vec::with_capacity(n_blocks(x.len(), blocksize));
    for (p, a) in parts {
        packed.extend_from_slice(&p);
        absmax.extend_from_slice(&a);
    }
    (packed, absmax)
}

fn nf4_quantize_serial(x: &[f32], blocksize: usize, code: &[f32; 16]) -> (Vec<u8>, Vec<f32>) {
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

/// Runs `f` over `x` cut into runs of whole `unit`s, one run per core (in order), when `x` is
/// large enough to be worth threads; else `f(x)` alone. Loading a 7B model quantizes ~7e9
/// values: on one core that was about a minute.
pub fn par_chunks<T: Send>(x: &[f32], unit: usize, f: impl Fn(&[f32]) -> T + Sync) -> Vec<T> {
    const MIN_PER_THREAD: usize = 1 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(x.len() / MIN_PER_THREAD).max(1);
    if threads == 1 || unit == 0 {
        return vec![f(x)];
    }
    let per = x.len().div_ceil(threads).div_ceil(unit) * unit;
    std::thread::scope(|s| {
        let handles: Vec<_> = x.chunks(per).map(|part| s.spawn(|| f(part))).collect();
        handles.into_iter().map(|h| h.join().expect("a quantization thread panicked")).collect()
    })
}

/// Dequantizes packed NF4 codes: `code[c] * absmax[block]` in f32, then `cast` (bnb converts
/// the f32 product to the output dtype with round-to-nearest-even).
pub fn nf4_dequantize<T>(packed: &[u8], absmax: &[f32], code: &[f32; 16], blocksize: usize, n: usize, cast: impl Fn(f32) -> T) -> Vec<T> {
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

/// Borrowed NF4 weight data for the slice kernels.
#[derive(Clone, Copy)]
pub struct Nf4View<'a> {
    pub packed: &'a [u8],
    /// f32 absmax per block (rebuilt first when double-quantized).
    pub absmax: &'a [f32],
    pub code: &'a [f32; 16],
    pub blocksize: usize,
}

/// `y = x Wᵀ` for a few rows of `x` (`[m, k]`, decode) straight from packed NF4 `W` `[n, k]`,
/// without materialising W: each block's 64 codes are looked up once into a small buffer, dotted
/// with every row of x, and scaled by the block's absmax. Needs `k % blocksize == 0` so blocks
/// never straddle rows. Rows of W are split across the machine's threads. Returns `[m, n]`.
/// (Same values as dequantize + matmul up to f32 summation order.)
pub fn nf4_gemm_small(x: &[f32], m: usize, w: Nf4View<'_>, n: usize, k: usize) -> Vec<f32> {
    let Nf4View { packed, absmax, code, blocksize } = w;
    // byte -> (code of high nibble, code of low nibble)
    let mut pair = [[0f32; 2]; 256];
    for (b, p) in pair.iter_mut().enumerate() {
        *p = [code[b >> 4], code[b & 0x0f]];
    }
    let rows_of = |lo: usize, hi: usize| -> Vec<f32> {
        let bpr = k / blocksize;
        let mut buf = vec![0f32; blocksize];
        let mut out = vec![0f32; m * (hi - lo)];
        for row in lo..hi {
            let bytes = &packed[row * k / 2..(row + 1) * k / 2];
            let mut acc = [0f32; 8];
            for (b, block) in bytes.chunks_exact(blocksize / 2).enumerate() {
                for (dst, byte) in buf.chunks_exact_mut(2).zip(block) {
                    dst.copy_from_slice(&pair[*byte as usize]);
                }
                let s = absmax[row * bpr + b];
                for (i, a) in acc.iter_mut().enumerate().take(m) {
                    let xs = &x[i * k + b * blocksize..i * k + (b + 1) * blocksize];
                    // 8 independent partial sums so the compiler can vectorise the dot product
                    let mut lanes = [0f32; 8];
                    for (xc, wc) in xs.chunks_exact(8).zip(buf.chunks_exact(8)) {
                        for l in 0..8 {
                            lanes[l] += xc[l] * wc[l];
                        }
                    }
                    *a += lanes.iter().sum::<f32>() * s;
                }
            }
            for (i, a) in acc.iter().enumerate().take(m) {
                out[i * (hi - lo) + row - lo] = *a;
            }
        }
        out
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n.div_ceil(64)).max(1);
    let chunk = n.div_ceil(threads);
    let parts: Vec<(usize, Vec<f32>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|lo| {
                let hi = (lo + chunk).min(n);
                sc.spawn(move || (lo, rows_of(lo, hi)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("nf4 gemm worker panicked")).collect()
    });
    let mut y = vec![0f32; m * n];
    for (lo, part) in parts {
        let w = part.len() / m.max(1);
        for i in 0..m {
            y[i * n + lo..i * n + lo + w].copy_from_slice(&part[i * w..(i + 1) * w]);
        }
    }
    y
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
    q.chunks(nested_blocksize).zip(nested_absmax).flat_map(|(block, scale)| block.iter().map(move |c| code[*c as usize] * scale + offset)).collect()
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
    fn small_gemm_equals_dequantize_then_matmul() {
        let (n, k, m) = (130, 128, 3);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5).collect();
        let (packed, absmax) = nf4_quantize(&w, 64, &NF4_CODE);
        let dense = nf4_dequantize(&packed, &absmax, &NF4_CODE, 64, n * k, |v| v);
        let view = Nf4View { packed: &packed, absmax: &absmax, code: &NF4_CODE, blocksize: 64 };
        let y = nf4_gemm_small(&x, m, view, n, k);
        for i in 0..m {
            for r in 0..n {
                let exact: f32 = (0..k).map(|j| x[i * k + j] * dense[r * k + j]).sum();
                let got = y[i * n + r];
                assert!((got - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "[{i},{r}] {got} vs {exact}");
            }
        }
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

    /// The threaded quantizers give the same bytes as one pass over everything, ragged tails
    /// (a short last block, an odd count) included.
    #[test]
    fn threaded_quantizers_equal_the_serial_pass() {
        let n = (5 << 20) + 64 * 3 + 17;
        let mut seed = 0x1234_5678_u64;
        let x: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect();
        for bs in [64, 128] {
            assert_eq!(nf4_quantize(&x, bs, &crate::codebook::NF4_CODE), nf4_quantize_serial(&x, bs, &crate::codebook::NF4_CODE));
        }
        let cols = 4099;
        let rows = &x[..(x.len() / cols) * cols];
        let (q, s) = crate::int8::quantize_rows(rows, cols);
        let (mut q1, mut s1) = (Vec::new(), Vec::new());
        for r in rows.chunks(cols) {
            let (a, b) = crate::int8::quantize_rows(r, cols);
            q1.extend(a);
            s1.extend(b);
        }
        assert_eq!((q, s), (q1, s1));
    }
}
