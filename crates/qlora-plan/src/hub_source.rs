//! The Hub as a [`MetadataSource`]: the listing with sizes (`qlora_hub::remote::list_files`),
//! config.json and each safetensors header read with HTTP `Range` requests, and the bytes
//! still to fetch measured against the local Hugging Face cache with the downloader's own
//! plan (`qlora_hub::download::plan_from_listing`). No weight byte is requested.
//!
//! Calls are synchronous (each runs on a private runtime): call from a plain thread, not from
//! inside a tokio runtime (the app uses `spawn_blocking`).

use crate::PlanError;
use crate::source::MetadataSource;
use qlora_hub::HubClient;
use qlora_hub::remote::{self, RemoteFile, RepoListing, SafetensorsHeader, block_on};
use qlora_hub::select::SelectOptions;
use std::sync::OnceLock;

/// A model on the Hub (or a Hub-compatible server at `HF_ENDPOINT`).
pub struct HubSource {
    client: HubClient,
    repo: String,
    revision: String,
    listing: OnceLock<RepoListing>,
}

impl HubSource {
    pub fn new(client: HubClient, repo: &str, revision: &str) -> Self {
        Self { client, repo: repo.into(), revision: revision.into(), listing: OnceLock::new() }
    }

    fn err(&self, e: qlora_hub::HubError) -> PlanError {
        PlanError::Hub { model: self.describe(), reason: e.to_string() }
    }

    fn repo_listing(&self) -> Result<&RepoListing, PlanError> {
        if let Some(l) = self.listing.get() {
            return Ok(l);
        }
        let l = block_on(remote::list_files(&self.client, &self.repo, &self.revision)).map_err(|e| self.err(e))?;
        Ok(self.listing.get_or_init(|| l))
    }

    /// The commit the revision resolved to (read once the listing was fetched).
    fn commit(&self) -> Result<String, PlanError> {
        Ok(self.repo_listing()?.commit.clone())
    }
}

impl MetadataSource for HubSource {
    fn describe(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }

    fn listing(&self) -> Result<Vec<RemoteFile>, PlanError> {
        Ok(self.repo_listing()?.files.clone())
    }

    fn read_text(&self, path: &str) -> Result<String, PlanError> {
        let listing = self.repo_listing()?;
        let size = listing.get(path).map(|f| f.size).ok_or_else(|| PlanError::Hub {
            model: self.describe(),
            reason: format!("the repository has no {path}; is it a transformers model?"),
        })?;
        let commit = self.commit()?;
        let bytes = block_on(remote::read_range(&self.client, &self.repo, &commit, path, 0, size)).map_err(|e| self.err(e))?;
        String::from_utf8(bytes).map_err(|e| PlanError::Hub { model: self.describe(), reason: format!("{path} is not UTF-8: {e}") })
    }

    fn safetensors_header(&self, path: &str) -> Result<SafetensorsHeader, PlanError> {
        let commit = self.commit()?;
        block_on(remote::safetensors_header(&self.client, &self.repo, &commit, path)).map_err(|e| self.err(e))
    }

    fn to_fetch_bytes(&self, _selected: &[RemoteFile]) -> Result<u64, PlanError> {
        let listing = self.repo_listing()?;
        let plan = qlora_hub::download::plan_from_listing(&self.client.config().cache_dir, listing, &SelectOptions::default())
            .map_err(|e| self.err(e))?;
        Ok(plan.to_fetch_bytes)
    }
}
