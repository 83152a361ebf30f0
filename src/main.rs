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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
