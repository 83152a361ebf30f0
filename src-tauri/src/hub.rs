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
        HubError::RepoNotFound { .. } | HubError::RevisionNotFound { .. } | HubError::EntryNotFound { .. } => ErrorCode::NotFound,
        HubError::Network { .. } | HubError::Offline { .. } | HubError::Stalled { .. } | HubError::Interrupted { .. } => ErrorCode::Offline,
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

/// How many search results the Models page shows.
pub const SEARCH_LIMIT: usize = 20;

/// Hub models whose id contains `query`, most downloaded first. Blocking: call off the main thread.
pub fn search(client: &HubClient, query: &str) -> Result<Vec<crate::views::ModelHit>, AppError> {
    if client.config().offline {
        return Err(AppError::new(
            ErrorCode::Offline,
            "offline mode is on: searching the Hub needs the network; turn offline mode off in Settings, or use a ready or cached model",
        ));
    }
    let found = qlora_hub::remote::block_on(qlora_hub::remote::search_models(client, query.trim(), SEARCH_LIMIT)).map_err(to_app)?;
    Ok(found
        .into_iter()
        .map(|m| crate::views::ModelHit { id: m.id, downloads: m.downloads, likes: m.likes, pipeline_tag: m.pipeline_tag, gated: m.gated })
        .collect())
}

/// A model's card summary, licence and files, each marked when a download fetches it.
/// Blocking: call off the main thread.
pub fn details(client: &HubClient, id: &str) -> Result<crate::views::ModelDetail, AppError> {
    use qlora_hub::select::{SelectOptions, files_for_load};
    let d = qlora_hub::remote::block_on(qlora_hub::remote::model_details(client, id, "main")).map_err(to_app)?;
    // A repository the loader cannot read (no weights it knows) still shows its files.
    let selected: Vec<String> =
        files_for_load(&d.files, &SelectOptions::default()).map(|s| s.files.into_iter().map(|f| f.path).collect()).unwrap_or_default();
    let files: Vec<crate::views::RepoFile> =
        d.files.iter().map(|f| crate::views::RepoFile { path: f.path.clone(), size: f.size, selected: selected.contains(&f.path) }).collect();
    let cached = qlora_hub::cache::cached_listing(&client.config().cache_dir, id, "main").is_some_and(|l| l.commit == d.commit);
    Ok(crate::views::ModelDetail {
        id: d.id.clone(),
        revision: d.commit.clone(),
        summary: d.summary.clone(),
        license: d.license.clone(),
        gated: d.gated,
        pipeline_tag: d.pipeline_tag.clone(),
        tags: d.tags.clone(),
        downloads: d.downloads,
        likes: d.likes,
        download_bytes: files.iter().filter(|f| f.selected).map(|f| f.size).sum(),
        repo_bytes: d.total_bytes(),
        files,
        cached,
        from_cache: d.from_cache,
    })
}
