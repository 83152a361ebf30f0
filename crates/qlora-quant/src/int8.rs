//! 8-bit weights, LLM.int8-style row-wise absmax (bitsandbytes' `int8_vectorwise_quant`).
//!
//! Each row `r` of a `[rows, cols]` weight keeps `absmax_r = max |w_r|` (f32) and
//! `q = round_half_even(w * (127 / absmax_r))` as int8; dequantized `w ≈ q * absmax_r / 127`
//! (bnb computes `(q * absmax_r) * 7.874015718698502e-3` in f32: we do the same, bit for bit).
//! No outlier decomposition (bnb's `threshold=0`): every column is 8-bit.
//!
//! Two ways to multiply: [`crate::ops::int8_linear`] dequantizes the weight transiently to the
//! input's dtype (weight-only quantization: the accurate default, differentiable w.r.t. x), and
//! [`Int8Tensor::matmul_int8`] is LLM.int8's integer path — the input is quantized row-wise too,
//! products accumulate in i32 and the result is scaled by `absmax_x * absmax_w / 127²`.
//!
//! candle has no i8 dtype, so the codes are stored as `u8` holding the two's-complement bits.

use crate::error::{QuantError, Result};
use crate::tensor_util::{check_finite, cpu_vec, on_cpu, with_cpu_slice};
use candle_core::{DType, Device, Tensor};

/// bnb's dequantization constant, `1/127` as it writes it.
#[allow(clippy::excessive_precision)]
const INV_127: f32 = 7.874_015_718_698_502e-3;
/// bnb's `int8_mm_dequant` constant, `1/127²` as it writes it.
const INV_127_SQ: f32 = 6.200_124e-5;

/// Row-wise int8 quantization of `x` (`[rows, cols]`, row-major): (codes, row absmax).
pub fn quantize_rows(x: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    // Rows are independent: whole rows per core, concatenated in order.
    let parts = crate::kernels::par_chunks(x, cols, |part| quantize_rows_serial(part, cols));
    let mut q = Vec::with_capacity(x.len());
    let mut stats = Vec::with_capacity(x.len() / cols.max(1));
    for (pq, ps) in parts {
        q.extend_from_slice(&pq);
        stats.extend_from_slice(&ps);
    }
    (q, stats)
}

fn quantize_rows_serial(x: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut stats = Vec::with_capacity(x.len() / cols.max(1));
    for row in x.chunks(cols) {
        let am = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        stats.push(am);
        if am == 0.0 {
            // bnb computes 0 * inf = NaN and casts it to int8: 0 on x86.
            q.extend(std::iter::repeat_n(0i8, row.len()));
            continue;
        }
        let s = 127.0f32 / am;
        q.extend(row.iter().map(|v| (v * s).round_ties_even() as i8));
    }
    (q, stats)
}

