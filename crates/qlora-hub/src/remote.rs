//! What the Hub knows about a model, fetched without downloading weights: its commit, the file
//! listing with sizes and checksums (git blob id, LFS SHA-256), one file's metadata, a byte
//! range of a file, and a safetensors header (first 8 bytes give the header length, then the
//! JSON header) read over HTTP `Range`, a model search and a model's details (card summary,
//! licence, files with sizes) for choosing one. The planner plans from these; the downloader
//! fetches from them; the app's Models page shows them.

use crate::cache::layout::{safe_etag, safe_relative};
use crate::client::HubClient;
use crate::config::split_repo_id;
use crate::{HubError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One file of a repository at a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Path in the repository, `/`-separated, checked safe (no `..`, not absolute).
    pub path: String,
    pub size: u64,
    /// Git blob id (of the LFS pointer, for an LFS file).
    pub blob_id: String,
    /// SHA-256 of the content, for LFS files.
    pub lfs_sha256: Option<String>,
}

impl RemoteFile {
    /// The ETag the Hub gives the content, and the blob's name in the cache: the LFS SHA-256,
    /// else the git blob id.
    pub fn etag(&self) -> &str {
        self.lfs_sha256.as_deref().unwrap_or(&self.blob_id)
    }
}

/// A repository's files at one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoListing {
    pub repo: String,
    /// The revision asked for (branch, tag or commit).
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    pub files: Vec<RemoteFile>,
    pub gated: bool,
    pub private: bool,
}

