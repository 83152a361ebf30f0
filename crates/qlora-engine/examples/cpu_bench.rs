//! Our side of `bench/engine_cpu/run.sh`: prefill and decode tokens/s of a model folder on the
//! CPU, per storage. Usage: `cpu_bench MODEL_DIR [f32,bf16,nf4,...]`; one JSON line per case.
//! Prefill: one forward over 128 tokens (median of 3 after a warm-up). Decode: 16-token prompt,
//! then 64 greedy tokens through the KV cache, only the decode steps timed (median of 3).

use candle_core::{DType, Device, IndexOp, Tensor};
use qlora_engine::{LoadOptions, Model, Quant};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn prefill(model: &Model, n: usize) -> candle_core::Result<f64> {
    let ids: Vec<u32> = (0..n as u32).map(|i| 100 + i * 7 % 5000).collect();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    model.forward(&input, None)?;
    let mut t = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        model.forward(&input, None)?;
        t.push(n as f64 / s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn decode(model: &Model, prompt: usize, new: usize) -> candle_core::Result<f64> {
    let mut t = Vec::new();
    for _ in 0..3 {
        let ids: Vec<u32> = (0..prompt as u32).map(|i| 200 + i * 13 % 3000).collect();
        let mut cache = model.new_cache();
        let l = model.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, Some(&mut cache))?;
        let mut next: u32 = l.i((0, prompt - 1))?.argmax(0)?.to_scalar()?;
        let s = Instant::now();
        for _ in 0..new {
            let l = model.forward(&Tensor::new(&[[next]], &Device::Cpu)?, Some(&mut cache))?;
            next = l.i((0, 0))?.argmax(0)?.to_scalar()?;
        }
        t.push(new as f64 / s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("usage: cpu_bench MODEL_DIR [f32,bf16,nf4]")?;
    let cases = args.get(2).map(String::as_str).unwrap_or("f32,bf16,nf4");
    for case in cases.split(',') {
        let (dtype, quant) = match case {
            "f32" => (DType::F32, Quant::None),
            "bf16" => (DType::BF16, Quant::None),
            "nf4" => (DType::F32, Quant::Nf4),
            "nf4-bf16" => (DType::BF16, Quant::Nf4),
            "int8" => (DType::F32, Quant::Int8),
            other => return Err(format!("unknown case '{other}'").into()),
        };
        let s = Instant::now();
        let model = Model::load(dir.as_ref(), &LoadOptions { dtype, quant, device: Device::Cpu })?;
        let load_s = s.elapsed().as_secs_f64();
        let p = prefill(&model, 128)?;
        let d = decode(&model, 16, 64)?;
        println!(
            "{}",
            serde_json::json!({"impl": "qlora", "case": case, "load_s": load_s, "prefill_tok_s": p, "decode_tok_s": d,
                "weight_bytes": model.weight_bytes()})
        );
    }
    Ok(())
}
