//! LoRA at the layer level against peft's adapter fixture (`tests/fixtures/peft/`, written by
//! peft 0.21.2 on `tests/fixtures/tiny/llama`): loading, scaling, rsLoRA, merging, switching,
//! export round trip, trainable init, and the errors for adapters that do not fit.

use candle_core::{DType, Device, Tensor, Var};
use qlora_engine::linear::{ArcLinear, DenseLinear, Linear};
use qlora_engine::lora::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}; run `python3 tests/fixtures/make_fixtures.py tiny peft`", path.display()))
}

/// Every projection of the tiny llama as a dense layer, keyed by module path.
fn tiny_llama_layers() -> (LoraLayers, HashMap<String, Tensor>) {
    let w = load(&fixtures().join("tiny/llama/model.safetensors"));
    let mut proj = Vec::new();
    for (name, t) in &w {
        if let Some(path) = name.strip_suffix(".weight").filter(|p| p.contains("_proj")) {
            proj.push((path.to_string(), Arc::new(DenseLinear::new(t.clone(), None)) as ArcLinear));
        }
    }
    (wrap_all(proj), w)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn adapter_ab(module: &str) -> (Tensor, Tensor) {
    let st = load(&fixtures().join("peft/adapter/adapter_model.safetensors"));
    let a = st[&format!("base_model.model.{module}.lora_A.weight")].clone();
    let b = st[&format!("base_model.model.{module}.lora_B.weight")].clone();
    (a, b)
}

const Q: &str = "model.layers.0.self_attn.q_proj";

#[test]
fn peft_adapter_reproduces_dense_formula_and_peft_merge() {
    let (layers, w) = tiny_llama_layers();
    let att = attach_adapter(&fixtures().join("peft/adapter"), &layers, &Device::Cpu, None).unwrap();
    assert_eq!(att.modules.len(), 14);
    assert_eq!(att.config.r, 4);
    let layer = &layers[Q];
    assert_eq!(layer.effective_scale(), 2.0, "alpha 8 / r 4");

    let x = Tensor::randn(0f32, 1.0, (2, 5, 64), &Device::Cpu).unwrap();
    let (a, b) = adapter_ab(Q);
    let wq = &w[&format!("{Q}.weight")];
    let expect = |s: f64| {
        let merged = (wq + (b.matmul(&a).unwrap() * s).unwrap()).unwrap();
        x.broadcast_matmul(&merged.t().unwrap()).unwrap()
    };
    assert!(max_diff(&layer.forward(&x).unwrap(), &expect(2.0)) < 1e-5);

    // peft's merge_and_unload, recorded in the fixture
    let refs = load(&fixtures().join("peft/reference.safetensors"));
    for m in [Q, "model.layers.1.mlp.down_proj"] {
        let ours = layers[m].merged_weight(DType::F32).unwrap();
        let d = max_diff(&ours, &refs[&format!("merged.{m}.weight")]);
        assert!(d < 1e-6, "{m}: merged weight differs from peft's by {d}");
    }

    // user scale (peft set_scale 0.5 -> scaling 1.0), 0 = base exactly, detach = base
    layer.set_user_scale(0.5);
    assert!(max_diff(&layer.forward(&x).unwrap(), &expect(1.0)) < 1e-5);
    layer.set_user_scale(0.0);
    let base = x.broadcast_matmul(&wq.t().unwrap()).unwrap();
    assert_eq!(max_diff(&layer.forward(&x).unwrap(), &base), 0.0);
    layer.set_user_scale(1.0);
    detach_all(&layers);
    assert_eq!(max_diff(&layer.forward(&x).unwrap(), &base), 0.0);
    assert!(layer.adapter().is_none());
}

#[test]
fn rslora_scale_is_alpha_over_sqrt_r_and_switching_replaces() {
    let (layers, _) = tiny_llama_layers();
    attach_adapter(&fixtures().join("peft/adapter"), &layers, &Device::Cpu, None).unwrap();
    attach_adapter(&fixtures().join("peft/adapter_rslora"), &layers, &Device::Cpu, None).unwrap();
    assert_eq!(layers[Q].effective_scale(), 4.0);
}

#[test]
fn export_round_trips_names_shapes_values_and_config_keys() {
    let (layers, _) = tiny_llama_layers();
    let att = attach_adapter(&fixtures().join("peft/adapter"), &layers, &Device::Cpu, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_peft(dir.path(), &att.config, &layers).unwrap();
    let theirs = load(&fixtures().join("peft/adapter/adapter_model.safetensors"));
    let ours = load(&dir.path().join("adapter_model.safetensors"));
    assert_eq!(ours.len(), theirs.len());
    for (k, t) in &theirs {
        assert_eq!(max_diff(&ours[k], t), 0.0, "{k}");
    }
    let keys = |p: &Path| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let peft_keys = keys(&fixtures().join("peft/adapter/adapter_config.json"));
    assert_eq!(keys(&dir.path().join("adapter_config.json")), peft_keys, "round trip keeps every key");
    // A fresh config carries the same keys peft 0.21 writes.
    let fresh = tempfile::tempdir().unwrap();
    AdapterConfig::new(8, 16.0, vec!["q_proj".into()], 0.05, false).save(fresh.path()).unwrap();
    assert_eq!(keys(&fresh.path().join("adapter_config.json")), peft_keys);
    // and re-attaching the export gives the same scale
    attach_adapter(dir.path(), &layers, &Device::Cpu, None).unwrap();
    assert_eq!(layers[Q].effective_scale(), 2.0);
}

#[test]
fn adapter_for_another_base_is_a_clear_error_and_changes_nothing() {
    let (layers, w) = tiny_llama_layers();
    // a base whose q_proj is narrower, and which lacks layer 1 entirely
    let mut proj: Vec<(String, ArcLinear)> = Vec::new();
    for (name, l) in &layers {
        if name.starts_with("model.layers.1.") {
            continue;
        }
        let base: ArcLinear =
            if name == Q { Arc::new(DenseLinear::new(w[&format!("{Q}.weight")].narrow(1, 0, 32).unwrap(), None)) } else { l.base().clone() };
        proj.push((name.clone(), base));
    }
    let other = wrap_all(proj);
    let err = attach_adapter(&fixtures().join("peft/adapter"), &other, &Device::Cpu, None).unwrap_err().to_string();
    assert!(err.contains(Q) && err.contains("[r, 32]"), "{err}");
    assert!(err.contains("model.layers.1.") && err.contains("no such linear layer"), "{err}");
    assert!(other.values().all(|l| l.adapter().is_none()), "all or nothing");
}

#[test]
fn missing_files_and_bad_fields_are_named() {
    let (layers, _) = tiny_llama_layers();
    let dir = tempfile::tempdir().unwrap();
    let err = attach_adapter(dir.path(), &layers, &Device::Cpu, None).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("not found"), "{err}");

    let text = std::fs::read_to_string(fixtures().join("peft/adapter/adapter_config.json")).unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), text.replace("\"r\": 4", "\"r\": \"four\"")).unwrap();
    let err = attach_adapter(dir.path(), &layers, &Device::Cpu, None).unwrap_err().to_string();
    assert!(err.contains("field `r`"), "{err}");

    std::fs::write(dir.path().join("adapter_config.json"), text.replace("\"use_dora\": false", "\"use_dora\": true")).unwrap();
    let err = attach_adapter(dir.path(), &layers, &Device::Cpu, None).unwrap_err().to_string();
    assert!(err.contains("use_dora"), "{err}");

    std::fs::write(dir.path().join("adapter_config.json"), &text).unwrap();
    let err = attach_adapter(dir.path(), &layers, &Device::Cpu, None).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors") && err.contains("missing"), "{err}");
}

