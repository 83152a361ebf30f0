//! qlora-studio's core, as one library: plan, download, quantize, fine-tune and chat with
//! Hugging Face LLMs on one consumer GPU. Front ends (the `qlora` CLI, the Tauri app) call
//! only what is re-exported here; none of it knows about Tauri, a terminal or the web.
//!
//! Each part is its own crate under `crates/`, so a change to one does not rebuild the others:
//!
//! | module | crate | job |
//! |---|---|---|
//! | [`jobs`] | qlora-jobs | cancellation, progress sinks, rate limiting |
//! | [`quant`] | qlora-quant | NF4 (bitsandbytes-exact) and int8 storage |
//! | [`engine`] | qlora-engine | model architectures, LoRA, tokenizer, chat templates, generation, GGUF import |
//! | [`hub`] | qlora-hub | the Hugging Face cache, downloads, cache manager |
//! | [`plan`] | qlora-plan | disk and memory planning |
//! | [`gpu`] | qlora-gpu | GPUs via NVML |
//! | [`train`] | qlora-train | QLoRA training |

pub use qlora_engine as engine;
pub use qlora_gpu as gpu;
pub use qlora_hub as hub;
pub use qlora_jobs as jobs;
pub use qlora_plan as plan;
pub use qlora_quant as quant;
pub use qlora_train as train;
