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

/// Runs a blocking core call off the main thread.
pub async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> CmdResult<T> + Send + 'static) -> CmdResult<T> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .map_err(|e| super::AppError::new(crate::error::ErrorCode::Internal, format!("a background task failed: {e}")))?
}
