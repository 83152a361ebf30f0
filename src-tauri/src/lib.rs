//! qlora-studio's desktop app: a thin Tauri v2 shell over the `qlora_studio` core. The web UI
//! (`ui/`) calls the commands in [`commands`]; each converts, calls the core, converts back.
//! Long jobs report typed events ([`events`]); chat streams tokens through a `Channel`.
//! The TypeScript types the UI uses are generated from the Rust types here ([`bindings`]) and a
//! test fails when the committed `ui/src/bindings.ts` is stale.

pub mod bindings;
pub mod chat_engine;
pub mod commands;
pub mod conversations;
pub mod downloads;
pub mod error;
pub mod events;
pub mod hub;
pub mod library;
pub mod local_models;
pub mod planning;
pub mod samples;
pub mod settings;
pub mod state;
pub mod system;
pub mod training;
pub mod views;

include!("command_names.rs");

use tauri::Manager;

/// Builds and runs the app; returns when the last window closes.
pub fn run() {
    let result = tauri::Builder::default()
        .plugin(tauri_plugin_dialog::init())
        .setup(|app| {
            let home = match std::env::var_os(state::HOME_ENV) {
                Some(h) if !h.is_empty() => std::path::PathBuf::from(h),
                _ => app.path().app_data_dir()?,
            };
            app.manage(state::AppState::open(&home)?);
            Ok(())
        })
        // Keep in the order of COMMAND_NAMES: a test checks the two lists agree.
        .invoke_handler(tauri::generate_handler![
            commands::app::get_settings,
            commands::app::save_settings,
            commands::app::system_info,
            commands::models::curated_models,
            commands::models::search_models,
            commands::models::model_info,
            commands::models::list_local_models,
            commands::models::import_gguf,
            commands::models::cancel_import,
            commands::models::delete_local_model,
            commands::app::gpu_presets,
            commands::models::plan_model,
            commands::jobs::start_download,
            commands::jobs::cancel_download,
            commands::models::library_list,
            commands::models::library_delete,
            commands::models::library_prune,
            commands::models::library_verify,
            commands::jobs::preview_dataset,
            commands::jobs::start_training,
            commands::jobs::train_defaults,
            commands::jobs::cancel_training,
            commands::chat::list_conversations,
            commands::chat::load_conversation,
            commands::chat::save_conversation,
            commands::chat::delete_conversation,
            commands::chat::chat_send,
            commands::chat::chat_stop,
            commands::chat::chat_attach_adapter,
            commands::chat::chat_detach_adapter,
        ])
        .run(tauri::tauri_build_context!());
    if let Err(e) = result {
        eprintln!("qlora-studio could not start: {e}");
        std::process::exit(1);
    }
}
