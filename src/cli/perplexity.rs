//! `qlora perplexity`: mean NLL and perplexity of a model over a text file.

use super::generate::LoadArgs;
use anyhow::Context;
use qlora_studio::engine::perplexity::perplexity;
use qlora_studio::jobs::CancelToken;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The text file to score
    #[arg(long)]
    pub file: PathBuf,
    /// Window length in tokens (default: the model's context, at most 1024)
    #[arg(long)]
    pub window: Option<usize>,
    /// Tokens a window advances by (default: half the window)
    #[arg(long)]
    pub stride: Option<usize>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let tm = args.load.load()?;
    let ids = tm.raw_ids(&text)?;
    let window = args.window.unwrap_or(tm.model.context_len().min(1024));
    let stride = args.stride.unwrap_or((window / 2).max(1));
    let r = perplexity(&tm.model, &ids, window, stride, &CancelToken::new())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "perplexity {:.4}  mean NLL {:.6}  ({} tokens scored, {} windows of {})",
            r.perplexity, r.mean_nll, r.scored_tokens, r.windows, r.window
        );
    }
    Ok(())
}
