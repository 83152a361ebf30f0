//! One module per `qlora` subcommand.
pub mod cache;
pub mod chat;
pub mod download;
pub mod generate;
pub mod import_gguf;
pub mod login;
pub mod merge;
pub mod perplexity;
pub mod plan;
pub mod train;
