//! Local model folders: Hub-style folders (config.json, tokenizer.json, *.safetensors) found
//! in the folders listed in Settings. This is how the starter model (SmolLM2-135M-Instruct,
//! imported from GGUF by `scripts/fetch-test-model.sh`) shows up as ready without the Hub,
//! and GGUF files the user imports (into the app's `models/` folder).

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::ImportEvent;
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    /// True for a GGUF imported into the app's models folder: the app may delete it.
    pub imported: bool,
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
        let mut found: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() && p.join("config.json").is_file()).collect();
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
        imported: false,
    }
}

/// The folder name an imported GGUF gets: the file name without `.gguf`, with anything but
/// letters, digits, `.`, `-` and `_` replaced by `-`.
fn folder_name(file: &Path) -> CmdResult<String> {
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let name: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    let name = name.trim_start_matches('.').to_string();
    if name.is_empty() {
        return Err(AppError::invalid(format!("'{}' has no usable file name: rename it, e.g. my-model.gguf", file.display())));
    }
    Ok(name)
}

/// Refuses an import that would not fit: `need` bytes into `dir` with `free` available, keeping
/// the downloads' margin spare ([`qlora_hub::disk::fits`], as the CLI's import does).
fn check_disk(need: u64, free: u64, dir: &Path) -> CmdResult<()> {
    if !qlora_hub::disk::fits(need, free) {
        return Err(AppError::new(
            ErrorCode::DoesNotFit,
            format!(
                "importing writes {} of f32 weights to {}, which has {} free: free some space there, or move the app's folder (QLORA_STUDIO_HOME) to a larger disk",
                qlora_hub::human(need),
                dir.display(),
                qlora_hub::human(free)
            ),
        ));
    }
    Ok(())
}

/// Marks the models that live in the app's models folder (imported GGUF files).
pub fn mark_imported(models: &mut [LocalModel], models_dir: &Path) {
    for m in models {
        m.imported = Path::new(&m.path).parent() == Some(models_dir);
    }
}

/// Deletes an imported model's folder; only folders directly in `models_dir` (the app's own
/// imports) may go, never a folder the user listed in Settings or the Hugging Face cache.
/// Returns the bytes freed.
pub fn delete_imported(models_dir: &Path, path: &str) -> CmdResult<u64> {
    let dir = Path::new(path.trim());
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let inside = match (canon(dir), canon(models_dir)) {
        (Some(d), Some(m)) => d.parent() == Some(m.as_path()) && d.join("config.json").is_file(),
        _ => false,
    };
    if !inside {
        return Err(AppError::invalid(format!(
            "'{}' is not a model imported into {}: only imported models are deleted here; remove other folders yourself",
            dir.display(),
            models_dir.display()
        )));
    }
    let freed = inspect(dir).bytes;
    std::fs::remove_dir_all(dir).map_err(|e| AppError::new(ErrorCode::Io, format!("cannot delete {}: {e}", dir.display())))?;
    Ok(freed)
}

/// A GGUF import that passed its checks: where from, where to, how much it writes.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub file: PathBuf,
    pub out: PathBuf,
    pub name: String,
    pub bytes: u64,
}

fn bad_gguf(e: qlora_engine::Error) -> AppError {
    match e {
        qlora_engine::Error::Cancelled(_) => AppError::new(ErrorCode::Cancelled, "import cancelled"),
        e => AppError::new(ErrorCode::BadFormat, e.to_string()),
    }
}

/// Checks a GGUF import before it starts: the file (what llama.cpp, LM Studio and Ollama keep
/// models in) exists and reads as GGUF, its folder name in `models_dir` is free, and the disk
/// there has room for what the import writes.
pub fn plan_import(models_dir: &Path, file: &str) -> CmdResult<ImportPlan> {
    let file = file.trim();
    if file.is_empty() {
        return Err(AppError::invalid("choose a .gguf file to import"));
    }
    let path = Path::new(file);
    if !path.is_file() {
        return Err(AppError::new(
            ErrorCode::NotFound,
            format!("'{file}' is not a file: choose a .gguf file (llama.cpp, LM Studio and Ollama models are GGUF files)"),
        ));
    }
    let name = folder_name(path)?;
    let out = models_dir.join(&name);
    if out.exists() {
        return Err(AppError::invalid(format!(
            "a model named '{name}' is already imported at {}: it is in the list; delete that folder to import the file again",
            out.display()
        )));
    }
    let bytes = qlora_engine::gguf::import_bytes(path).map_err(bad_gguf)?;
    std::fs::create_dir_all(models_dir).map_err(|e| AppError::new(ErrorCode::Io, format!("cannot create {}: {e}", models_dir.display())))?;
    if let Ok(d) = qlora_gpu::disk_space(models_dir) {
        check_disk(bytes, d.available_bytes, models_dir)?;
    }
    Ok(ImportPlan { file: path.to_path_buf(), out, name, bytes })
}

