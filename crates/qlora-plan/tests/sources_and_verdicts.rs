//! Local sources (a bitsandbytes pre-quantized checkpoint, a folder with only config.json, a
//! missing folder), the machine target on a computer without an NVIDIA GPU, and the
//! suggestions when a plan does not fit.

use qlora_hub::remote::SafetensorsHeader;
use qlora_plan::tensors::{Role, role_of};
use qlora_plan::{Fit, LocalFolder, Overheads, PlanOptions, Target, TargetKind, TensorsFrom, TrainOptions, gather, plan};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn a_prequantized_checkpoint_is_planned_from_its_architecture_with_an_exact_download() {
    let dir = fixtures().join("bnb4");
    let meta = gather(&LocalFolder::new(&dir)).unwrap();
    assert!(meta.spec.prequantized);
    assert_eq!(meta.tensors_from, TensorsFrom::Architecture);
    assert!(meta.download.exact);
    // The same model's dense twin, recorded next to it, has exactly the parameters planned.
    let twin = SafetensorsHeader::read_file(&dir.join("dense_twin.safetensors")).unwrap();
    let dense: u64 =
        twin.tensors.iter().filter(|(name, _)| role_of(&meta.spec, name) != Role::Unused).map(|(_, t)| t.shape.iter().product::<u64>()).sum();
    let p = plan(&meta, &Target::preset("t4").unwrap(), &PlanOptions::default(), Overheads::builtin().unwrap()).unwrap();
    assert_eq!(p.parameters, dense);
    assert!(p.notes.iter().any(|n| n.contains("pre-quantized")), "{:?}", p.notes);
}

#[test]
fn a_missing_folder_or_config_says_what_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let e = gather(&LocalFolder::new(dir.path())).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    let e = gather(&LocalFolder::new(dir.path().join("nope"))).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

/// This machine and CI have no NVIDIA driver: the plan falls back to system RAM and says why.
/// On a machine with a GPU the target is that GPU, with its free memory.
#[test]
fn detect_plans_against_the_cpu_without_a_gpu() {
    let t = Target::detect().unwrap();
    match t.kind {
        TargetKind::Cpu => {
            let note = t.note.unwrap();
            assert!(note.starts_with("no NVIDIA GPU found (NVML: "), "{note}");
            assert!(t.available_bytes > 0 && t.available_bytes <= t.total_bytes);
        }
        TargetKind::Gpu => assert!(t.available_bytes <= t.total_bytes && t.name.starts_with("cuda:")),
        TargetKind::Preset => panic!("detect never returns a preset"),
    }
}

fn mistral() -> qlora_plan::ModelMeta {
    gather(&LocalFolder::new(fixtures().join("hub-configs/mistralai--Mistral-7B-v0.1"))).unwrap()
}

fn gib(n: u64) -> u64 {
    n << 30
}

#[test]
fn inference_suggestions_go_from_lower_precision_to_shorter_context_to_a_smaller_model() {
    let o = Overheads::builtin().unwrap();
    let meta = mistral();
    let opts = PlanOptions { context: Some(8192), ..Default::default() };
    // 12 GiB: int8 of 7B (7 GiB) + 8k context (1 GiB KV + ~30 GiB of f32 scores) does not
    // fit, nor does any precision at 8k; a shorter context in nf4_dq does.
    let p = plan(&meta, &Target::cpu(gib(12), gib(12), None), &opts, o).unwrap();
    let s = p.inference_suggestion.unwrap();
    assert!(s.change.contains("--context"), "{}", s.change);
    assert!(s.fit != Fit::WontFit && s.total_bytes <= gib(12));
    // 2 GiB: not even nf4 weights (3.8 GiB) fit.
    let p = plan(&meta, &Target::cpu(gib(2), gib(2), None), &opts, o).unwrap();
    let s = p.inference_suggestion.unwrap();
    assert!(s.change.starts_with("a smaller model"), "{}", s.change);
    assert_eq!(s.fit, Fit::WontFit);
    // 80 GiB: bf16 fits, nothing to suggest.
    let p = plan(&meta, &Target::preset("a100-80").unwrap(), &PlanOptions::default(), o).unwrap();
    assert!(p.inference_suggestion.is_none());
    assert_eq!(p.preferred_16bit, qlora_plan::Precision::Bf16);
}

#[test]
fn training_suggestions_prefer_the_cheapest_single_change_then_combine() {
    let o = Overheads::builtin().unwrap();
    let meta = mistral();
    let train = TrainOptions { checkpointing: false, micro_batch: 4, seq_len: 512, ..Default::default() };
    let opts = PlanOptions { train: Some(train), ..Default::default() };
    // On 24 GiB, checkpointing alone is enough.
    let p = plan(&meta, &Target::preset("rtx4090").unwrap(), &opts, o).unwrap();
    let t = p.training.unwrap();
    assert_eq!(t.verdict, Fit::WontFit);
    assert!(t.suggestion.as_ref().unwrap().change.starts_with("gradient checkpointing"), "{:?}", t.suggestion);
    // On 8 GiB at sequence 4096 no single change is enough: the combination, with a shorter
    // sequence. (At 512, checkpointing alone fits: the layer inputs wait in host memory.)
    let long =
        PlanOptions { train: Some(TrainOptions { checkpointing: false, micro_batch: 4, seq_len: 4096, ..Default::default() }), ..Default::default() };
    let p = plan(&meta, &Target::preset("rtx2080").unwrap(), &long, o).unwrap();
    let s = p.training.unwrap().suggestion.unwrap();
    assert!(s.change.contains("(together)") && s.change.contains("--micro-batch 1"), "{}", s.change);
    assert!(s.fit != Fit::WontFit);
}
