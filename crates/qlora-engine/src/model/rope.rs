//! Rotary position embedding tables, computed per forward for the positions at hand (cheap:
//! `T × rotary_dim/2` values), with the frequency scaling the config asks for: linear,
//! dynamic NTK (re-derived from the current sequence length, as transformers does) and llama3.
//! Inverse frequencies are computed in f32 as transformers computes them.

use super::config::{ModelConfig, RopeScaling};
use candle_core::{Device, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Rope {
    dim: usize,
    theta: f64,
    scaling: RopeScaling,
    max_position_embeddings: usize,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self { dim: cfg.rotary_dim, theta: cfg.rope_theta, scaling: cfg.rope_scaling.clone(), max_position_embeddings: cfg.max_position_embeddings }
    }

    fn base_inv_freq(&self, base: f64) -> Vec<f32> {
        (0..self.dim).step_by(2).map(|i| 1.0 / (base as f32).powf(i as f32 / self.dim as f32)).collect()
    }

    /// The inverse frequencies for a sequence of `seq_len` positions.
    pub fn inv_freq(&self, seq_len: usize) -> Vec<f32> {
        match &self.scaling {
            RopeScaling::None => self.base_inv_freq(self.theta),
            RopeScaling::Linear { factor } => self.base_inv_freq(self.theta).into_iter().map(|f| f / *factor as f32).collect(),
            RopeScaling::Dynamic { factor } => {
                let max = self.max_position_embeddings as f64;
                let seq = (seq_len as f64).max(max);
                let d = self.dim as f64;
                let base = self.theta * ((factor * seq / max) - (factor - 1.0)).powf(d / (d - 2.0));
                self.base_inv_freq(base)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                let (factor, low, high) = (*factor as f32, *low_freq_factor as f32, *high_freq_factor as f32);
                let old = *original_max as f32;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                self.base_inv_freq(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// `(cos, sin)`, each `[len, rotary_dim]` f32, for positions `offset .. offset + len`.
    pub fn tables(&self, offset: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let inv = self.inv_freq(offset + len);
        let half = inv.len();
        let mut freqs = Vec::with_capacity(len * half * 2);
        for p in offset..offset + len {
            let row: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
            freqs.extend_from_slice(&row);
            freqs.extend_from_slice(&row);
        }
        let freqs = Tensor::from_vec(freqs, (len, half * 2), device)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: RopeScaling) -> Rope {
        Rope { dim: 4, theta: 10000.0, scaling, max_position_embeddings: 16 }
    }

    #[test]
    fn default_and_linear_frequencies() {
        assert_eq!(rope(RopeScaling::None).inv_freq(1), vec![1.0, 0.01]);
        assert_eq!(rope(RopeScaling::Linear { factor: 2.0 }).inv_freq(1), vec![0.5, 0.005]);
    }

    #[test]
    fn dynamic_only_kicks_in_past_the_context() {
        let r = rope(RopeScaling::Dynamic { factor: 2.0 });
        assert_eq!(r.inv_freq(16), vec![1.0, 0.01]);
        // seq 32: base = 1e4 * (2*32/16 - 1)^(4/2) = 9e4
        let f = r.inv_freq(32);
        assert!((f[1] - 1.0 / 300.0).abs() < 1e-7, "{f:?}");
    }

    #[test]
    fn llama3_scales_low_frequencies_only() {
        let r = Rope {
            dim: 4,
            theta: 10000.0,
            scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 64 },
            max_position_embeddings: 512,
        };
        let f = r.inv_freq(1);
        // wavelen 2π (< 16) kept; wavelen 628 (> 64) divided by 8.
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.01 / 8.0).abs() < 1e-9);
    }

    #[test]
    fn tables_hold_position_times_frequency() {
        let (cos, sin) = rope(RopeScaling::None).tables(2, 1, &Device::Cpu).unwrap();
        let c: Vec<Vec<f32>> = cos.to_vec2().unwrap();
        let s: Vec<Vec<f32>> = sin.to_vec2().unwrap();
        assert!((c[0][0] - 2f32.cos()).abs() < 1e-6 && (s[0][2] - 2f32.sin()).abs() < 1e-6);
        assert!((s[0][1] - 0.02f32.sin()).abs() < 1e-6);
    }
}
