//! Chat conversations kept on disk, one JSON file each under `<home>/conversations/`, written
//! atomically. Ids are generated here and checked on the way in, so a conversation id from the
//! UI can never name a file outside that folder.

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::settings::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use ts_rs::TS;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

/// Sampling settings for generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub max_new_tokens: u32,
    pub repetition_penalty: f32,
    /// `None`: a random seed.
    #[ts(type = "number | null")]
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.7, top_p: 0.9, top_k: 40, max_new_tokens: 256, repetition_penalty: 1.1, seed: None }
    }
}

/// A saved conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    /// The base model: a Hub id or a local folder.
    pub model: String,
    /// An adapter folder applied on top of the base, if any.
    pub adapter: Option<String>,
    pub adapter_scale: f32,
    pub system_prompt: String,
    pub sampling: Sampling,
    pub messages: Vec<ChatMessage>,
    /// Unix seconds of the last change.
    #[ts(type = "number")]
    pub updated: u64,
}

/// A line of the conversation list.
#[derive(Debug, Clone, Serialize, TS)]
pub struct ConversationSummary {
    pub id: String,
    pub title: String,
    pub model: String,
    #[ts(type = "number")]
    pub updated: u64,
}

/// The folder of conversations.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(home: &Path) -> Self {
        Self { dir: home.join("conversations") }
    }

    fn path(&self, id: &str) -> CmdResult<PathBuf> {
        let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(AppError::invalid(format!("conversation id '{id}' is not valid")));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// A fresh id: time in milliseconds plus a counter.
    pub fn new_id() -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!("c{}-{}", now_millis(), N.fetch_add(1, Ordering::Relaxed))
    }

    /// Saves it (giving it an id when it has none) and returns the saved conversation.
    pub fn save(&self, mut c: Conversation) -> CmdResult<Conversation> {
        if c.id.is_empty() {
            c.id = Self::new_id();
        }
        c.updated = now_millis() / 1000;
        let path = self.path(&c.id)?;
        let json = serde_json::to_vec_pretty(&c).map_err(|e| AppError::new(ErrorCode::Internal, e.to_string()))?;
        write_atomic(&path, &json, false)?;
        Ok(c)
    }

    pub fn load(&self, id: &str) -> CmdResult<Conversation> {
        let path = self.path(id)?;
        let bytes = std::fs::read(&path).map_err(|e| AppError::io("cannot read conversation", &path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AppError::new(ErrorCode::BadFormat, format!("conversation file '{}' is damaged: {e}", path.display())))
    }

    pub fn delete(&self, id: &str) -> CmdResult<()> {
        let path = self.path(id)?;
        std::fs::remove_file(&path).map_err(|e| AppError::io("cannot delete conversation", &path, e))
    }

    /// Newest first; damaged files are skipped (they still open with a clear error).
    pub fn list(&self) -> Vec<ConversationSummary> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<_> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Conversation>(&b).ok())
            .map(|c| ConversationSummary { id: c.id, title: c.title, model: c.model, updated: c.updated })
            .collect();
        out.sort_by(|a, b| b.updated.cmp(&a.updated).then(b.id.cmp(&a.id)));
        out
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convo() -> Conversation {
        Conversation {
            id: String::new(),
            title: "hello".into(),
            model: "/m".into(),
            adapter: None,
            adapter_scale: 1.0,
            system_prompt: "be brief".into(),
            sampling: Sampling::default(),
            messages: vec![ChatMessage { role: "user".into(), content: "hi".into() }],
            updated: 0,
        }
    }

    #[test]
    fn save_list_load_delete() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path());
        let saved = store.save(convo()).unwrap();
        assert!(!saved.id.is_empty());
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.load(&saved.id).unwrap(), saved);
        store.delete(&saved.id).unwrap();
        assert!(store.list().is_empty());
        assert_eq!(store.load(&saved.id).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn ids_cannot_escape_the_folder() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path());
        let err = store.load("../settings").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
    }
}
