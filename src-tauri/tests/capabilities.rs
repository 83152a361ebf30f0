//! The window may call exactly the commands the app registers: every command has its
//! `allow-<name>` permission in the capability, no permission names a command that is gone,
//! no filesystem or shell plugin is granted, and the CSP stays strict.

use qlora_studio_app::COMMAND_NAMES;
use std::path::Path;

fn read_json(rel: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn permissions() -> Vec<String> {
    let cap = read_json("capabilities/default.json");
    cap["permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

#[test]
fn every_registered_command_has_a_permission() {
    let perms = permissions();
    for name in COMMAND_NAMES {
        let want = format!("allow-{}", name.replace('_', "-"));
        assert!(perms.contains(&want), "command `{name}` has no `{want}` in capabilities/default.json");
    }
}

#[test]
fn no_permission_for_a_command_that_does_not_exist() {
    for p in permissions().iter().filter(|p| p.starts_with("allow-")) {
        let name = p.trim_start_matches("allow-").replace('-', "_");
        assert!(COMMAND_NAMES.contains(&name.as_str()), "capability grants `{p}` but no command `{name}` exists");
    }
}

#[test]
fn only_the_dialog_plugin_and_core_events_are_granted() {
    for p in permissions().iter().filter(|p| p.contains(':')) {
        let allowed = ["core:event:allow-listen", "core:event:allow-unlisten", "core:app:allow-version", "dialog:allow-open"];
        assert!(allowed.contains(&p.as_str()), "unexpected plugin permission `{p}`: the UI gets no filesystem or shell access");
    }
}

#[test]
fn csp_is_strict() {
    let conf = read_json("../tauri.conf.json");
    let csp = &conf["app"]["security"]["csp"];
    assert_eq!(csp["default-src"], "'self'");
    assert_eq!(csp["script-src"], "'self'");
    assert_eq!(csp["object-src"], "'none'");
    let all = csp.to_string().replace("http://ipc.localhost", "");
    assert!(!all.contains("unsafe-inline") && !all.contains("unsafe-eval"), "CSP must not allow inline or eval: {all}");
    assert!(!all.contains("http:") && !all.contains("https:"), "the UI loads nothing from the network (only Tauri's IPC): {all}");
}
