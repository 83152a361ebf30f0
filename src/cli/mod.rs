//! One module per `qlora` subcommand.
pub mod plan;
pub mod chat;
pub mod generate;
pub mod import_gguf;
pub mod perplexity;
