//! What a checkpoint holds, so a killed run resumes on the same loss curve: the adapter (PEFT
//! format, usable on its own), the optimizer's moments and step, the dropout RNG of every
//! LoRA layer, the loss scaler, the log so far, and the settings that shape the curve (a
//! resume with other settings is refused). The data position is the step itself: batches are
//! a pure function of the seed and the micro-batch number. The LR schedule likewise.

use super::TrainError;
use crate::adapter;
use crate::config::TrainConfig;
use crate::lora::Attached;
use crate::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// One logged step (the loss curve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Micro-batches consumed (the data position).
    pub micro_batches: usize,
    pub optimizer_step: u64,
    /// Dropout RNG state per LoRA module.
    pub rng: BTreeMap<String, u64>,
    pub loss_scale: f64,
    pub good_steps: u64,
    pub log_history: Vec<LogEntry>,
    /// The settings that shape the curve, as JSON.
    pub fingerprint: serde_json::Value,
}

/// The parts of a config a resume must agree with.
pub fn fingerprint(cfg: &TrainConfig) -> serde_json::Value {
    serde_json::json!({
        "model": cfg.model,
        "quant": cfg.quant,
        "compute_dtype": cfg.compute_dtype,
        "lora": cfg.lora,
        "data": cfg.data,
        "optimizer": cfg.optimizer,
        "schedule": cfg.schedule,
        "micro_batch": cfg.micro_batch,
        "grad_accum": cfg.grad_accum,
        "grad_clip": cfg.grad_clip,
        "seed": cfg.seed,
    })
}

/// Writes the checkpoint files into `dir` (a fresh temporary folder).
pub fn save(dir: &Path, cfg: &TrainConfig, lora: &Attached, opt: &AdamW, state: &TrainerState) -> Result<(), TrainError> {
    adapter::save(dir, lora, &cfg.lora, &cfg.model.display().to_string())?;
    let (moments, _) = opt.state();
    adapter::save_tensors(&dir.join(OPTIMIZER_FILE), &moments.into_iter().collect())?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::io(dir, e.into()))?;
    std::fs::write(dir.join(STATE_FILE), json).map_err(|e| TrainError::io(dir, e))
}

/// Reads a checkpoint back: sets the adapter and optimizer, returns the state.
pub fn load(dir: &Path, cfg: &TrainConfig, lora: &Attached, opt: &mut AdamW) -> Result<TrainerState, TrainError> {
    let bad = |message: String| TrainError::Resume { path: dir.to_path_buf(), message };
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| bad(format!("cannot read {STATE_FILE}: {e}")))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| bad(format!("{STATE_FILE} is not valid: {e}")))?;
    let now = fingerprint(cfg);
    if state.fingerprint != now {
        let differs: Vec<String> =
            now.as_object().into_iter().flatten().filter(|(k, v)| state.fingerprint.get(k.as_str()) != Some(v)).map(|(k, _)| k.clone()).collect();
        return Err(bad(format!(
            "the checkpoint was made with other settings ({}); resume with the same config or start a new output_dir",
            differs.join(", ")
        )));
    }
    adapter::load_into(dir, lora)?;
    let moments = adapter::load_tensors(&dir.join(OPTIMIZER_FILE))?;
    opt.load_state(&moments.into_iter().collect(), state.optimizer_step).map_err(bad)?;
    for (path, l) in lora {
        let s = state.rng.get(path).ok_or_else(|| bad(format!("no dropout RNG state for `{path}`")))?;
        l.set_rng_state(*s);
    }
    Ok(state)
}
