//! Disk for the whole pipeline: the base model's download, N training checkpoints (LoRA
//! weights and both AdamW moments in f32, as `qlora-train` saves them), the final adapter
//! (f32 safetensors, as peft saves a QLoRA adapter), and an optional merged 16-bit export.

use serde::{Deserialize, Serialize};

/// Small files around a checkpoint or adapter (config JSON, trainer state, safetensors header).
pub const SIDECAR_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineDisk {
    /// Bytes still to download into the cache.
    pub download_bytes: u64,
    /// The base model's files in the cache once downloaded.
    pub model_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_bytes: u64,
    pub final_adapter_bytes: u64,
    /// 0 unless a merged export is planned.
    pub merged_export_bytes: u64,
    /// New bytes the pipeline writes: download + checkpoints + adapter + export.
    pub total_new_bytes: u64,
    /// Free space on the cache's filesystem, when known.
    pub available_bytes: Option<u64>,
    /// `total_new_bytes` against `available_bytes`, when known.
    pub verdict: Option<crate::verdict::Fit>,
}

impl PipelineDisk {
    /// Reads the free space of the filesystem holding `cache_dir` (created or not) and judges.
    pub fn check_free_space(&mut self, cache_dir: &std::path::Path, tight_fraction: f64) -> Result<(), crate::PlanError> {
        let d = qlora_gpu::disk_space(cache_dir).map_err(|e| crate::PlanError::Machine { reason: e.to_string() })?;
        self.available_bytes = Some(d.available_bytes);
        self.verdict = Some(crate::verdict::Fit::judge(self.total_new_bytes, d.available_bytes, tight_fraction));
        Ok(())
    }
}

/// The pipeline's disk needs. `lora_parameters` is 0 when no training is planned;
/// `model_parameters` prices the merged export in 16-bit.
pub fn pipeline_disk(
    download_bytes: u64,
    model_bytes: u64,
    lora_parameters: u64,
    checkpoints: u64,
    merged_export: bool,
    model_parameters: u64,
) -> PipelineDisk {
    let adapter = if lora_parameters == 0 { 0 } else { lora_parameters * 4 + SIDECAR_BYTES };
    let checkpoint = if lora_parameters == 0 { 0 } else { lora_parameters * 4 * 3 + SIDECAR_BYTES };
    let merged = if merged_export { model_parameters * 2 + SIDECAR_BYTES } else { 0 };
    PipelineDisk {
        download_bytes,
        model_bytes,
        checkpoints,
        checkpoint_bytes: checkpoint,
        final_adapter_bytes: adapter,
        merged_export_bytes: merged,
        total_new_bytes: download_bytes + checkpoints * checkpoint + adapter + merged,
        available_bytes: None,
        verdict: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TinyLlama, r 16 on all projections (12,615,680 LoRA parameters), 3 checkpoints, merged:
    /// adapter 50,462,720 + 65,536; checkpoint 151,388,160 + 65,536;
    /// merged 1,100,048,384 × 2 + 65,536.
    #[test]
    fn pipeline_by_hand() {
        let d = pipeline_disk(2_200_119_864, 2_200_119_864, 12_615_680, 3, true, 1_100_048_384);
        assert_eq!(d.final_adapter_bytes, 50_528_256);
        assert_eq!(d.checkpoint_bytes, 151_453_696);
        assert_eq!(d.merged_export_bytes, 2_200_162_304);
        assert_eq!(d.total_new_bytes, 2_200_119_864 + 3 * 151_453_696 + 50_528_256 + 2_200_162_304);
        assert_eq!(pipeline_disk(5, 5, 0, 2, false, 10).total_new_bytes, 5);
    }

    #[test]
    fn free_space_is_read_from_the_cache_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = pipeline_disk(1, 1, 0, 0, false, 0);
        d.check_free_space(&dir.path().join("hub/not-yet"), 0.9).unwrap();
        assert!(d.available_bytes.unwrap() > 0);
        assert_eq!(d.verdict, Some(crate::verdict::Fit::Fits));
        let mut huge = pipeline_disk(u64::MAX / 2, 1, 0, 0, false, 0);
        huge.check_free_space(dir.path(), 0.9).unwrap();
        assert_eq!(huge.verdict, Some(crate::verdict::Fit::WontFit));
    }
}
