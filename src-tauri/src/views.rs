//! What the pages exchange with the shell beyond settings, system and local models: the
//! requests the UI sends and the results and events it renders. They mirror the core's types
//! (which know nothing of TypeScript) and are converted from them in the commands.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// A model of the curated list.
#[derive(Debug, Clone, Serialize, TS)]
pub struct CuratedModel {
    pub id: String,
    pub name: String,
    /// Parameters in billions, from the model card.
    pub params_b: f32,
    pub license: String,
    /// Needs accepting a licence on the Hub (and a token).
    pub gated: bool,
    pub note: String,
}

/// The curated list: the four target models and the real test model.
pub fn curated() -> Vec<CuratedModel> {
    let m = |id: &str, name: &str, params_b: f32, license: &str, gated: bool, note: &str| CuratedModel {
        id: id.into(),
        name: name.into(),
        params_b,
        license: license.into(),
        gated,
        note: note.into(),
    };
    vec![
        m(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "SmolLM2 135M Instruct",
            0.135,
            "apache-2.0",
            false,
            "tiny: runs and trains on any CPU; the starter model",
        ),
        m("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama 1.1B Chat", 1.1, "apache-2.0", false, "Llama architecture; QLoRA fits a 4 GB GPU"),
        m("microsoft/phi-2", "Phi-2", 2.7, "mit", false, "strong for its size at reasoning and code"),
        m("google/gemma-2b", "Gemma 2B", 2.5, "gemma", true, "gated: accept the licence on the Hub and set a token"),
        m("mistralai/Mistral-7B-v0.1", "Mistral 7B", 7.2, "apache-2.0", false, "QLoRA needs about 8 GB of GPU memory at short context"),
    ]
}

/// A Hub search result.
#[derive(Debug, Clone, Serialize, TS)]
pub struct ModelHit {
    pub id: String,
    #[ts(type = "number")]
    pub downloads: u64,
    #[ts(type = "number")]
    pub likes: u64,
    pub pipeline_tag: Option<String>,
    /// Needs accepting a licence on the Hub (and a token).
    pub gated: bool,
}

/// One file of a model repository.
#[derive(Debug, Clone, Serialize, TS)]
pub struct RepoFile {
    pub path: String,
    #[ts(type = "number")]
    pub size: u64,
    /// Part of what a download fetches (the loader's files; duplicate weight formats are not).
    pub selected: bool,
}

/// A model's card summary and files.
#[derive(Debug, Clone, Serialize, TS)]
pub struct ModelDetail {
    pub id: String,
    /// The commit the details describe.
    pub revision: String,
    pub summary: String,
    pub license: Option<String>,
    pub gated: bool,
    pub pipeline_tag: Option<String>,
    pub tags: Vec<String>,
    #[ts(type = "number")]
    pub downloads: u64,
    #[ts(type = "number")]
    pub likes: u64,
    pub files: Vec<RepoFile>,
    /// What a download fetches: the selected files.
    #[ts(type = "number")]
    pub download_bytes: u64,
    /// Every file of the repository.
    #[ts(type = "number")]
    pub repo_bytes: u64,
    /// This revision is in the local cache.
    pub cached: bool,
    /// Read from the cache in offline mode (no counters, no tags).
    pub from_cache: bool,
}

/// Which GPU to plan against.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpuChoice {
    /// The GPU in this machine (or the CPU and RAM when there is none).
    ThisMachine,
    /// A preset from `configs/gpus.json`.
    Preset { id: String },
}

/// What the Planner page (and the Models page and the Train wizard) asks for.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct PlanRequest {
    /// A Hub model id (`org/name`) or a local model folder.
    pub model: String,
    pub gpu: GpuChoice,
    /// "nf4", "int8", "fp16" or "bf16".
    pub precision: String,
    pub context: u32,
    /// Plan QLoRA training (else inference only).
    pub train: bool,
    pub batch_size: u32,
    pub lora_rank: u32,
    pub gradient_checkpointing: bool,
}

/// One bar of the memory breakdown.
#[derive(Debug, Clone, Serialize, TS)]
pub struct PlanItem {
    pub label: String,
    #[ts(type = "number")]
    pub bytes: u64,
}

/// "fits", "tight" or "does_not_fit".
#[derive(Debug, Clone, Copy, Serialize, TS, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Fits,
    Tight,
    DoesNotFit,
}

/// The planner's answer.
#[derive(Debug, Clone, Serialize, TS)]
pub struct PlanReport {
    pub model: String,
    pub device: String,
    pub verdict: Verdict,
    #[ts(type = "number")]
    pub budget_bytes: u64,
    #[ts(type = "number")]
    pub total_bytes: u64,
    pub breakdown: Vec<PlanItem>,
    #[ts(type = "number")]
    pub download_bytes: u64,
    #[ts(type = "number | null")]
    pub disk_free_bytes: Option<u64>,
    /// The smallest change that makes it fit, when it does not.
    pub suggestion: Option<String>,
    pub notes: Vec<String>,
}

