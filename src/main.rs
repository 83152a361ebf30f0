//! `qlora`: the command-line front end over the same core calls the desktop app uses.
//! Each subcommand lives in `src/cli/<name>.rs` with its own `Args` and `run`.

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "qlora", version, about = "Plan, download, fine-tune (QLoRA) and chat with Hugging Face LLMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Each subcommand: one line here, one arm in `main`, one file in src/cli/.
    /// Disk and memory needs of a model (download, inference, QLoRA training) before fetching it.
    Plan(cli::plan::Args),
    /// Turn a Llama- or Qwen2-architecture GGUF file into a Hugging Face-style model folder.
    ImportGguf(cli::import_gguf::Args),
    /// Generate a completion (only the generated text on stdout).
    Generate(cli::generate::Args),
    /// Mean NLL and perplexity of a model over a text file.
    Perplexity(cli::perplexity::Args),
    /// Interactive chat with streaming.
    Chat(cli::chat::Args),
    /// Download a model into the Hugging Face cache (resumable, verified).
    Download(cli::download::Args),
    /// The Hugging Face cache: ls, rm, prune, verify (with --dry-run).
    Cache(cli::cache::Args),
    /// Store a Hugging Face token as the `hf` CLI does.
    Login(cli::login::Args),
    /// QLoRA fine-tuning from a YAML config (see configs/).
    Train(cli::train::Args),
    /// Merge a LoRA adapter into its base as a dense Hub-style folder.
    Merge(cli::merge::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(a) => cli::plan::run(a),
        Command::ImportGguf(a) => cli::import_gguf::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Perplexity(a) => cli::perplexity::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Download(a) => cli::download::run(a),
        Command::Cache(a) => cli::cache::run(a),
        Command::Login(a) => cli::login::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Merge(a) => cli::merge::run(a),
    }
}
