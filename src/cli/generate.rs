//! `qlora generate`: one completion, only the generated text on stdout (streamed).
//! Also holds the model-loading options shared by `perplexity` and `chat`.

use anyhow::Context;
use qlora_studio::engine::candle_core::DType;
use qlora_studio::engine::generate::{GenerateEvent, GenerateOptions};
use qlora_studio::engine::lora;
use qlora_studio::engine::text_model::single_turn;
use qlora_studio::engine::{DeviceChoice, LoadOptions, Quant, TextModel};
use qlora_studio::jobs::CancelToken;
use std::io::Write;
use std::path::PathBuf;

/// How to load the model (shared by generate, perplexity and chat).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Model folder in Hugging Face layout (config.json, safetensors, tokenizer.json)
    #[arg(long)]
    pub model: PathBuf,
    /// Weight storage of the projections: none, int8, nf4 or nf4-dq
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// Compute dtype: f32, bf16 or f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// A PEFT LoRA adapter folder to apply
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Scale of the adapter (0 turns it off)
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    pub adapter_scale: f64,
    /// Where to run: auto (the first CUDA GPU if this build has CUDA and one answers, else
    /// the CPU), cpu, or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

impl LoadArgs {
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => anyhow::bail!("unknown --dtype '{other}' (use f32, bf16 or f16)"),
        };
        let quant: Quant = self.quant.parse()?;
        Ok(LoadOptions { dtype, quant, device: self.device.open()? })
    }

    pub fn load(&self) -> anyhow::Result<TextModel> {
        let opts = self.options()?;
        let mut tm = TextModel::load(&self.model, &opts).with_context(|| format!("loading {}", self.model.display()))?;
        if let Some(adapter) = &self.adapter {
            let layers = tm.model.lora_layers()?;
            let attached =
                lora::attach_adapter(adapter, &layers, &opts.device, None).with_context(|| format!("applying adapter {}", adapter.display()))?;
            lora::set_scale_all(&layers, self.adapter_scale);
            eprintln!("adapter {} on {} modules (r={}, scale {})", adapter.display(), attached.modules.len(), attached.config.r, self.adapter_scale);
        }
        Ok(tm)
    }
}

/// Sampling options shared by generate and chat.
#[derive(clap::Args, Debug, Clone)]
pub struct SampleArgs {
    /// Maximum number of new tokens
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub min_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed for sampling
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable)
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SampleArgs {
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop_strings: self.stop.clone(),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The prompt (a user message, unless --raw)
    #[arg(long)]
    pub prompt: String,
    /// Feed the prompt as is, without the chat template
    #[arg(long)]
    pub raw: bool,
    /// System prompt (chat template only)
    #[arg(long, conflicts_with = "raw")]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tm = args.load.load()?;
    let ids = if args.raw { tm.raw_ids(&args.prompt)? } else { tm.chat_ids(&single_turn(args.system.as_deref(), &args.prompt))? };
    let stdout = std::sync::Mutex::new(std::io::stdout());
    let sink = |e: GenerateEvent| {
        if let GenerateEvent::Token { text, .. } = e
            && let Ok(mut out) = stdout.lock()
        {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    };
    tm.generator().generate(&ids, &args.sample.options(), &sink, &CancelToken::new())?;
    println!();
    Ok(())
}
