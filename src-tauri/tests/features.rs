//! The app's `cuda` feature switches on what the root package's `cuda` does: the app depends on
//! the core crates directly, so a kernel feature added to one list and not the other would give
//! a GPU build of the app that trains or decodes without it, and no CPU build would notice.

use std::collections::BTreeSet;
use std::path::Path;

/// The items of `cuda = [...]` in `[features]` of the manifest at `path`.
fn cuda_feature(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let features = text.split("\n[features]\n").nth(1).unwrap_or_else(|| panic!("{}: no [features] table", path.display()));
    let table = features.split("\n[").next().unwrap();
    let line = table.lines().find(|l| l.trim_start().starts_with("cuda =")).unwrap_or_else(|| panic!("{}: no cuda feature", path.display()));
    let list = line.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(l, _)| l).expect("cuda = [...] on one line");
    list.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
}

#[test]
fn the_apps_cuda_feature_is_the_root_packages() {
    let app = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = cuda_feature(&app.join("Cargo.toml"));
    let root = cuda_feature(&app.join("../Cargo.toml"));
    assert!(root.contains("qlora-engine/cuda") && root.contains("qlora-train/cuda"), "root cuda feature: {root:?}");
    assert_eq!(ours, root, "src-tauri/Cargo.toml's cuda feature differs from the root package's: make the lists equal");
}
