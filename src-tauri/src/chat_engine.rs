//! Chat generation: the base model loaded once and kept (loading is the slow part), a
//! conversation turned into prompt ids by the model's own chat template, and tokens streamed
//! to the window through the command's `Channel` until done or stopped.

use crate::conversations::ChatMessage;
use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::{ChatChunk, ChatRequest};
use qlora_engine::chat_template::ChatMessage as EngineMessage;
use qlora_engine::generate::{GenerateEvent, GenerateOptions, StopReason};
use qlora_engine::{LoadOptions, TextModel};
use qlora_jobs::CancelToken;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The model currently loaded for chat, by folder.
#[derive(Default)]
pub struct Loaded(Mutex<Option<(PathBuf, Arc<TextModel>)>>);

impl Loaded {
    /// The model in `dir`, loading it unless it is the one already loaded.
    pub fn get(&self, dir: &Path) -> CmdResult<Arc<TextModel>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, m)) = slot.as_ref()
            && d == dir
        {
            return Ok(m.clone());
        }
        *slot = None; // free the old model before loading the next
        let tm = TextModel::load(dir, &LoadOptions::default()).map_err(engine_err)?;
        let tm = Arc::new(tm);
        *slot = Some((dir.to_path_buf(), tm.clone()));
        Ok(tm)
    }
}

fn engine_err(e: qlora_engine::Error) -> AppError {
    let msg = e.to_string();
    let code = if msg.starts_with("cannot read") { ErrorCode::NotFound } else { ErrorCode::BadFormat };
    AppError::new(code, msg)
}

/// The prompt messages: the system prompt (if any), then the conversation.
pub fn messages(system: &str, msgs: &[ChatMessage]) -> Vec<EngineMessage> {
    let mut out = Vec::new();
    if !system.trim().is_empty() {
        out.push(EngineMessage::system(system.trim()));
    }
    out.extend(msgs.iter().filter(|m| m.role != "system").map(|m| EngineMessage { role: m.role.clone(), content: m.content.clone() }));
    out
}

fn options(req: &ChatRequest) -> GenerateOptions {
    let s = &req.sampling;
    GenerateOptions {
        max_new_tokens: s.max_new_tokens as usize,
        temperature: s.temperature as f64,
        top_k: (s.top_k > 0).then_some(s.top_k as usize),
        top_p: (s.top_p < 1.0).then_some(s.top_p as f64),
        min_p: None,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed.unwrap_or_else(|| Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64),
        stop_strings: Vec::new(),
    }
}

/// Generates an answer, sending each piece to `send`. Blocking: run it on its own thread.
pub fn generate(loaded: &Loaded, req: &ChatRequest, cancel: &CancelToken, send: &(dyn Fn(ChatChunk) + Sync)) -> CmdResult<()> {
    if req.adapter.is_some() {
        return Err(AppError::not_built(
            "qlora_engine: a loaded Model exposing its LoRA layers (so lora::attach_adapter and set_scale_all apply a PEFT adapter at a scale)",
        ));
    }
    let dir = Path::new(req.model.trim());
    if !dir.is_dir() {
        return Err(AppError::new(
            ErrorCode::NotFound,
            format!("model folder '{}' does not exist: pick a ready model, or download it first", dir.display()),
        ));
    }
    let tm = loaded.get(dir)?;
    let ids = tm.chat_ids(&messages(&req.system_prompt, &req.messages)).map_err(engine_err)?;
    let start = Instant::now();
    let new_tokens = std::sync::atomic::AtomicUsize::new(0);
    let sink = |e: GenerateEvent| match e {
        GenerateEvent::Token { text, .. } if !text.is_empty() => send(ChatChunk::Token { text }),
        GenerateEvent::Done { new_tokens: n, .. } => new_tokens.store(n, std::sync::atomic::Ordering::Relaxed),
        _ => {}
    };
    let g = tm.generator().generate(&ids, &options(req), &sink, cancel).map_err(engine_err)?;
    let n = new_tokens.load(std::sync::atomic::Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    send(ChatChunk::Done { tokens: n as u32, tokens_per_sec: n as f64 / secs, stopped: g.reason == StopReason::Cancelled });
    Ok(())
}