impl RepoListing {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn get(&self, path: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// The commit a revision points to, and the repository's access flags (hf-hub's repo info).
pub async fn resolve_revision(client: &HubClient, repo: &str, revision: &str) -> Result<(String, bool, bool)> {
    client.ensure_online(&format!("{repo}@{revision}"))?;
    let (org, name) = split_repo_id(repo)?;
    let info = client.hf().model(org, name).info().revision(revision.to_string()).send().await.map_err(|e| client.map_hf(e, repo, revision))?;
    let url = client.api_url(repo, &["revision", revision])?.to_string();
    let commit = info.sha.ok_or_else(|| HubError::BadResponse { url, what: "repo info without a commit sha".into() })?;
    let gated = info.gated.as_ref().is_some_and(|g| g != &serde_json::Value::Bool(false));
    Ok((commit, gated, info.private.unwrap_or(false)))
}

#[derive(Deserialize)]
struct TreeLfs {
    oid: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    size: u64,
    lfs: Option<TreeLfs>,
}

/// Every file of `repo` at `revision`, with sizes and checksums; a hostile file name (`..`,
/// absolute) fails the whole listing.
pub async fn list_files(client: &HubClient, repo: &str, revision: &str) -> Result<RepoListing> {
    let (commit, gated, private) = resolve_revision(client, repo, revision).await?;
    let mut url = client.api_url(repo, &["tree", &commit])?;
    url.query_pairs_mut().append_pair("recursive", "true");
    let mut files = Vec::new();
    let mut next = Some(url);
    while let Some(url) = next.take() {
        let resp = client.get(&url, None).await?;
        let resp = client.check(resp, repo, revision, None).await?;
        next = next_link(resp.headers());
        let text = resp.text().await.map_err(|e| client.network_error(&e))?;
        let entries: Vec<TreeEntry> =
            serde_json::from_str(&text).map_err(|e| HubError::BadResponse { url: url.to_string(), what: format!("tree listing: {e}") })?;
        for e in entries.into_iter().filter(|e| e.kind == "file") {
            safe_relative(repo, &e.path)?;
            safe_etag(repo, &e.oid)?;
            let lfs_sha256 = e.lfs.map(|l| l.oid);
            if let Some(s) = &lfs_sha256 {
                safe_etag(repo, s)?;
            }
            files.push(RemoteFile { path: e.path, size: e.size, blob_id: e.oid, lfs_sha256 });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(RepoListing { repo: repo.into(), revision: revision.into(), commit, files, gated, private })
}

fn next_link(h: &reqwest::header::HeaderMap) -> Option<reqwest::Url> {
    let link = h.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find(|p| p.contains("rel=\"next\"")).and_then(|p| {
        let (a, b) = (p.find('<')?, p.find('>')?);
        reqwest::Url::parse(&p[a + 1..b]).ok()
    })
}

/// One file's metadata from a `HEAD` on its resolve URL, redirects not followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMetadata {
    pub commit: String,
    /// Git blob id, or SHA-256 for LFS files.
    pub etag: String,
    pub size: u64,
    /// Where the content is (the CDN for LFS files).
    pub location: String,
}

pub async fn file_metadata(client: &HubClient, repo: &str, revision: &str, path: &str) -> Result<FileMetadata> {
    client.ensure_online(&format!("{repo}@{revision}/{path}"))?;
    safe_relative(repo, path)?;
    let url = client.resolve_url(repo, revision, path)?;
    let resp = client.head(&url).await?;
    let resp = client.check(resp, repo, revision, Some(path)).await?;
    let h = resp.headers();
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(|s| s.trim_start_matches("W/").trim_matches('"').to_string());
    let bad = |what: &str| HubError::BadResponse { url: url.to_string(), what: what.into() };
    let commit = get("x-repo-commit").ok_or_else(|| bad("no X-Repo-Commit header: HF_ENDPOINT is not a Hub"))?;
    let etag = get("x-linked-etag").or_else(|| get("etag")).ok_or_else(|| bad("no ETag header"))?;
    let size = get("x-linked-size")
        .or_else(|| (!resp.status().is_redirection()).then(|| get("content-length")).flatten())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no file size (X-Linked-Size or Content-Length)"))?;
    let location = get("location").map_or_else(|| url.to_string(), |l| url.join(&l).map(|u| u.to_string()).unwrap_or(l));
    Ok(FileMetadata { commit, etag, size, location })
}

/// `len` bytes of a file from `start`, with one `Range` request (through the LFS redirect).
pub async fn read_range(client: &HubClient, repo: &str, revision: &str, path: &str, start: u64, len: u64) -> Result<Vec<u8>> {
    client.ensure_online(&format!("{repo}@{revision}/{path}"))?;
    safe_relative(repo, path)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let url = client.resolve_url(repo, revision, path)?;
    let range = format!("bytes={}-{}", start, start + len - 1);
    let resp = client.get(&url, Some(&range)).await?;
    let resp = client.check(resp, repo, revision, Some(path)).await?;
    let partial = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let bytes = resp.bytes().await.map_err(|e| client.network_error(&e))?;
    // A server that ignores Range sends the whole file: cut out the part asked for.
    let bytes = if partial { bytes.to_vec() } else { bytes.iter().skip(start as usize).take(len as usize).copied().collect() };
    if bytes.len() as u64 != len {
        return Err(HubError::BadResponse { url: url.to_string(), what: format!("asked for {len} bytes at {start}, got {}", bytes.len()) });
    }
    Ok(bytes)
}

/// One tensor in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data_offsets: (u64, u64),
}

/// A safetensors file's header: every tensor's dtype, shape and byte range, and `__metadata__`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetensorsHeader {
    /// Length of the JSON header (the file's first 8 bytes, little-endian).
    pub header_len: u64,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Refuse headers larger than this (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

impl SafetensorsHeader {
    /// Parses the JSON header bytes (those after the 8-byte length).
    pub fn parse(header_len: u64, json: &[u8]) -> std::result::Result<Self, String> {
        let mut v: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json).map_err(|e| format!("header JSON: {e}"))?;
        let metadata = match v.remove("__metadata__") {
            Some(m) => serde_json::from_value(m).map_err(|e| format!("__metadata__: {e}"))?,
            None => BTreeMap::new(),
        };
        let tensors = v
            .into_iter()
            .map(|(k, t)| serde_json::from_value(t).map(|t| (k.clone(), t)).map_err(|e| format!("tensor '{k}': {e}")))
            .collect::<std::result::Result<_, _>>()?;
        Ok(SafetensorsHeader { header_len, tensors, metadata })
    }

    /// Reads the header of a local safetensors file (two small reads, no weights).
    pub fn read_file(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| HubError::io(path, e))?;
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(|e| HubError::io(path, e))?;
        let n = u64::from_le_bytes(n);
        let bad = |detail: String| HubError::BadSafetensors { repo: String::new(), path: path.display().to_string(), detail };
        if n > MAX_HEADER {
            return Err(bad(format!("header length {n} is larger than 100 MB")));
        }
        let mut json = vec![0u8; n as usize];
        f.read_exact(&mut json).map_err(|e| HubError::io(path, e))?;
        Self::parse(n, &json).map_err(bad)
    }

    /// Bytes of tensor data (the file size minus 8 and the header).
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.data_offsets.1).max().unwrap_or(0)
    }
}

