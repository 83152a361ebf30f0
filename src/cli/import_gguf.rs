//! `qlora import-gguf FILE OUT_DIR`: a Llama- or Qwen2-architecture GGUF into a Hugging
//! Face-style folder (f32 safetensors, config, tokenizer).

use anyhow::Context;
use qlora_studio::hub::{disk, human};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file (llama or qwen2 architecture: TinyLlama, Mistral, SmolLM, Llama 2/3, Qwen2/2.5)
    pub file: PathBuf,
    /// Folder to create (must not exist or be empty)
    pub out_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // The disk first: a quantized GGUF grows about 7x as f32, and a full disk found half-way
    // through a 28 GB write costs the user the time it took.
    let need = qlora_studio::engine::gguf::import_bytes(&args.file).with_context(|| format!("importing {}", args.file.display()))?;
    let free = disk::free_space(&args.out_dir)?;
    check_space(need, free, &args.out_dir)?;
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

/// Refuses an import of `need` bytes into `out_dir` with `free` bytes available there, keeping
/// the downloads' margin spare ([`disk::fits`], as the app's import does).
fn check_space(need: u64, free: u64, out_dir: &Path) -> anyhow::Result<()> {
    if !disk::fits(need, free) {
        anyhow::bail!(
            "importing writes {} of f32 weights to {}, which has {} free: free some space there, or give an OUT_DIR on a larger disk",
            human(need),
            out_dir.display(),
            human(free)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_that_does_not_fit_is_refused_with_both_numbers_and_the_fix() {
        let out = Path::new("/models/smol");
        let e = check_space(538_060_000, 500_000_000, out).unwrap_err().to_string();
        assert!(e.contains("538.06 MB") && e.contains("500.00 MB") && e.contains("/models/smol") && e.contains("larger disk"), "{e}");
        // The margin counts: exactly the bytes, with nothing spare, is refused too.
        assert!(check_space(538_060_000, 538_060_000, out).is_err());
        check_space(538_060_000, 1 << 30, out).unwrap();
    }
}
