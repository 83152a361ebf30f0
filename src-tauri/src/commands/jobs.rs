//! Long jobs: downloads and training. They run in the background, report typed events
//! (`download`, `train`) and stop on their cancel token.

use super::{AppError, CmdResult};
use crate::state::AppState;
use crate::views::{DatasetPreview, TrainDefaults, TrainRequest};
use tauri::{AppHandle, Manager, State};

#[tauri::command]
pub async fn start_download(app: AppHandle, state: State<'_, AppState>, model: String) -> CmdResult<u64> {
    let model = model.trim().to_string();
    super::models::check_model_id(&model)?;
    let client = crate::hub::client(&state.settings(), state.cache_dir())?;
    let (job, cancel) = state.start_job();
    let mapper = crate::downloads::Mapper::new(job, &model);
    tauri::async_runtime::spawn(async move {
        let emit = |e| crate::events::emit_download(&app, e);
        crate::downloads::run(client, mapper, cancel, emit).await;
        app.state::<AppState>().finish_job(job);
    });
    Ok(job)
}

#[tauri::command]
pub fn cancel_download(state: State<'_, AppState>, job: u64) -> CmdResult<()> {
    state.cancel_job(job)
}

#[tauri::command]
pub async fn preview_dataset(state: State<'_, AppState>, request: TrainRequest) -> CmdResult<DatasetPreview> {
    let target = crate::training::target(&state.settings().open_device()?);
    super::app::run_blocking(move || {
        let cfg = crate::training::config(&request, target)?;
        let data = crate::training::prepare(&cfg)?;
        Ok(crate::training::preview(&cfg, &data))
    })
    .await
}

#[tauri::command]
pub async fn start_training(app: AppHandle, state: State<'_, AppState>, request: TrainRequest) -> CmdResult<u64> {
    if request.steps == 0 {
        return Err(AppError::invalid("steps must be at least 1"));
    }
    if request.output_dir.trim().is_empty() {
        return Err(AppError::invalid("pick an output folder: checkpoints and the adapter go there"));
    }
    // The data is checked before the job starts: a bad file is an error on the form.
    let resume = request.resume;
    let device = state.settings().open_device()?;
    let target = crate::training::target(&device);
    let (cfg, data) = super::app::run_blocking(move || {
        let cfg = crate::training::config(&request, target)?;
        let data = crate::training::prepare(&cfg)?;
        Ok((cfg, data))
    })
    .await?;
    let (job, cancel) = state.start_job();
    std::thread::spawn(move || {
        let emit = |e| crate::events::emit_train(&app, e);
        crate::training::run(job, cfg, data, resume, &device, &cancel, &emit);
        app.state::<AppState>().finish_job(job);
    });
    Ok(job)
}

/// The knobs of a config made for `base_model` when no preset is picked.
#[tauri::command]
pub async fn train_defaults(state: State<'_, AppState>, base_model: String) -> CmdResult<TrainDefaults> {
    let target = crate::training::target(&state.settings().open_device()?);
    super::app::run_blocking(move || crate::training::defaults_for(&base_model, target)).await
}

#[tauri::command]
pub fn cancel_training(state: State<'_, AppState>, job: u64) -> CmdResult<()> {
    state.cancel_job(job)
}
