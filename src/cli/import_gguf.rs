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
    // A line per 5% on stderr: a 7B import writes 28 GB.
    let mut shown = 0u64;
    let mut progress = |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct >= shown + 5 || done == total {
            shown = pct;
            eprintln!("  {pct:>3}%  {} of {} written", qlora_studio::hub::human(done), qlora_studio::hub::human(total));
        }
    };
    let cancel = qlora_studio::jobs::CancelToken::new();
    let report = qlora_studio::engine::gguf::import_gguf_with(&args.file, &args.out_dir, &mut progress, &cancel)
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
