//! One client for every Hub call: hf-hub 1.0 for what it does right (repository info, model
//! search), and its own HTTP client (reqwest) for what it cannot do, each reason pinned by a test
//! in `tests/hub_hf_hub_gaps.rs`:
//!
//! - hf-hub's file metadata follows an LFS file's 302 to the CDN and then fails on the missing
//!   `X-Repo-Commit`: we send the HEAD without following redirects and read `X-Linked-*`;
//! - hf-hub's tree listing drops the LFS SHA-256 (the Hub sends it as `lfs.oid`) and its repo
//!   info has no sizes (it never asks `?blobs=true`): we read the tree JSON ourselves;
//! - hf-hub streams a file in one GET and truncates `blobs/<sha>.incomplete` on the next run:
//!   our downloader resumes with `Range` and verifies before linking.
//!
//! Redirects are followed by hand, so the token goes only to the Hub's own host, never to a CDN
//! on another host (as huggingface_hub does).

use crate::config::{HubConfig, split_repo_id};
use crate::{HubError, Result};
use reqwest::{StatusCode, Url, header};
use std::time::Duration;

#[derive(Clone)]
pub struct HubClient {
    cfg: HubConfig,
    http: reqwest::Client,
    hf: hf_hub::HFClient,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient").field("cfg", &self.cfg).finish()
    }
}

