//! Models, Planner and Library: the curated list, Hub search and model details, local model
//! folders, the planner, and the cache manager.

use super::{AppError, CmdResult};
use crate::local_models::{self, LocalModel};
use crate::state::AppState;
use crate::views::{CacheReport, CachedRepo, CuratedModel, ModelDetail, ModelHit, PlanReport, PlanRequest};
use tauri::{AppHandle, Manager, State};

#[tauri::command]
pub fn curated_models() -> Vec<CuratedModel> {
    crate::views::curated()
}

#[tauri::command]
pub fn list_local_models(state: State<'_, AppState>) -> Vec<LocalModel> {
    let mut dirs = state.settings().local_model_dirs;
    let imported = state.models_dir().to_string_lossy().to_string();
    if !dirs.contains(&imported) {
        dirs.push(imported);
    }
    let mut found = local_models::scan(&dirs);
    local_models::mark_imported(&mut found, &state.models_dir());
    found
}

/// Deletes a model imported into the app's models folder; returns the bytes freed.
#[tauri::command]
pub async fn delete_local_model(state: State<'_, AppState>, path: String) -> CmdResult<u64> {
    let models = state.models_dir();
    super::app::run_blocking(move || local_models::delete_imported(&models, &path)).await
}

/// Starts importing a GGUF file into the app's models folder, as a job with `import` events;
/// the file, the name and the free disk are checked first, so bad input is an error here.
#[tauri::command]
pub async fn import_gguf(app: AppHandle, state: State<'_, AppState>, path: String) -> CmdResult<u64> {
    let models = state.models_dir();
    let plan = super::app::run_blocking(move || local_models::plan_import(&models, &path)).await?;
    let (job, cancel) = state.start_job();
    std::thread::spawn(move || {
        let emit = |e| crate::events::emit_import(&app, e);
        local_models::run_import(job, &plan, &cancel, &emit);
        app.state::<AppState>().finish_job(job);
    });
    Ok(job)
}

#[tauri::command]
pub fn cancel_import(state: State<'_, AppState>, job: u64) -> CmdResult<()> {
    state.cancel_job(job)
}

/// Checks the shape of a Hub model id (`org/name`) before anything goes to the network.
pub fn check_model_id(id: &str) -> CmdResult<()> {
    let id = id.trim();
    let ok_part =
        |p: &str| !p.is_empty() && p.len() <= 96 && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.');
    let parts: Vec<_> = id.split('/').collect();
    if parts.len() == 2 && parts.iter().all(|p| ok_part(p)) {
        Ok(())
    } else {
        Err(AppError::invalid(format!("'{id}' is not a Hub model id: use the form organisation/name, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0")))
    }
}

#[tauri::command]
pub async fn search_models(state: State<'_, AppState>, query: String) -> CmdResult<Vec<ModelHit>> {
    if query.trim().is_empty() {
        return Err(AppError::invalid("type part of a model name to search the Hub"));
    }
    let hub = crate::hub::client(&state.settings(), state.cache_dir())?;
    super::app::run_blocking(move || crate::hub::search(&hub, &query)).await
}

#[tauri::command]
pub async fn model_info(state: State<'_, AppState>, id: String) -> CmdResult<ModelDetail> {
    check_model_id(&id)?;
    let hub = crate::hub::client(&state.settings(), state.cache_dir())?;
    super::app::run_blocking(move || crate::hub::details(&hub, id.trim())).await
}

#[tauri::command]
pub async fn plan_model(state: State<'_, AppState>, request: PlanRequest) -> CmdResult<PlanReport> {
    if request.model.trim().is_empty() {
        return Err(AppError::invalid("name a model: a Hub id such as TinyLlama/TinyLlama-1.1B-Chat-v1.0 or a local folder"));
    }
    if request.context == 0 || request.batch_size == 0 {
        return Err(AppError::invalid("context length and batch size must be at least 1"));
    }
    let model = request.model.trim();
    if !model.starts_with('/') {
        check_model_id(model)?;
    }
    let settings = state.settings();
    let device = settings.device_choice()?;
    let hub = crate::hub::client(&settings, state.cache_dir())?;
    super::app::run_blocking(move || crate::planning::plan(&request, hub, device)).await
}

#[tauri::command]
pub async fn library_list(state: State<'_, AppState>) -> CmdResult<Vec<CachedRepo>> {
    let cache = state.cache_dir();
    super::app::run_blocking(move || Ok(crate::library::list(&cache))).await
}

#[tauri::command]
pub async fn library_delete(state: State<'_, AppState>, id: String, dry_run: bool) -> CmdResult<CacheReport> {
    check_model_id(&id)?;
    let cache = state.cache_dir();
    super::app::run_blocking(move || crate::library::delete(&cache, &id, dry_run).map_err(crate::hub::to_app)).await
}

#[tauri::command]
pub async fn library_prune(state: State<'_, AppState>, dry_run: bool) -> CmdResult<CacheReport> {
    let cache = state.cache_dir();
    super::app::run_blocking(move || crate::library::prune(&cache, dry_run).map_err(crate::hub::to_app)).await
}

#[tauri::command]
pub async fn library_verify(state: State<'_, AppState>, id: String) -> CmdResult<CacheReport> {
    check_model_id(&id)?;
    let cache = state.cache_dir();
    super::app::run_blocking(move || crate::library::verify(&cache, &id).map_err(crate::hub::to_app)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_checked_before_the_network() {
        check_model_id("TinyLlama/TinyLlama-1.1B-Chat-v1.0").unwrap();
        check_model_id("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        for bad in ["", "gpt2", "a/b/c", "../etc", "org/na me", "org/.hidden"] {
            let e = check_model_id(bad).unwrap_err();
            assert!(e.message.contains("organisation/name"), "{bad}: {}", e.message);
        }
    }
}
