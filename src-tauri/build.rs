//! The config lives at the top level (`../tauri.conf.json`), so the build script names it and
//! generates the context (feature `codegen`): plain `cargo build -p qlora-studio-app` works with
//! no Tauri CLI. The app manifest lists every command, so Tauri generates one `allow-<command>`
//! permission each and refuses any command a capability does not grant.

include!("src/command_names.rs");

fn main() {
    let attrs = tauri_build::Attributes::new()
        .config_path("../tauri.conf.json")
        .codegen(tauri_build::CodegenContext::new())
        .app_manifest(tauri_build::AppManifest::new().commands(COMMAND_NAMES));
    if let Err(e) = tauri_build::try_build(attrs) {
        eprintln!("tauri build failed: {e:#}");
        std::process::exit(1);
    }
}
