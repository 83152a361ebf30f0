//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied before the moment
//! update, bias-corrected moments, `eps` added after the square root), and gradient clipping
//! by global norm as `torch.nn.utils.clip_grad_norm_`. Only LoRA parameters are ever given to
//! it. Moments are kept in f32 whatever the compute dtype, and can be saved and restored so a
//! resumed run takes the same steps. Checked against torch by `tests/ref/adamw_ref.py`.

use crate::ops::adamw;
use candle_core::{DType, Result, Tensor, Var};
use std::collections::HashMap;

/// AdamW hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl From<&crate::config::OptimizerConfig> for AdamWParams {
    fn from(c: &crate::config::OptimizerConfig) -> Self {
        Self { beta1: c.betas.0, beta2: c.betas.1, eps: c.eps, weight_decay: c.weight_decay }
    }
}

/// One named trainable parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
}

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    hp: AdamWParams,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    /// One launch for all parameters on CUDA (`QLORA_FUSED_ADAMW=0` turns it off).
    fused: bool,
}

impl AdamW {
    pub fn new(params: Vec<Param>, hp: AdamWParams) -> Result<Self> {
        let zeros = |p: &Param| p.var.as_tensor().to_dtype(DType::F32)?.zeros_like();
        let m = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(zeros).collect::<Result<Vec<_>>>()?;
        Ok(Self { params, hp, m, v, step: 0, fused: adamw::fused_by_default() })
    }

