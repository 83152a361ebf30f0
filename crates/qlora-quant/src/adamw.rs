//! AdamW's constants of one step, as one `repr(C)` type for every implementation of the update:
//! `qlora-train`'s CPU twin and per-tensor kernels (`adamw_*` in `kernels/train.cu`) and the
//! multi-tensor kernel, which takes it by value (`AdamWConsts` in `kernels/optim.cu`).
//!
//! Why here and not in `cuda`: the CPU twin needs it in builds without the `cuda` feature, and
//! two declarations (one per caller) had to be kept in step with the C struct by hand.

/// One step's constants, rounded to f32 on the host; laid out as `AdamWConsts` in
/// `kernels/optim.cu` (nine f32, then three u32, in this order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AdamWConsts {
    pub b1: f32,
    pub c1: f32,
    pub b2: f32,
    pub c2: f32,
    pub inv_bc2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub decay: f32,
    /// The factor the gradients are multiplied by first (clipping); used when `gscale_on`.
    pub gscale: f32,
    /// Weight decay (`w·decay`) applied when not 0.
    pub wd_on: u32,
    pub gscale_on: u32,
    /// Set by `cuda::optim::adamw_multi` from the shadows' dtype (1 bf16, 2 f16, 0 none).
    pub shadow_kind: u32,
}

impl AdamWConsts {
    /// For step `t` (1-based) at learning rate `lr`, each f64 result rounded to f32 as
    /// candle's `affine` rounds its scalars; no gradient scale, no shadow copies.
    pub fn new(b1: f64, b2: f64, eps: f64, wd: f64, lr: f64, t: u64) -> Self {
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2_sqrt = (1.0 - b2.powi(t as i32)).sqrt();
        AdamWConsts {
            b1: b1 as f32,
            c1: (1.0 - b1) as f32,
            b2: b2 as f32,
            c2: (1.0 - b2) as f32,
            inv_bc2: (1.0 / bc2_sqrt) as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
            decay: (1.0 - lr * wd) as f32,
            gscale: 1.0,
            wd_on: u32::from(wd != 0.0),
            gscale_on: 0,
            shadow_kind: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AdamWConsts;
    use std::mem::{offset_of, size_of};

    /// The kernel reads the struct by value: a field moved here and not in `optim.cu` would
    /// shift every later constant without an error anywhere.
    #[test]
    fn layout_matches_optim_cu() {
        let offsets = [
            offset_of!(AdamWConsts, b1),
            offset_of!(AdamWConsts, c1),
            offset_of!(AdamWConsts, b2),
            offset_of!(AdamWConsts, c2),
            offset_of!(AdamWConsts, inv_bc2),
            offset_of!(AdamWConsts, eps),
            offset_of!(AdamWConsts, step_size),
            offset_of!(AdamWConsts, decay),
            offset_of!(AdamWConsts, gscale),
            offset_of!(AdamWConsts, wd_on),
            offset_of!(AdamWConsts, gscale_on),
            offset_of!(AdamWConsts, shadow_kind),
        ];
        assert_eq!(offsets, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44]);
        assert_eq!(size_of::<AdamWConsts>(), 48);
    }
}
