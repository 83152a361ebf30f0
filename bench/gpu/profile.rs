//! `--profile`: where one NF4 decode step's time goes, from one device call. Each part of
//! layer 0 (and the whole step) is launched many times back to back, then the device is
//! synchronized: the time per call is the larger of its GPU time and its host launch cost,
//! which is what a decode step pays for it. Prints one JSON line per part (`profile_us`).

use anyhow::{Context, Result};
use qlora_studio::engine::candle_core::{DType, Device, IndexOp, Tensor, D};
use qlora_studio::engine::Model;
use qlora_studio::quant::cuda::fused::{self, GluAct, Nf4Proj};
use qlora_studio::quant::cuda::infer;
use serde_json::json;
use std::time::Instant;

const REPS: usize = 200;

fn time_us(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..10 {
        f()?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..REPS {
        f()?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e6 / REPS as f64)
}

fn proj(model: &Model, name: &str) -> Result<Nf4Proj> {
    let (_, l) = model.projections().into_iter().find(|(p, _)| p == name).with_context(|| format!("no projection {name}"))?;
    let (w, b) = l.as_nf4().with_context(|| format!("{name} is not NF4"))?;
    Ok(Nf4Proj { w: w.clone(), bias: b.cloned() })
}

/// Times the parts of one decode step at `past` cached positions (batch 1, NF4 model).
pub fn profile(model: &Model, past: usize, mut emit: impl FnMut(serde_json::Value) -> Result<()>) -> Result<()> {
    let dev = model.device().clone();
    let c = model.config().clone();
    let (h, im, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (nq, nk) = (c.num_heads * hd, c.num_kv_heads * hd);
    let p = |n: &str| proj(model, &format!("model.layers.0.{n}"));
    let (q, k, v, o) = (p("self_attn.q_proj")?, p("self_attn.k_proj")?, p("self_attn.v_proj")?, p("self_attn.o_proj")?);
    let (gate, up, down) = (p("mlp.gate_proj")?, p("mlp.up_proj")?, p("mlp.down_proj")?);
    let x = Tensor::randn(0f32, 1.0, (1, 1, h), &dev)?.to_dtype(DType::BF16)?;
    let xq = Tensor::randn(0f32, 1.0, (1, 1, nq), &dev)?.to_dtype(DType::BF16)?;
    let xi = Tensor::randn(0f32, 1.0, (1, 1, im), &dev)?.to_dtype(DType::BF16)?;
    let w = Tensor::ones(h, DType::BF16, &dev)?;
    let inv: Vec<f32> = (0..c.rotary_dim / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / c.rotary_dim as f32)).collect();
    let cache = Tensor::randn(0f32, 1.0, (2, 1, c.num_kv_heads, 256, hd), &dev)?.to_dtype(DType::BF16)?;
    let kv = Tensor::randn(0f32, 1.0, (1, 1, 2 * nk), &dev)?.to_dtype(DType::BF16)?;
    let (kk, vv) = (kv.narrow(2, 0, nk)?, kv.narrow(2, nk, nk)?);
    let mut parts: Vec<(&str, f64)> = vec![
        ("add_rms_norm", time_us(&dev, || Ok(drop(infer::add_rms_norm(&x, Some(&x), &w, 1e-5, false)?)))?),
        ("qkv_gemv_fused", time_us(&dev, || Ok(drop(fused::gemv_multi(&x, &[q.clone(), k.clone(), v.clone()])?)))?),
        ("q_gemv_alone", time_us(&dev, || Ok(drop(fused::gemv_multi(&x, std::slice::from_ref(&q))?)))?),
        ("kv_append", time_us(&dev, || Ok(infer::kv_append(&cache, &kk, &vv, past, &inv)?))?),
        ("decode_attention", time_us(&dev, || Ok(drop(infer::decode_attention(&xq, &cache, past + 1, None, 0.1, &inv)?)))?),
        ("o_gemv", time_us(&dev, || Ok(drop(fused::gemv_multi(&xq, std::slice::from_ref(&o))?)))?),
        ("gate_up_glu_gemv", time_us(&dev, || Ok(drop(fused::gemv_glu(&x, &gate, &up, GluAct::Silu)?)))?),
        ("down_gemv", time_us(&dev, || Ok(drop(fused::gemv_multi(&xi, std::slice::from_ref(&down))?)))?),
        ("candle_add_bf16", time_us(&dev, || Ok(drop((&x + &x)?)))?),
    ];
    let layer: f64 = parts.iter().filter(|(n, _)| !matches!(*n, "q_gemv_alone" | "candle_add_bf16")).map(|(_, t)| t).sum::<f64>()
        + parts.iter().find(|(n, _)| *n == "add_rms_norm").map_or(0.0, |(_, t)| *t);
    parts.push(("layer_sum_of_parts", layer));
    // The whole step: forward of one token at `past`, with and without reading the id back.
    let mut cache0 = model.new_cache_with_capacity(past + 16);
    let prompt = Tensor::zeros((1, past), DType::U32, &dev)?;
    model.forward(&prompt, Some(&mut cache0))?;
    let one = Tensor::zeros((1, 1), DType::U32, &dev)?;
    parts.push(("step_forward_only", time_us(&dev, || Ok(drop(model.forward(&one, Some(&mut cache0.clone()))?)))?));
    parts.push((
        "step_with_argmax_to_host",
        time_us(&dev, || {
            let l = model.forward(&one, Some(&mut cache0.clone()))?;
            let _: Vec<u32> = l.i((.., 0))?.argmax(D::Minus1)?.to_vec1()?;
            Ok(())
        })?,
    ));
    let hidden = Tensor::randn(0f32, 1.0, (1, 1, h), &dev)?.to_dtype(DType::BF16)?;
    parts.push(("lm_head", time_us(&dev, || Ok(drop(model.logits(&hidden)?)))?));
    for (part, us) in parts {
        emit(json!({"metric": "profile_us", "part": part, "value": us, "past": past, "layers": c.num_layers}))?;
    }
    Ok(())
}
