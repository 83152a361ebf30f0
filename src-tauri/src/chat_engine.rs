//! Chat generation: the base model loaded once and kept (loading is the slow part), a
//! conversation turned into prompt ids by the model's own chat template, and tokens streamed
//! to the window through the command's `Channel` until done or stopped. A PEFT adapter is
//! attached to the loaded model's LoRA layers and scaled per answer (0 = the base model), so
//! base and fine-tuned answers come from one copy of the base weights.

use crate::conversations::ChatMessage;
use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::{AdapterInfo, ChatChunk, ChatRequest};
use qlora_engine::chat_template::ChatMessage as EngineMessage;
use qlora_engine::generate::{GenerateEvent, GenerateOptions, StopReason};
use qlora_engine::lora::{self, LoraError, LoraLayers};
use qlora_engine::{LoadOptions, TextModel};
use qlora_jobs::CancelToken;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The model loaded for chat, with its projections wrapped once for LoRA so an adapter is
/// attached, rescaled and dropped without reloading the base.
struct Slot {
    dir: PathBuf,
    tm: Arc<TextModel>,
    layers: LoraLayers,
    /// The adapter folder attached now, if any.
    adapter: Option<PathBuf>,
}

/// The model currently loaded for chat, by folder. `busy` is held for a whole answer (and
/// while an adapter changes), so one answer's adapter and scale are not changed under it.
#[derive(Default)]
pub struct Loaded {
    slot: Mutex<Option<Slot>>,
    busy: Mutex<()>,
    /// The compute device the next load uses (Settings); a change reloads the model.
    device: Mutex<Option<(qlora_engine::DeviceChoice, qlora_engine::candle_core::Device)>>,
}

impl Loaded {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Slot>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the device models load on from now on (Settings' choice); a model loaded on
    /// another device is dropped and loads again on the next answer. Opens the device only
    /// when the choice changes.
    pub fn set_device(&self, choice: qlora_engine::DeviceChoice) -> CmdResult<()> {
        let mut d = self.device.lock().unwrap_or_else(|p| p.into_inner());
        if d.as_ref().is_some_and(|(c, _)| *c == choice) {
            return Ok(());
        }
        let device = choice.open().map_err(|e| AppError::invalid(format!("compute device: {e}")))?;
        *d = Some((choice, device));
        drop(d);
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        *self.lock() = None;
        Ok(())
    }

    fn device(&self) -> qlora_engine::candle_core::Device {
        let d = self.device.lock().unwrap_or_else(|p| p.into_inner());
        d.as_ref().map_or(qlora_engine::candle_core::Device::Cpu, |(_, dev)| dev.clone())
    }

    /// The model in `dir` and its LoRA layers, loading it unless it is the one already loaded.
    fn get(&self, dir: &Path) -> CmdResult<(Arc<TextModel>, LoraLayers)> {
        let mut slot = self.lock();
        if let Some(s) = slot.as_ref()
            && s.dir == dir
        {
            return Ok((s.tm.clone(), s.layers.clone()));
        }
        *slot = None; // free the old model before loading the next
        let opts = LoadOptions { device: self.device(), ..LoadOptions::default() };
        let mut tm = TextModel::load(dir, &opts).map_err(engine_err)?;
        let layers = tm.model.lora_layers().map_err(engine_err)?;
        let tm = Arc::new(tm);
        *slot = Some(Slot { dir: dir.to_path_buf(), tm: tm.clone(), layers: layers.clone(), adapter: None });
        Ok((tm, layers))
    }

    /// Attaches the PEFT adapter in `adapter` to the model in `model` (loaded if needed, never
    /// reloaded), replacing any adapter attached before; all or nothing.
    pub fn attach(&self, model: &Path, adapter: &Path) -> CmdResult<AdapterInfo> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        self.attach_locked(model, adapter)
    }

    fn attach_locked(&self, model: &Path, adapter: &Path) -> CmdResult<AdapterInfo> {
        check_dir(model, "model folder", "pick a ready model, or download it first")?;
        check_dir(adapter, "adapter folder", "pick the folder holding adapter_config.json (the Train page's output)")?;
        let (tm, layers) = self.get(model)?;
        let attached = lora::attach_adapter(adapter, &layers, tm.model.device(), None).map_err(lora_err)?;
        if let Some(s) = self.lock().as_mut() {
            s.adapter = Some(adapter.to_path_buf());
        }
        Ok(AdapterInfo {
            dir: adapter.display().to_string(),
            modules: attached.modules.len() as u32,
            rank: attached.config.r as u32,
            alpha: attached.config.lora_alpha,
            base_model: attached.config.base_model_name_or_path.clone(),
        })
    }

    /// Drops the adapter: the loaded model answers as the base again.
    pub fn detach(&self) {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = self.lock().as_mut() {
            lora::detach_all(&s.layers);
            s.adapter = None;
        }
    }

    /// The adapter attached now, if any.
    pub fn adapter(&self) -> Option<PathBuf> {
        self.lock().as_ref().and_then(|s| s.adapter.clone())
    }

    /// The model for one answer, with the request's adapter attached (if not already) at the
    /// request's scale; with no adapter in the request, an attached adapter is set to scale 0
    /// (the base model's answer) and stays attached for the next request.
    fn prepare(&self, req: &ChatRequest) -> CmdResult<Arc<TextModel>> {
        let dir = Path::new(req.model.trim());
        check_dir(dir, "model folder", "pick a ready model, or download it first")?;
        let adapter = req.adapter.as_deref().map(str::trim).filter(|a| !a.is_empty()).map(PathBuf::from);
        if let Some(a) = &adapter {
            let attached = self.lock().as_ref().is_some_and(|s| s.dir == dir && s.adapter.as_deref() == Some(a.as_path()));
            if !attached {
                self.attach_locked(dir, a)?;
            }
        }
        let (tm, layers) = self.get(dir)?;
        let scale = if adapter.is_some() { req.adapter_scale as f64 } else { 0.0 };
        if !scale.is_finite() || !(0.0..=4.0).contains(&scale) {
            return Err(AppError::invalid(format!("adapter scale {scale} is out of range: use 0 (base) to 4")));
        }
        lora::set_scale_all(&layers, scale);
        Ok(tm)
    }
}

fn check_dir(dir: &Path, what: &str, fix: &str) -> CmdResult<()> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(AppError::new(ErrorCode::NotFound, format!("{what} '{}' does not exist: {fix}", dir.display())))
}

fn engine_err(e: qlora_engine::Error) -> AppError {
    let msg = e.to_string();
    let code = if msg.starts_with("cannot read") { ErrorCode::NotFound } else { ErrorCode::BadFormat };
    AppError::new(code, msg)
}

fn lora_err(e: LoraError) -> AppError {
    let code = match &e {
        LoraError::MissingFile { .. } => ErrorCode::NotFound,
        LoraError::Io { .. } => ErrorCode::Io,
        LoraError::DoesNotFit { .. } | LoraError::NoSuchModule { .. } => ErrorCode::InvalidInput,
        _ => ErrorCode::BadFormat,
    };
    AppError::new(code, e.to_string())
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
    let _busy = loaded.busy.lock().unwrap_or_else(|p| p.into_inner());
    let tm = loaded.prepare(req)?;
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

#[cfg(test)]
#[path = "chat_engine_tests.rs"]
pub(crate) mod tests;
