//! Runtime overheads (CUDA context, cuBLAS workspace, allocator slack, CPU process) as data:
//! `configs/overheads.json`, embedded at build time, each value with where it comes from.
//! The GPU issue measures them and writes the measurements back into that file.

use crate::PlanError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

const OVERHEADS_JSON: &str = include_str!("../../../configs/overheads.json");

/// A number with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sourced<T> {
    pub value: T,
    /// "estimate, to be measured", "policy", or where and how it was measured.
    pub source: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaOverheads {
    pub context_bytes: Sourced<u64>,
    pub cublas_workspace_bytes: Sourced<u64>,
    /// What a running engine holds beyond the context and cuBLAS whatever the model: the
    /// kernel modules (candle's and ours) loaded on first use, the pool's first chunks.
    pub modules_bytes: Sourced<u64>,
    pub allocator_slack_fraction: Sourced<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuOverheads {
    pub process_bytes: Sourced<u64>,
    pub allocator_slack_fraction: Sourced<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictPolicy {
    pub tight_fraction: Sourced<f64>,
}

/// What QLoRA training on a GPU adds, measured against `qlora-gpu-train-bench`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingOverheads {
    /// The device pool's reserved bytes above its live bytes at the training peak, as a share
    /// of the working set (replaces `cuda.allocator_slack_fraction` for training).
    pub cuda_pool_slack_fraction: Sourced<f64>,
    /// With gradient checkpointing, how many layers' worth of autograd graph (`layer
    /// activations`) are alive at the peak of a layer's recompute + backward.
    pub checkpointed_layer_graphs: Sourced<f64>,
    /// The same measured per architecture (`phi`, `gemma`, ...) where it differs from
    /// `checkpointed_layer_graphs`: families whose training layer keeps composite ops
    /// (LayerNorm, Gemma's `1 + w` norm, biases) hold more than the formula counts.
    #[serde(default)]
    pub checkpointed_layer_graphs_by_arch: BTreeMap<String, Sourced<f64>>,
    /// The same for the hand-written layer backward (the Llama family on a GPU), where the
    /// recompute frees as it goes: usually below one layer's graph.
    #[serde(default)]
    pub manual_backward_layer_graphs: Option<Sourced<f64>>,
}

impl TrainingOverheads {
    /// Layers' worth of graph alive at the checkpointed peak for architecture `arch`
    /// (`config.json`'s `model_type`).
    pub fn layer_graphs(&self, arch: &str) -> f64 {
        self.checkpointed_layer_graphs_by_arch.get(arch).unwrap_or(&self.checkpointed_layer_graphs).value
    }

    /// Layers' worth of activations alive at the peak of the hand-written backward (falls back
    /// to the autograd value when the file has none).
    pub fn manual_layer_graphs(&self) -> f64 {
        self.manual_backward_layer_graphs.as_ref().unwrap_or(&self.checkpointed_layer_graphs).value
    }
}

impl Default for TrainingOverheads {
    fn default() -> Self {
        let est = |v: f64| Sourced { value: v, source: "estimate, to be measured".into(), note: String::new() };
        Self {
            cuda_pool_slack_fraction: est(0.05),
            checkpointed_layer_graphs: est(2.0),
            checkpointed_layer_graphs_by_arch: BTreeMap::new(),
            manual_backward_layer_graphs: None,
        }
    }
}

/// Everything in `configs/overheads.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overheads {
    pub cuda: CudaOverheads,
    pub cpu: CpuOverheads,
    pub verdict: VerdictPolicy,
    #[serde(default)]
    pub training: TrainingOverheads,
}

/// Where a plan runs: decides which overheads apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cuda,
    Cpu,
}

