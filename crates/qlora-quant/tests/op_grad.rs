//! `nf4_linear` / `int8_linear`: forward equals the dense reference `x Wᵀ` with the dequantized
//! weight, and the gradient w.r.t. x equals the dense reference's.

use candle_core::{DType, Device, Tensor, Var};
use qlora_quant::{Int8Tensor, Nf4Tensor, int8_linear, nf4_linear};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F32).unwrap().to_scalar().unwrap()
}

fn check(w_dense: &Tensor, y_of: impl Fn(&Tensor) -> Tensor, x_shape: &[usize], dtype: DType, tol: f32) {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, x_shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
    // a non-trivial upstream gradient: loss = sum(y * c)
    let out = w_dense.dim(0).unwrap();
    let mut c_shape = x_shape.to_vec();
    *c_shape.last_mut().unwrap() = out;
    let c = Tensor::randn(0f32, 1.0, c_shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();

    let y = y_of(x.as_tensor());
    let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = g.get(x.as_tensor()).expect("gradient reaches x").clone();

    let x_ref = Var::from_tensor(x.as_tensor()).unwrap();
    let y_ref = x_ref.as_tensor().broadcast_matmul(&w_dense.t().unwrap()).unwrap();
    let g_ref = (&y_ref * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gx_ref = g_ref.get(x_ref.as_tensor()).unwrap();

    assert_eq!(y.dims(), y_ref.dims());
    let dy = max_abs_diff(&y, &y_ref);
    let dg = max_abs_diff(&gx, gx_ref);
    assert!(dy <= tol, "forward differs from dense reference by {dy}");
    assert!(dg <= tol, "grad_x differs from dense reference by {dg}");
    assert!(max_abs_diff(&gx, &gx.zeros_like().unwrap()) > 0.0, "gradient is not zero");
}

#[test]
fn nf4_forward_and_grad_match_dense_reference() {
    let w = Tensor::randn(0f32, 0.05, (48, 96), &Device::Cpu).unwrap();
    for dq in [false, true] {
        let q = Nf4Tensor::quantize(&w, dq).unwrap();
        let dense = q.dequantize(DType::F32).unwrap();
        check(&dense, |x| nf4_linear(x, &q).unwrap(), &[2, 5, 96], DType::F32, 1e-5);
        check(&dense, |x| nf4_linear(x, &q).unwrap(), &[7, 96], DType::F32, 1e-5);
    }
}

#[test]
fn nf4_bf16_input_matches_bf16_reference() {
    let w = Tensor::randn(0f32, 0.05, (32, 64), &Device::Cpu).unwrap();
    let q = Nf4Tensor::quantize(&w, true).unwrap();
    let dense = q.dequantize(DType::BF16).unwrap();
    check(&dense, |x| nf4_linear(x, &q).unwrap(), &[3, 64], DType::BF16, 2e-2);
}

#[test]
fn strided_input_is_handled() {
    let w = Tensor::randn(0f32, 0.05, (16, 32), &Device::Cpu).unwrap();
    let q = Nf4Tensor::quantize(&w, false).unwrap();
    let dense = q.dequantize(DType::F32).unwrap();
    let x = Tensor::randn(0f32, 1.0, (32, 6), &Device::Cpu).unwrap().t().unwrap(); // [6, 32], strided
    let narrowed = Tensor::randn(0f32, 1.0, (4, 32), &Device::Cpu).unwrap().narrow(0, 1, 2).unwrap(); // offset
    for x in [x, narrowed] {
        let y = nf4_linear(&x, &q).unwrap();
        let y_ref = x.matmul(&dense.t().unwrap()).unwrap();
        assert!(max_abs_diff(&y, &y_ref) < 1e-5);
    }
}

#[test]
fn int8_forward_and_grad_match_dense_reference() {
    let w = Tensor::randn(0f32, 0.05, (40, 24), &Device::Cpu).unwrap();
    let q = Int8Tensor::quantize(&w).unwrap();
    let dense = q.dequantize(DType::F32).unwrap();
    check(&dense, |x| int8_linear(x, &q).unwrap(), &[2, 3, 24], DType::F32, 1e-5);
}

#[test]
fn wrong_input_width_is_a_clear_error() {
    let q = Nf4Tensor::quantize(&Tensor::zeros((8, 64), DType::F32, &Device::Cpu).unwrap(), false).unwrap();
    let err = nf4_linear(&Tensor::zeros((2, 63), DType::F32, &Device::Cpu).unwrap(), &q).unwrap_err().to_string();
    assert!(err.contains("63") && err.contains("64"), "{err}");
}

#[test]
fn fused_decode_path_equals_dequantize_matmul() {
    // k a multiple of 64: up to 8 rows take the fused CPU kernel, more rows dequantize + matmul.
    let w = Tensor::randn(0f32, 0.05, (72, 192), &Device::Cpu).unwrap();
    for dq in [false, true] {
        let q = Nf4Tensor::quantize(&w, dq).unwrap();
        let dense = q.dequantize(DType::F32).unwrap();
        for rows in [1usize, 8, 9] {
            let x = Tensor::randn(0f32, 1.0, (rows, 192), &Device::Cpu).unwrap();
            let y = nf4_linear(&x, &q).unwrap();
            let y_ref = x.matmul(&dense.t().unwrap()).unwrap();
            assert!(max_abs_diff(&y, &y_ref) < 1e-5, "rows {rows}: {}", max_abs_diff(&y, &y_ref));
        }
        // bf16 decode returns bf16
        let xb = Tensor::randn(0f32, 1.0, (2, 192), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let yb = nf4_linear(&xb, &q).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        let yr = xb.to_dtype(DType::F32).unwrap().matmul(&dense.t().unwrap()).unwrap();
        assert!(max_abs_diff(&yb.to_dtype(DType::F32).unwrap(), &yr) < 2e-2);
    }
}
