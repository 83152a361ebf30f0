//! GPU presets, kept as data in `configs/gpus.json` (embedded at build time) so that a card can
//! be added or corrected without touching code.

use crate::GpuError;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

const PRESETS_JSON: &str = include_str!("../../../configs/gpus.json");

/// A card to plan for without having it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPreset {
    /// Short id used on the command line: `--gpu rtx2080`.
    pub id: String,
    pub name: String,
    /// Total memory in MiB (2^20 bytes), as nvidia-smi reports it.
    pub total_mib: u64,
    /// "major.minor".
    pub compute_capability: String,
    /// Where the figure comes from.
    pub source: String,
}

impl GpuPreset {
    pub fn total_bytes(&self) -> u64 {
        self.total_mib << 20
    }
    /// bf16 compute needs compute capability 8.0 (Ampere) or newer; older cards compute in fp16.
    pub fn supports_bf16(&self) -> bool {
        cc_supports_bf16(&self.compute_capability)
    }
}

pub(crate) fn cc_supports_bf16(cc: &str) -> bool {
    cc.split('.').next().and_then(|m| m.parse::<u32>().ok()).is_some_and(|major| major >= 8)
}

#[derive(Deserialize)]
struct PresetFile {
    gpus: Vec<GpuPreset>,
}

/// All presets from `configs/gpus.json`.
pub fn presets() -> Result<&'static [GpuPreset], GpuError> {
    static CELL: OnceLock<Result<Vec<GpuPreset>, String>> = OnceLock::new();
    let parsed = CELL.get_or_init(|| parse_presets(PRESETS_JSON));
    parsed.as_deref().map_err(|reason| GpuError::Presets { reason: reason.clone() })
}

fn parse_presets(json: &str) -> Result<Vec<GpuPreset>, String> {
    let file: PresetFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
    for (i, p) in file.gpus.iter().enumerate() {
        if p.total_mib == 0 || !p.compute_capability.contains('.') {
            return Err(format!("preset '{}' has no memory size or a bad compute capability", p.id));
        }
        if file.gpus[..i].iter().any(|q| q.id == p.id) {
            return Err(format!("preset id '{}' appears twice", p.id));
        }
    }
    Ok(file.gpus)
}

/// The preset with this id (case-insensitive; `-` and `_` ignored, so `RTX_2080` works).
pub fn find_preset(id: &str) -> Result<&'static GpuPreset, GpuError> {
    let norm = |s: &str| s.chars().filter(|c| *c != '-' && *c != '_' && *c != ' ').collect::<String>().to_lowercase();
    let all = presets()?;
    all.iter()
        .find(|p| norm(&p.id) == norm(id))
        .ok_or_else(|| GpuError::UnknownPreset { id: id.to_string(), known: all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_cover_the_cards_the_issue_names() {
        for (id, gib) in [("rtx2080", 8), ("rtx3060", 12), ("rtx3090", 24), ("a100-40", 40), ("a100-80", 80)] {
            let p = find_preset(id).unwrap();
            assert_eq!(p.total_bytes(), gib << 30, "{id}");
        }
        assert_eq!(find_preset("h100").unwrap().total_mib, 81559);
    }

    #[test]
    fn bf16_follows_compute_capability() {
        assert!(!find_preset("rtx2080").unwrap().supports_bf16());
        assert!(!find_preset("t4").unwrap().supports_bf16());
        assert!(find_preset("rtx3060").unwrap().supports_bf16());
        assert!(find_preset("rtx5090").unwrap().supports_bf16());
    }

    #[test]
    fn lookup_forgives_case_and_dashes_and_lists_known_ids_on_miss() {
        assert_eq!(find_preset("RTX_2080").unwrap().id, "rtx2080");
        assert_eq!(find_preset("a10080").unwrap().id, "a100-80");
        let err = find_preset("gtx9999").unwrap_err().to_string();
        assert!(err.contains("unknown GPU preset 'gtx9999'") && err.contains("rtx2080"), "{err}");
    }

    #[test]
    fn malformed_presets_are_rejected_with_the_reason() {
        let dup = r#"{"gpus":[{"id":"a","name":"A","total_mib":1,"compute_capability":"8.0","source":""},
                              {"id":"a","name":"A","total_mib":1,"compute_capability":"8.0","source":""}]}"#;
        assert!(parse_presets(dup).unwrap_err().contains("twice"));
        assert!(parse_presets("{").is_err());
    }
}