impl HubClient {
    pub fn new(cfg: HubConfig) -> Result<Self> {
        let parsed = Url::parse(&cfg.endpoint).map_err(|e| HubError::BadEndpoint { endpoint: cfg.endpoint.clone(), detail: e.to_string() })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HubError::BadEndpoint { endpoint: cfg.endpoint.clone(), detail: "not http(s)".into() });
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("qlora-studio/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::Network { endpoint: cfg.endpoint.clone(), detail: e.to_string() })?;
        let mut b = hf_hub::HFClient::builder().endpoint(cfg.endpoint.clone()).cache_dir(cfg.cache_dir.clone()).retry_max_attempts(2).client(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| HubError::Network { endpoint: cfg.endpoint.clone(), detail: e.to_string() })?,
        );
        if let Some(t) = &cfg.token {
            b = b.token(t.clone());
        }
        let hf = b.build().map_err(|e| HubError::BadResponse { url: cfg.endpoint.clone(), what: e.to_string() })?;
        Ok(HubClient { cfg, http, hf })
    }

    pub fn from_env() -> Result<Self> {
        Self::new(HubConfig::from_env())
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    pub(crate) fn hf(&self) -> &hf_hub::HFClient {
        &self.hf
    }

    /// `Err(Offline)` in offline mode: nothing may go out.
    pub(crate) fn ensure_online(&self, what: &str) -> Result<()> {
        if self.cfg.offline {
            return Err(HubError::Offline { what: what.to_string(), cache: self.cfg.cache_dir.clone() });
        }
        Ok(())
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = Url::parse(&self.cfg.endpoint)
            .map_err(|e| HubError::BadResponse { url: self.cfg.endpoint.clone(), what: format!("bad HF_ENDPOINT: {e}") })?;
        {
            let mut p = url
                .path_segments_mut()
                .map_err(|_| HubError::BadResponse { url: self.cfg.endpoint.clone(), what: "HF_ENDPOINT cannot be a base URL".into() })?;
            p.pop_if_empty();
            for s in segments {
                p.push(s);
            }
        }
        Ok(url)
    }

    /// `{endpoint}/{org}/{name}/resolve/{revision}/{path}`, each part percent-encoded.
    pub(crate) fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> Result<Url> {
        let (org, name) = split_repo_id(repo)?;
        let mut segs = vec![org, name, "resolve", revision];
        segs.extend(path.split('/'));
        self.url(&segs)
    }

    /// `{endpoint}/api/models/{org}/{name}/{rest...}`.
    pub(crate) fn api_url(&self, repo: &str, rest: &[&str]) -> Result<Url> {
        let (org, name) = split_repo_id(repo)?;
        let mut segs = vec!["api", "models", org, name];
        segs.extend_from_slice(rest);
        self.url(&segs)
    }

    fn same_host(&self, url: &Url) -> bool {
        Url::parse(&self.cfg.endpoint).is_ok_and(|e| e.host_str() == url.host_str() && e.port_or_known_default() == url.port_or_known_default())
    }

    fn request(&self, method: reqwest::Method, url: &Url, range: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, url.clone()).header(header::ACCEPT_ENCODING, "identity");
        if let (Some(t), true) = (&self.cfg.token, self.same_host(url)) {
            r = r.bearer_auth(t);
        }
        if let Some(range) = range {
            r = r.header(header::RANGE, range);
        }
        r
    }

    pub(crate) fn network_error(&self, e: &reqwest::Error) -> HubError {
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            detail = format!("{detail}: {s}");
            src = s.source();
        }
        HubError::Network { endpoint: self.cfg.endpoint.clone(), detail }
    }

    /// HEAD without following redirects: the Hub's own answer with `X-Linked-*` for LFS files.
    pub(crate) async fn head(&self, url: &Url) -> Result<reqwest::Response> {
        self.request(reqwest::Method::HEAD, url, None).send().await.map_err(|e| self.network_error(&e))
    }

    /// GET (optionally a `Range`), following up to 5 redirects by hand; the token is sent only
    /// to the Hub's own host. The response may be any status: see [`Self::check`].
    pub(crate) async fn get(&self, url: &Url, range: Option<&str>) -> Result<reqwest::Response> {
        let mut url = url.clone();
        for _ in 0..5 {
            let resp = self.request(reqwest::Method::GET, &url, range).send().await.map_err(|e| self.network_error(&e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let loc = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            url = url.join(loc).map_err(|e| HubError::BadResponse { url: url.to_string(), what: format!("bad redirect '{loc}': {e}") })?;
        }
        Err(HubError::BadResponse { url: url.to_string(), what: "too many redirects".into() })
    }

    /// Turns a non-success answer into the error a user can act on.
    pub(crate) async fn check(&self, resp: reqwest::Response, repo: &str, revision: &str, path: Option<&str>) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            return Ok(resp);
        }
        let code = resp.headers().get("x-error-code").and_then(|v| v.to_str().ok()).map(String::from);
        let url = resp.url().to_string();
        let msg = resp.headers().get("x-error-message").and_then(|v| v.to_str().ok()).map(String::from);
        let msg = match msg {
            Some(m) => m,
            None => resp.text().await.unwrap_or_default().chars().take(300).collect(),
        };
        Err(self.classify(status.as_u16(), code.as_deref(), &msg, &url, repo, revision, path))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn classify(&self, status: u16, code: Option<&str>, msg: &str, url: &str, repo: &str, revision: &str, path: Option<&str>) -> HubError {
        let has_token = self.cfg.token.is_some();
        match (status, code) {
            (401, Some("GatedRepo")) => HubError::NoToken { repo: repo.into(), why: "it is a gated model".into() },
            (_, Some("GatedRepo")) => HubError::LicenceNotAccepted { repo: repo.into(), page_url: self.cfg.model_page(repo) },
            (_, Some("RevisionNotFound")) => HubError::RevisionNotFound { repo: repo.into(), revision: revision.into() },
            (_, Some("EntryNotFound")) => {
                HubError::EntryNotFound { repo: repo.into(), revision: revision.into(), path: path.unwrap_or_default().into() }
            }
            (401 | 404, Some("RepoNotFound")) | (401, _) => HubError::RepoNotFound {
                repo: repo.into(),
                endpoint: self.cfg.endpoint.clone(),
                hint: if has_token {
                    "; if it is private, check that your token has access to it"
                } else {
                    "; if it is private, log in first with `qlora login`"
                },
            },
            (404, _) if path.is_some() => {
                HubError::EntryNotFound { repo: repo.into(), revision: revision.into(), path: path.unwrap_or_default().into() }
            }
            _ => HubError::Http { url: url.into(), status, message: msg.into() },
        }
    }

    /// Maps hf-hub's error to ours.
    pub(crate) fn map_hf(&self, e: hf_hub::HFError, repo: &str, revision: &str) -> HubError {
        use hf_hub::HFError as E;
        match e {
            E::AuthRequired { context } | E::Forbidden { context } | E::Http { context } => self.classify(
                context.status.as_u16(),
                context.error_code.as_deref(),
                context.server_message.as_deref().unwrap_or(""),
                &context.url,
                repo,
                revision,
                None,
            ),
            E::RepoNotFound { context, .. } => {
                let code = context.as_ref().and_then(|c| c.error_code.clone()).unwrap_or_else(|| "RepoNotFound".into());
                self.classify(404, Some(&code), "", "", repo, revision, None)
            }
            // hf-hub calls any 404 of a revision's info "revision not found"; the Hub's error
            // code says whether the repository itself is missing.
            E::RevisionNotFound { context, .. } => {
                let code = context.as_ref().and_then(|c| c.error_code.clone()).unwrap_or_else(|| "RevisionNotFound".into());
                self.classify(404, Some(&code), "", "", repo, revision, None)
            }
            E::Request { source, .. } => self.network_error(&source),
            other => HubError::BadResponse { url: self.cfg.endpoint.clone(), what: other.to_string() },
        }
    }
}

/// True for a status that a retry may cure.
pub(crate) fn transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}
