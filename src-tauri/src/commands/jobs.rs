//! Long jobs: downloads and training. They run in the background, report typed events
//! (`download`, `train`) and stop on their cancel token.

use super::{AppError, CmdResult};
use crate::state::AppState;
use crate::views::{DatasetPreview, TrainRequest};
use tauri::State;

#[tauri::command]
pub async fn start_download(state: State<'_, AppState>, model: String) -> CmdResult<u64> {
    super::models::check_model_id(&model)?;
    if state.settings().offline {
        return Err(AppError::new(
            crate::error::ErrorCode::Offline,
            "offline mode is on: turn it off in Settings to download",
        ));
    }
    Err(AppError::not_built(
        "qlora_studio::hub download (resumable, with a progress sink and a cancel token)",
    ))
}

#[tauri::command]
pub fn cancel_download(state: State<'_, AppState>, job: u64) -> CmdResult<()> {
    state.cancel_job(job)
}

#[tauri::command]
pub async fn preview_dataset(path: String) -> CmdResult<DatasetPreview> {
    let p = std::path::Path::new(&path);
    if !p.is_file() {
        return Err(AppError::new(crate::error::ErrorCode::NotFound, format!("dataset file '{path}' does not exist")));
    }
    Err(AppError::not_built("qlora_studio::train dataset preview and preflight"))
}

#[tauri::command]
pub async fn start_training(request: TrainRequest) -> CmdResult<u64> {
    if request.steps == 0 {
        return Err(AppError::invalid("steps must be at least 1"));
    }
    Err(AppError::not_built("qlora_studio::train (QLoRA training with a progress sink and a cancel token)"))
}

#[tauri::command]
pub fn cancel_training(state: State<'_, AppState>, job: u64) -> CmdResult<()> {
    state.cancel_job(job)
}
