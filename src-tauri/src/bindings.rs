//! TypeScript bindings for the UI, generated from the Rust types with `ts-rs` (a stable
//! release with no tie to Tauri's version; specta + tauri-specta would also type the command
//! wrappers but are still release candidates pinned to particular Tauri versions).
//! [`typescript`] writes every type, the event names and payloads, and a `Commands` map of
//! each command's arguments and result; `ui/src/api.ts` builds its typed `call` on that map.
//! The test `bindings_are_current` fails when `ui/src/bindings.ts` differs; run it with
//! `UPDATE_BINDINGS=1` to rewrite the file.

use crate::conversations::{ChatMessage, Conversation, ConversationSummary, Sampling};
use crate::error::{AppError, ErrorCode};
use crate::local_models::LocalModel;
use crate::settings::Settings;
use crate::system::{DiskView, GpuPresetView, GpuView, SystemInfo};
use crate::views::*;
use ts_rs::{Config, TS};

/// One command: its name, its arguments (as the UI passes them, camelCase) and its result.
pub struct CommandSig {
    pub name: &'static str,
    pub args: Vec<(&'static str, String)>,
    pub result: String,
}

fn sig(name: &'static str, args: Vec<(&'static str, String)>, result: String) -> CommandSig {
    CommandSig { name, args, result }
}

/// Every command's signature, in the order of `COMMAND_NAMES`.
pub fn commands(cfg: &Config) -> Vec<CommandSig> {
    let n = |s: &str| s.to_string();
    let t = |name: String| name;
    vec![
        sig("get_settings", vec![], t(Settings::name(cfg))),
        sig("save_settings", vec![("settings", Settings::name(cfg))], Settings::name(cfg)),
        sig("system_info", vec![], SystemInfo::name(cfg)),
        sig("curated_models", vec![], format!("{}[]", CuratedModel::name(cfg))),
        sig("search_models", vec![("query", n("string"))], format!("{}[]", ModelHit::name(cfg))),
        sig("model_info", vec![("id", n("string"))], ModelDetail::name(cfg)),
        sig("list_local_models", vec![], format!("{}[]", LocalModel::name(cfg))),
        sig("import_gguf", vec![("path", n("string"))], n("number")),
        sig("cancel_import", vec![("job", n("number"))], n("null")),
        sig("delete_local_model", vec![("path", n("string"))], n("number")),
        sig("gpu_presets", vec![], format!("{}[]", GpuPresetView::name(cfg))),
        sig("plan_model", vec![("request", PlanRequest::name(cfg))], PlanReport::name(cfg)),
        sig("start_download", vec![("model", n("string"))], n("number")),
        sig("cancel_download", vec![("job", n("number"))], n("null")),
        sig("library_list", vec![], format!("{}[]", CachedRepo::name(cfg))),
        sig("library_delete", vec![("id", n("string")), ("dryRun", n("boolean"))], CacheReport::name(cfg)),
        sig("library_prune", vec![("dryRun", n("boolean"))], CacheReport::name(cfg)),
        sig("library_verify", vec![("id", n("string"))], CacheReport::name(cfg)),
        sig("preview_dataset", vec![("request", TrainRequest::name(cfg))], DatasetPreview::name(cfg)),
        sig("start_training", vec![("request", TrainRequest::name(cfg))], n("number")),
        sig("train_defaults", vec![("baseModel", n("string"))], TrainDefaults::name(cfg)),
        sig("cancel_training", vec![("job", n("number"))], n("null")),
        sig("list_conversations", vec![], format!("{}[]", ConversationSummary::name(cfg))),
        sig("load_conversation", vec![("id", n("string"))], Conversation::name(cfg)),
        sig("save_conversation", vec![("conversation", Conversation::name(cfg))], Conversation::name(cfg)),
        sig("delete_conversation", vec![("id", n("string"))], n("null")),
        sig("chat_send", vec![("request", ChatRequest::name(cfg)), ("onChunk", format!("Channel<{}>", ChatChunk::name(cfg)))], n("null")),
        sig("chat_stop", vec![("stream", n("number"))], n("null")),
        sig("chat_attach_adapter", vec![("model", n("string")), ("adapter", n("string"))], AdapterInfo::name(cfg)),
        sig("chat_detach_adapter", vec![], n("null")),
    ]
}

