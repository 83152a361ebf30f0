//! QLoRA training: LoRA adapters trained on a frozen NF4 base, from a YAML config.
//!
//! - [`config`]: the YAML training config, validated, errors naming the field;
//! - [`data`]: dataset files to micro-batches with an assistant-only loss mask;
//! - [`preflight`]: what the data looks like before a run starts;
//! - [`optim`], [`schedule`], [`checkpoint`]: AdamW, LR schedules, the checkpoint policy;
//! - [`lora`], [`loss`], [`trainer`]: trainable LoRA layers, the chunked loss, the loop;
//! - [`ops`]: dropout and cross-entropy with CUDA kernels and CPU twins;
//! - [`adapter`]: the result in PEFT format; [`events`]: what the loop reports.
//!
//! A run, as the CLI does it:
//! ```no_run
//! use qlora_train::{config::TrainConfig, trainer};
//! let cfg = TrainConfig::from_file("configs/demo_smollm2.yaml".as_ref())?;
//! let data = trainer::prepare_data(&cfg)?;
//! println!("{}", data.preflight.to_text());
//! let mut t = trainer::Trainer::new(cfg, data, &candle_core::Device::Cpu)?;
//! let cancel = qlora_jobs::CancelToken::new();
//! let outcome = t.run(false, &qlora_jobs::NoProgress, &cancel)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod defaults;
pub mod events;
pub mod lora;
pub mod loss;
pub mod merge;
pub mod ops;
pub mod optim;
pub mod preflight;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use events::TrainEvent;
pub use trainer::{Outcome, TrainError, Trainer};
