//! What a training run reports, as one typed enum sent to a [`qlora_jobs::ProgressSink`]:
//! the loop knows nothing of the terminal or the app; the CLI prints a progress line, the GUI
//! draws curves, both from the same events (burn-train's `Event` shape).

use serde::Serialize;
use std::path::PathBuf;

/// Memory in use, in bytes: the process's resident set on CPU (and, once the GPU issue
/// wires it, device memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl Memory {
    /// Current and peak resident set of this process (Linux `/proc/self/status`; zeros
    /// elsewhere).
    pub fn now() -> Self {
        let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return Self::default() };
        let kb = |key: &str| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |v| v * 1024)
        };
        Self { rss_bytes: kb("VmRSS:"), peak_rss_bytes: kb("VmHWM:") }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrainEvent {
    /// The run starts (or resumes at `start_step`).
    Start { total_steps: usize, start_step: usize, trainable_params: usize, train_rows: usize, valid_rows: usize, base_weight_bytes: usize },
    /// One optimizer step done.
    Step { step: usize, total_steps: usize, epoch: usize, loss: f64, lr: f64, grad_norm: f64, tokens_per_s: f64, eta_s: Option<f64>, memory: Memory },
    /// Validation loss after `step`.
    Eval { step: usize, loss: f64 },
    /// A checkpoint was written.
    Checkpoint { step: usize, path: PathBuf },
    /// The run ended: finished, or interrupted by the cancel token.
    End { step: usize, interrupted: bool, adapter_dir: Option<PathBuf> },
}