#[test]
fn regex_target_modules_match_like_peft() {
    let t = TargetModules::Regex(r".*layers\.0\.self_attn\.(q|v)_proj".into());
    assert!(t.matches(Q).unwrap());
    assert!(!t.matches("model.layers.1.self_attn.q_proj").unwrap());
    assert!(!t.matches("model.layers.0.self_attn.k_proj").unwrap());
    let l = TargetModules::List(vec!["q_proj".into(), "mlp.down_proj".into()]);
    assert!(l.matches(Q).unwrap() && l.matches("model.layers.1.mlp.down_proj").unwrap());
    assert!(!l.matches("model.layers.1.self_attn.o_proj").unwrap());
}

#[test]
fn trainable_adapter_starts_as_base_and_learns_through_b() {
    let (layers, _) = tiny_llama_layers();
    let spec = LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        use_rslora: false,
        target_modules: TargetModules::List(vec!["q_proj".into(), "v_proj".into()]),
        seed: 7,
        dtype: DType::F32,
    };
    let tr = create_trainable(&layers, &spec, &Device::Cpu).unwrap();
    assert_eq!(tr.layers.len(), 4);
    let vars = tr.vars();
    assert_eq!(vars.len(), 8);
    assert_eq!(vars[0].0, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    // A ~ U(±1/√in), B = 0
    let a = vars[0].1.as_tensor();
    let bound = 1.0 / (64f32).sqrt();
    let amax = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(amax > 0.5 * bound && amax <= bound, "{amax}");
    assert_eq!(vars[1].1.as_tensor().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // same seed, same init
    let (layers2, _) = tiny_llama_layers();
    let tr2 = create_trainable(&layers2, &spec, &Device::Cpu).unwrap();
    assert_eq!(max_diff(a, tr2.vars()[0].1.as_tensor()), 0.0);

    let layer = &layers[Q];
    let x = Var::randn(0f32, 1.0, (3, 64), &Device::Cpu).unwrap();
    let y = layer.forward(x.as_tensor()).unwrap();
    let base = layer.base().forward(x.as_tensor()).unwrap();
    assert_eq!(max_diff(&y, &base), 0.0, "B = 0: the adapter starts as the identity");
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let gb = grads.get(vars[1].1.as_tensor()).expect("B gets a gradient");
    assert!(gb.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);

    // a step on B changes the output, seen through the same layer (shared storage)
    vars[1].1.set(&(vars[1].1.as_tensor() - gb).unwrap()).unwrap();
    assert!(max_diff(&layer.forward(x.as_tensor()).unwrap(), &base) > 0.0);

    let dir = tempfile::tempdir().unwrap();
    tr.save_peft(dir.path()).unwrap();
    let cfg = AdapterConfig::load(dir.path()).unwrap();
    assert_eq!((cfg.r, cfg.lora_alpha), (8, 16.0));
    let st = load(&dir.path().join("adapter_model.safetensors"));
    assert_eq!(st.len(), 8);
    assert_eq!(st["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].dims(), &[32, 8]);
}

#[test]
fn unknown_target_module_is_named() {
    let (layers, _) = tiny_llama_layers();
    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        use_rslora: true,
        target_modules: TargetModules::List(vec!["q_proj".into(), "query_key_value".into()]),
        seed: 0,
        dtype: DType::F32,
    };
    let err = create_trainable(&layers, &spec, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("query_key_value") && err.contains("q_proj"), "{err}");
}