/// A `[rows, cols]` weight in row-wise absmax int8.
#[derive(Debug, Clone)]
pub struct Int8Tensor {
    q: Tensor,
    row_absmax: Tensor,
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl Int8Tensor {
    /// Quantizes a 2-d f32/f16/bf16 tensor; the result lives on `w`'s device.
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let dtype = w.dtype();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(QuantError::UnsupportedDType { dtype });
        }
        let &[rows, cols] = w.dims() else { return Err(QuantError::NotMatrix { shape: w.dims().to_vec() }) };
        if rows * cols == 0 {
            return Err(QuantError::Empty { shape: w.dims().to_vec() });
        }
        let x = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        check_finite(&x)?;
        let (q, stats) = quantize_rows(&x, cols);
        let q: Vec<u8> = q.into_iter().map(|v| v as u8).collect();
        Ok(Int8Tensor {
            q: Tensor::from_vec(q, (rows, cols), w.device())?,
            row_absmax: Tensor::from_vec(stats, rows, w.device())?,
            rows,
            cols,
            dtype,
        })
    }

    /// From stored codes (`u8` two's-complement bits, `[rows, cols]`) and f32 row absmax.
    pub fn from_parts(q: Tensor, row_absmax: Tensor, dtype: DType) -> Result<Self> {
        let &[rows, cols] = q.dims() else { return Err(QuantError::NotMatrix { shape: q.dims().to_vec() }) };
        if q.dtype() != DType::U8 || row_absmax.dtype() != DType::F32 || row_absmax.elem_count() != rows {
            return Err(QuantError::Mismatch {
                what: "int8 weight parts".into(),
                expected: format!("u8 [{rows}, {cols}] codes and {rows} f32 row absmax"),
                found: format!("{:?} codes, {:?} absmax of shape {:?}", q.dtype(), row_absmax.dtype(), row_absmax.dims()),
            });
        }
        Ok(Int8Tensor { q: q.contiguous()?, row_absmax: row_absmax.flatten_all()?.contiguous()?, rows, cols, dtype })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The dtype of the weight before quantization.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        self.q.device()
    }
    /// Codes as `u8` bits of the int8 values.
    pub fn codes(&self) -> &Tensor {
        &self.q
    }
    pub fn row_absmax(&self) -> &Tensor {
        &self.row_absmax
    }
    /// The codes as i8 (a copy, on the CPU).
    pub fn codes_i8(&self) -> candle_core::Result<Vec<i8>> {
        Ok(cpu_vec::<u8>(&self.q)?.into_iter().map(|v| v as i8).collect())
    }
    pub fn storage_bytes(&self) -> usize {
        self.rows * self.cols + self.rows * 4
    }

    /// The dense weight `(q * absmax) * (1/127)` in f32, rounded to `dtype`.
    pub fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        if !on_cpu(&self.q) {
            return self.dequantize_tensor_ops(dtype);
        }
        let stats = cpu_vec::<f32>(&self.row_absmax)?;
        let cols = self.cols;
        let vals: Vec<f32> = with_cpu_slice::<u8, _>(&self.q, |q| {
            q.chunks(cols).zip(&stats).flat_map(|(row, s)| row.iter().map(move |c| (*c as i8 as f32 * s) * INV_127)).collect()
        })?;
        Tensor::from_vec(vals, (self.rows, self.cols), &Device::Cpu)?.to_dtype(dtype)
    }

    /// The dequantization as tensor ops (the GPU path): each code's int8 value through a
    /// 256-entry table, then the two f32 products, each freeing its input, so at most 8 bytes
    /// per element are alive besides the output (the earlier sign fix-up kept five f32/u8
    /// temporaries: about 22 bytes per element at its peak on an H100, bench/gpu/memcheck.sh).
    fn dequantize_tensor_ops(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let table: Vec<f32> = (0..=255u8).map(|b| b as i8 as f32).collect();
        let table = Tensor::from_vec(table, 256, self.q.device())?;
        let ids = self.q.flatten_all()?.to_dtype(DType::U32)?;
        let vals = table.index_select(&ids, 0)?.reshape((self.rows, self.cols))?;
        drop(ids);
        let scaled = vals.broadcast_mul(&self.row_absmax.unsqueeze(1)?)?;
        drop(vals);
        let w = (scaled * INV_127 as f64)?;
        w.to_dtype(dtype)
    }

    /// LLM.int8's integer matmul `x Wᵀ` (bnb `int8_linear_matmul` + `int8_mm_dequant`, no
    /// outliers): x `[..., cols]` is quantized row-wise, i32 dot products, then
    /// `acc * (absmax_x * absmax_w) * (1/127²)` in f32, returned in x's dtype. CPU only.
    pub fn matmul_int8(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.cols;
        if x.dims().last() != Some(&k) {
            return Err(QuantError::Mismatch { what: "int8 matmul input".into(), expected: format!("[..., {k}]"), found: format!("{:?}", x.dims()) });
        }
        let xv = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        check_finite(&xv)?;
        let (xq, xs) = quantize_rows(&xv, k);
        let wq = self.codes_i8()?;
        let ws = cpu_vec::<f32>(&self.row_absmax)?;
        let mut out = Vec::with_capacity(xs.len() * self.rows);
        for (xrow, sx) in xq.chunks(k).zip(&xs) {
            for (wrow, sw) in wq.chunks(k).zip(&ws) {
                let acc: i32 = xrow.iter().zip(wrow).map(|(a, b)| *a as i32 * *b as i32).sum();
                out.push(acc as f32 * (sx * sw) * INV_127_SQ);
            }
        }
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = self.rows;
        Ok(Tensor::from_vec(out, dims, &Device::Cpu)?.to_dtype(x.dtype())?.to_device(x.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_rows() {
        let (q, s) = quantize_rows(&[2.0, -1.0, 0.5, 0.0, 0.0, 0.0, -0.3, 0.1, 0.6], 3);
        assert_eq!(s, vec![2.0, 0.0, 0.6]);
        // 127/2 = 63.5: -63.5 rounds to even -64, 0.5*63.5 = 31.75 -> 32
        assert_eq!(q, vec![127, -64, 32, 0, 0, 0, -64, 21, 127]);
    }

    #[test]
    fn dequantize_and_matmul_are_close() {
        let w = Tensor::new(&[[0.5f32, -0.25, 0.1], [0.0, 1.0, -1.0]], &Device::Cpu).unwrap();
        let q = Int8Tensor::quantize(&w).unwrap();
        let d = q.dequantize(DType::F32).unwrap();
        let diff = (d - &w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 0.5 / 127.0 + 1e-6, "{diff}");
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0]], &Device::Cpu).unwrap();
        let y = q.matmul_int8(&x).unwrap().to_vec2::<f32>().unwrap();
        let exact = [0.5 - 0.5 + 0.3, 2.0 - 3.0];
        for (a, b) in y[0].iter().zip(exact) {
            assert!((a - b).abs() < 0.05, "{a} vs {b}");
        }
    }

    /// The GPU's tensor-op dequantization gives the CPU loop's bits (run here on CPU tensors).
    #[test]
    fn tensor_op_dequantize_equals_the_cpu_loop() {
        let vals: Vec<f32> = (0..64 * 96).map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 377.0).collect();
        let w = Tensor::from_vec(vals, (64, 96), &Device::Cpu).unwrap();
        let q = Int8Tensor::quantize(&w).unwrap();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let a = q.dequantize(dt).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = q.dequantize_tensor_ops(dt).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bad = a.iter().zip(&b).position(|(x, y)| x.to_bits() != y.to_bits());
            assert!(bad.is_none(), "{dt:?} at {bad:?}: {:?}", bad.map(|i| (a[i], b[i])));
        }
    }
}
