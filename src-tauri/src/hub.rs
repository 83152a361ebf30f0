//! The Hub client as the app configures it (endpoint, token, cache folder and offline mode
//! from Settings, on top of the usual HF_* environment), and the Hub's errors as app errors.

use crate::error::{AppError, ErrorCode};
use crate::settings::Settings;
use qlora_hub::{HubClient, HubConfig, HubError};
use std::path::PathBuf;

/// The Hub configuration for these settings.
pub fn config(settings: &Settings, cache_dir: PathBuf) -> HubConfig {
    let mut c = HubConfig::from_env();
    c.endpoint = settings.endpoint.trim().trim_end_matches('/').to_string();
    if settings.hub_token.is_some() {
        c.token = settings.hub_token.clone();
    }
    c.offline = c.offline || settings.offline;
    c.cache_dir = cache_dir;
    c
}

pub fn client(settings: &Settings, cache_dir: PathBuf) -> Result<HubClient, AppError> {
    HubClient::new(config(settings, cache_dir)).map_err(to_app)
}

/// A stable code for each kind of Hub failure; the message is the Hub error's own.
pub fn code(e: &HubError) -> ErrorCode {
    match e {
        HubError::InvalidRepoId { .. } => ErrorCode::InvalidInput,
        HubError::RepoNotFound { .. } | HubError::RevisionNotFound { .. } | HubError::EntryNotFound { .. } => {
            ErrorCode::NotFound
        }
        HubError::Network { .. } | HubError::Offline { .. } | HubError::Stalled { .. } | HubError::Interrupted { .. } => {
            ErrorCode::Offline
        }
        HubError::NotEnoughSpace { .. } => ErrorCode::DoesNotFit,
        HubError::DiskFull { .. } => ErrorCode::Io,
        HubError::Cancelled => ErrorCode::Cancelled,
        HubError::Busy { .. } => ErrorCode::Busy,
        HubError::NoToken { .. } | HubError::LicenceNotAccepted { .. } => ErrorCode::InvalidInput,
        _ => ErrorCode::Internal,
    }
}

pub fn to_app(e: HubError) -> AppError {
    AppError::new(code(&e), e.to_string())
}
