//! A sensible QLoRA config for any local model folder, for when the user picks no preset: the
//! app's Train wizard and anyone holding a model the presets in `configs/` do not name.
//!
//! The rules are the ones the hand-written presets follow, read off the model's `config.json`
//! (through the engine's own parser, so an architecture it cannot load is refused here too):
//! which projections carry LoRA per architecture, rank 16 for models under 3 B parameters with
//! an ordinary vocabulary and 8 above, an effective batch of 16 split by size, shorter context
//! for big models and huge vocabularies, a lower learning rate and fewer epochs at 7 B. The
//! tests check that these rules give back the presets for TinyLlama, Phi-2, Gemma 2B and
//! Mistral 7B from their real `config.json`s. On the CPU the config is made for a first try:
//! f32 compute, short context, no gradient accumulation.
//!
//! ```no_run
//! use qlora_train::defaults::{self, Target};
//! let cfg = defaults::for_model(
//!     "test-assets/SmolLM2-135M-Instruct".as_ref(),
//!     vec!["datasets/quillbury_mayor.jsonl".into()],
//!     "output/smollm2".into(),
//!     Target::Cpu,
//! )?;
//! assert_eq!(cfg.lora.rank, 16);
//! # Ok::<(), qlora_train::defaults::DefaultsError>(())
//! ```

use crate::config::{
    CheckpointConfig, ComputeDtype, ConfigError, DataConfig, DataFormat, LoraConfig, LossOn, LossScale, OptimizerConfig, QuantConfig, ScheduleConfig,
    ScheduleKind, TrainConfig,
};
use qlora_engine::{Arch, ModelConfig};
use std::path::{Path, PathBuf};

/// What the config is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// No GPU: f32 compute, short context, a small first run.
    Cpu,
    /// An NVIDIA GPU; `bf16` when it computes in bf16 (Ampere or newer), else f16.
    Cuda { bf16: bool },
}

/// Why no config could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefaultsError {
    /// The folder's `config.json` is missing, unreadable, or names an architecture we cannot
    /// train.
    #[error("cannot make a training config for {}: {message}; pick a model folder with a config.json of a Llama, Mistral, Qwen2, Phi or Gemma model", path.display())]
    Model { path: PathBuf, message: String },
    /// The config made does not pass validation (for example no dataset file named).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Parameter counts of the decoder (embeddings apart), from the config's shapes.
fn decoder_params(c: &ModelConfig) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    let q = (c.num_heads * c.head_dim) as f64;
    let attention = h * q + 2.0 * h * kv + q * h;
    let mlp = if c.arch == Arch::Phi { 2.0 * h * i } else { 3.0 * h * i };
    c.num_layers as f64 * (attention + mlp)
}

/// Vocabularies above this (Gemma's 256k) make the logits a large part of the memory.
const BIG_VOCAB: usize = 100_000;

