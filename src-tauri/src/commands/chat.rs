//! Chat: conversations on disk and streamed generation through a `Channel`.

use super::{AppError, CmdResult};
use crate::conversations::{Conversation, ConversationSummary, Store};
use crate::state::AppState;
use crate::views::{AdapterInfo, ChatChunk, ChatRequest};
use tauri::State;
use tauri::ipc::Channel;

#[tauri::command]
pub fn list_conversations(state: State<'_, AppState>) -> Vec<ConversationSummary> {
    Store::new(&state.home).list()
}

#[tauri::command]
pub fn load_conversation(state: State<'_, AppState>, id: String) -> CmdResult<Conversation> {
    Store::new(&state.home).load(&id)
}

#[tauri::command]
pub fn save_conversation(state: State<'_, AppState>, conversation: Conversation) -> CmdResult<Conversation> {
    Store::new(&state.home).save(conversation)
}

#[tauri::command]
pub fn delete_conversation(state: State<'_, AppState>, id: String) -> CmdResult<()> {
    Store::new(&state.home).delete(&id)
}

#[tauri::command]
pub async fn chat_send(state: State<'_, AppState>, request: ChatRequest, on_chunk: Channel<ChatChunk>) -> CmdResult<()> {
    if request.model.trim().is_empty() {
        return Err(AppError::invalid("pick a model to chat with"));
    }
    state.chat_model.set_device(state.settings().device_choice()?)?;
    let cancel = state.start_job_with_id(request.stream);
    let loaded = state.chat_model.clone();
    let stream = request.stream;
    let result = super::app::run_blocking(move || {
        let send = |c: ChatChunk| {
            let _ = on_chunk.send(c);
        };
        crate::chat_engine::generate(&loaded, &request, &cancel, &send)
    })
    .await;
    state.finish_job(stream);
    result
}

#[tauri::command]
pub fn chat_stop(state: State<'_, AppState>, stream: u64) -> CmdResult<()> {
    state.cancel_job(stream)
}

/// Attaches the PEFT adapter folder `adapter` to the chat model `model` (loaded if needed; the
/// base is not reloaded). Fails, naming the modules and shapes, for an adapter of another base.
#[tauri::command]
pub async fn chat_attach_adapter(state: State<'_, AppState>, model: String, adapter: String) -> CmdResult<AdapterInfo> {
    if model.trim().is_empty() {
        return Err(AppError::invalid("pick a model to chat with before attaching an adapter"));
    }
    if adapter.trim().is_empty() {
        return Err(AppError::invalid("pick an adapter folder (the Train page's output, or Browse…)"));
    }
    state.chat_model.set_device(state.settings().device_choice()?)?;
    let loaded = state.chat_model.clone();
    super::app::run_blocking(move || loaded.attach(std::path::Path::new(model.trim()), std::path::Path::new(adapter.trim()))).await
}

/// Drops the adapter from the chat model: answers come from the base again.
#[tauri::command]
pub async fn chat_detach_adapter(state: State<'_, AppState>) -> CmdResult<()> {
    let loaded = state.chat_model.clone();
    super::app::run_blocking(move || {
        loaded.detach();
        Ok(())
    })
    .await
}
