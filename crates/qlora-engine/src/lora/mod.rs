//! LoRA as a decorator around any [`crate::linear::Linear`]: PEFT adapters loaded, scaled,
//! switched, dropped and merged at inference, and trainable adapters for QLoRA.
//!
//! * [`LoraLinear`] (`layer.rs`): `y = base(x) + user_scale · scaling · (dropout(x) Aᵀ) Bᵀ`
//!   around an `Arc<dyn Linear>` of any storage (dense, NF4, int8); the adapter lives behind a
//!   lock so it can change at run time; `merged_weight` / `merged` give `W + s·B·A`.
//! * [`peft_format`]: `adapter_config.json` and `adapter_model.safetensors` as peft 0.21 reads
//!   and writes them.
//! * [`adapter`]: [`wrap_all`] the model's projections once, then [`attach_adapter`] a PEFT
//!   folder (all-or-nothing, listing every module that does not fit), [`set_scale_all`],
//!   [`detach_all`], [`create_trainable`] a fresh adapter of `Var`s for training, and
//!   [`export_peft`] / [`TrainableAdapter::save_peft`] to write one.
//!
//! ```no_run
//! # use qlora_engine::lora::*;
//! # fn f(model_projections: Vec<(String, qlora_engine::linear::ArcLinear)>) -> Result<(), LoraError> {
//! let layers = wrap_all(model_projections);     // put these Arcs back into the model
//! let dev = candle_core::Device::Cpu;
//! attach_adapter(std::path::Path::new("my-adapter"), &layers, &dev, None)?;
//! set_scale_all(&layers, 0.5);                   // half strength; 0.0 = base model
//! detach_all(&layers);                           // base model again, nothing reloaded
//! # Ok(()) }
//! ```

pub mod adapter;
pub mod error;
pub mod layer;
pub mod peft_format;

pub use adapter::{
    AttachedAdapter, LoraLayers, LoraSpec, TrainableAdapter, attach_adapter, create_trainable, detach_all, export_peft, set_scale_all, wrap_all,
};
pub use error::LoraError;
pub use layer::{LoraLinear, LoraWeights};
pub use peft_format::{AdapterConfig, TargetModules};
