//! `--profile`: where one NF4 decode step's time goes, from one device call. Each part of
//! layer 0 (and the whole step) is launched many times back to back, then the device is
//! synchronized: the time per call is the larger of its GPU time and its host launch cost,
//! which is what a decode step pays for it. Prints one JSON line per part (`profile_us`), the
//! bandwidth each NF4 GEMV reaches (`gemv_gbps`: the weights' bytes over its time), and for
//! prefill (512 rows) the dequantize and the matrix product of gate and down apart, `nf4_linear`
//! with slabs and with the dequantize overlapped on a second stream, the whole 512-token forward
//! per overlap setting and its host enqueue time vs its GPU time (`prefill_us`), and one prompt
//! layer part by part (`prefill_layer_us`).

// `Ok(drop(op()?))` is how each timed closure discards its output; clippy's unit_arg would
// have every one of them written as two statements.
#![allow(clippy::unit_arg)]

use anyhow::{Context, Result};
use qlora_studio::engine::candle_core::{D, DType, Device, IndexOp, Tensor};
use qlora_studio::engine::{Model, ops};
use qlora_studio::quant::cuda::fused::{self, GluAct, Nf4Proj};
use qlora_studio::quant::cuda::{infer, prefill};
use qlora_studio::quant::nf4_linear;
use serde_json::json;
use std::time::Instant;

const REPS: usize = 200;

fn time_us(dev: &Device, f: impl FnMut() -> Result<()>) -> Result<f64> {
    time_n(dev, REPS, f)
}

fn time_n(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..reps.min(10) {
        f()?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e6 / reps as f64)
}

fn bytes(ps: &[&Nf4Proj]) -> f64 {
    ps.iter().map(|p| p.w.storage_bytes() as f64).sum()
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
        (
            "decode_attention_append",
            time_us(&dev, || {
                Ok(drop(infer::decode_attention_append_at(&xq, (&kk, &vv), &cache, infer::CacheLen::Host(past + 1), None, 0.1, &inv)?))
            })?,
        ),
        ("o_gemv", time_us(&dev, || Ok(drop(fused::gemv_multi(&xq, std::slice::from_ref(&o))?)))?),
        ("gate_up_glu_gemv", time_us(&dev, || Ok(drop(fused::gemv_glu(&x, &gate, &up, GluAct::Silu)?)))?),
        ("down_gemv", time_us(&dev, || Ok(drop(fused::gemv_multi(&xi, std::slice::from_ref(&down))?)))?),
        ("candle_add_bf16", time_us(&dev, || Ok(drop((&x + &x)?)))?),
    ];
    // A decode layer launches the attention with the KV append folded in (not the two apart).
    let apart = ["q_gemv_alone", "candle_add_bf16", "kv_append", "decode_attention"];
    let layer: f64 = parts.iter().filter(|(n, _)| !apart.contains(n)).map(|(_, t)| t).sum::<f64>()
        + parts.iter().find(|(n, _)| *n == "add_rms_norm").map_or(0.0, |(_, t)| *t);
    parts.push(("layer_sum_of_parts", layer));
    // The q/k/v and gate/up GEMVs with the add + RMSNorm in their prologue (the engine's with
    // QLORA_NORM_PROLOGUE=1; the norm launch and the GEMV above, apart, are what they replace).
    {
        let norm_in = fused::NormedInput { resid: &x, pending: &x, weight: &w, eps: 1e-5, one_plus: false };
        let s_out = Tensor::zeros(h, DType::BF16, &dev)?;
        let qkv_out = Tensor::zeros(nq + 2 * nk, DType::BF16, &dev)?;
        let glu_out = Tensor::zeros(im, DType::BF16, &dev)?;
        let qkv = [q.clone(), k.clone(), v.clone()];
        parts.push(("norm_qkv_gemv_prologue", time_us(&dev, || Ok(drop(fused::norm_gemv_multi_into(&norm_in, &qkv, &qkv_out, &s_out)?)))?));
        parts.push((
            "norm_glu_gemv_prologue",
            time_us(&dev, || Ok(drop(fused::norm_gemv_glu_into(&norm_in, &gate, &up, GluAct::Silu, &glu_out, &s_out)?)))?,
        ));
    }
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
    let find = |n: &str| parts.iter().find(|(p, _)| *p == n).map_or(f64::NAN, |(_, t)| *t);
    let x8 = Tensor::randn(0f32, 1.0, (1, 8, h), &dev)?.to_dtype(DType::BF16)?;
    let xi8 = Tensor::randn(0f32, 1.0, (1, 8, im), &dev)?.to_dtype(DType::BF16)?;
    let m8 = [
        ("gate_up_glu_gemv_m8", time_us(&dev, || Ok(drop(fused::gemv_glu(&x8, &gate, &up, GluAct::Silu)?)))?),
        ("down_gemv_m8", time_us(&dev, || Ok(drop(fused::gemv_multi(&xi8, std::slice::from_ref(&down))?)))?),
    ];
    let gbps = [
        ("qkv_gemv_fused", bytes(&[&q, &k, &v]), find("qkv_gemv_fused")),
        ("o_gemv", bytes(&[&o]), find("o_gemv")),
        ("gate_up_glu_gemv", bytes(&[&gate, &up]), find("gate_up_glu_gemv")),
        ("down_gemv", bytes(&[&down]), find("down_gemv")),
        ("gate_up_glu_gemv_m8", bytes(&[&gate, &up]), m8[0].1),
        ("down_gemv_m8", bytes(&[&down]), m8[1].1),
    ];
    parts.extend(m8);
    for (part, us) in parts {
        emit(json!({"metric": "profile_us", "part": part, "value": us, "past": past, "layers": c.num_layers}))?;
    }
    for (part, b, us) in gbps {
        emit(json!({"metric": "gemv_gbps", "part": part, "value": b / us / 1e3, "bytes": b, "us": us}))?;
    }
    profile_prefill(model, &gate, &down, &mut emit)
}