/// Runs a planned import as job `job`, reporting through `emit`: the engine writes a
/// temporary folder tensor by tensor and renames it into place, so a cancel or a failure
/// leaves nothing behind.
pub fn run_import(job: u64, plan: &ImportPlan, cancel: &qlora_jobs::CancelToken, emit: &dyn Fn(ImportEvent)) {
    emit(ImportEvent::Started { job, file: plan.file.to_string_lossy().to_string(), name: plan.name.clone(), total_bytes: plan.bytes });
    let mut progress = |done_bytes, total_bytes| emit(ImportEvent::Progress { job, done_bytes, total_bytes });
    match qlora_engine::gguf::import_gguf_with(&plan.file, &plan.out, &mut progress, cancel).map_err(bad_gguf) {
        Ok(_) => emit(ImportEvent::Finished { job, model: inspect(&plan.out) }),
        Err(e) if e.code == ErrorCode::Cancelled => emit(ImportEvent::Cancelled { job }),
        Err(error) => emit(ImportEvent::Failed { job, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_gguf() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf_spm/tiny-llama-spm.gguf")
    }

    fn import(models: &Path, file: &str, cancel: &qlora_jobs::CancelToken) -> CmdResult<Vec<ImportEvent>> {
        let plan = plan_import(models, file)?;
        let events = std::sync::Mutex::new(Vec::new());
        run_import(7, &plan, cancel, &|e| events.lock().unwrap().push(e));
        Ok(events.into_inner().unwrap())
    }

    #[test]
    fn imports_a_gguf_into_a_ready_folder_once() {
        let home = tempfile::tempdir().unwrap();
        let models = home.path().join("models");
        let events = import(&models, &format!("  {}  ", fixture_gguf().display()), &Default::default()).unwrap();
        let ImportEvent::Started { name, total_bytes, .. } = &events[0] else { panic!("{events:?}") };
        assert_eq!(name, "tiny-llama-spm");
        let progress: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                ImportEvent::Progress { done_bytes, .. } => Some(*done_bytes),
                _ => None,
            })
            .collect();
        assert_eq!(progress.len(), 21, "one progress event a tensor");
        assert_eq!(progress.last(), Some(total_bytes));
        let ImportEvent::Finished { model, .. } = events.last().unwrap() else { panic!("{events:?}") };
        assert_eq!((model.name.as_str(), model.ready), ("tiny-llama-spm", true), "{model:?}");
        assert_eq!(scan(&[models.to_string_lossy().to_string()]).len(), 1);
        let again = plan_import(&models, fixture_gguf().to_str().unwrap()).unwrap_err();
        assert_eq!(again.code, ErrorCode::InvalidInput);
        assert!(again.message.contains("already imported"), "{}", again.message);
        // Only the model folder: no temporary folder left behind.
        assert_eq!(std::fs::read_dir(&models).unwrap().count(), 1);
    }

    #[test]
    fn only_imported_models_can_be_deleted() {
        let home = tempfile::tempdir().unwrap();
        let models = home.path().join("models");
        import(&models, fixture_gguf().to_str().unwrap(), &Default::default()).unwrap();
        let other = home.path().join("elsewhere").join("mine");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("config.json"), b"{}").unwrap();
        let mut found = scan(&[models.to_string_lossy().to_string(), home.path().join("elsewhere").to_string_lossy().to_string()]);
        mark_imported(&mut found, &models);
        assert_eq!(found.iter().map(|m| (m.name.as_str(), m.imported)).collect::<Vec<_>>(), vec![("tiny-llama-spm", true), ("mine", false)]);
        // Not an import, the models folder itself, a path escaping it: refused, nothing deleted.
        for bad in [other.clone(), models.clone(), models.join("tiny-llama-spm/../../elsewhere/mine"), models.join("nope")] {
            let e = delete_imported(&models, bad.to_str().unwrap()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidInput, "{}", bad.display());
        }
        assert!(other.join("config.json").is_file());
        let freed = delete_imported(&models, &found[0].path).unwrap();
        assert_eq!(freed, found[0].bytes);
        assert!(scan(&[models.to_string_lossy().to_string()]).is_empty());
    }

    #[test]
    fn a_cancelled_import_says_so_and_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let models = home.path().join("models");
        let cancel = qlora_jobs::CancelToken::new();
        cancel.cancel();
        let events = import(&models, fixture_gguf().to_str().unwrap(), &cancel).unwrap();
        assert!(matches!(events.last(), Some(ImportEvent::Cancelled { job: 7 })), "{events:?}");
        assert_eq!(std::fs::read_dir(&models).unwrap().count(), 0);
    }

    #[test]
    fn bad_imports_say_what_to_do_and_write_nothing() {
        let home = tempfile::tempdir().unwrap();
        let models = home.path().join("models");
        let e = plan_import(&models, "").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        let e = plan_import(&models, "/no/such/model.gguf").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("/no/such/model.gguf") && e.message.contains(".gguf file"), "{}", e.message);
        let fake = home.path().join("notes.gguf");
        std::fs::write(&fake, b"this is not a GGUF file").unwrap();
        let e = plan_import(&models, fake.to_str().unwrap()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFormat);
        assert!(e.message.contains("notes.gguf") && e.message.contains("not a readable GGUF"), "{}", e.message);
        assert!(!models.exists(), "nothing is created for a bad file");
    }

    #[test]
    fn an_import_that_does_not_fit_the_disk_is_refused_first() {
        let need = qlora_engine::gguf::import_bytes(&fixture_gguf()).unwrap();
        // 400 x 64 embeddings and lm_head, 2 layers of attention and MLP, norms: all f32.
        assert_eq!(need, 4 * (2 * 400 * 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 128 + 2 * 64) + 64));
        let e = check_disk(need, 10 << 20, Path::new("/models")).unwrap_err();
        assert_eq!(e.code, ErrorCode::DoesNotFit);
        assert!(e.message.contains("/models") && e.message.contains("free"), "{}", e.message);
        check_disk(need, 1 << 30, Path::new("/models")).unwrap();
        assert_eq!(folder_name(Path::new("/x/Mistral 7B (v0.2).Q4_K_M.gguf")).unwrap(), "Mistral-7B--v0.2-.Q4_K_M");
        assert_eq!(folder_name(Path::new("/x/.gguf")).unwrap(), "gguf");
        assert!(folder_name(Path::new("/")).is_err());
    }

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
