//! `qlora chat`: an interactive terminal chat, streamed token by token. `/reset` starts a
//! new conversation, `/exit` (or end of input) quits. Ctrl-C while an answer is being written
//! stops that answer (the engine's cancel token, checked every token) and returns to the
//! prompt, keeping what was written; Ctrl-C at the prompt ends the chat, as in a shell.

use super::generate::{LoadArgs, SampleArgs};
use anyhow::Context;
use qlora_studio::engine::chat_template::ChatMessage;
use qlora_studio::engine::generate::{GenerateEvent, StopReason};
use qlora_studio::jobs::CancelToken;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

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

/// What Ctrl-C stops: the answer being written, if any (else the chat itself).
#[derive(Default)]
struct Interrupt {
    answer: Mutex<Option<CancelToken>>,
}

impl Interrupt {
    /// Ctrl-C from now on reaches `on_ctrl_c` (on a thread of its own) instead of killing the
    /// process. The handler is registered before this returns, so no Ctrl-C is lost.
    fn install() -> anyhow::Result<Arc<Self>> {
        let state = Arc::new(Interrupt::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the Ctrl-C listener")?;
        let mut signals = {
            let _guard = rt.enter();
            #[cfg(unix)]
            let s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
            #[cfg(windows)]
            let s = tokio::signal::windows::ctrl_c();
            s.context("listening for Ctrl-C")?
        };
        let st = state.clone();
        std::thread::Builder::new()
            .name("ctrl-c".into())
            .spawn(move || {
                rt.block_on(async move {
                    while signals.recv().await.is_some() {
                        st.on_ctrl_c();
                    }
                })
            })
            .context("starting the Ctrl-C listener")?;
        Ok(state)
    }

    fn on_ctrl_c(&self) {
        let answer = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        match answer.as_ref() {
            Some(t) if !t.is_cancelled() => t.cancel(),
            // At the prompt, or a second Ctrl-C before the answer stopped: leave.
            _ => {
                let _ = std::io::stdout().flush();
                eprintln!();
                std::process::exit(130);
            }
        }
    }

    /// A fresh token for the next answer, which Ctrl-C now cancels.
    fn answering(&self) -> CancelToken {
        let t = CancelToken::new();
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        t
    }

    fn at_prompt(&self) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tm = args.load.load()?;
    let fresh = || args.system.iter().map(|s| ChatMessage::system(s)).collect::<Vec<_>>();
    let mut messages = fresh();
    let stdin = std::io::stdin();
    let opts = args.sample.options();
    let interrupt = Interrupt::install()?;
    eprintln!("chatting with {} (/reset, /exit; Ctrl-C stops an answer, or quits at the prompt)", tm.model.dir().display());
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
        let cancel = interrupt.answering();
        let result = tm.generator().generate(&ids, &opts, &sink, &cancel);
        interrupt.at_prompt();
        match result {
            Ok(g) => {
                println!();
                if g.reason == StopReason::Cancelled {
                    eprintln!("[stopped]");
                }
                // A stopped answer stays in the conversation as far as it got.
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