/// A remote safetensors file's header, read with two `Range` requests: 8 bytes, then the JSON.
pub async fn safetensors_header(client: &HubClient, repo: &str, revision: &str, path: &str) -> Result<SafetensorsHeader> {
    let bad = |detail: String| HubError::BadSafetensors { repo: repo.into(), path: path.into(), detail };
    let head = read_range(client, repo, revision, path, 0, 8).await?;
    let n = u64::from_le_bytes(head.try_into().map_err(|_| bad("shorter than 8 bytes".into()))?);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} is larger than 100 MB")));
    }
    let json = read_range(client, repo, revision, path, 8, n).await?;
    SafetensorsHeader::parse(n, &json).map_err(bad)
}

/// A model found by [`search_models`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSummary {
    pub id: String,
    pub gated: bool,
    pub private: bool,
    pub downloads: u64,
    pub likes: u64,
    pub last_modified: Option<String>,
    /// The task, such as `text-generation`.
    pub pipeline_tag: Option<String>,
    pub tags: Vec<String>,
}

/// Models whose id contains `query`, most downloaded first (hf-hub's `list_models`, in the
/// Hub's `full` form so gated models are marked).
pub async fn search_models(client: &HubClient, query: &str, limit: usize) -> Result<Vec<ModelSummary>> {
    use futures::StreamExt;
    client.ensure_online("a model search")?;
    let stream = client
        .hf()
        .list_models()
        .search(query.to_string())
        .sort("downloads".to_string())
        .limit(limit)
        .full(true)
        .send()
        .map_err(|e| client.map_hf(e, query, "main"))?;
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        let m = m.map_err(|e| client.map_hf(e, query, "main"))?;
        out.push(ModelSummary {
            gated: m.gated.as_ref().is_some_and(|g| g != &serde_json::Value::Bool(false)),
            private: m.private.unwrap_or(false),
            downloads: m.downloads.unwrap_or(0),
            likes: m.likes.unwrap_or(0),
            last_modified: m.last_modified,
            pipeline_tag: m.pipeline_tag,
            tags: m.tags.unwrap_or_default(),
            id: m.id,
        });
    }
    Ok(out)
}

/// What a model's page says, for choosing one before downloading it: the card's summary and
/// licence, the counters, and every file with its size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelDetails {
    pub id: String,
    /// The revision asked for, and the commit it resolved to.
    pub revision: String,
    pub commit: String,
    /// The model card's first paragraph of prose (front matter, headings, badges and images
    /// skipped); empty when the repository has no README.
    pub summary: String,
    /// The card's `license` (its `license_name` for `other`), else a `license:` tag.
    pub license: Option<String>,
    pub gated: bool,
    pub private: bool,
    pub pipeline_tag: Option<String>,
    pub tags: Vec<String>,
    pub downloads: u64,
    pub likes: u64,
    pub last_modified: Option<String>,
    /// The card's YAML front matter as the Hub parsed it (`cardData`).
    pub card_data: Option<serde_json::Value>,
    pub files: Vec<RemoteFile>,
    /// Read from the local cache (offline mode), not from the Hub: counters are 0, tags empty.
    pub from_cache: bool,
}

impl ModelDetails {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[derive(Deserialize)]
struct SiblingLfs {
    sha256: String,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "blobId", default)]
    blob_id: String,
    lfs: Option<SiblingLfs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InfoJson {
    sha: Option<String>,
    #[serde(default)]
    gated: serde_json::Value,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    downloads: u64,
    #[serde(default)]
    likes: u64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(rename = "pipeline_tag")]
    pipeline_tag: Option<String>,
    last_modified: Option<String>,
    card_data: Option<serde_json::Value>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