/// Prefill at 512 rows: gate's and down's dequantize and product apart, `nf4_linear` per slab
/// size and per overlap (`prefill_us`); then one prompt layer part by part and the whole
/// forward's host vs GPU time ([`profile_prompt`]).
fn profile_prefill(model: &Model, gate: &Nf4Proj, down: &Nf4Proj, emit: &mut impl FnMut(serde_json::Value) -> Result<()>) -> Result<()> {
    let dev = model.device().clone();
    let c = model.config().clone();
    for (name, p, k) in [("gate", gate, c.hidden_size), ("down", down, c.intermediate_size)] {
        let x = Tensor::randn(0f32, 1.0, (1, 512, k), &dev)?.to_dtype(DType::BF16)?;
        let dense = p.w.dequantize(DType::BF16)?;
        let dense_t = dense.t()?;
        let mut lines = vec![
            ("dequantize".to_string(), time_n(&dev, 50, || Ok(drop(p.w.dequantize(DType::BF16)?)))?),
            ("gemm_bf16".to_string(), time_n(&dev, 50, || Ok(drop(x.broadcast_matmul(&dense_t)?)))?),
        ];
        for mib in [0usize, 16, 32] {
            prefill::set_chunk_bytes(mib << 20);
            lines.push((format!("nf4_linear_slab{mib}mib"), time_n(&dev, 50, || Ok(drop(nf4_linear(&x, &p.w)?)))?));
        }
        prefill::set_chunk_bytes(prefill::DEFAULT_CHUNK_BYTES);
        for wide in [false, true] {
            prefill::set_wide_dequant(wide);
            let tag = if wide { "wide" } else { "narrow" };
            lines.push((format!("dequantize_{tag}"), time_n(&dev, 50, || Ok(drop(prefill::dequantize_prefill(&p.w, DType::BF16)?)))?));
            for s in [1usize, 2, 3, 4, 8] {
                lines.push((format!("nf4_linear_{tag}_overlap{s}"), time_n(&dev, 50, || Ok(drop(prefill::nf4_linear_overlapped(&x, &p.w, s)?)))?));
            }
        }
        prefill::set_wide_dequant(prefill::DEFAULT_WIDE_DEQUANT);
        let elems = p.w.shape().elem_count() as f64;
        for (what, us) in lines {
            let gbps = if what.starts_with("dequantize") { elems * 2.5 / us / 1e3 } else { f64::NAN };
            emit(json!({"metric": "prefill_us", "part": format!("{name}_{what}"), "value": us, "rows": 512, "dequant_gbps": gbps}))?;
        }
    }
    profile_prompt(model, emit)?;
    let prompt = Tensor::zeros((1, 512), DType::U32, &dev)?;
    // The whole forward per setting; overlap 0 = no slabs (wide on: the whole weight through the
    // wide kernel and one product; off: the nf4_linear fallback, dequantize + candle's matmul).
    for (wide, s) in [(false, 0usize), (true, 0), (false, 2), (false, 4), (true, 2), (true, 3), (true, 4), (true, 8)] {
        prefill::set_wide_dequant(wide);
        prefill::set_overlap_slabs(s);
        let us = time_n(&dev, 5, || Ok(drop(model.forward(&prompt, None)?)))?;
        let tag = if wide { "wide" } else { "narrow" };
        emit(json!({"metric": "prefill_us", "part": format!("forward512_{tag}_overlap{s}"), "value": us, "tok_s": 512.0 / us * 1e6}))?;
    }
    prefill::set_overlap_slabs(prefill::DEFAULT_OVERLAP_SLABS);
    prefill::set_wide_dequant(prefill::DEFAULT_WIDE_DEQUANT);
    // Host vs GPU: the time to enqueue one whole forward (no sync) and until the GPU is done.
    let (mut host, mut total) = (Vec::new(), Vec::new());
    for i in 0..7 {
        dev.synchronize()?;
        let t0 = Instant::now();
        let y = model.forward(&prompt, None)?;
        let h = t0.elapsed().as_secs_f64() * 1e6;
        dev.synchronize()?;
        drop(y);
        if i >= 2 {
            host.push(h);
            total.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    emit(json!({"metric": "prefill_us", "part": "forward512_host_enqueue", "value": med(host.clone()), "runs": host}))?;
    emit(json!({"metric": "prefill_us", "part": "forward512_until_gpu_done", "value": med(total.clone()), "runs": total}))?;
    Ok(())
}

/// One prompt layer (512 tokens, bf16, layer 0's NF4 weights) part by part, each launched back
/// to back then synchronized (the larger of its GPU time and host launch cost); the old
/// composite rotary and SiLU·up beside the fused ones the prompt path now takes.
fn profile_prompt(model: &Model, emit: &mut impl FnMut(serde_json::Value) -> Result<()>) -> Result<()> {
    let dev = model.device().clone();
    let c = model.config().clone();
    let (t, h, im, hd, nh, nkv) = (512usize, c.hidden_size, c.intermediate_size, c.head_dim, c.num_heads, c.num_kv_heads);
    let (nq, nk) = (nh * hd, nkv * hd);
    let bf = |shape: &[usize]| -> Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(DType::BF16)?) };
    let (x, xq, xi) = (bf(&[1, t, h])?, bf(&[1, t, nq])?, bf(&[1, t, im])?);
    let (kk, vv) = (bf(&[1, t, nk])?, bf(&[1, t, nk])?);
    let w = Tensor::ones(h, DType::BF16, &dev)?;
    let (cos, sin) = model.rope_tables(0, t)?;
    let inv: Vec<f32> = (0..c.rotary_dim / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / c.rotary_dim as f32)).collect();
    let cache = bf(&[2, 1, nkv, t, hd])?;
    let (kc, vc) = (cache.get(0)?, cache.get(1)?);
    let qh = bf(&[1, nkv, (nh / nkv) * t, hd])?;
    let scores = qh.matmul(&kc.t()?)?;
    let probs = infer::masked_softmax(&scores, t, 0, None, 0.1)?;
    let pv = probs.matmul(&vc)?;
    let p = |n: &str| proj(model, &format!("model.layers.0.{n}"));
    let mut parts: Vec<(String, f64)> =
        vec![("add_rms_norm".into(), time_n(&dev, 50, || Ok(drop(infer::add_rms_norm(&x, Some(&x), &w, 1e-5, false)?)))?)];
    for (name, input) in [("q_proj", &x), ("k_proj", &x), ("v_proj", &x), ("o_proj", &xq), ("gate_proj", &x), ("up_proj", &x), ("down_proj", &xi)] {
        let pre = if name.ends_with("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(&name) { "mlp" } else { "self_attn" };
        let pj = p(&format!("{pre}.{name}"))?;
        parts.push((format!("{name}_nf4_linear"), time_n(&dev, 30, || Ok(drop(nf4_linear(input, &pj.w)?)))?));
        parts.push((format!("{name}_dequantize_only"), time_n(&dev, 30, || Ok(drop(pj.w.dequantize(DType::BF16)?)))?));
    }
    let more: Vec<(&str, f64)> = vec![
        ("kv_append", time_n(&dev, 50, || Ok(infer::kv_append(&cache, &kk, &vv, 0, &inv)?))?),
        (
            "rope_q_composite_old",
            time_n(&dev, 50, || Ok(drop(ops::apply_rope(&xq.reshape((1, t, nh, hd))?.transpose(1, 2)?.contiguous()?, &cos, &sin)?)))?,
        ),
        ("rope_q_heads_fused", time_n(&dev, 50, || Ok(drop(ops::rope::rope_heads(&xq.reshape((1, t, nh, hd))?, &cos, &sin)?)))?),
        ("attn_scores_matmul", time_n(&dev, 50, || Ok(drop(qh.matmul(&kc.t()?)?)))?),
        ("attn_masked_softmax", time_n(&dev, 50, || Ok(drop(infer::masked_softmax(&scores, t, 0, None, 0.1)?)))?),
        ("attn_probs_v_matmul", time_n(&dev, 50, || Ok(drop(probs.matmul(&vc)?)))?),
        ("attn_out_to_rows_copy", time_n(&dev, 50, || Ok(drop(pv.reshape((1, nh, t, hd))?.transpose(1, 2)?.reshape((1, t, nq))?)))?),
        ("silu_mul_composite_old", time_n(&dev, 50, || Ok(drop((xi.silu()? * &xi)?)))?),
        ("swiglu_fused", time_n(&dev, 50, || Ok(drop(ops::glu::swiglu(&xi, &xi)?)))?),
        ("residual_add", time_n(&dev, 50, || Ok(drop((&x + &x)?)))?),
    ];
    parts.extend(more.into_iter().map(|(n, v)| (n.to_string(), v)));
    let skip = |n: &str| n.ends_with("_dequantize_only") || n.ends_with("_old");
    let layer: f64 = parts.iter().filter(|(n, _)| !skip(n)).map(|(_, v)| v).sum::<f64>() + parts[0].1;
    parts.push(("layer_sum_of_parts_new".into(), layer));
    for (part, us) in parts {
        emit(json!({"metric": "prefill_layer_us", "part": part, "value": us, "rows": t, "layers": c.num_layers}))?;
    }
    Ok(())
}