impl Overheads {
    /// The overheads shipped in `configs/overheads.json`.
    pub fn builtin() -> Result<&'static Overheads, PlanError> {
        static CELL: OnceLock<Result<Overheads, String>> = OnceLock::new();
        CELL.get_or_init(|| Self::from_json(OVERHEADS_JSON).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| PlanError::BadOverheads { reason: reason.clone() })
    }

    /// Parses an overheads file (same shape as `configs/overheads.json`).
    pub fn from_json(text: &str) -> Result<Overheads, PlanError> {
        let o: Overheads = serde_json::from_str(text).map_err(|e| PlanError::BadOverheads { reason: e.to_string() })?;
        let fractions = [o.cuda.allocator_slack_fraction.value, o.cpu.allocator_slack_fraction.value, o.training.cuda_pool_slack_fraction.value];
        let graphs = std::iter::once(&o.training.checkpointed_layer_graphs).chain(o.training.checkpointed_layer_graphs_by_arch.values());
        if graphs.into_iter().any(|g| !(1.0..=8.0).contains(&g.value)) {
            return Err(PlanError::BadOverheads { reason: "training.checkpointed_layer_graphs must lie between 1 and 8".into() });
        }
        if o.training.manual_backward_layer_graphs.as_ref().is_some_and(|g| !(0.1..=8.0).contains(&g.value)) {
            return Err(PlanError::BadOverheads { reason: "training.manual_backward_layer_graphs must lie between 0.1 and 8".into() });
        }
        if fractions.iter().any(|f| !(0.0..1.0).contains(f)) || !(0.0..=1.0).contains(&o.verdict.tight_fraction.value) {
            return Err(PlanError::BadOverheads { reason: "fractions must lie between 0 and 1".into() });
        }
        Ok(o)
    }

    /// Fixed bytes plus slack on `working` (the sum of the other terms).
    pub fn overhead_bytes(&self, device: DeviceKind, working: u64) -> u64 {
        let (fixed, slack) = match device {
            DeviceKind::Cuda => (self.cuda_fixed_bytes(), self.cuda.allocator_slack_fraction.value),
            DeviceKind::Cpu => (self.cpu.process_bytes.value, self.cpu.allocator_slack_fraction.value),
        };
        fixed + (working as f64 * slack).ceil() as u64
    }

    /// [`Overheads::overhead_bytes`] for a QLoRA run: on a GPU the pool slack measured in
    /// training rather than the inference one.
    pub fn training_overhead_bytes(&self, device: DeviceKind, working: u64) -> u64 {
        match device {
            DeviceKind::Cuda => self.cuda_fixed_bytes() + (working as f64 * self.training.cuda_pool_slack_fraction.value).ceil() as u64,
            DeviceKind::Cpu => self.overhead_bytes(device, working),
        }
    }

    /// What every CUDA process of ours holds whatever its model: context, cuBLAS, modules.
    pub fn cuda_fixed_bytes(&self) -> u64 {
        self.cuda.context_bytes.value + self.cuda.cublas_workspace_bytes.value + self.cuda.modules_bytes.value
    }

    /// True while any value is still an estimate rather than a measurement.
    pub fn has_estimates(&self) -> bool {
        [
            &self.cuda.context_bytes.source,
            &self.cuda.cublas_workspace_bytes.source,
            &self.cuda.modules_bytes.source,
            &self.cuda.allocator_slack_fraction.source,
            &self.training.cuda_pool_slack_fraction.source,
            &self.training.checkpointed_layer_graphs.source,
        ]
        .into_iter()
        .chain(self.training.checkpointed_layer_graphs_by_arch.values().map(|g| &g.source))
        .any(|s| s.contains("estimate"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_overheads_parse_and_say_where_they_come_from() {
        let o = Overheads::builtin().unwrap();
        assert!(!o.cuda.context_bytes.source.is_empty());
        // 512 MiB + 32 MiB fixed; 5 % of 1 GiB slack.
        let fixed = o.cuda.context_bytes.value + o.cuda.cublas_workspace_bytes.value + o.cuda.modules_bytes.value;
        let slack = (o.cuda.allocator_slack_fraction.value * (1u64 << 30) as f64).ceil() as u64;
        assert_eq!(o.overhead_bytes(DeviceKind::Cuda, 1 << 30), fixed + slack);
    }

    #[test]
    fn a_broken_overheads_file_is_an_error_not_a_guess() {
        let e = Overheads::from_json("{}").unwrap_err().to_string();
        assert!(e.contains("overheads"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(OVERHEADS_JSON).unwrap();
        v["cuda"]["allocator_slack_fraction"]["value"] = serde_json::json!(1.5);
        assert!(Overheads::from_json(&v.to_string()).is_err());
    }
}
