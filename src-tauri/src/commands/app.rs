//! Settings and System.

use super::CmdResult;
use crate::settings::Settings;
use crate::state::AppState;
use crate::system::{self, GpuPresetView, SystemInfo};
use tauri::State;

#[tauri::command]
pub fn get_settings(state: State<'_, AppState>) -> Settings {
    state.settings()
}

#[tauri::command]
pub fn save_settings(state: State<'_, AppState>, settings: Settings) -> CmdResult<Settings> {
    state.set_settings(settings)
}

#[tauri::command]
pub async fn system_info(state: State<'_, AppState>) -> CmdResult<SystemInfo> {
    let cache = state.cache_dir();
    run_blocking(move || system::read(&cache)).await
}

#[tauri::command]
pub fn gpu_presets() -> CmdResult<Vec<GpuPresetView>> {
    system::presets()
}

/// Runs a blocking core call on its own thread, off the main thread and outside the async
/// runtime: some core calls (the planner's Hub reads) run a private runtime of their own,
/// which tokio refuses inside a runtime's threads, blocking pool included.
pub async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> CmdResult<T> + Send + 'static) -> CmdResult<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| super::AppError::new(crate::error::ErrorCode::Internal, "a background task stopped without an answer"))?
}
