//! Learning-rate schedules exactly as transformers' `get_constant_schedule_with_warmup`,
//! `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` (half a cycle):
//! the factor for optimizer step `s` (0-based) is what torch's LambdaLR gives the `s`-th
//! `optimizer.step()`, so with warmup the very first step runs at LR 0, as in the HF Trainer.
//! A pure function of the step: nothing to save in a checkpoint beyond the step itself.

use crate::config::{ScheduleConfig, ScheduleKind};

/// The schedule of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig, base_lr: f64, total_steps: usize) -> Self {
        Self { kind: cfg.kind, base_lr, warmup_steps: cfg.warmup_steps, total_steps }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }

    fn factor(&self, step: usize) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From tests/ref/adamw_ref.py (transformers 5.24): total 10 steps, warmup 3, base LR 1.
    const LINEAR: [f64; 10] = [0.0, 0.3333333, 0.6666667, 1.0, 0.8571429, 0.7142857, 0.5714286, 0.4285714, 0.2857143, 0.1428571];
    const COSINE: [f64; 10] = [0.0, 0.3333333, 0.6666667, 1.0, 0.9504844, 0.8117449, 0.6112605, 0.3887395, 0.1882551, 0.0495156];
    const CONSTANT: [f64; 10] = [0.0, 0.3333333, 0.6666667, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];

    fn check(kind: ScheduleKind, want: &[f64]) {
        let s = Schedule { kind, base_lr: 1.0, warmup_steps: 3, total_steps: 10 };
        for (i, w) in want.iter().enumerate() {
            assert!((s.lr(i) - w).abs() < 1e-6, "{kind:?} step {i}: {} vs {w}", s.lr(i));
        }
    }

    #[test]
    fn matches_transformers() {
        check(ScheduleKind::Linear, &LINEAR);
        check(ScheduleKind::Cosine, &COSINE);
        check(ScheduleKind::Constant, &CONSTANT);
    }

    #[test]
    fn no_warmup_starts_at_base_lr() {
        let s = Schedule { kind: ScheduleKind::Cosine, base_lr: 2e-4, warmup_steps: 0, total_steps: 4 };
        assert_eq!(s.lr(0), 2e-4);
        assert!(s.lr(3) < s.lr(1));
    }
}
