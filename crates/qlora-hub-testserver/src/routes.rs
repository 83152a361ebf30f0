//! The Hub's HTTP API as hf-hub 1.0 and Python's huggingface_hub use it (checked against
//! `huggingface_hub/file_download.py`, `hf_api.py`, `utils/_http.py` and hf-hub's
//! `repository/*.rs`):
//!
//! - `GET /api/models/{repo}[/revision/{rev}][?blobs=true]`: `sha`, `siblings` (sizes, `blobId`
//!   and `lfs: {size, sha256, pointerSize}` only with `blobs=true`), `gated`, `private`, and the
//!   card: `cardData`, `pipeline_tag`, `tags`, `downloads`, `likes` ([`crate::card`]);
//! - `GET /api/models/{repo}/tree/{rev}[/{path}][?recursive=true]`: entries with `oid`, `size`,
//!   `lfs: {oid, size, pointerSize}`, paginated with a `Link: <…>; rel="next"` header;
//! - `GET /api/models?search=…[&sort=downloads][&limit=N][&full=true][&cardData=true]` (see
//!   [`crate::card`]), `GET /api/whoami-v2`;
//! - `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: `ETag` (git blob id, or SHA-256 for LFS),
//!   `X-Repo-Commit`; LFS files answer `302` to `/_cdn/{sha256}` on a second port (another origin, like the Hub's CDN) with `X-Linked-Etag` and
//!   `X-Linked-Size`; `Range` gives `206`;
//! - errors with the Hub's `X-Error-Code`/`X-Error-Message`: `RepoNotFound`, `RevisionNotFound`,
//!   `EntryNotFound`, `GatedRepo` (401 without a token, 403 with a token that has no access).

// An error here is a ready HTTP response, built once per request: boxing it buys nothing.
#![allow(clippy::result_large_err)]

use crate::faults::{file_stream, latency, take_faults};
use crate::repo::{Access, RepoDir, RepoFile, Revision};
use crate::{LogRecord, State};
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
type Resp = Response<Body>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
    r
}

/// A Hub error: status, `X-Error-Code`, `X-Error-Message` and `{"error": message}`.
fn hub_error(status: StatusCode, code: Option<&str>, message: &str) -> Resp {
    let mut r = json_resp(status, &json!({ "error": message }));
    if let Some(code) = code {
        r.headers_mut().insert("x-error-code", code.parse().unwrap());
    }
    if let Ok(v) = message.parse() {
        r.headers_mut().insert("x-error-message", v);
    }
    r
}

fn not_found_repo() -> Resp {
    hub_error(StatusCode::NOT_FOUND, Some("RepoNotFound"), "Repository not found")
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg).decode_utf8_lossy().into_owned()
}

fn query_param(req: &Request<hyper::body::Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "True" | "1" | ""))
}

