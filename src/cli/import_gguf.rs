//! `qlora import-gguf FILE OUT_DIR`: a Llama- or Qwen2-architecture GGUF into a Hugging
//! Face-style folder (f32 safetensors, config, tokenizer).

use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file (llama or qwen2 architecture: TinyLlama, Mistral, SmolLM, Llama 2/3, Qwen2/2.5)
    pub file: PathBuf,
    /// Folder to create (must not exist or be empty)
    pub out_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = qlora_studio::engine::gguf::import_gguf(&args.file, &args.out_dir)
        .with_context(|| format!("importing {}", args.file.display()))?;
    eprintln!(
        "imported {} tensors ({} layers, vocabulary {}, {} embeddings) into {}",
        report.tensors,
        report.num_layers,
        report.vocab_size,
        if report.tied_embeddings { "tied" } else { "untied" },
        report.out_dir.display()
    );
    Ok(())
}
