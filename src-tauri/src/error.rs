//! Errors cross into the UI as typed values: a stable machine [`ErrorCode`] the front end can
//! branch on (show the offline banner, point at Settings) plus the human message from the core,
//! which already names the bad input and the fix. Commands never return `Result<_, String>`.

use serde::Serialize;
use ts_rs::TS;

/// What kind of failure it was, stable across releases: the UI switches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input (a model id, a number, a path) is not valid; the message says which.
    InvalidInput,
    /// A file or folder the command needs is missing.
    NotFound,
    /// The Hub (or the configured endpoint) cannot be reached, or offline mode is on.
    Offline,
    /// The model or dataset is not in a format we read.
    BadFormat,
    /// The plan says it does not fit this GPU or disk.
    DoesNotFit,
    /// The user cancelled the job.
    Cancelled,
    /// Another job already uses what this one needs (one training run at a time).
    Busy,
    /// Reading or writing a file failed.
    Io,
    /// The core call this command needs is not part of the build yet; the message names it.
    NotBuiltYet,
    /// Anything else: the message says what happened.
    Internal,
}

/// The error every command returns. Serialized as `{ code, message }`.
#[derive(Debug, Clone, Serialize, TS, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
}

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// For a page whose core call has not landed: says exactly which call it waits for,
    /// instead of showing made-up results.
    pub fn not_built(core_call: &str) -> Self {
        Self::new(ErrorCode::NotBuiltYet, format!("this part of the app is not built yet: it waits for the core call `{core_call}`"))
    }

    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        let code = if err.kind() == std::io::ErrorKind::NotFound { ErrorCode::NotFound } else { ErrorCode::Io };
        Self::new(code, format!("{what} '{}': {err}", path.display()))
    }
}

impl From<qlora_jobs::Cancelled> for AppError {
    fn from(e: qlora_jobs::Cancelled) -> Self {
        Self::new(ErrorCode::Cancelled, e.to_string())
    }
}

/// What every command returns.
pub type CmdResult<T> = Result<T, AppError>;
