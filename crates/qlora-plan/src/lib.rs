//! Exact disk and memory needs of a model — download, inference in six precisions, QLoRA
//! training, the whole pipeline's disk — computed from its metadata alone (config.json, the
//! file listing, safetensors headers) before a byte of weights is fetched, and judged against
//! this machine's GPU, a preset card, or system RAM.
//!
//! Every byte count follows what our engine allocates (`qlora_quant` storage, `qlora_engine`
//! forward pass, `qlora_train` LoRA and loss); docs/PLANNER.md states each formula and the
//! `--json` shape ([`Plan`]).
//!
//! ```
//! use qlora_plan::{gather, plan, LocalFolder, Overheads, PlanOptions, Target};
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/hub-configs/TinyLlama--TinyLlama-1.1B-Chat-v1.0");
//! let meta = gather(&LocalFolder::new(dir)).unwrap();          // config.json only
//! let p = plan(&meta, &Target::preset("rtx2080").unwrap(), &PlanOptions::default(), Overheads::builtin().unwrap()).unwrap();
//! assert_eq!(p.parameters, 1_100_048_384);
//! assert!(p.inference.nf4.memory.weights_bytes < p.inference.fp16.memory.weights_bytes / 2);
//! ```

pub mod arch;
pub mod disk;
pub mod hub_source;
pub mod inference;
pub mod overheads;
mod plan;
pub mod source;
pub mod target;
pub mod tensors;
pub mod training;
pub mod verdict;
pub mod weights;

pub use arch::{Arch, ArchSpec};
pub use hub_source::HubSource;
pub use overheads::{DeviceKind, Overheads};
pub use plan::{InferencePlan, InferenceTable, Plan, PlanOptions, TrainingPlan, plan};
pub use source::{DownloadInfo, LocalFolder, MetadataSource, ModelMeta, TensorsFrom, gather};
pub use target::{Target, TargetKind};
pub use training::TrainOptions;
pub use verdict::{Fit, Suggestion};
pub use weights::Precision;

use std::path::PathBuf;

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path} is not a usable config.json: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: model_type '{model_type}' is not supported; supported: {}", Arch::SUPPORTED)]
    UnsupportedArchitecture { path: PathBuf, model_type: String },
    #[error("reading the metadata of {model} failed: {reason}")]
    Hub { model: String, reason: String },
    #[error("configs/overheads.json is malformed: {reason}")]
    BadOverheads { reason: String },
    #[error("bad {option}: {reason}")]
    BadOption { option: String, reason: String },
    #[error("{reason}")]
    Machine { reason: String },
}