/// READMEs larger than this are not read for a summary.
const MAX_README: u64 = 1 << 20;

/// A model's card summary, licence, counters and files with sizes (`GET /api/models/{repo}/
/// revision/{rev}?blobs=true`, then the README, a small file). In offline mode, what the cache
/// holds of it (files and the README if downloaded), else [`HubError::Offline`].
pub async fn model_details(client: &HubClient, repo: &str, revision: &str) -> Result<ModelDetails> {
    split_repo_id(repo)?;
    if client.config().offline {
        return cached_details(client, repo, revision);
    }
    let mut url = client.api_url(repo, &["revision", revision])?;
    url.query_pairs_mut().append_pair("blobs", "true");
    let resp = client.get(&url, None).await?;
    let resp = client.check(resp, repo, revision, None).await?;
    let text = resp.text().await.map_err(|e| client.network_error(&e))?;
    let bad = |what: String| HubError::BadResponse { url: url.to_string(), what };
    let info: InfoJson = serde_json::from_str(&text).map_err(|e| bad(format!("model info: {e}")))?;
    let commit = info.sha.ok_or_else(|| bad("model info without a commit sha".into()))?;
    let mut files = Vec::with_capacity(info.siblings.len());
    for f in info.siblings {
        safe_relative(repo, &f.rfilename)?;
        files.push(RemoteFile { path: f.rfilename, size: f.size, blob_id: f.blob_id, lfs_sha256: f.lfs.map(|l| l.sha256) });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let readme = match files.iter().find(|f| f.path == "README.md" && f.size <= MAX_README) {
        // A gated model's files need its licence accepted: its details still show, without
        // the card's text.
        Some(_) => match fetch_text(client, repo, &commit, "README.md").await {
            Err(HubError::NoToken { .. } | HubError::LicenceNotAccepted { .. }) => String::new(),
            r => r?,
        },
        None => String::new(),
    };
    let license = license_of(info.card_data.as_ref(), &info.tags);
    Ok(ModelDetails {
        id: repo.into(),
        revision: revision.into(),
        commit,
        summary: card_summary(&readme),
        license,
        gated: info.gated != serde_json::Value::Bool(false) && !info.gated.is_null(),
        private: info.private,
        pipeline_tag: info.pipeline_tag,
        tags: info.tags,
        downloads: info.downloads,
        likes: info.likes,
        last_modified: info.last_modified,
        card_data: info.card_data,
        files,
        from_cache: false,
    })
}

async fn fetch_text(client: &HubClient, repo: &str, commit: &str, path: &str) -> Result<String> {
    let url = client.resolve_url(repo, commit, path)?;
    let resp = client.get(&url, None).await?;
    let resp = client.check(resp, repo, commit, Some(path)).await?;
    let bytes = resp.bytes().await.map_err(|e| client.network_error(&e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn cached_details(client: &HubClient, repo: &str, revision: &str) -> Result<ModelDetails> {
    let cache = &client.config().cache_dir;
    let listing = crate::cache::cached_listing(cache, repo, revision)
        .ok_or_else(|| HubError::Offline { what: format!("{repo}@{revision}"), cache: cache.clone() })?;
    let snapshot = crate::cache::layout::RepoCache::new(cache, repo).snapshot_dir(&listing.commit);
    let readme = std::fs::read_to_string(snapshot.join("README.md")).unwrap_or_default();
    let (yaml, _) = split_front_matter(&readme);
    let license = yaml.lines().find_map(|l| l.strip_prefix("license:")).map(|l| l.trim().trim_matches('"').to_string());
    Ok(ModelDetails {
        id: repo.into(),
        revision: revision.into(),
        commit: listing.commit,
        summary: card_summary(&readme),
        license,
        gated: false,
        private: false,
        pipeline_tag: None,
        tags: Vec::new(),
        downloads: 0,
        likes: 0,
        last_modified: None,
        card_data: None,
        files: listing.files,
        from_cache: true,
    })
}

fn license_of(card: Option<&serde_json::Value>, tags: &[String]) -> Option<String> {
    let field = |k: &str| card.and_then(|c| c.get(k)).and_then(|v| v.as_str()).map(String::from);
    match field("license") {
        Some(l) if l == "other" => field("license_name").or(Some(l)),
        Some(l) => Some(l),
        None => tags.iter().find_map(|t| t.strip_prefix("license:")).map(String::from),
    }
}

/// (front matter, body) of a model card; the front matter is empty when there is none.
fn split_front_matter(readme: &str) -> (&str, &str) {
    let Some(rest) = readme.strip_prefix("---\n").or_else(|| readme.strip_prefix("---\r\n")) else { return ("", readme) };
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return (&rest[..at], &rest[at + line.len()..]);
        }
        at += line.len();
    }
    ("", readme)
}

/// The first paragraph of prose of a model card, markdown links reduced to their text, at most
/// about 600 characters.
pub fn card_summary(readme: &str) -> String {
    let (_, body) = split_front_matter(readme);
    let mut para: Vec<&str> = Vec::new();
    let mut in_code = false;
    for line in body.lines().map(str::trim) {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let skip = in_code
            || line.starts_with('#')
            || line.starts_with("![")
            || line.starts_with("[![")
            || line.starts_with('<')
            || line.starts_with('|')
            || line.starts_with("---")
            || is_list_item(line);
        if line.is_empty() || skip {
            if !para.is_empty() {
                break;
            }
            continue;
        }
        para.push(line.trim_start_matches('>').trim());
    }
    let text = strip_links(&para.join(" "));
    match text.char_indices().nth(600) {
        Some((i, _)) => format!("{}…", text[..i].trim_end()),
        None => text,
    }
}

/// `- a`, `* a`, `+ a`, `1. a`: a table of contents or a feature list, not the summary.
fn is_list_item(line: &str) -> bool {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    ["- ", "* ", "+ "].iter().any(|p| line.starts_with(p)) || (digits > 0 && line[digits..].starts_with(". "))
}

/// `[text](url)` becomes `text`; `**bold**` and `` `code` `` lose their marks.
fn strip_links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find("](").map(|i| open + i);
        let end = close.and_then(|c| rest[c..].find(')').map(|i| c + i));
        match (close, end) {
            (Some(c), Some(e)) => {
                out.push_str(&rest[..open]);
                out.push_str(&rest[open + 1..c]);
                rest = &rest[e + 1..];
            }
            _ => break,
        }
    }
    out.push_str(rest);
    out.replace("**", "").replace('`', "")
}

