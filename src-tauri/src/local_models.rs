//! Local model folders: Hub-style folders (config.json, tokenizer.json, *.safetensors) found
//! in the folders listed in Settings. This is how the starter model (SmolLM2-135M-Instruct,
//! imported from GGUF by `scripts/fetch-test-model.sh`) shows up as ready without the Hub.

use serde::Serialize;
use std::path::Path;
use ts_rs::TS;

/// A model folder on disk and whether it has what loading needs.
#[derive(Debug, Clone, Serialize, TS)]
pub struct LocalModel {
    /// The folder's name, shown as the model's name.
    pub name: String,
    pub path: String,
    /// Total size of the files in the folder.
    #[ts(type = "number")]
    pub bytes: u64,
    /// True when config.json, a tokenizer and at least one safetensors file are present.
    pub ready: bool,
    /// What is missing when not ready, e.g. "tokenizer.json".
    pub missing: Vec<String>,
}

/// Lists the model folders directly inside each of `dirs` (and each dir itself when it is a
/// model folder). Folders that do not exist are skipped: the Settings page shows them.
pub fn scan(dirs: &[String]) -> Vec<LocalModel> {
    let mut out = Vec::new();
    for dir in dirs {
        let dir = Path::new(dir);
        if dir.join("config.json").is_file() {
            out.push(inspect(dir));
            continue;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut found: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.join("config.json").is_file())
            .collect();
        found.sort();
        out.extend(found.iter().map(|p| inspect(p)));
    }
    out
}

fn inspect(dir: &Path) -> LocalModel {
    let mut bytes = 0;
    let mut has_weights = false;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(m) = e.metadata()
                && m.is_file()
            {
                bytes += m.len();
            }
            if p.extension().is_some_and(|x| x == "safetensors") {
                has_weights = true;
            }
        }
    }
    let mut missing = Vec::new();
    if !dir.join("tokenizer.json").is_file() {
        missing.push("tokenizer.json".to_string());
    }
    if !has_weights {
        missing.push("*.safetensors".to_string());
    }
    LocalModel {
        name: dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        path: dir.to_string_lossy().to_string(),
        bytes,
        ready: missing.is_empty(),
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ready_and_incomplete_model_folders() {
        let root = tempfile::tempdir().unwrap();
        let good = root.path().join("good");
        std::fs::create_dir(&good).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::write(good.join(f), b"0123").unwrap();
        }
        let half = root.path().join("half");
        std::fs::create_dir(&half).unwrap();
        std::fs::write(half.join("config.json"), b"{}").unwrap();
        std::fs::create_dir(root.path().join("not-a-model")).unwrap();

        let found = scan(&[root.path().to_string_lossy().to_string(), "/does/not/exist".into()]);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].name.as_str(), found[0].ready, found[0].bytes), ("good", true, 12));
        assert_eq!(found[1].missing, vec!["tokenizer.json", "*.safetensors"]);
        // A model folder named directly is listed too.
        assert_eq!(scan(&[good.to_string_lossy().to_string()]).len(), 1);
    }
}
