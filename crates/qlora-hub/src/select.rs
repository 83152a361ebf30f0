//! Which files of a repository a load needs — one rule shared by the downloader and the planner,
//! so the bytes the planner announces are the bytes the downloader fetches.
//!
//! Weights come in one format, picked in this order: safetensors, PyTorch `.bin`, `.pt`/`.pth`,
//! GGUF; duplicate copies in the other formats (`.bin`, `.pt`, `.gguf`, `.onnx`, `.msgpack`,
//! `.h5`, `.tflite`, `.ot`, `.ckpt`, and subfolders such as `onnx/` or `original/`) are skipped.
//! A sharded checkpoint (`model.safetensors.index.json`) takes only its own shards, not a
//! `consolidated.safetensors` copy next to it. Besides weights: the config, tokenizer files,
//! generation config and chat template. `include` globs replace the rule with "exactly the
//! files matching", as `hf download --include` does.

use crate::remote::RemoteFile;
use crate::{HubError, Result};
use serde::Serialize;

/// Files a load needs besides weights (root of the repository).
pub const SUPPORT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.json",
    "chat_template.jinja",
    "adapter_config.json",
    "quantize_config.json",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectOptions {
    /// When not empty: exactly the files matching one of these globs (`*` does not cross `/`).
    pub include: Vec<String>,
}

/// The weights format a selection loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsFormat {
    Safetensors,
    PytorchBin,
    PytorchPt,
    Gguf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: String,
    pub size: u64,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub files: Vec<RemoteFile>,
    pub skipped: Vec<Skipped>,
    /// None when the repository has no weights this rule knows (or `include` was used).
    pub weights: Option<WeightsFormat>,
}

impl Selection {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn ext(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(_, e)| e)
}

fn format_of(path: &str) -> Option<WeightsFormat> {
    match ext(path) {
        "safetensors" => Some(WeightsFormat::Safetensors),
        "bin" => Some(WeightsFormat::PytorchBin),
        "pt" | "pth" => Some(WeightsFormat::PytorchPt),
        "gguf" => Some(WeightsFormat::Gguf),
        _ => None,
    }
}

const OTHER_WEIGHTS: &[&str] = &["onnx", "msgpack", "h5", "tflite", "ot", "ckpt", "mlmodel", "onnx_data"];

/// The index file of a sharded checkpoint in `format`, and the shard name prefix it implies.
fn index_for(files: &[&RemoteFile], format: WeightsFormat) -> Option<(String, String)> {
    let suffix = match format {
        WeightsFormat::Safetensors => ".safetensors.index.json",
        WeightsFormat::PytorchBin => ".bin.index.json",
        _ => return None,
    };
    let idx = files.iter().map(|f| f.path.as_str()).filter(|p| p.ends_with(suffix)).min()?;
    Some((idx.to_string(), idx.trim_end_matches(suffix).to_string()))
}

/// The files a load of this listing needs.
pub fn files_for_load(listing: &[RemoteFile], opts: &SelectOptions) -> Result<Selection> {
    if !opts.include.is_empty() {
        return select_included(listing, &opts.include);
    }
    let root: Vec<&RemoteFile> = listing.iter().filter(|f| !f.path.contains('/')).collect();
    let order = [WeightsFormat::Safetensors, WeightsFormat::PytorchBin, WeightsFormat::PytorchPt, WeightsFormat::Gguf];
    let weights = order.into_iter().find(|fmt| root.iter().any(|f| format_of(&f.path) == Some(*fmt)));
    let index = weights.and_then(|w| index_for(&root, w));
    let mut sel = Selection { files: Vec::new(), skipped: Vec::new(), weights };
    for f in listing {
        let keep: std::result::Result<(), &'static str> = if f.path.contains('/') {
            Err("in a subfolder (not part of the load)")
        } else if SUPPORT_FILES.contains(&f.path.as_str()) || index.as_ref().is_some_and(|(i, _)| *i == f.path) {
            Ok(())
        } else if let Some(fmt) = format_of(&f.path) {
            if Some(fmt) != weights {
                Err("duplicate weights in another format")
            } else if let Some((_, prefix)) = &index {
                if f.path.starts_with(&format!("{prefix}-")) { Ok(()) } else { Err("not a shard of the sharded checkpoint") }
            } else {
                Ok(())
            }
        } else if OTHER_WEIGHTS.contains(&ext(&f.path)) {
            Err("duplicate weights in another format")
        } else if f.path.ends_with(".index.json") {
            Err("index of weights in another format")
        } else {
            Err("not needed to load the model")
        };
        match keep {
            Ok(()) => sel.files.push(f.clone()),
            Err(reason) => sel.skipped.push(Skipped { path: f.path.clone(), size: f.size, reason }),
        }
    }
    Ok(sel)
}

