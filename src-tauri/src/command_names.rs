// Every command the shell registers, by name. Shared by `build.rs` (Tauri generates one
// `allow-<name>` permission per entry and refuses unlisted commands), by `lib.rs`'s handler
// (a test checks the two lists agree) and by the capability test.
// Kept as a plain include so the build script can read it without building the crate.

/// The names of every `#[tauri::command]` the app registers.
pub const COMMAND_NAMES: &[&str] = &[
    "get_settings",
    "save_settings",
    "system_info",
    "curated_models",
    "search_models",
    "model_info",
    "list_local_models",
    "import_gguf",
    "cancel_import",
    "delete_local_model",
    "gpu_presets",
    "plan_model",
    "start_download",
    "cancel_download",
    "library_list",
    "library_delete",
    "library_prune",
    "library_verify",
    "preview_dataset",
    "start_training",
    "train_defaults",
    "cancel_training",
    "list_conversations",
    "load_conversation",
    "save_conversation",
    "delete_conversation",
    "chat_send",
    "chat_stop",
    "chat_attach_adapter",
    "chat_detach_adapter",
];
