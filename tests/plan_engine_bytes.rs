//! The planner's weight bytes are what our engine allocates, and what bitsandbytes stores:
//! * the NF4 / NF4+DQ formulas equal the byte size of bitsandbytes' own QuantState for a
//!   ragged tensor (tests/fixtures/nf4/ragged.safetensors, recorded from bnb 0.50.2) and
//!   `qlora_quant::Nf4Tensor::storage_bytes()` of the same tensor;
//! * for a real tensor of the real test model (SmolLM2-135M) the NF4, NF4+DQ and int8 bytes
//!   equal what the quantizer allocates;
//! * for every tiny fixture model (llama, mistral, phi, gemma, qwen2) and every storage, the
//!   engine's `Model::weight_bytes()` equals the planner's count (less norms, which the engine
//!   does not count there), and the tensors computed from config.json equal the checkpoint's.

use qlora_studio::engine::candle_core::{DType, Device};
use qlora_studio::engine::{LoadOptions, Model, Quant, Weights};
use qlora_studio::hub::remote::SafetensorsHeader;
use qlora_studio::plan::weights::{int8_bytes, nf4_bytes, nf4_dq_bytes, weights_bytes};
use qlora_studio::plan::{self as qp, Precision, tensors};
use qlora_studio::quant::{Int8Tensor, Nf4Tensor};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn smollm2() -> PathBuf {
    let assets = std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| repo().join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("model.safetensors").is_file(), "the real test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "F32" | "I32" => 4,
        "F16" | "BF16" | "I16" => 2,
        "I64" | "F64" => 8,
        _ => 1,
    }
}

#[test]
fn nf4_formulas_equal_bitsandbytes_quant_state_bytes() {
    let h = SafetensorsHeader::read_file(&repo().join("tests/fixtures/nf4/ragged.safetensors")).unwrap();
    let bytes = |name: &str| {
        let t = &h.tensors[name];
        t.shape.iter().product::<u64>() * dtype_bytes(&t.dtype)
    };
    let numel: u64 = h.tensors["input"].shape.iter().product();
    assert_eq!(numel, 120, "3×40: not a multiple of the 64-block");
    // bnb: packed codes + f32 absmax + the 16-entry f32 quant_map.
    assert_eq!(nf4_bytes(numel), bytes("packed") + bytes("absmax") + bytes("quant_map"));
    // bnb with compress_statistics: u8 absmax, nested f32 absmax, f32 offset, 256-entry map.
    let dq = bytes("packed") + bytes("dq.absmax") + bytes("dq.nested_absmax") + 4 + bytes("dq.nested_quant_map") + bytes("quant_map");
    assert_eq!(nf4_dq_bytes(numel), dq);

    let w = Weights::from_files(&repo().join("tests/fixtures/nf4"), &[repo().join("tests/fixtures/nf4/ragged.safetensors")]).unwrap();
    let input = w.get("input", &Device::Cpu).unwrap();
    assert_eq!(Nf4Tensor::quantize(&input, false).unwrap().storage_bytes() as u64, nf4_bytes(numel));
    assert_eq!(Nf4Tensor::quantize(&input, true).unwrap().storage_bytes() as u64, nf4_dq_bytes(numel));
}

#[test]
fn nf4_bytes_of_a_real_tensor_equal_what_the_quantizer_allocates() {
    let dir = smollm2();
    let w = Weights::from_dir(&dir).unwrap();
    for name in ["model.layers.0.mlp.down_proj.weight", "model.layers.7.self_attn.k_proj.weight"] {
        let t = w.get(name, &Device::Cpu).unwrap();
        let (rows, cols) = t.dims2().unwrap();
        let n = (rows * cols) as u64;
        assert_eq!(Nf4Tensor::quantize(&t, false).unwrap().storage_bytes() as u64, nf4_bytes(n), "{name} nf4");
        assert_eq!(Nf4Tensor::quantize(&t, true).unwrap().storage_bytes() as u64, nf4_dq_bytes(n), "{name} nf4+dq");
        assert_eq!(Int8Tensor::quantize(&t).unwrap().storage_bytes() as u64, int8_bytes(rows as u64, cols as u64), "{name} int8");
    }
}

/// Planner bytes less what `Model::weight_bytes` leaves out although the engine holds it: the
/// norm weights (and Phi's norm biases) and Phi's `lm_head.bias`.
fn planner_bytes_without_norms(meta: &qp::ModelMeta, p: Precision) -> u64 {
    let counted = |name: &str| !name.contains("norm") && name != "lm_head.bias";
    let kept: Vec<_> = meta.tensors.iter().filter(|t| counted(&t.name)).cloned().collect();
    weights_bytes(&meta.spec, &kept, p)
}

fn check_model(dir: &Path, storages: &[(Precision, Quant, DType)]) {
    let meta = qp::gather(&qp::LocalFolder::new(dir)).unwrap();
    assert_eq!(meta.tensors_from, qp::TensorsFrom::SafetensorsHeaders);
    for &(p, quant, dtype) in storages {
        let model = Model::load(dir, &LoadOptions { dtype, quant, device: Device::Cpu }).unwrap();
        assert_eq!(model.weight_bytes() as u64, planner_bytes_without_norms(&meta, p), "{} {p:?}", dir.display());
    }
}

const ALL: [(Precision, Quant, DType); 5] = [
    (Precision::Fp32, Quant::None, DType::F32),
    (Precision::Fp16, Quant::None, DType::F16),
    (Precision::Int8, Quant::Int8, DType::F16),
    (Precision::Nf4, Quant::Nf4, DType::F16),
    (Precision::Nf4Dq, Quant::Nf4DoubleQuant, DType::F16),
];

#[test]
fn engine_weight_bytes_equal_the_plan_for_every_architecture() {
    for arch in ["llama", "mistral", "phi", "gemma", "qwen2", "llama_sharded"] {
        let dir = repo().join("tests/fixtures/tiny").join(arch);
        check_model(&dir, &ALL);
        // The shapes computed from config.json are the checkpoint's, tensor by tensor.
        let meta = qp::gather(&qp::LocalFolder::new(&dir)).unwrap();
        let mut derived: Vec<_> = tensors::from_arch(&meta.spec).into_iter().map(|t| (t.name, t.shape)).collect();
        let mut stored: Vec<_> = meta
            .tensors
            .iter()
            .filter(|t| tensors::role_of(&meta.spec, &t.name) != tensors::Role::Unused)
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        derived.sort();
        stored.sort();
        assert_eq!(derived, stored, "{arch}: tensors from config.json vs the safetensors header");
    }
}

#[test]
fn engine_weight_bytes_equal_the_plan_for_the_real_test_model() {
    check_model(&smollm2(), &[(Precision::Nf4Dq, Quant::Nf4DoubleQuant, DType::F16)]);
}