/// A download job's events, sent as the `download` event.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownloadEvent {
    Started {
        job: u64,
        model: String,
        #[ts(type = "number")]
        total_bytes: u64,
        #[ts(type = "number")]
        resumed_bytes: u64,
    },
    Progress {
        job: u64,
        file: String,
        #[ts(type = "number")]
        done_bytes: u64,
        #[ts(type = "number")]
        total_bytes: u64,
        bytes_per_sec: f64,
        eta_secs: Option<f64>,
    },
    Finished {
        job: u64,
        path: String,
    },
    Cancelled {
        job: u64,
        #[ts(type = "number")]
        done_bytes: u64,
    },
    Failed {
        job: u64,
        error: crate::error::AppError,
    },
}

/// A GGUF import job's events, sent as the `import` event.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImportEvent {
    Started {
        job: u64,
        file: String,
        name: String,
        #[ts(type = "number")]
        total_bytes: u64,
    },
    Progress {
        job: u64,
        #[ts(type = "number")]
        done_bytes: u64,
        #[ts(type = "number")]
        total_bytes: u64,
    },
    Finished {
        job: u64,
        model: crate::local_models::LocalModel,
    },
    Cancelled {
        job: u64,
    },
    Failed {
        job: u64,
        error: crate::error::AppError,
    },
}

/// A cached repository, as the Library page lists it.
#[derive(Debug, Clone, Serialize, TS)]
pub struct CachedRepo {
    pub id: String,
    pub revisions: Vec<String>,
    #[ts(type = "number")]
    pub size_on_disk: u64,
    /// Bytes shared with other revisions (the same blob).
    #[ts(type = "number")]
    pub shared_bytes: u64,
    pub complete: bool,
}

/// What a delete / prune / verify did, or would do in a dry run.
#[derive(Debug, Clone, Serialize, TS)]
pub struct CacheReport {
    pub dry_run: bool,
    pub actions: Vec<String>,
    #[ts(type = "number")]
    pub freed_bytes: u64,
    pub problems: Vec<String>,
}

/// A dataset file's preview and preflight report.
#[derive(Debug, Clone, Serialize, TS)]
pub struct DatasetPreview {
    pub path: String,
    pub format: String,
    pub rows: u32,
    pub sample: Vec<String>,
    pub token_stats: Option<String>,
    pub warnings: Vec<String>,
}

/// What the Train wizard starts.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct TrainRequest {
    pub base_model: String,
    pub dataset: String,
    /// A config file such as `configs/demo_smollm2.yaml`, or None: a config made for the base
    /// model from its config.json (`qlora_train::defaults`), with the knobs below.
    pub config: Option<String>,
    pub output_dir: String,
    pub steps: u32,
    pub learning_rate: f64,
    pub lora_rank: u32,
    pub lora_alpha: f32,
    pub batch_size: u32,
    pub context: u32,
    /// Resume from the last checkpoint in `output_dir`.
    pub resume: bool,
}

/// A training job's events, sent as the `train` event.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        job: u64,
        total_steps: u32,
        resumed_from: u32,
    },
    /// `memory_bytes`: the process's resident memory (GPU memory once training runs on CUDA).
    Step {
        job: u64,
        step: u32,
        loss: f32,
        lr: f64,
        tokens_per_sec: f64,
        eta_secs: Option<f64>,
        #[ts(type = "number | null")]
        memory_bytes: Option<u64>,
    },
    Eval {
        job: u64,
        step: u32,
        loss: f32,
    },
    Checkpoint {
        job: u64,
        step: u32,
        path: String,
    },
    Finished {
        job: u64,
        adapter_dir: String,
    },
    /// After `Finished`: the dataset's prompts answered by the base and by base + the new
    /// adapter (or why that failed; the adapter is saved either way).
    Samples {
        job: u64,
        samples: Vec<SampleAnswer>,
        error: Option<crate::error::AppError>,
    },
    Cancelled {
        job: u64,
        step: u32,
    },
    Failed {
        job: u64,
        error: crate::error::AppError,
    },
}

/// The knobs of a config made for a model when no preset is picked, to fill the wizard's form.
#[derive(Debug, Clone, Serialize, TS)]
pub struct TrainDefaults {
    pub learning_rate: f64,
    pub lora_rank: u32,
    pub lora_alpha: f32,
    pub batch_size: u32,
    pub context: u32,
    /// What the form does not show: targets, dtype, accumulation, schedule.
    pub notes: Vec<String>,
}

/// A prompt answered before and after training.
#[derive(Debug, Clone, Serialize, TS)]
pub struct SampleAnswer {
    pub prompt: String,
    pub before: String,
    pub after: String,
}

/// What Chat sends.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct ChatRequest {
    /// The stream id the UI picked, used by `chat_stop`.
    pub stream: u64,
    pub model: String,
    pub adapter: Option<String>,
    pub adapter_scale: f32,
    pub system_prompt: String,
    pub messages: Vec<crate::conversations::ChatMessage>,
    pub sampling: crate::conversations::Sampling,
}

/// A PEFT adapter attached to the chat model (what `chat_attach_adapter` answers).
#[derive(Debug, Clone, Serialize, TS)]
pub struct AdapterInfo {
    /// The adapter folder.
    pub dir: String,
    /// How many of the model's linear layers now carry it.
    pub modules: u32,
    pub rank: u32,
    pub alpha: f64,
    /// The base model the adapter says it was trained on (`base_model_name_or_path`).
    pub base_model: Option<String>,
}

/// Pieces of a streamed answer, sent through the command's channel.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatChunk {
    Token { text: String },
    Done { tokens: u32, tokens_per_sec: f64, stopped: bool },
    Failed { error: crate::error::AppError },
}
