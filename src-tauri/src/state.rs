//! What the shell holds while the app runs: where its files live, the settings, and the cancel
//! tokens of running jobs (downloads, training, chat streams), keyed by job id.

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::settings::Settings;
use qlora_jobs::{CancelToken, JobId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Environment variable that moves the app's own files (settings, conversations) elsewhere:
/// the end-to-end tests and benchmarks use it to start from a clean state.
pub const HOME_ENV: &str = "QLORA_STUDIO_HOME";
/// Environment variable naming a local models folder to add to the settings at start
/// (`scripts/run-app.sh` passes `test-assets/`, where the starter model lives).
pub const LOCAL_MODELS_ENV: &str = "QLORA_STUDIO_LOCAL_MODELS";

pub struct AppState {
    pub home: PathBuf,
    settings: Mutex<Settings>,
    jobs: Mutex<HashMap<u64, CancelToken>>,
    /// The model loaded for chat, kept between messages.
    pub chat_model: std::sync::Arc<crate::chat_engine::Loaded>,
}

impl AppState {
    /// Loads the settings from `home`, adding the folder named by [`LOCAL_MODELS_ENV`].
    pub fn open(home: &Path) -> CmdResult<Self> {
        let mut settings = Settings::load(&Self::settings_path(home))?;
        if let Some(dir) = std::env::var_os(LOCAL_MODELS_ENV).filter(|d| !d.is_empty())
            && settings.add_local_dir(Path::new(&dir))
        {
            settings.save(&Self::settings_path(home))?;
        }
        Ok(Self { home: home.to_path_buf(), settings: Mutex::new(settings), jobs: Mutex::default(), chat_model: Default::default() })
    }

    /// Where imported GGUF models go (`<home>/models`); always listed with the local models.
    pub fn models_dir(&self) -> PathBuf {
        self.home.join("models")
    }

    fn settings_path(home: &Path) -> PathBuf {
        home.join("settings.json")
    }

    pub fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Validates, saves, then takes the new settings.
    pub fn set_settings(&self, new: Settings) -> CmdResult<Settings> {
        new.validate()?;
        new.save(&Self::settings_path(&self.home))?;
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
        Ok(new)
    }

    /// The Hugging Face cache folder in use: the setting, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(d) = self.settings().cache_dir {
            return PathBuf::from(d);
        }
        if let Some(h) = std::env::var_os("HF_HOME") {
            return PathBuf::from(h).join("hub");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        home.join(".cache/huggingface/hub")
    }

    /// Registers a new job and returns its id and cancel token.
    pub fn start_job(&self) -> (u64, CancelToken) {
        let id = JobId::next().0;
        let token = CancelToken::new();
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(id, token.clone());
        (id, token)
    }

    /// Registers a job under an id the UI chose (chat streams).
    pub fn start_job_with_id(&self, id: u64) -> CancelToken {
        let token = CancelToken::new();
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(id, token.clone());
        token
    }

    pub fn finish_job(&self, id: u64) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Fires the job's cancel token; the job stops at its next check.
    pub fn cancel_job(&self, id: u64) -> CmdResult<()> {
        match self.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            Some(t) => {
                t.cancel();
                Ok(())
            }
            None => Err(AppError::new(ErrorCode::NotFound, format!("no running job {id}: it has already finished"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_cancel_by_id_and_unknown_ids_say_so() {
        let home = tempfile::tempdir().unwrap();
        let state = AppState::open(home.path()).unwrap();
        let (id, token) = state.start_job();
        state.cancel_job(id).unwrap();
        assert!(token.is_cancelled());
        state.finish_job(id);
        assert_eq!(state.cancel_job(id).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn invalid_settings_are_not_saved() {
        let home = tempfile::tempdir().unwrap();
        let state = AppState::open(home.path()).unwrap();
        let bad = Settings { endpoint: "nope".into(), ..Default::default() };
        assert!(state.set_settings(bad).is_err());
        assert_eq!(state.settings(), Settings::default());
        assert!(!home.path().join("settings.json").exists());
    }
}
