//! One module per `qlora` subcommand.
pub mod plan;
pub mod chat;
pub mod generate;
pub mod import_gguf;
pub mod perplexity;
pub mod train;
pub mod merge;
pub mod download;
pub mod cache;
pub mod login;
