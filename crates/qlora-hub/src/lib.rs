//! The Hugging Face Hub and its local cache: what a model is made of (listing with sizes and
//! checksums, safetensors headers over HTTP Range) and downloads into the standard cache
//! (`models--org--name/{blobs,snapshots,refs}`) that resume after a crash, verify every byte
//! before a loader can see it, and share every file with Python's huggingface_hub (several
//! files at once, as `hf download` does); plus the cache manager (list, delete, prune, verify
//! against the blobs' own checksums or against the Hub's current listing) and the token the
//! `hf` CLI stores.
//!
//! hf-hub 1.0 sits behind this crate (its API moves); where it falls short we use its HTTP
//! client directly — see [`client`] for each reason and the test that pins it.
//!
//! For the planner: [`remote::list_files`] (sizes, LFS SHA-256), [`cache::cached_listing`]
//! (the same from the cache), [`select::files_for_load`] (the one file-selection rule),
//! [`download::plan_from_listing`] (bytes left to fetch) and [`remote::safetensors_header`].
//!
//! ```no_run
//! use qlora_hub::{HubClient, download, select::SelectOptions};
//! # async fn f() -> qlora_hub::Result<()> {
//! let client = HubClient::from_env()?;
//! let plan = download::plan(&client, "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "main", &SelectOptions::default()).await?;
//! println!("{} bytes to fetch", plan.to_fetch_bytes);
//! let out = download::run(&client, &plan, &Default::default(), &qlora_jobs::NoProgress).await?;
//! println!("ready in {}", out.snapshot.display());
//! # Ok(()) }
//! ```

pub mod cache;
pub mod client;
pub mod config;
pub mod disk;
pub mod download;
mod error;
pub mod remote;
pub mod select;
pub mod token;

pub use client::HubClient;
pub use config::HubConfig;
pub use error::{HubError, Result, human};
