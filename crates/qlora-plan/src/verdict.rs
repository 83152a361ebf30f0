//! Fits / tight / won't fit, and the smallest change that makes a plan fit: a lower-memory
//! precision, a shorter context, gradient checkpointing, micro-batch 1, a shorter sequence,
//! or — when none is enough — a smaller model.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    Fits,
    /// Fits, using more than the tight fraction (90 %) of what is available.
    Tight,
    WontFit,
}

impl Fit {
    pub fn judge(needed: u64, available: u64, tight_fraction: f64) -> Fit {
        if needed > available {
            Fit::WontFit
        } else if needed as f64 > available as f64 * tight_fraction {
            Fit::Tight
        } else {
            Fit::Fits
        }
    }

    pub fn fits(self) -> bool {
        self != Fit::WontFit
    }

    pub fn label(self) -> &'static str {
        match self {
            Fit::Fits => "fits",
            Fit::Tight => "tight",
            Fit::WontFit => "won't fit",
        }
    }
}

/// A change to the asked configuration, with what it then needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    /// What to change, in words and as the CLI flag (e.g. "load in nf4 (--quant nf4)").
    pub change: String,
    pub total_bytes: u64,
    pub fit: Fit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(Fit::judge(89, 100, 0.9), Fit::Fits);
        assert_eq!(Fit::judge(90, 100, 0.9), Fit::Fits);
        assert_eq!(Fit::judge(91, 100, 0.9), Fit::Tight);
        assert_eq!(Fit::judge(100, 100, 0.9), Fit::Tight);
        assert_eq!(Fit::judge(101, 100, 0.9), Fit::WontFit);
    }
}