fn bearer(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let h = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    h.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

pub async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Resp {
    let counter = Arc::new(AtomicU64::new(0));
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(String::from);
    let path_q = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let record = LogRecord {
        method: req.method().to_string(),
        path: path_q,
        range,
        status: Arc::new(AtomicU64::new(0)),
        bytes: counter.clone(),
        had_token: bearer(&req).is_some(),
    };
    let status = record.status.clone();
    if let Ok(mut log) = state.log.lock() {
        log.push(record);
    }
    let resp = route(&state, &req, counter).await;
    status.store(resp.status().as_u16() as u64, Ordering::Relaxed);
    resp
}

async fn route(state: &State, req: &Request<hyper::body::Incoming>, counter: Arc<AtomicU64>) -> Resp {
    let segs: Vec<String> = req.uri().path().split('/').filter(|s| !s.is_empty()).map(decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let head_or_get = req.method() == Method::GET || req.method() == Method::HEAD;
    match segs.as_slice() {
        ["api", "models"] if head_or_get => search(state, req),
        ["api", "whoami-v2"] => whoami(state, req),
        ["api", "models", org, name, rest @ ..] if head_or_get => api_repo(state, req, org, name, rest),
        ["_cdn", sha] if head_or_get => cdn(state, req, sha, counter).await,
        [org, name, "resolve", rev, path @ ..] if head_or_get && !path.is_empty() => {
            resolve(state, req, org, name, rev, &path.join("/"), counter).await
        }
        _ => hub_error(StatusCode::NOT_FOUND, None, "Not Found"),
    }
}

/// The access settings in force for a repository: the server handle's override, else its
/// `.hub/config.json`.
fn access_of(state: &State, repo: &RepoDir) -> Access {
    state.access.lock().ok().and_then(|m| m.get(&repo.id).cloned()).unwrap_or_else(|| repo.access())
}

/// `Err(response)` when the caller may not see the repository (private) or, for `files`, its
/// file contents (gated).
fn check_access(state: &State, req: &Request<hyper::body::Incoming>, repo: &RepoDir, files: bool) -> Result<(), Resp> {
    let access = access_of(state, repo);
    let token = bearer(req);
    let allowed = token.as_ref().is_some_and(|t| access.tokens.contains(t));
    if access.private && !allowed {
        let status = if token.is_none() { StatusCode::UNAUTHORIZED } else { StatusCode::NOT_FOUND };
        return Err(hub_error(status, Some("RepoNotFound"), "Repository not found"));
    }
    if files && access.gated.is_some() && !allowed {
        let page = format!("{}/{}", state.base_url, repo.id);
        return Err(match token {
            None => hub_error(
                StatusCode::UNAUTHORIZED,
                Some("GatedRepo"),
                &format!("Access to model {} is restricted. You must have access to it and be authenticated to access it. Please log in.", repo.id),
            ),
            Some(_) => hub_error(
                StatusCode::FORBIDDEN,
                Some("GatedRepo"),
                &format!("Access to model {} is restricted and you are not in the authorized list. Visit {page} to ask for access.", repo.id),
            ),
        });
    }
    Ok(())
}

fn load_revision(state: &State, repo: &RepoDir, rev: &str) -> Result<Revision, Resp> {
    match repo.revision(rev, &state.hashes) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(hub_error(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"))),
        Err(e) => Err(hub_error(StatusCode::INTERNAL_SERVER_ERROR, None, &format!("reading the repository: {e}"))),
    }
}

fn api_repo(state: &State, req: &Request<hyper::body::Incoming>, org: &str, name: &str, rest: &[&str]) -> Resp {
    let Some(repo) = RepoDir::find(&state.root, org, name) else { return not_found_repo() };
    if let Err(r) = check_access(state, req, &repo, false) {
        return r;
    }
    match rest {
        [] => info(state, req, &repo, "main"),
        ["revision", rev] => info(state, req, &repo, rev),
        ["tree", rev, path @ ..] => tree(state, req, &repo, rev, &path.join("/")),
        _ => hub_error(StatusCode::NOT_FOUND, None, "Not Found"),
    }
}

pub fn iso_time(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn gated_json(access: &Access) -> Value {
    access.gated.as_ref().map_or(Value::Bool(false), |g| Value::String(g.clone()))
}

fn info(state: &State, req: &Request<hyper::body::Incoming>, repo: &RepoDir, rev: &str) -> Resp {
    let r = match load_revision(state, repo, rev) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let blobs = truthy(query_param(req, "blobs"));
    let siblings: Vec<Value> = r
        .files
        .values()
        .map(|f| {
            if !blobs {
                return json!({ "rfilename": f.path });
            }
            let mut v = json!({ "rfilename": f.path, "size": f.size, "blobId": f.blob_id });
            if f.lfs {
                v["lfs"] = json!({ "size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size() });
            }
            v
        })
        .collect();
    let access = access_of(state, repo);
    let (org, _) = repo.id.split_once('/').unwrap_or(("", &repo.id));
    let time = iso_time(r.last_modified);
    let meta = crate::card::model_meta(repo, &r);
    let mut v = json!({
        "_id": &r.commit[..24], "id": repo.id, "modelId": repo.id, "author": org,
        "sha": r.commit, "lastModified": time, "createdAt": time,
        "private": access.private, "gated": gated_json(&access), "disabled": false,
        "downloads": meta.downloads, "likes": meta.likes, "tags": meta.tags, "library_name": meta.library_name,
        "siblings": siblings, "spaces": [],
        "usedStorage": r.files.values().map(|f| f.size).sum::<u64>(),
    });
    if let Some(p) = meta.pipeline_tag {
        v["pipeline_tag"] = json!(p);
    }
    if let Some(c) = meta.card_data {
        v["cardData"] = c;
    }
    json_resp(StatusCode::OK, &v)
}

fn tree_entry_file(f: &RepoFile) -> Value {
    let mut v = json!({ "type": "file", "oid": f.blob_id, "size": f.size, "path": f.path });
    if f.lfs {
        v["lfs"] = json!({ "oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size() });
    }
    v
}

fn dir_oid(path: &str) -> String {
    crate::repo::git_blob_id(format!("tree {path}").as_bytes())
}

fn tree(state: &State, req: &Request<hyper::body::Incoming>, repo: &RepoDir, rev: &str, dir: &str) -> Resp {
    let r = match load_revision(state, repo, rev) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let recursive = truthy(query_param(req, "recursive"));
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    if !dir.is_empty() && !r.files.keys().any(|p| p.starts_with(&prefix)) {
        return hub_error(StatusCode::NOT_FOUND, Some("EntryNotFound"), &format!("{dir} does not exist on \"{rev}\""));
    }
    let mut entries: Vec<Value> = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for f in r.files.values().filter(|f| f.path.starts_with(&prefix)) {
        let rel = &f.path[prefix.len()..];
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            if recursive || i == 1 {
                dirs.insert(format!("{prefix}{}", parts[..i].join("/")));
            }
        }
        if recursive || parts.len() == 1 {
            entries.push(tree_entry_file(f));
        }
    }
    let mut all: Vec<Value> = dirs.iter().map(|d| json!({ "type": "directory", "oid": dir_oid(d), "path": d })).collect();
    all.extend(entries);
    let phantom = state.phantom.lock().ok().and_then(|p| p.get(&repo.id).cloned()).unwrap_or_default();
    for p in phantom {
        all.push(json!({ "type": "file", "oid": crate::repo::git_blob_id(p.as_bytes()), "size": 1, "path": p }));
    }
    paginate(state, req, all)
}

/// The Hub pages long listings: a page of entries and a `Link` header to the next.
fn paginate(state: &State, req: &Request<hyper::body::Incoming>, all: Vec<Value>) -> Resp {
    let page = state.page_size.load(Ordering::Relaxed).max(1);
    let start: usize = query_param(req, "cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let end = (start + page).min(all.len());
    let mut resp = json_resp(StatusCode::OK, &Value::Array(all[start.min(end)..end].to_vec()));
    if end < all.len() {
        let mut q: Vec<String> =
            req.uri().query().unwrap_or("").split('&').filter(|kv| !kv.is_empty() && !kv.starts_with("cursor=")).map(String::from).collect();
        q.push(format!("cursor={end}"));
        let link = format!("<{}{}?{}>; rel=\"next\"", state.base_url, req.uri().path(), q.join("&"));
        if let Ok(v) = link.parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

fn search(state: &State, req: &Request<hyper::body::Incoming>) -> Resp {
    let needle = query_param(req, "search").unwrap_or_default().to_lowercase();
    let author = query_param(req, "author");
    let limit: usize = query_param(req, "limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
    let (full, with_card) = (truthy(query_param(req, "full")), truthy(query_param(req, "cardData")));
    let token = bearer(req);
    let mut found: Vec<Value> = RepoDir::all(&state.root)
        .into_iter()
        .filter(|r| r.id.to_lowercase().contains(&needle))
        .filter(|r| author.as_ref().is_none_or(|a| r.id.starts_with(&format!("{a}/"))))
        .filter_map(|r| {
            let access = access_of(state, &r);
            if access.private && !token.as_ref().is_some_and(|t| access.tokens.contains(t)) {
                return None;
            }
            let rev = r.revision("main", &state.hashes).ok().flatten()?;
            Some(crate::card::search_entry(&r, &rev, &gated_json(&access), access.private, full, with_card))
        })
        .collect();
    crate::card::sort_entries(&mut found, query_param(req, "sort").as_deref());
    found.truncate(limit);
    paginate(state, req, found)
}

fn whoami(state: &State, req: &Request<hyper::body::Incoming>) -> Resp {
    let Some(token) = bearer(req) else {
        return hub_error(StatusCode::UNAUTHORIZED, None, "Invalid credentials in Authorization header");
    };
    let known = state.known_tokens.lock().map(|t| t.contains(&token)).unwrap_or(false)
        || RepoDir::all(&state.root).iter().any(|r| access_of(state, r).tokens.contains(&token));
    if !known {
        return hub_error(StatusCode::UNAUTHORIZED, None, "Invalid credentials in Authorization header");
    }
    json_resp(
        StatusCode::OK,
        &json!({
            "type": "user", "name": "test-user", "fullname": "Test User",
            "auth": { "type": "access_token", "accessToken": { "displayName": "test", "role": "read" } },
        }),
    )
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range, as (start, end inclusive).
/// `Err(())`: not satisfiable.
pub fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (s, "") => (s.parse().ok()?, size.saturating_sub(1)),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(size.saturating_sub(1))),
    };
    if size == 0 || start >= size || end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

/// File content, whole or a range; faults apply to GETs only.
async fn serve_file(
    state: &State,
    req: &Request<hyper::body::Incoming>,
    f: &RepoFile,
    etag: &str,
    commit: Option<&str>,
    counter: Arc<AtomicU64>,
) -> Resp {
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|h| parse_range(h, f.size));
    let (status, start, len) = match range {
        Some(Err(())) => {
            let mut r = hub_error(StatusCode::RANGE_NOT_SATISFIABLE, None, "Requested Range Not Satisfiable");
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{}", f.size).parse().unwrap());
            return r;
        }
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, f.size),
    };
    let body = if req.method() == Method::HEAD {
        full(Bytes::new())
    } else {
        let faults = state.faults.lock().map(|mut r| take_faults(&mut r, &f.path)).unwrap_or_default();
        if let Some(wait) = latency(&faults) {
            tokio::time::sleep(wait).await;
        }
        match file_stream(&f.abs, start, len, faults, counter).await {
            Ok(s) => StreamBody::new(s.map_ok(Frame::data)).boxed_unsync(),
            Err(e) => return hub_error(StatusCode::INTERNAL_SERVER_ERROR, None, &format!("reading {}: {e}", f.path)),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    h.insert(header::CONTENT_TYPE, "application/octet-stream".parse().unwrap());
    h.insert(header::ETAG, format!("\"{etag}\"").parse().unwrap());
    if let Some(c) = commit {
        h.insert("x-repo-commit", c.parse().unwrap());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {}-{}/{}", start, start + len - 1, f.size);
        h.insert(header::CONTENT_RANGE, cr.parse().unwrap());
    }
    r
}

async fn resolve(state: &State, req: &Request<hyper::body::Incoming>, org: &str, name: &str, rev: &str, path: &str, counter: Arc<AtomicU64>) -> Resp {
    let Some(repo) = RepoDir::find(&state.root, org, name) else { return not_found_repo() };
    if let Err(r) = check_access(state, req, &repo, true) {
        return r;
    }
    let r = match load_revision(state, &repo, rev) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(f) = r.files.get(path) else {
        let mut resp = hub_error(StatusCode::NOT_FOUND, Some("EntryNotFound"), "Entry not found");
        resp.headers_mut().insert("x-repo-commit", r.commit.parse().unwrap());
        return resp;
    };
    if !f.lfs {
        return serve_file(state, req, f, &f.blob_id, Some(&r.commit), counter).await;
    }
    if let Ok(mut m) = state.lfs_by_sha.lock() {
        m.insert(f.sha256.clone(), f.clone());
    }
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, format!("{}/_cdn/{}", state.cdn_url, f.sha256).parse().unwrap());
    h.insert(header::ETAG, format!("\"{}\"", f.blob_id).parse().unwrap());
    h.insert("x-linked-etag", format!("\"{}\"", f.sha256).parse().unwrap());
    h.insert("x-linked-size", f.size.into());
    h.insert("x-repo-commit", r.commit.parse().unwrap());
    h.insert(header::CONTENT_LENGTH, 0u64.into());
    resp
}

/// The CDN an LFS redirect points to: content by SHA-256, no Hub headers (no `X-Repo-Commit`),
/// as a real CDN answers.
async fn cdn(state: &State, req: &Request<hyper::body::Incoming>, sha: &str, counter: Arc<AtomicU64>) -> Resp {
    let known = state.lfs_by_sha.lock().ok().and_then(|m| m.get(sha).cloned());
    let found = known.or_else(|| {
        RepoDir::all(&state.root).iter().find_map(|repo| {
            let rev = repo.revision("main", &state.hashes).ok().flatten()?;
            rev.files.values().find(|f| f.lfs && f.sha256 == sha).cloned()
        })
    });
    match found {
        Some(f) => serve_file(state, req, &f, &f.sha256, None, counter).await,
        None => hub_error(StatusCode::NOT_FOUND, None, "NoSuchKey"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("items=1-2", 100), None);
    }

    #[test]
    fn iso_times() {
        assert_eq!(iso_time(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(iso_time(t), "2023-11-14T22:13:20.000Z");
    }
}