/// The whole `ui/src/bindings.ts`.
pub fn typescript() -> String {
    let cfg = Config::new().with_large_int("number");
    let decls = [
        ErrorCode::decl(&cfg),
        AppError::decl(&cfg),
        Settings::decl(&cfg),
        GpuView::decl(&cfg),
        DiskView::decl(&cfg),
        SystemInfo::decl(&cfg),
        GpuPresetView::decl(&cfg),
        CuratedModel::decl(&cfg),
        ModelHit::decl(&cfg),
        RepoFile::decl(&cfg),
        ModelDetail::decl(&cfg),
        LocalModel::decl(&cfg),
        GpuChoice::decl(&cfg),
        PlanRequest::decl(&cfg),
        PlanItem::decl(&cfg),
        Verdict::decl(&cfg),
        PlanReport::decl(&cfg),
        DownloadEvent::decl(&cfg),
        ImportEvent::decl(&cfg),
        CachedRepo::decl(&cfg),
        CacheReport::decl(&cfg),
        DatasetPreview::decl(&cfg),
        TrainRequest::decl(&cfg),
        TrainDefaults::decl(&cfg),
        TrainEvent::decl(&cfg),
        SampleAnswer::decl(&cfg),
        ChatMessage::decl(&cfg),
        Sampling::decl(&cfg),
        Conversation::decl(&cfg),
        ConversationSummary::decl(&cfg),
        ChatRequest::decl(&cfg),
        ChatChunk::decl(&cfg),
        AdapterInfo::decl(&cfg),
    ];
    let mut out = String::from(
        "// Generated from the Rust types in src-tauri by `UPDATE_BINDINGS=1 cargo test -p qlora-studio-app --lib bindings`.\n\
         // Do not edit: a test fails when this file is stale.\n\
         import type { Channel } from \"@tauri-apps/api/core\";\n\n",
    );
    for d in decls {
        out.push_str("export ");
        out.push_str(d.trim());
        out.push_str("\n\n");
    }
    out.push_str(&format!(
        "/** Event names, and the payload each carries. */\nexport const EVENTS = {{ download: \"{}\", train: \"{}\", import: \"{}\" }} as const;\n",
        crate::events::DOWNLOAD_EVENT,
        crate::events::TRAIN_EVENT,
        crate::events::IMPORT_EVENT
    ));
    out.push_str("export interface EventPayloads { download: DownloadEvent; train: TrainEvent; import: ImportEvent }\n\n");
    out.push_str("/** Every command: its arguments and its result. */\nexport interface Commands {\n");
    for c in commands(&cfg) {
        let args: Vec<String> = c.args.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        out.push_str(&format!("  {}: {{ args: {{ {} }}; result: {} }};\n", c.name, args.join("; "), c.result));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn bindings_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ui/src/bindings.ts")
    }

    #[test]
    fn bindings_are_current() {
        let want = typescript();
        if std::env::var_os("UPDATE_BINDINGS").is_some() {
            std::fs::write(bindings_path(), &want).unwrap();
        }
        let have = std::fs::read_to_string(bindings_path()).unwrap_or_default();
        assert!(have == want, "ui/src/bindings.ts is stale: run `UPDATE_BINDINGS=1 cargo test -p qlora-studio-app --lib bindings` and commit it");
    }

    #[test]
    fn every_command_has_a_signature_in_order() {
        let cfg = Config::new();
        let names: Vec<_> = commands(&cfg).iter().map(|c| c.name).collect();
        assert_eq!(names, crate::COMMAND_NAMES);
    }

    #[test]
    fn the_handler_registers_exactly_the_named_commands() {
        // The handler list in lib.rs, read from the source: generate_handler! offers no list.
        let src = include_str!("lib.rs");
        let start = src.find("generate_handler![").unwrap();
        let end = start + src[start..].find("])").unwrap();
        let registered: Vec<_> = src[start..end]
            .lines()
            .skip(1)
            .map(|l| l.trim().trim_end_matches(','))
            .filter(|l| !l.is_empty())
            .map(|l| l.rsplit("::").next().unwrap())
            .collect();
        assert_eq!(registered, crate::COMMAND_NAMES);
    }
}
