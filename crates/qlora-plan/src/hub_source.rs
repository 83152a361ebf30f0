//! The Hub as a [`MetadataSource`]: the listing with sizes (`qlora_hub::remote::list_files`),
//! config.json and each safetensors header read with HTTP `Range` requests, and the bytes
//! still to fetch measured against the local Hugging Face cache with the downloader's own
//! plan (`qlora_hub::download::plan_from_listing`). No weight byte is requested.
//!
//! A model already in the cache is planned from its snapshot when the Hub cannot be asked:
//! in offline mode (`HF_HUB_OFFLINE`, the app's setting) nothing goes out at all, and when the
//! network is down the cached snapshot answers instead of the error. [`HubSource::cached_commit`]
//! says which snapshot was used, so a front end can tell the user.
//!
//! Calls are synchronous (each runs on a private runtime): call from a plain thread, not from
//! inside a tokio runtime (the app uses `spawn_blocking`).

use crate::PlanError;
use crate::source::{LocalFolder, MetadataSource};
use qlora_hub::remote::{self, RemoteFile, RepoListing, SafetensorsHeader, block_on};
use qlora_hub::select::SelectOptions;
use qlora_hub::{HubClient, HubError};
use std::sync::OnceLock;

/// Where the metadata comes from, decided on first use.
enum Origin {
    /// The Hub's listing at the resolved commit.
    Hub(RepoListing),
    /// The cache's snapshot of the revision (offline, or the Hub unreachable).
    Cache { listing: RepoListing, folder: LocalFolder },
}

impl Origin {
    fn listing(&self) -> &RepoListing {
        match self {
            Origin::Hub(l) | Origin::Cache { listing: l, .. } => l,
        }
    }
}

/// A model on the Hub (or a Hub-compatible server at `HF_ENDPOINT`).
pub struct HubSource {
    client: HubClient,
    repo: String,
    revision: String,
    origin: OnceLock<Origin>,
}

impl HubSource {
    pub fn new(client: HubClient, repo: &str, revision: &str) -> Self {
        Self { client, repo: repo.into(), revision: revision.into(), origin: OnceLock::new() }
    }

    /// The commit of the cached snapshot the metadata came from, when the Hub was not asked
    /// (offline mode, or the network down); `None` when the Hub answered or nothing was read yet.
    pub fn cached_commit(&self) -> Option<&str> {
        match self.origin.get()? {
            Origin::Cache { listing, .. } => Some(&listing.commit),
            Origin::Hub(_) => None,
        }
    }

    fn err(&self, e: HubError) -> PlanError {
        PlanError::Hub { model: self.describe(), reason: e.to_string() }
    }

    /// The cached snapshot of the revision, if the cache has one.
    fn cached_origin(&self) -> Option<Origin> {
        let cache_dir = &self.client.config().cache_dir;
        let listing = qlora_hub::cache::cached_listing(cache_dir, &self.repo, &self.revision)?;
        let dir = qlora_hub::cache::layout::RepoCache::new(cache_dir, &self.repo).snapshot_dir(&listing.commit);
        Some(Origin::Cache { listing, folder: LocalFolder::new(dir) })
    }

    fn origin(&self) -> Result<&Origin, PlanError> {
        if let Some(o) = self.origin.get() {
            return Ok(o);
        }
        let cfg = self.client.config();
        let origin = if cfg.offline {
            self.cached_origin().ok_or_else(|| self.err(HubError::Offline { what: self.describe(), cache: cfg.cache_dir.clone() }))?
        } else {
            match block_on(remote::list_files(&self.client, &self.repo, &self.revision)) {
                Ok(l) => Origin::Hub(l),
                // The Hub is unreachable: a cached copy still plans; without one, say why.
                Err(e) if e.code() == "network" => self.cached_origin().ok_or_else(|| self.err(e))?,
                Err(e) => return Err(self.err(e)),
            }
        };
        Ok(self.origin.get_or_init(|| origin))
    }
}

impl MetadataSource for HubSource {
    fn describe(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }

    fn listing(&self) -> Result<Vec<RemoteFile>, PlanError> {
        Ok(self.origin()?.listing().files.clone())
    }

    fn read_text(&self, path: &str) -> Result<String, PlanError> {
        let listing = match self.origin()? {
            Origin::Cache { listing, folder } if listing.get(path).is_some() => return folder.read_text(path),
            o => o.listing(),
        };
        let size = listing.get(path).map(|f| f.size).ok_or_else(|| PlanError::Hub {
            model: self.describe(),
            reason: match self.cached_commit() {
                Some(c) => format!("the cached snapshot {c} has no {path}; download the model again when online"),
                None => format!("the repository has no {path}; is it a transformers model?"),
            },
        })?;
        let commit = &listing.commit;
        let bytes = block_on(remote::read_range(&self.client, &self.repo, commit, path, 0, size)).map_err(|e| self.err(e))?;
        String::from_utf8(bytes).map_err(|e| PlanError::Hub { model: self.describe(), reason: format!("{path} is not UTF-8: {e}") })
    }

    fn safetensors_header(&self, path: &str) -> Result<SafetensorsHeader, PlanError> {
        match self.origin()? {
            Origin::Cache { folder, .. } => folder.safetensors_header(path),
            Origin::Hub(l) => block_on(remote::safetensors_header(&self.client, &self.repo, &l.commit, path)).map_err(|e| self.err(e)),
        }
    }

    fn to_fetch_bytes(&self, _selected: &[RemoteFile]) -> Result<u64, PlanError> {
        let listing = self.origin()?.listing();
        let plan =
            qlora_hub::download::plan_from_listing(&self.client.config().cache_dir, listing, &SelectOptions::default()).map_err(|e| self.err(e))?;
        Ok(plan.to_fetch_bytes)
    }
}
