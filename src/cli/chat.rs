//! `qlora chat`: an interactive terminal chat, streamed token by token. `/reset` starts a
//! new conversation, `/exit` (or end of input) quits.

use super::generate::{LoadArgs, SampleArgs};
use qlora_studio::engine::chat_template::ChatMessage;
use qlora_studio::engine::generate::GenerateEvent;
use qlora_studio::jobs::CancelToken;
use std::io::{BufRead, Write};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub load: LoadArgs,
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tm = args.load.load()?;
    let fresh = || args.system.iter().map(|s| ChatMessage::system(s)).collect::<Vec<_>>();
    let mut messages = fresh();
    let stdin = std::io::stdin();
    let opts = args.sample.options();
    eprintln!("chatting with {} (/reset, /exit)", tm.model.dir().display());
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = fresh();
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(line));
        let ids = match tm.chat_ids(&messages) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("error: {e}");
                messages.pop();
                continue;
            }
        };
        let sink = |e: GenerateEvent| {
            if let GenerateEvent::Token { text, .. } = e {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
        };
        match tm.generator().generate(&ids, &opts, &sink, &CancelToken::new()) {
            Ok(g) => {
                println!();
                messages.push(ChatMessage::assistant(g.text.trim()));
            }
            Err(e) => {
                eprintln!("error: {e}");
                messages.pop();
            }
        }
    }
    Ok(())
}
