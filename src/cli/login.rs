//! `qlora login`: store a Hugging Face token where the `hf` CLI stores it
//! (`$HF_HOME/token`, mode 0600), after checking it with the Hub. The token is never printed.

use anyhow::Context;
use qlora_studio::hub::{HubClient, HubConfig, token};
use std::io::{BufRead, IsTerminal};

#[derive(clap::Args)]
pub struct Args {
    /// The token (else read from stdin; create one at https://huggingface.co/settings/tokens).
    #[arg(long)]
    pub token: Option<String>,
    /// Store it without asking the Hub whether it is valid.
    #[arg(long)]
    pub no_verify: bool,
    /// Remove the stored token instead.
    #[arg(long, conflicts_with = "token")]
    pub logout: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.logout {
        let had = token::delete_token()?;
        eprintln!("{}", if had { "logged out: the stored token was removed" } else { "no stored token" });
        return Ok(());
    }
    let tok = match args.token {
        Some(t) => t,
        None => read_token()?,
    };
    let tok = tok.trim().to_string();
    if !args.no_verify {
        let mut cfg = HubConfig::from_env();
        cfg.token = Some(tok.clone());
        let client = HubClient::new(cfg)?;
        let name = qlora_studio::hub::remote::block_on(token::whoami(&client))
            .context("checking the token with the Hub (use --no-verify to store it anyway)")?;
        eprintln!("token of {name} ({})", token::redact(&tok));
    }
    let path = token::save_token(&tok)?;
    eprintln!("token saved to {} (readable by you only)", path.display());
    Ok(())
}

/// One line from stdin, with terminal echo off when stdin is a terminal.
fn read_token() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("Hugging Face token (https://huggingface.co/settings/tokens): ");
        let _ = std::process::Command::new("stty").arg("-echo").stdin(std::process::Stdio::inherit()).status();
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").stdin(std::process::Stdio::inherit()).status();
        eprintln!();
    }
    r.context("reading the token from stdin")?;
    anyhow::ensure!(!line.trim().is_empty(), "no token given: pass --token or paste it on stdin");
    Ok(line)
}