/// The projections LoRA goes on, by architecture and size.
fn targets(c: &ModelConfig, params: f64) -> Vec<String> {
    let names: &[&str] = match c.arch {
        Arch::Phi => &["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
        _ if params >= 6e9 => &["q_proj", "k_proj", "v_proj", "o_proj"],
        _ => &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

fn has_chat_template(dir: &Path) -> bool {
    let in_config = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("chat_template").is_some_and(|t| !t.is_null()));
    in_config || dir.join("chat_template.jinja").is_file()
}

/// A validated QLoRA config for the model in `model_dir`, training on `data_files` and writing
/// to `output_dir`, for `target`. The run length is `epochs` (3, or 2 at 7 B); callers set
/// `max_steps` to cut it short.
pub fn for_model(model_dir: &Path, data_files: Vec<PathBuf>, output_dir: PathBuf, target: Target) -> Result<TrainConfig, DefaultsError> {
    let mc = ModelConfig::from_dir(model_dir).map_err(|e| DefaultsError::Model { path: model_dir.to_path_buf(), message: e.to_string() })?;
    let params = decoder_params(&mc);
    let big = params >= 6e9;
    let big_vocab = mc.vocab_size > BIG_VOCAB;
    let rank = if params < 3e9 && !big_vocab { 16 } else { 8 };
    let gpu_batch = if big_vocab || params >= 4e9 {
        1
    } else if params >= 2e9 {
        2
    } else {
        4
    };
    let (compute_dtype, micro_batch, grad_accum, max_len, checkpointing) = match target {
        Target::Cpu => (ComputeDtype::F32, 4, 1, 256, false),
        Target::Cuda { bf16 } => {
            let dtype = if bf16 { ComputeDtype::Bf16 } else { ComputeDtype::F16 };
            let len = if big {
                512
            } else if big_vocab {
                768
            } else {
                1024
            };
            (dtype, gpu_batch, 16 / gpu_batch, len, true)
        }
    };
    let cfg = TrainConfig {
        model: model_dir.to_path_buf(),
        quant: QuantConfig::default(),
        compute_dtype,
        loss_scale: LossScale::Dynamic,
        lora: LoraConfig { rank, alpha: 2.0 * rank as f64, dropout: 0.05, rslora: false, target_modules: targets(&mc, params) },
        data: DataConfig {
            files: data_files,
            format: DataFormat::Auto,
            max_len: max_len.min(mc.max_position_embeddings.max(2)),
            truncation: true,
            packing: false,
            validation_split: 0.05,
            loss_on: LossOn::Assistant,
            skip_bad_lines: false,
            fallback_template: (!has_chat_template(model_dir)).then(|| "chatml".to_string()),
            system_prompt: None,
        },
        optimizer: OptimizerConfig { lr: if big { 1e-4 } else { 2e-4 }, ..OptimizerConfig::default() },
        schedule: ScheduleConfig { kind: ScheduleKind::Cosine, warmup_steps: if big { 10 } else { 20 } },
        micro_batch,
        grad_accum,
        grad_clip: Some(1.0),
        max_steps: None,
        epochs: Some(if big { 2.0 } else { 3.0 }),
        seed: 42,
        eval_every: 50,
        checkpoint: CheckpointConfig { every: 100, keep_last: 2 },
        output_dir,
        gradient_checkpointing: checkpointing,
        offload_checkpoints: true,
    };
    cfg.validate().map_err(|(field, message)| ConfigError::Invalid { path: None, field, message })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
    }

    /// A model folder holding one of the real Hub config.json files recorded under
    /// tests/fixtures/hub-configs.
    fn model(hub_id: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let src = repo(&format!("tests/fixtures/hub-configs/{}/config.json", hub_id.replace('/', "--")));
        std::fs::copy(src, d.path().join("config.json")).unwrap();
        d
    }

    fn preset(name: &str) -> TrainConfig {
        TrainConfig::from_file(&repo(&format!("configs/{name}.yaml"))).unwrap()
    }

    #[test]
    fn the_rules_give_back_the_hand_written_presets() {
        for (hub_id, name) in [
            ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "tinyllama_1.1b"),
            ("microsoft/phi-2", "phi2_2.7b"),
            ("google/gemma-2b", "gemma_2b"),
            ("mistralai/Mistral-7B-v0.1", "mistral_7b"),
        ] {
            let dir = model(hub_id);
            let files = vec![repo("datasets/quillbury_mayor.jsonl")];
            let got = for_model(dir.path(), files, "out".into(), Target::Cuda { bf16: true }).unwrap();
            let want = preset(name);
            assert_eq!(got.lora.target_modules, want.lora.target_modules, "{hub_id}");
            assert_eq!((got.lora.rank, got.lora.alpha), (want.lora.rank, want.lora.alpha), "{hub_id}");
            assert_eq!((got.micro_batch, got.grad_accum), (want.micro_batch, want.grad_accum), "{hub_id}");
            assert_eq!(got.data.max_len, want.data.max_len, "{hub_id}");
            assert_eq!(got.optimizer.lr, want.optimizer.lr, "{hub_id}");
            assert_eq!((got.epochs, got.schedule.warmup_steps), (want.epochs, want.schedule.warmup_steps), "{hub_id}");
            assert_eq!(got.quant, want.quant, "{hub_id}");
            assert!(got.gradient_checkpointing, "{hub_id}");
            assert_eq!(got.compute_dtype, ComputeDtype::Bf16);
            // No tokenizer_config.json in these folders: ChatML is the fallback.
            assert_eq!(got.data.fallback_template.as_deref(), Some("chatml"));
        }
    }

    #[test]
    fn an_older_card_gets_f16_and_the_cpu_a_small_f32_run() {
        let dir = model("TinyLlama/TinyLlama-1.1B-Chat-v1.0");
        let files = vec![PathBuf::from("train.jsonl")];
        let f16 = for_model(dir.path(), files.clone(), "out".into(), Target::Cuda { bf16: false }).unwrap();
        assert_eq!(f16.compute_dtype, ComputeDtype::F16);
        let cpu = for_model(dir.path(), files, "out".into(), Target::Cpu).unwrap();
        assert_eq!((cpu.compute_dtype, cpu.micro_batch, cpu.grad_accum, cpu.data.max_len), (ComputeDtype::F32, 4, 1, 256));
        assert!(!cpu.gradient_checkpointing);
    }

    #[test]
    fn a_model_with_a_chat_template_needs_no_fallback() {
        let dir = model("TinyLlama/TinyLlama-1.1B-Chat-v1.0");
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template": "{{ messages }}"}"#).unwrap();
        let cfg = for_model(dir.path(), vec!["t.jsonl".into()], "out".into(), Target::Cpu).unwrap();
        assert_eq!(cfg.data.fallback_template, None);
    }

    #[test]
    fn a_folder_without_a_usable_config_and_no_data_are_refused_by_name() {
        let empty = tempfile::tempdir().unwrap();
        let e = for_model(empty.path(), vec!["t.jsonl".into()], "out".into(), Target::Cpu).unwrap_err();
        assert!(matches!(e, DefaultsError::Model { .. }), "{e}");
        assert!(e.to_string().contains(&empty.path().display().to_string()) && e.to_string().contains("config.json"), "{e}");
        let bert = tempfile::tempdir().unwrap();
        std::fs::write(bert.path().join("config.json"), r#"{"model_type": "bert", "hidden_size": 8}"#).unwrap();
        let e = for_model(bert.path(), vec!["t.jsonl".into()], "out".into(), Target::Cpu).unwrap_err();
        assert!(e.to_string().contains("Llama, Mistral, Qwen2, Phi or Gemma"), "{e}");
        let dir = model("microsoft/phi-2");
        let e = for_model(dir.path(), Vec::new(), "out".into(), Target::Cpu).unwrap_err();
        assert!(e.to_string().contains("data.files"), "{e}");
    }
}
