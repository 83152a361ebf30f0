//! What the GPU benches share (`engine_bench.rs`, `train_bench.rs`, `memcheck.rs`, each
//! including this file with `#[path]`): a synthetic checkpoint of a real config's shapes, and
//! JSON lines on stdout and in a results file. Speed and memory do not depend on weight values,
//! so random (or, for tensors a bench replaces, unwritten) weights of the real shapes serve.

#![allow(dead_code)] // each bench uses its own part

use anyhow::{Context, Result};
use qlora_studio::engine::candle_core::{DType, Device, Tensor};
use qlora_studio::plan as qp;
use qlora_studio::quant::codebook::{NF4_CODE, dynamic_map};
use qlora_studio::quant::{Absmax, DoubleQuant, Nf4Tensor};
use serde_json::{Value, json};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What one tensor of a synthetic checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Approximately normal values (a sum of four uniforms) of this standard deviation.
    Random {
        std: f32,
    },
    Constant(f32),
    /// Not written: a hole in the file, read back as zeros (for tensors the bench replaces).
    Hole,
}

/// Prints `v` (with `"side": "ours"`) as one JSON line and appends it to `out`.
pub fn emit(out: &Option<PathBuf>, mut v: Value) -> Result<()> {
    v["side"] = json!("ours");
    let line = serde_json::to_string(&v)?;
    println!("{line}");
    if let Some(p) = out {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

/// f32 to bf16 bits, round to nearest even (finite inputs).
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Fills `buf` with bf16 values (xorshift64* streams, one per thread), on all cores.
pub fn fill_bf16(buf: &mut [u8], seed: u64, fill: Fill) {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let chunk = buf.len().div_ceil(threads).next_multiple_of(2).max(2);
    std::thread::scope(|s| {
        for (t, part) in buf.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let mut x = (seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
                let mut next = || {
                    let mut acc = 0f32;
                    for _ in 0..4 {
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        acc += (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                    }
                    acc - 2.0
                };
                for pair in part.chunks_exact_mut(2) {
                    let v = match fill {
                        Fill::Random { std } => next() * 1.732 * std,
                        Fill::Constant(c) => c,
                        Fill::Hole => 0.0,
                    };
                    pair.copy_from_slice(&bf16_bits(v).to_le_bytes());
                }
            });
        }
    });
}

/// The default content: weights random (std 0.02), norm weights 1 (0 for Gemma, whose norms
/// add one), biases 0.
pub fn default_fill(spec: &qp::ArchSpec, t: &qp::tensors::TensorSpec) -> Fill {
    if t.name.ends_with(".bias") {
        Fill::Constant(0.0)
    } else if t.shape.len() == 1 {
        Fill::Constant(if spec.arch == qp::Arch::Gemma { 0.0 } else { 1.0 })
    } else {
        Fill::Random { std: 0.02 }
    }
}

/// Writes `dir/config.json` and `dir/model.safetensors` (bf16): every tensor the engine loads
/// for the architecture of `config_dir/config.json` (the planner's list), filled by `fill`.
/// Nothing is done when the checkpoint is already there; it is written under a temporary
/// name and renamed, so a killed run leaves no half file behind.
pub fn write_checkpoint(config_dir: &Path, dir: &Path, fill: impl Fn(&qp::ArchSpec, &qp::tensors::TensorSpec) -> Fill) -> Result<qp::ArchSpec> {
    let config_path = config_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let spec = qp::ArchSpec::from_json(&config_path, &text)?;
    let file = dir.join("model.safetensors");
    if file.is_file() {
        return Ok(spec);
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), &text)?;
    let list: Vec<_> =
        qp::tensors::from_arch(&spec).into_iter().filter(|t| qp::tensors::role_of(&spec, &t.name) != qp::tensors::Role::Unused).collect();
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for t in &list {
        let bytes = t.numel() * 2;
        header.insert(t.name.clone(), json!({"dtype": "BF16", "shape": t.shape, "data_offsets": [off, off + bytes]}));
        off += bytes;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let tmp = dir.join("model.safetensors.part");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    let start = 8 + h.len() as u64;
    let mut pos = 0u64;
    for (i, t) in list.iter().enumerate() {
        let bytes = t.numel() * 2;
        let content = fill(&spec, t);
        if content != Fill::Hole {
            let mut buf = vec![0u8; bytes as usize];
            fill_bf16(&mut buf, i as u64 + 7, content);
            f.seek(SeekFrom::Start(start + pos))?;
            f.write_all(&buf)?;
        }
        pos += bytes;
    }
    f.set_len(start + pos)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    Ok(spec)
}

/// A random double-quantized NF4 weight `[out, in]` on `dev` (codes uniform, absmax ~0.05).
pub fn random_nf4(out: usize, inp: usize, dev: &Device) -> Result<Nf4Tensor> {
    let n = out * inp;
    let blocks = n / 64;
    let u8s = |len: usize| -> Result<Tensor> { Ok(Tensor::rand(0f32, 255.99, len, dev)?.floor()?.to_dtype(DType::U8)?) };
    let packed = u8s(n / 2)?;
    let q = u8s(blocks)?;
    let nested_absmax = Tensor::rand(0.001f32, 0.002, blocks.div_ceil(256), dev)?;
    let dq = DoubleQuant { q, offset: 0.05, nested_absmax, nested_code: Arc::new(*dynamic_map()), nested_blocksize: 256 };
    Ok(Nf4Tensor::from_parts(packed, Absmax::Double(dq), NF4_CODE, 64, (out, inp).into(), DType::BF16)?)
}