fn select_included(listing: &[RemoteFile], include: &[String]) -> Result<Selection> {
    let mut b = globset::GlobSetBuilder::new();
    for p in include {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| HubError::BadGlob { pattern: p.clone(), detail: e.kind().to_string() })?;
        b.add(g);
    }
    let set = b.build().map_err(|e| HubError::BadGlob { pattern: include.join(" "), detail: e.to_string() })?;
    let mut sel = Selection { files: Vec::new(), skipped: Vec::new(), weights: None };
    for f in listing {
        if set.is_match(&f.path) {
            sel.files.push(f.clone());
        } else {
            sel.skipped.push(Skipped { path: f.path.clone(), size: f.size, reason: "not matched by --include" });
        }
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> RemoteFile {
        RemoteFile { path: path.into(), size, blob_id: "0".repeat(40), lfs_sha256: None }
    }

    fn paths(s: &Selection) -> Vec<&str> {
        s.files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn safetensors_win_over_every_duplicate() {
        let listing = vec![
            f(".gitattributes", 1),
            f("README.md", 2),
            f("config.json", 3),
            f("generation_config.json", 4),
            f("model.safetensors", 100),
            f("pytorch_model.bin", 100),
            f("flax_model.msgpack", 100),
            f("tf_model.h5", 100),
            f("model.onnx", 100),
            f("onnx/model.onnx", 100),
            f("model-q4.gguf", 50),
            f("tokenizer.json", 5),
            f("tokenizer_config.json", 6),
            f("tokenizer.model", 7),
            f("special_tokens_map.json", 8),
            f("chat_template.jinja", 9),
        ];
        let s = files_for_load(&listing, &SelectOptions::default()).unwrap();
        assert_eq!(s.weights, Some(WeightsFormat::Safetensors));
        assert_eq!(
            paths(&s),
            [
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
                "tokenizer.model",
                "special_tokens_map.json",
                "chat_template.jinja"
            ]
        );
        assert_eq!(s.total_bytes(), 3 + 4 + 100 + 5 + 6 + 7 + 8 + 9);
        assert_eq!(s.skipped.len(), 8);
    }

    #[test]
    fn sharded_checkpoint_takes_only_its_shards() {
        // Mistral-7B-v0.3's layout: shards + index, and a consolidated copy.
        let listing = vec![
            f("config.json", 1),
            f("consolidated.safetensors", 300),
            f("model-00001-of-00002.safetensors", 150),
            f("model-00002-of-00002.safetensors", 150),
            f("model.safetensors.index.json", 2),
            f("pytorch_model.bin.index.json", 2),
            f("pytorch_model-00001-of-00002.bin", 150),
        ];
        let s = files_for_load(&listing, &SelectOptions::default()).unwrap();
        assert_eq!(
            paths(&s),
            ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
        );
    }

    #[test]
    fn bin_when_no_safetensors() {
        let listing = vec![f("config.json", 1), f("pytorch_model.bin", 10), f("tf_model.h5", 10)];
        let s = files_for_load(&listing, &SelectOptions::default()).unwrap();
        assert_eq!(s.weights, Some(WeightsFormat::PytorchBin));
        assert_eq!(paths(&s), ["config.json", "pytorch_model.bin"]);
    }

    #[test]
    fn include_globs_select_exactly() {
        let listing = vec![f("config.json", 1), f("a/b.json", 1), f("model.safetensors", 10), f("x.gguf", 3)];
        let opts = SelectOptions { include: vec!["*.json".into(), "*.gguf".into()] };
        let s = files_for_load(&listing, &opts).unwrap();
        assert_eq!(paths(&s), ["config.json", "x.gguf"]);
        let bad = SelectOptions { include: vec!["[".into()] };
        assert!(matches!(files_for_load(&listing, &bad), Err(HubError::BadGlob { .. })));
    }
}
