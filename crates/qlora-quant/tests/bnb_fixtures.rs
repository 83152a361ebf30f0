//! Our NF4 / double-quant / int8 results against bitsandbytes 0.50.2 (CPU), bit for bit, using
//! the tensors recorded by `tests/fixtures/make_fixtures.py nf4`.

use candle_core::{DType, Device, Tensor};
use qlora_quant::{Absmax, Int8Tensor, Nf4Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/nf4").join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}; run `python3 tests/fixtures/make_fixtures.py nf4`", path.display()))
}

fn bytes(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

fn assert_same_bits(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    assert_eq!(ours.dtype(), theirs.dtype(), "{what}: dtype");
    let (a, b) = (bits(ours), bits(theirs));
    let bad = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(bad, 0, "{what}: {bad} of {} values differ from bitsandbytes", a.len());
}

/// Checks plain and double-quantized NF4 of the fixture's "input" against every recorded tensor.
fn check_nf4_file(name: &str, dtype: DType) {
    let f = fixture(name);
    let input = &f["input"];
    assert_eq!(input.dtype(), dtype);

    let plain = Nf4Tensor::quantize(input, false).unwrap();
    assert_eq!(bytes(plain.packed()), bytes(&f["packed"]), "{name}: packed nibbles");
    let Absmax::Plain(absmax) = plain.absmax() else { panic!("plain absmax expected") };
    assert_same_bits(&format!("{name}: absmax"), absmax, &f["absmax"]);
    assert_same_bits(&format!("{name}: dequantized"), &plain.dequantize(dtype).unwrap(), &f["dequantized"]);

    let dq = Nf4Tensor::quantize(input, true).unwrap();
    assert_eq!(bytes(dq.packed()), bytes(&f["packed"]), "{name}: DQ leaves the nibbles alone");
    let Absmax::Double(d) = dq.absmax() else { panic!("double quant expected") };
    assert_eq!(bytes(&d.q), bytes(&f["dq.absmax"]), "{name}: 8-bit quantized absmax");
    let offset = f["dq.offset"].to_scalar::<f32>().unwrap();
    assert_eq!(d.offset.to_bits(), offset.to_bits(), "{name}: offset {} vs bnb {offset}", d.offset);
    assert_same_bits(&format!("{name}: nested absmax"), &d.nested_absmax, &f["dq.nested_absmax"]);
    if let Some(map) = f.get("dq.nested_quant_map") {
        let ours = Tensor::new(d.nested_code.as_slice(), &Device::Cpu).unwrap();
        assert_same_bits(&format!("{name}: nested quant map"), &ours, map);
    }
    if let Some(rebuilt) = f.get("dq.absmax_dequantized") {
        assert_same_bits(&format!("{name}: rebuilt absmax"), &dq.absmax_f32().unwrap(), rebuilt);
    }
    assert_same_bits(&format!("{name}: DQ dequantized"), &dq.dequantize(dtype).unwrap(), &f["dq.dequantized"]);
}

#[test]
fn nf4_f32_matches_bitsandbytes() {
    check_nf4_file("nf4.safetensors", DType::F32);
}

#[test]
fn nf4_bf16_matches_bitsandbytes() {
    check_nf4_file("nf4_bf16.safetensors", DType::BF16);
}

#[test]
fn nf4_ragged_last_block_matches_bitsandbytes() {
    check_nf4_file("ragged.safetensors", DType::F32);
}

#[test]
fn nf4_quant_map_is_bitsandbytes() {
    let f = fixture("nf4.safetensors");
    let ours = Tensor::new(qlora_quant::codebook::NF4_CODE.as_slice(), &Device::Cpu).unwrap();
    assert_same_bits("quant_map", &ours, &f["quant_map"]);
}

#[test]
fn int8_matches_bitsandbytes() {
    let f = fixture("int8.safetensors");
    let input = &fixture("nf4.safetensors")["input"];
    for (prefix, x) in [("", input.clone()), ("f16.", input.to_dtype(DType::F16).unwrap())] {
        let q = Int8Tensor::quantize(&x).unwrap();
        let theirs: Vec<i8> = f[&format!("{prefix}int8")].flatten_all().unwrap().to_vec1::<i16>().unwrap().into_iter().map(|v| v as i8).collect();
        assert_eq!(q.codes_i8().unwrap(), theirs, "{prefix}int8 codes");
        assert_same_bits(&format!("{prefix}row_absmax"), q.row_absmax(), &f[&format!("{prefix}row_absmax")]);
    }
    let q = Int8Tensor::quantize(input).unwrap();
    assert_same_bits("int8 dequantized", &q.dequantize(DType::F32).unwrap(), &f["dequantized"]);
}
