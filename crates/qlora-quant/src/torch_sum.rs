//! `torch.Tensor.mean()` of a contiguous 1-d f32 tensor on CPU, reproduced bit for bit.
//!
//! Why: double quantization stores `offset = absmax.mean()` and quantizes `absmax - offset`;
//! one ulp of difference in the mean moves values across 8-bit code boundaries, so "the same
//! bytes as bitsandbytes" needs the same summation order as PyTorch's `cascade_sum`
//! (aten/src/ATen/native/cpu/SumKernel.cpp): f32 accumulators, 8-lane vectors, 4 vectors in
//! flight, a 4-level cascade whose level size grows with the input, then the quotient `sum / n`
//! in f32. Above `GRAIN_SIZE` (32768) elements torch splits the sum across its intra-op threads,
//! so the result then depends on `torch.get_num_threads()`: [`torch_mean_f32`] takes that count.

// The loops index accumulators exactly as ATen's do, which is the point of this module.
#![allow(clippy::needless_range_loop)]

const LANES: usize = 8;
const ILP: usize = 4;
const LEVELS: usize = 4;
const GRAIN_SIZE: usize = 32768;

fn ceil_log2(x: usize) -> usize {
    if x <= 1 { 0 } else { (usize::BITS - (x - 1).leading_zeros()) as usize }
}

/// ATen's `multi_row_sum`: `rows` rows of `NROWS` accumulator "columns", each column itself a
/// group of `W` lanes (W = 1 for the scalar path). `load(i, k)` gives row i, column k.
fn multi_row_sum<const W: usize>(rows: usize, load: impl Fn(usize, usize) -> [f32; W]) -> [[f32; W]; ILP] {
    let level_power = 4usize.max(ceil_log2(rows) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; W]; ILP]; LEVELS];
    let add = |a: &mut [f32; W], b: &[f32; W]| {
        for l in 0..W {
            a[l] += b[l];
        }
    };
    let mut i = 0;
    while i + level_step <= rows {
        for _ in 0..level_step {
            for k in 0..ILP {
                let v = load(i, k);
                add(&mut acc[0][k], &v);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0f32; W];
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < rows {
        for k in 0..ILP {
            let v = load(i, k);
            add(&mut acc[0][k], &v);
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    acc[0]
}

/// ATen's `row_sum`: `n` items seen as `[n/4, 4]`, tail added to column 0, columns folded.
fn row_sum<const W: usize>(n: usize, load: impl Fn(usize) -> [f32; W]) -> [f32; W] {
    let rows = n / ILP;
    let mut ps = multi_row_sum::<W>(rows, |i, k| load(i * ILP + k));
    for i in rows * ILP..n {
        let v = load(i);
        for l in 0..W {
            ps[0][l] += v[l];
        }
    }
    for k in 1..ILP {
        for l in 0..W {
            ps[0][l] += ps[k][l];
        }
    }
    ps[0]
}

/// `torch.sum` of a contiguous f32 slice on one thread.
fn serial_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n >= LANES {
        let vecs = n / LANES;
        let v = row_sum::<LANES>(vecs, |i| {
            let mut out = [0f32; LANES];
            out.copy_from_slice(&a[i * LANES..(i + 1) * LANES]);
            out
        });
        let mut acc = 0f32;
        for x in &a[vecs * LANES..] {
            acc += *x;
        }
        for l in v {
            acc += l;
        }
        acc
    } else {
        row_sum::<1>(n, |i| [a[i]])[0]
    }
}

/// `torch.sum` of a contiguous f32 slice with `threads` intra-op threads.
pub fn torch_sum_f32(a: &[f32], threads: usize) -> f32 {
    let n = a.len();
    if n <= GRAIN_SIZE || threads <= 1 {
        return 0f32 + serial_sum(a);
    }
    let tasks = threads.min(n.div_ceil(GRAIN_SIZE));
    let chunk = n.div_ceil(tasks);
    let mut acc = 0f32;
    for part in a.chunks(chunk) {
        acc += serial_sum(part);
    }
    acc
}

/// `torch.Tensor.mean()` of a contiguous f32 slice with `threads` intra-op threads.
pub fn torch_mean_f32(a: &[f32], threads: usize) -> f32 {
    torch_sum_f32(a, threads) / a.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sums_are_sequential() {
        // Below 8 elements and below 4 rows torch adds in order.
        let a = [1e8f32, 1.0, -1e8, 1.0];
        assert_eq!(torch_sum_f32(&a[..3], 1), ((1e8f32 + 1.0) + -1e8));
    }

    #[test]
    fn order_is_not_sequential_for_larger_inputs() {
        // 8 lanes: element 0 and 8 share a lane; a sequential sum would lose the 1.0s.
        let mut a = vec![0f32; 16];
        a[0] = 1e8;
        a[8] = -1e8;
        a[1] = 1.0;
        a[2] = 1.0;
        assert_eq!(torch_sum_f32(&a, 1), 2.0);
    }

    #[test]
    fn mean_of_constant_is_exact() {
        let a = vec![0.25f32; 100_000];
        assert_eq!(torch_mean_f32(&a, 1), 0.25);
        assert_eq!(torch_mean_f32(&a, 2), 0.25);
    }
}