/// Runs an async call to completion on a private runtime, for synchronous callers (the CLI, the
/// planner). Do not call from inside a tokio runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread tokio runtime always builds").block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_the_first_paragraph_of_prose() {
        let card = "---\nlicense: apache-2.0\n---\n\n# SmolLM2\n\n![logo](x.png)\n\nSmolLM2 is a family of **compact** language\nmodels, see [the paper](https://arxiv.org/x).\n\nSecond paragraph.\n";
        assert_eq!(card_summary(card), "SmolLM2 is a family of compact language models, see the paper.");
        assert_eq!(card_summary("# only a title\n"), "");
        // SmolLM2's card: a table of contents before the prose.
        let toc = "# SmolLM2\n\n![image/png](x.png)\n\n##  Table of Contents\n\n1. [Model Summary](##model-summary)\n2. [Limitations](##limitations)\n\n## Model Summary\n\nSmolLM2 is a family of compact language models.\n";
        assert_eq!(card_summary(toc), "SmolLM2 is a family of compact language models.");
        assert_eq!(card_summary("- a feature\n* another\n\n> Quoted prose."), "Quoted prose.");
        assert_eq!(card_summary("```\ncode\n```\nText after code."), "Text after code.");
        let long = "word ".repeat(300);
        let s = card_summary(&long);
        assert!(s.ends_with('…') && s.chars().count() <= 601, "{s}");
    }

    #[test]
    fn licence_from_the_card_then_the_tags() {
        let card = serde_json::json!({ "license": "other", "license_name": "gemma-terms" });
        assert_eq!(license_of(Some(&card), &[]).as_deref(), Some("gemma-terms"));
        assert_eq!(license_of(None, &["license:mit".into()]).as_deref(), Some("mit"));
        assert_eq!(license_of(None, &[]), None);
    }
}
