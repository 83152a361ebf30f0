//! NF4 weights exactly as bitsandbytes stores them, as a candle-friendly type.
//!
//! [`Nf4Tensor::quantize`] turns a dense f32/f16/bf16 tensor into 4-bit NormalFloat codes over
//! blocks of 64 of the flattened tensor, one f32 absmax per block, two codes per byte with the
//! FIRST value in the HIGH nibble — byte for byte what `bitsandbytes.functional.quantize_4bit(w,
//! blocksize=64, quant_type="nf4")` returns on CPU (checked against bnb 0.50.2 fixtures in
//! `tests/`). With double quantization ("compress_statistics") the absmax are stored as
//! `absmax - mean` quantized to 8 bits with bnb's dynamic map in blocks of 256, plus one f32
//! absmax per 256 blocks and the f32 mean (`offset`).
//!
//! The input dtype matters only for the result's default dtype: bnb upcasts f16/bf16 to f32
//! exactly before quantizing, so a bf16 tensor gives the same codes as its f32 upcast, and
//! [`Nf4Tensor::dequantize`] computes `code * absmax` in f32 then rounds to the asked dtype.
//!
//! Backends: quantization follows bnb's CPU code. bnb's CUDA kernels give the same NF4 codes
//! (same reciprocal multiply, thresholds equal within one f32 ulp), but its
//! 8-bit pivot search for double quantization differs from the CPU lookup table by one code on
//! rare absmax values; loading a checkpoint reads whatever was stored, so either loads exactly.
//!
//! ```
//! use candle_core::{Device, DType, Tensor};
//! use qlora_quant::Nf4Tensor;
//! let w = Tensor::randn(0f32, 0.02, (128, 64), &Device::Cpu)?;
//! let q = Nf4Tensor::quantize(&w, true)?;              // double-quantized NF4
//! let back = q.dequantize(DType::F32)?;                  // transient dense copy
//! assert_eq!(back.dims(), &[128, 64]);
//! assert!(q.storage_bytes() < 128 * 64 * 4 / 4); // (the 1 KiB of code tables dominate here)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codebook::{NF4_CODE, dynamic_map};
use crate::error::{QuantError, Result};
use crate::kernels;
use crate::tensor_util::{check_finite, cpu_vec, on_cpu, with_cpu_slice};
use candle_core::{DType, Device, Shape, Tensor};
use std::sync::Arc;

/// How to quantize: bitsandbytes' defaults are blocksize 64, no double quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Options {
    pub blocksize: usize,
    pub double_quant: bool,
    /// Intra-op threads of the torch whose `mean()` the double-quant offset must equal (only
    /// matters above 32768 blocks, i.e. more than 2M weights in one tensor).
    pub torch_threads: usize,
}

impl Default for Nf4Options {
    fn default() -> Self {
        Nf4Options { blocksize: 64, double_quant: false, torch_threads: 1 }
    }
}

/// The per-block scales of an [`Nf4Tensor`].
#[derive(Debug, Clone)]
pub enum Absmax {
    /// One f32 per block (`weight.absmax` as F32 in checkpoints).
    Plain(Tensor),
    /// Double quantization (bnb's `compress_statistics=True`).
    Double(DoubleQuant),
}

/// `absmax ≈ nested_code[q] * nested_absmax[block / nested_blocksize] + offset`.
#[derive(Debug, Clone)]
pub struct DoubleQuant {
    /// u8, one per NF4 block (`weight.absmax` as U8 in checkpoints).
    pub q: Tensor,
    /// f32 mean of the original absmax (`nested_offset` in the quant-state JSON).
    pub offset: f32,
    /// f32, one per `nested_blocksize` absmax values (`weight.nested_absmax`).
    pub nested_absmax: Tensor,
    /// The 8-bit map (`weight.nested_quant_map`), normally bnb's signed dynamic map.
    pub nested_code: Arc<[f32; 256]>,
    pub nested_blocksize: usize,
}

