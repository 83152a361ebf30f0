//! The bitsandbytes pre-quantized checkpoint fixture (`tests/fixtures/bnb4`, written by
//! transformers + bnb 0.50.2): every 4-bit layer read back dequantizes bit for bit to bnb's
//! dense twin, and quantizing the original tiny-llama weights ourselves reproduces the stored
//! bytes (packed, DQ absmax, offset, nested absmax). Bad checkpoints give errors naming the tensor.

use candle_core::{DType, Device, Tensor};
use qlora_quant::bnb_format::{BnbQuantConfig, nf4_from_bnb};
use qlora_quant::{Absmax, Nf4Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(rel: &str) -> HashMap<String, Tensor> {
    let p = fixtures().join(rel);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}; run `python3 tests/fixtures/make_fixtures.py tiny bnb4`", p.display()))
}

fn layer_names(ckpt: &HashMap<String, Tensor>) -> Vec<String> {
    let mut v: Vec<String> = ckpt.keys().filter_map(|k| k.strip_suffix(".quant_state.bitsandbytes__nf4").map(String::from)).collect();
    v.sort();
    v
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

#[test]
fn checkpoint_dequantizes_to_bnb_dense_twin_bit_for_bit() {
    let ckpt = load("bnb4/model.safetensors");
    let twin = load("bnb4/dense_twin.safetensors");
    let names = layer_names(&ckpt);
    assert_eq!(names.len(), 14);
    for name in names {
        let w = nf4_from_bnb(&name, |k| ckpt.get(k).cloned()).unwrap();
        assert!(w.is_double_quant());
        let ours = w.dequantize(DType::F32).unwrap();
        assert_eq!(ours.dims(), twin[&name].dims(), "{name}");
        assert_eq!(bits(&ours), bits(&twin[&name]), "{name}: dequantized differs from bnb's dequantize_4bit");
    }
}

#[test]
fn our_quantization_reproduces_the_checkpoint_bytes() {
    let ckpt = load("bnb4/model.safetensors");
    let orig = load("tiny/llama/model.safetensors");
    for name in layer_names(&ckpt) {
        let q = Nf4Tensor::quantize(&orig[&name], true).unwrap();
        let bytes = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        assert_eq!(bytes(q.packed()), bytes(&ckpt[&name]), "{name}: packed");
        let Absmax::Double(d) = q.absmax() else { panic!() };
        assert_eq!(bytes(&d.q), bytes(&ckpt[&format!("{name}.absmax")]), "{name}: DQ absmax codes");
        assert_eq!(bits(&d.nested_absmax), bits(&ckpt[&format!("{name}.nested_absmax")]), "{name}: nested absmax");
        let stored = nf4_from_bnb(&name, |k| ckpt.get(k).cloned()).unwrap();
        let Absmax::Double(s) = stored.absmax() else { panic!() };
        assert_eq!(d.offset.to_bits(), s.offset.to_bits(), "{name}: offset {} vs {}", d.offset, s.offset);
    }
}

#[test]
fn quantization_config_is_read_and_checked() {
    let text = std::fs::read_to_string(fixtures().join("bnb4/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    let q = BnbQuantConfig::from_config(&cfg).unwrap().expect("a bitsandbytes config");
    assert!(q.load_in_4bit && q.double_quant);
    assert_eq!((q.quant_type.as_str(), q.compute_dtype.as_deref()), ("nf4", Some("float32")));
    cfg["quantization_config"]["bnb_4bit_quant_type"] = "fp4".into();
    let err = BnbQuantConfig::from_config(&cfg).unwrap_err().to_string();
    assert!(err.contains("bnb_4bit_quant_type") && err.contains("fp4"), "{err}");
    assert!(BnbQuantConfig::from_config(&serde_json::json!({"model_type": "llama"})).unwrap().is_none());
}

#[test]
fn broken_checkpoints_name_the_tensor() {
    let ckpt = load("bnb4/model.safetensors");
    let name = "model.layers.0.self_attn.q_proj.weight";
    let without = |drop: &str| {
        let key = format!("{name}.{drop}");
        nf4_from_bnb(name, |k| if k == key { None } else { ckpt.get(k).cloned() }).unwrap_err().to_string()
    };
    let err = without("nested_absmax");
    assert!(err.contains(&format!("{name}.nested_absmax")) && err.contains("missing"), "{err}");

    let blob = Tensor::new(b"{\"quant_type\": \"nf4\"".as_slice(), &Device::Cpu).unwrap();
    let err =
        nf4_from_bnb(name, |k| if k.ends_with("bitsandbytes__nf4") { Some(blob.clone()) } else { ckpt.get(k).cloned() }).unwrap_err().to_string();
    assert!(err.contains("quant_state.bitsandbytes__nf4") && err.contains("JSON"), "{err}");

    // packed bytes of another layer (wrong size for the declared shape)
    let other = ckpt["model.layers.0.mlp.down_proj.weight"].clone();
    let err = nf4_from_bnb(name, |k| if k == name { Some(other.clone()) } else { ckpt.get(k).cloned() }).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("packed"), "{err}");
}
