//! Chat: conversations on disk and streamed generation through a `Channel`.

use super::{AppError, CmdResult};
use crate::conversations::{Conversation, ConversationSummary, Store};
use crate::state::AppState;
use crate::views::{ChatChunk, ChatRequest};
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