/// A weight in bitsandbytes' NF4 format. Cheap to clone (tensors are shared).
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    packed: Tensor,
    absmax: Absmax,
    code: [f32; 16],
    blocksize: usize,
    shape: Shape,
    dtype: DType,
}

pub(crate) fn check_blocksize(blocksize: usize) -> Result<()> {
    if !(32..=4096).contains(&blocksize) || !blocksize.is_power_of_two() {
        return Err(QuantError::BadBlocksize { blocksize });
    }
    Ok(())
}

impl Nf4Tensor {
    /// Quantizes `w` with blocksize 64, with or without double quantization.
    pub fn quantize(w: &Tensor, double_quant: bool) -> Result<Self> {
        Self::quantize_with(w, &Nf4Options { double_quant, ..Default::default() })
    }

    /// Quantizes `w` (f32, f16 or bf16, any shape) on the CPU; the result lives on `w`'s device.
    pub fn quantize_with(w: &Tensor, opts: &Nf4Options) -> Result<Self> {
        check_blocksize(opts.blocksize)?;
        let dtype = w.dtype();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(QuantError::UnsupportedDType { dtype });
        }
        if w.elem_count() == 0 {
            return Err(QuantError::Empty { shape: w.dims().to_vec() });
        }
        let x = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        check_finite(&x)?;
        let (packed, absmax) = kernels::nf4_quantize(&x, opts.blocksize, &NF4_CODE);
        let dev = w.device();
        let absmax = if opts.double_quant {
            let (q, offset, nested) = kernels::dq_quantize(&absmax, 256, opts.torch_threads);
            let nested_len = nested.len();
            Absmax::Double(DoubleQuant {
                q: Tensor::from_vec(q, absmax.len(), dev)?,
                offset,
                nested_absmax: Tensor::from_vec(nested, nested_len, dev)?,
                nested_code: Arc::new(*dynamic_map()),
                nested_blocksize: 256,
            })
        } else {
            let len = absmax.len();
            Absmax::Plain(Tensor::from_vec(absmax, len, dev)?)
        };
        let packed_len = packed.len();
        Ok(Nf4Tensor {
            packed: Tensor::from_vec(packed, packed_len, dev)?,
            absmax,
            code: NF4_CODE,
            blocksize: opts.blocksize,
            shape: w.shape().clone(),
            dtype,
        })
    }

    /// Assembles an NF4 tensor from stored parts (e.g. a bitsandbytes checkpoint), checking
    /// that every size agrees with `shape` and `blocksize`.
    pub fn from_parts(packed: Tensor, absmax: Absmax, code: [f32; 16], blocksize: usize, shape: Shape, dtype: DType) -> Result<Self> {
        check_blocksize(blocksize)?;
        let n = shape.elem_count();
        let expect = |what: &str, t: &Tensor, dt: DType, len: usize| -> Result<Tensor> {
            if t.dtype() != dt || t.elem_count() != len {
                return Err(QuantError::Mismatch {
                    what: what.to_string(),
                    expected: format!("{len} values of {dt:?}"),
                    found: format!("shape {:?} of {:?}", t.dims(), t.dtype()),
                });
            }
            Ok(t.flatten_all()?.contiguous()?)
        };
        let blocks = kernels::n_blocks(n, blocksize);
        let packed = expect("packed 4-bit weight", &packed, DType::U8, n.div_ceil(2))?;
        let absmax = match absmax {
            Absmax::Plain(a) => Absmax::Plain(expect("absmax", &a, DType::F32, blocks)?),
            Absmax::Double(d) => {
                check_blocksize(d.nested_blocksize)?;
                let nested = kernels::n_blocks(blocks, d.nested_blocksize);
                Absmax::Double(DoubleQuant {
                    q: expect("quantized absmax", &d.q, DType::U8, blocks)?,
                    nested_absmax: expect("nested_absmax", &d.nested_absmax, DType::F32, nested)?,
                    ..d
                })
            }
        };
        Ok(Nf4Tensor { packed, absmax, code, blocksize, shape, dtype })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dtype the weight had before quantization (bnb's `quant_state.dtype`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }
    pub fn device(&self) -> &Device {
        self.packed.device()
    }
    pub fn packed(&self) -> &Tensor {
        &self.packed
    }
    pub fn absmax(&self) -> &Absmax {
        &self.absmax
    }
    pub fn code(&self) -> &[f32; 16] {
        &self.code
    }
    pub fn is_double_quant(&self) -> bool {
        matches!(self.absmax, Absmax::Double(_))
    }

    /// Bytes held: packed codes, absmax (or its double quantization) and the code tables.
    pub fn storage_bytes(&self) -> usize {
        let absmax = match &self.absmax {
            Absmax::Plain(a) => a.elem_count() * 4,
            Absmax::Double(d) => d.q.elem_count() + d.nested_absmax.elem_count() * 4 + 4 + 256 * 4,
        };
        self.packed.elem_count() + absmax + 16 * 4
    }

    /// The f32 absmax of every block (rebuilt from the double quantization when there is one).
    pub fn absmax_f32(&self) -> candle_core::Result<Tensor> {
        match &self.absmax {
            Absmax::Plain(a) => Ok(a.clone()),
            Absmax::Double(d) => {
                if on_cpu(&d.q) {
                    let q = cpu_vec::<u8>(&d.q)?;
                    let nested = cpu_vec::<f32>(&d.nested_absmax)?;
                    let v = kernels::dq_dequantize(&q, d.offset, &nested, &d.nested_code, d.nested_blocksize);
                    let len = v.len();
                    Tensor::from_vec(v, len, &Device::Cpu)
                } else {
                    crate::generic::dq_absmax(d)
                }
            }
        }
    }

    /// The dense weight in `dtype` (a new allocation of the full size: keep it short-lived).
    pub fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        if !on_cpu(&self.packed) {
            #[cfg(feature = "cuda")]
            if self.packed.device().is_cuda() && matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                return crate::cuda::dequantize(self, dtype);
            }
            return crate::generic::nf4_dequantize(self, dtype);
        }
        let absmax = self.absmax_f32()?;
        let absmax = cpu_vec::<f32>(&absmax)?;
        let n = self.shape.elem_count();
        let (code, bs) = (&self.code, self.blocksize);
        with_cpu_slice::<u8, _>(&self.packed, |p| match dtype {
            DType::F32 => Tensor::from_vec(kernels::nf4_dequantize(p, &absmax, code, bs, n, |v| v), &self.shape, &Device::Cpu),
            DType::BF16 => Tensor::from_vec(kernels::nf4_dequantize(p, &absmax, code, bs, n, half::bf16::from_f32), &self.shape, &Device::Cpu),
            DType::F16 => Tensor::from_vec(kernels::nf4_dequantize(p, &absmax, code, bs, n, half::f16::from_f32), &self.shape, &Device::Cpu),
            DType::F64 => Tensor::from_vec(kernels::nf4_dequantize(p, &absmax, code, bs, n, |v| v as f64), &self.shape, &Device::Cpu),
            other => Err(candle_core::Error::Msg(format!("cannot dequantize NF4 to {other:?}: use f32, f16 or bf16"))),
        })?
    }

    /// The same tensor with its storage moved to `device`.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let absmax = match &self.absmax {
            Absmax::Plain(a) => Absmax::Plain(a.to_device(device)?),
            Absmax::Double(d) => {
                Absmax::Double(DoubleQuant { q: d.q.to_device(device)?, nested_absmax: d.nested_absmax.to_device(device)?, ..d.clone() })
            }
        };
        Ok(Nf4Tensor { packed: self.packed.to_device(device)?, absmax, ..self.clone() })
    }
}
