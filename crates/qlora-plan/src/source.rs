//! Where a model's metadata comes from — a local folder or the Hub — behind one trait, and the
//! [`ModelMeta`] gathered from it: config, every tensor (from safetensors headers, or from the
//! architecture when there are no weights), and the download the load needs. Only metadata is
//! read: config.json, the listing with sizes, and each safetensors header (8-byte length, then
//! the JSON), never a weight.

use crate::PlanError;
use crate::arch::ArchSpec;
use crate::tensors::{self, TensorSpec};
use qlora_hub::remote::{RemoteFile, SafetensorsHeader};
use qlora_hub::select::{SelectOptions, WeightsFormat, files_for_load};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the planner reads from a model, wherever it lives.
pub trait MetadataSource {
    /// The model as the user named it (folder path or `org/name@revision`).
    fn describe(&self) -> String;
    /// Files with their sizes.
    fn listing(&self) -> Result<Vec<RemoteFile>, PlanError>;
    /// A small text file (config.json).
    fn read_text(&self, path: &str) -> Result<String, PlanError>;
    /// A safetensors file's header.
    fn safetensors_header(&self, path: &str) -> Result<SafetensorsHeader, PlanError>;
    /// Bytes of `selected` still to fetch (0 for a local folder; cache-aware for the Hub).
    fn to_fetch_bytes(&self, selected: &[RemoteFile]) -> Result<u64, PlanError>;
}

/// How the tensor list was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorsFrom {
    /// Exact names, shapes and dtypes from the safetensors headers.
    SafetensorsHeaders,
    /// No safetensors weights: shapes computed from config.json's architecture.
    Architecture,
}

/// The download a load needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadInfo {
    /// Bytes of the selected files (the shared rule of `qlora_hub::select`).
    pub selected_bytes: u64,
    /// Of those, bytes not in the cache yet (what a download would fetch).
    pub to_fetch_bytes: u64,
    /// False when sizes are computed from the architecture (weights at the published dtype,
    /// tokenizer and other small files not counted).
    pub exact: bool,
    pub files: Vec<RemoteFile>,
}

/// Everything the planner knows about a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub model: String,
    pub spec: ArchSpec,
    pub tensors: Vec<TensorSpec>,
    pub tensors_from: TensorsFrom,
    pub download: DownloadInfo,
}

/// Reads the metadata through `source`.
pub fn gather(source: &dyn MetadataSource) -> Result<ModelMeta, PlanError> {
    let model = source.describe();
    let spec = ArchSpec::from_json(Path::new(&format!("{model}/config.json")), &source.read_text("config.json")?)?;
    let listing = source.listing()?;
    let sel = files_for_load(&listing, &SelectOptions::default()).map_err(|e| PlanError::Hub { model: model.clone(), reason: e.to_string() })?;
    // A bitsandbytes pre-quantized checkpoint stores packed codes (`[n/2, 1]` u8) under the
    // weights' names: its headers do not give the shapes, the architecture does.
    if sel.weights == Some(WeightsFormat::Safetensors) {
        let download = DownloadInfo {
            selected_bytes: sel.total_bytes(),
            to_fetch_bytes: source.to_fetch_bytes(&sel.files)?,
            exact: true,
            files: sel.files.clone(),
        };
        if spec.prequantized {
            let tensors = tensors::from_arch(&spec);
            return Ok(ModelMeta { model, spec, tensors, tensors_from: TensorsFrom::Architecture, download });
        }
        let mut tensors = Vec::new();
        for f in sel.files.iter().filter(|f| f.path.ends_with(".safetensors")) {
            let header = source.safetensors_header(&f.path)?;
            tensors.extend(header.tensors.into_iter().map(|(name, t)| TensorSpec { name, shape: t.shape, dtype: t.dtype }));
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(ModelMeta { model, spec, tensors, tensors_from: TensorsFrom::SafetensorsHeaders, download });
    }
    // No safetensors weights: plan from the architecture; the download is the weights at the
    // published dtype plus whatever small files the listing has.
    let tensors = tensors::from_arch(&spec);
    let weights: u64 = tensors::parameter_count(&spec, &tensors) * spec.checkpoint_dtype_bytes();
    let small: u64 = sel.files.iter().filter(|f| sel.weights.is_none() || !is_weights(&f.path)).map(|f| f.size).sum();
    let download = DownloadInfo { selected_bytes: weights + small, to_fetch_bytes: weights + small, exact: false, files: vec![] };
    Ok(ModelMeta { model, spec, tensors, tensors_from: TensorsFrom::Architecture, download })
}

fn is_weights(path: &str) -> bool {
    [".safetensors", ".bin", ".pt", ".pth", ".gguf"].iter().any(|e| path.ends_with(e))
}

/// A model folder on this machine (a Hugging Face-style folder or a cache snapshot).
#[derive(Debug, Clone)]
pub struct LocalFolder {
    pub dir: PathBuf,
}

impl LocalFolder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl MetadataSource for LocalFolder {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn listing(&self) -> Result<Vec<RemoteFile>, PlanError> {
        let io = |e: std::io::Error| PlanError::Io { path: self.dir.clone(), reason: e.to_string() };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            // metadata() follows symlinks, as a cache snapshot's files are.
            let meta = std::fs::metadata(entry.path()).map_err(io)?;
            if meta.is_file() {
                let path = entry.file_name().to_string_lossy().into_owned();
                out.push(RemoteFile { path, size: meta.len(), blob_id: String::new(), lfs_sha256: None });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_text(&self, path: &str) -> Result<String, PlanError> {
        let p = self.dir.join(path);
        std::fs::read_to_string(&p).map_err(|e| PlanError::Io { reason: format!("{e}; a model folder needs at least its config.json"), path: p })
    }

    fn safetensors_header(&self, path: &str) -> Result<SafetensorsHeader, PlanError> {
        let p = self.dir.join(path);
        SafetensorsHeader::read_file(&p).map_err(|e| PlanError::Hub { model: p.display().to_string(), reason: e.to_string() })
    }

    fn to_fetch_bytes(&self, _selected: &[RemoteFile]) -> Result<u64, PlanError> {
        Ok(0)
    }
}
