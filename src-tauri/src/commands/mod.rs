//! The commands the UI calls. Each body converts its input, calls the core (or the shell's own
//! settings and conversation store), and converts back; errors are [`AppError`]s. Where the
//! core call a page needs has not landed yet, the command says which one
//! ([`AppError::not_built`]) instead of returning made-up results.

pub mod app;
pub mod chat;
pub mod jobs;
pub mod models;

pub use crate::error::{AppError, CmdResult};