    /// Whether a step on CUDA takes the multi-tensor kernel (default: on unless
    /// `QLORA_FUSED_ADAMW=0`) or three kernels per parameter. Same result either way.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with `grads[i]` for `params[i]` (already averaged and clipped). On a CUDA
    /// device with every parameter in f32, one launch for all of them
    /// ([`adamw::step_multi`]; `QLORA_FUSED_ADAMW=0` goes back to the per-parameter kernels);
    /// otherwise three in-place kernels per parameter ([`crate::ops::adamw`]), and a parameter
    /// not kept in f32 is updated through an f32 copy. The same result to the bit either way.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(grads, lr, None)
    }

    /// [`AdamW::step`] with every gradient first multiplied by `grad_scale` (the clipping
    /// factor of [`clip_factor`]), as `g * grad_scale` would (the fused kernel does it while
    /// reading the gradient: no scaled copies).
    pub fn step_scaled(&mut self, grads: &[Tensor], lr: f64, grad_scale: Option<f64>) -> Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!("AdamW: {} gradients for {} parameters", grads.len(), self.params.len())
        }
        self.step += 1;
        let AdamWParams { beta1: b1, beta2: b2, eps, weight_decay: wd } = self.hp;
        let c = adamw::Consts::new(b1, b2, eps, wd, lr, self.step);
        let ws: Vec<&Tensor> = self.params.iter().map(|p| p.var.as_tensor()).collect();
        if self.fused && adamw::multi_applies(&ws) {
            return adamw::step_multi(&ws, &self.m, &self.v, grads, c, grad_scale);
        }
        for (i, p) in self.params.iter().enumerate() {
            let g = grads[i].to_dtype(DType::F32)?.contiguous()?;
            let g = match grad_scale {
                Some(s) => (g * s)?,
                None => g,
            };
            if p.var.dtype() == DType::F32 && p.var.as_tensor().is_contiguous() {
                adamw::step(p.var.as_tensor(), &self.m[i], &self.v[i], &g, c)?;
            } else {
                let w = p.var.as_tensor().to_dtype(DType::F32)?.contiguous()?.copy()?;
                adamw::step(&w, &self.m[i], &self.v[i], &g, c)?;
                p.var.set(&w.to_dtype(p.var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Moments and step count, named `{param}.exp_avg` / `{param}.exp_avg_sq` as torch's
    /// state dict calls them, for a checkpoint. The tensors share storage with the optimizer,
    /// which updates them in place: save them before the next step.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut map = HashMap::new();
        for (i, p) in self.params.iter().enumerate() {
            map.insert(format!("{}.exp_avg", p.name), self.m[i].clone());
            map.insert(format!("{}.exp_avg_sq", p.name), self.v[i].clone());
        }
        (map, self.step)
    }

    /// Restores what [`AdamW::state`] returned; every parameter's moments must be there.
    pub fn load_state(&mut self, map: &HashMap<String, Tensor>, step: u64) -> std::result::Result<(), String> {
        for (i, p) in self.params.iter().enumerate() {
            for (key, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let name = format!("{}.{key}", p.name);
                let t = map.get(&name).ok_or_else(|| format!("optimizer state has no `{name}`"))?;
                if t.dims() != slot.dims() {
                    return Err(format!("optimizer state `{name}` has shape {:?}, expected {:?}", t.dims(), slot.dims()));
                }
                // A fresh copy: the step updates it in place.
                *slot = t.to_dtype(DType::F32).and_then(|t| t.contiguous()?.copy()).map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of all gradients, read back once (one device sync per step, not one per
/// tensor). On a CUDA device with the fused optimizer on, two launches for all tensors
/// (squares summed in f64, [`adamw::sum_squares_multi`]); otherwise each tensor's sum of
/// squares in f32, summed in f64 on the gradients' device.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    if let Some(sum) = adamw::sum_squares_multi(grads)? {
        return Ok(sum.sqrt());
    }
    let parts = grads.iter().map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
    let sum = Tensor::stack(&parts, 0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    Ok(sum.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm`, as torch's
/// `clip_grad_norm_` (factor `max_norm / (norm + 1e-6)`, clamped to 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if let Some(coef) = clip_factor(norm, max_norm) {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// The factor [`clip_grad_norm`] multiplies the gradients by at global norm `norm`
/// (`max_norm / (norm + 1e-6)`), or `None` when it would not scale them (the factor is not
/// below 1, or not a number). For [`AdamW::step_scaled`].
pub fn clip_factor(norm: f64, max_norm: f64) -> Option<f64> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.to_vec1::<f32>().unwrap()
    }

    /// Numbers from `tests/ref/adamw_ref.py` (torch.optim.AdamW, lr 0.1, betas (0.9, 0.99),
    /// eps 1e-8, weight_decay 0.1), three steps with gradients 2*p + step.
    #[test]
    fn matches_torch_adamw() {
        let p = var(&[1.0, -2.0, 0.5]);
        let hp = AdamWParams { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![Param { name: "p".into(), var: p.clone() }], hp).unwrap();
        for s in 0..3 {
            let g = ((p.as_tensor() * 2.0).unwrap() + s as f64).unwrap();
            opt.step(&[g], 0.1).unwrap();
        }
        let want = TORCH_ADAMW_3_STEPS;
        for (a, b) in vals(p.as_tensor()).iter().zip(want) {
            assert!((a - b).abs() < 2e-6, "{:?} vs {want:?}", vals(p.as_tensor()));
        }
    }

    const TORCH_ADAMW_3_STEPS: [f32; 3] = [0.6746109, -1.6548463, 0.1938823];

    /// The composite of candle ops the in-place kernels replace (the step before them).
    fn composite_step(w: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, hp: AdamWParams, lr: f64, t: u64) -> (Tensor, Tensor, Tensor) {
        let AdamWParams { beta1: b1, beta2: b2, eps, weight_decay: wd } = hp;
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2_sqrt = (1.0 - b2.powi(t as i32)).sqrt();
        let w = if wd != 0.0 { (w * (1.0 - lr * wd)).unwrap() } else { w.clone() };
        let m = ((m * b1).unwrap() + (g * (1.0 - b1)).unwrap()).unwrap();
        let v = ((v * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
        let denom = ((v.sqrt().unwrap() / bc2_sqrt).unwrap() + eps).unwrap();
        let w = (w - ((&m / denom).unwrap() * (lr / bc1)).unwrap()).unwrap();
        (w, m, v)
    }

    #[test]
    fn in_place_step_equals_the_composite_to_the_bit() {
        let dev = Device::Cpu;
        for wd in [0.0, 0.01] {
            let hp = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd };
            let w0 = Tensor::randn(0f32, 0.1, (16, 48), &dev).unwrap();
            let p = Var::from_tensor(&w0).unwrap();
            let mut opt = AdamW::new(vec![Param { name: "p".into(), var: p.clone() }], hp).unwrap();
            let (mut w, mut m, mut v) = (w0.clone(), w0.zeros_like().unwrap(), w0.zeros_like().unwrap());
            for t in 1..=4u64 {
                let g = Tensor::randn(0f32, 1e-3, (16, 48), &dev).unwrap();
                opt.step(std::slice::from_ref(&g), 2e-4).unwrap();
                (w, m, v) = composite_step(&w, &m, &v, &g, hp, 2e-4, t);
            }
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(p.as_tensor()), bits(&w), "wd {wd}: parameter");
            let (state, _) = opt.state();
            assert_eq!(bits(&state["p.exp_avg"]), bits(&m), "wd {wd}: first moment");
            assert_eq!(bits(&state["p.exp_avg_sq"]), bits(&v), "wd {wd}: second moment");
        }
    }

    #[test]
    fn clipping_matches_torch_rule() {
        let mut g = vec![Tensor::new(&[3f32, 0.], &Device::Cpu).unwrap(), Tensor::new(&[4f32], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let after = global_norm(&g).unwrap();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-6, "{after}");
        // under the limit: untouched
        let mut g2 = vec![Tensor::new(&[0.1f32], &Device::Cpu).unwrap()];
        clip_grad_norm(&mut g2, 1.0).unwrap();
        assert_eq!(vals(&g2[0]), vec![0.1]);
    }

    #[test]
    fn state_round_trips() {
        let p = var(&[1.0, 2.0]);
        let hp = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut a = AdamW::new(vec![Param { name: "p".into(), var: p.clone() }], hp).unwrap();
        a.step(&[Tensor::new(&[1f32, -1.], &Device::Cpu).unwrap()], 0.01).unwrap();
        let (state, step) = a.state();
        let q = var(&vals(p.as_tensor()));
        let mut b = AdamW::new(vec![Param { name: "p".into(), var: q.clone() }], hp).unwrap();
        b.load_state(&state, step).unwrap();
        let g = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap();
        a.step(std::slice::from_ref(&g), 0.01).unwrap();
        b.step(&[g], 0.01).unwrap();
        assert_eq!(vals(p.as_tensor()), vals(q.as_tensor()));
        let mut missing = HashMap::new();
        missing.insert("x.exp_avg".to_string(), Tensor::new(&[0f32], &Device::Cpu).unwrap());
        assert!(b.load_state(&missing, 1).unwrap_err().contains("`p.exp_avg`"));
    }
}
