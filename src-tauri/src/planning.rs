//! The Planner page's call: a [`PlanRequest`] becomes `qlora_plan` options, the plan is made
//! against this machine or a preset card (the same composition as `qlora plan`), and the part
//! the page shows (the chosen precision or training, its breakdown, verdict and suggestion)
//! becomes a [`PlanReport`].

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::{GpuChoice, PlanItem, PlanReport, PlanRequest, Verdict};
use qlora_plan::{self as qp, Fit, PlanError, PlanOptions, Precision, Target, TrainOptions};
use std::path::Path;

fn verdict(f: Fit) -> Verdict {
    match f {
        Fit::Fits => Verdict::Fits,
        Fit::Tight => Verdict::Tight,
        _ => Verdict::DoesNotFit,
    }
}

/// A stable code per planner failure. `PlanError::Hub` carries the Hub error as text, so the
/// not-found and network cases are told apart by the Hub's own wording.
fn to_app(e: PlanError) -> AppError {
    let code = match &e {
        PlanError::Io { .. } => ErrorCode::NotFound,
        PlanError::BadConfig { .. } | PlanError::UnsupportedArchitecture { .. } => ErrorCode::BadFormat,
        PlanError::BadOption { .. } => ErrorCode::InvalidInput,
        PlanError::Hub { reason, .. } if reason.contains("was not found") => ErrorCode::NotFound,
        PlanError::Hub { reason, .. } if reason.contains("cannot reach") || reason.contains("offline mode") => ErrorCode::Offline,
        _ => ErrorCode::Internal,
    };
    AppError::new(code, e.to_string())
}

pub fn precision(key: &str) -> CmdResult<Precision> {
    Precision::ALL
        .into_iter()
        .find(|p| p.key() == key)
        .ok_or_else(|| AppError::invalid(format!("precision '{key}' is not one of fp32, bf16, fp16, int8, nf4, nf4_dq")))
}

/// This machine as the planner sees it: the GPU, unless Settings' compute device is the CPU.
fn this_machine(device: qlora_engine::DeviceChoice) -> CmdResult<Target> {
    if device != qlora_engine::DeviceChoice::Cpu {
        return Target::detect().map_err(to_app);
    }
    let ram = qlora_gpu::system_memory().map_err(|e| AppError::new(ErrorCode::Internal, e.to_string()))?;
    let note = "the compute device is set to the CPU in Settings: planning against system RAM".to_string();
    Ok(Target::cpu(ram.total_bytes, ram.available_bytes, Some(note)))
}

/// Plans the request on `device` (Settings' choice) for "this machine". Blocking (reads the
/// Hub or a folder): call it off the main thread.
pub fn plan(req: &PlanRequest, hub: qlora_hub::HubClient, device: qlora_engine::DeviceChoice) -> CmdResult<PlanReport> {
    let target = match &req.gpu {
        GpuChoice::ThisMachine => this_machine(device)?,
        GpuChoice::Preset { id } => Target::preset(id).map_err(to_app)?,
    };
    let model = req.model.trim();
    let local = Path::new(model).is_dir();
    if model.starts_with('/') && !local {
        return Err(AppError::new(ErrorCode::NotFound, format!("model folder '{model}' does not exist")));
    }
    let cache_dir = hub.config().cache_dir.clone();
    // Offline, a cached model is planned from its snapshot folder (the Hub cannot be asked).
    let snapshot = (!local && hub.config().offline)
        .then(|| qlora_hub::cache::cached_listing(&cache_dir, model, "main"))
        .flatten()
        .map(|l| qlora_hub::cache::layout::RepoCache::new(&cache_dir, model).snapshot_dir(&l.commit));
    let meta = match (&snapshot, local) {
        (_, true) => qp::gather(&qp::LocalFolder::new(model)),
        (Some(snap), false) => qp::gather(&qp::LocalFolder::new(snap)),
        (None, false) => qp::gather(&qp::HubSource::new(hub, model, "main")),
    }
    .map_err(to_app)?;
    let train = req.train.then(|| TrainOptions {
        seq_len: req.context as u64,
        micro_batch: req.batch_size as u64,
        rank: req.lora_rank as u64,
        targets: Vec::new(),
        checkpointing: req.gradient_checkpointing,
        base: Precision::Nf4Dq,
        dropout: false,
        offload_checkpoints: true,
    });
    let opts =
        PlanOptions { context: Some(req.context as u64), batch: if req.train { 1 } else { req.batch_size as u64 }, train, ..Default::default() };
    let overheads = qp::Overheads::builtin().map_err(to_app)?;
    let mut p = qp::plan(&meta, &target, &opts, overheads).map_err(to_app)?;
    let disk_dir = if local { Path::new(model).to_path_buf() } else { cache_dir };
    let _ = p.disk.check_free_space(&disk_dir, overheads.verdict.tight_fraction.value);
    let mut r = report(&p, req)?;
    if snapshot.is_some() {
        r.notes.push("offline: planned from the copy in the cache".into());
    }
    Ok(r)
}

fn report(p: &qp::Plan, req: &PlanRequest) -> CmdResult<PlanReport> {
    let item = |label: &str, bytes: u64| PlanItem { label: label.to_string(), bytes };
    let (fit, total, breakdown, suggestion) = match &p.training {
        Some(t) => {
            let m = &t.memory;
            let items = vec![
                item("base weights (NF4)", m.base_weights_bytes),
                item("LoRA weights", m.lora_weights_bytes),
                item("LoRA gradients", m.lora_grads_bytes),
                item("AdamW states", m.optimizer_bytes + m.master_weights_bytes),
                item("activations", m.activations_bytes),
                item("logits / loss", m.logits_bytes),
                item("dequantize scratch", m.dequant_scratch_bytes),
                item("overhead", m.overhead_bytes),
            ];
            (t.verdict, m.total_bytes, items, t.suggestion.as_ref().map(|s| s.change.clone()))
        }
        None => {
            let e = p.inference.get(precision(&req.precision)?);
            let m = &e.memory;
            let items = vec![
                item("weights", m.weights_bytes),
                item("KV cache", m.kv_cache_bytes),
                item("activations", m.activations_bytes),
                item("overhead", m.overhead_bytes),
            ];
            let suggestion = (!e.verdict.fits()).then(|| smallest_fitting(p)).flatten();
            (e.verdict, m.total_bytes, items, suggestion)
        }
    };
    // The plan's notes already carry the target's (e.g. "no NVIDIA GPU found").
    let mut notes = p.notes.clone();
    if !p.download_exact {
        notes.push("download size estimated from the architecture".into());
    }
    Ok(PlanReport {
        model: p.model.clone(),
        device: p.target.name.clone(),
        verdict: verdict(fit),
        budget_bytes: p.target.available_bytes,
        total_bytes: total,
        breakdown: breakdown.into_iter().filter(|i| i.bytes > 0).collect(),
        download_bytes: p.download_bytes,
        disk_free_bytes: p.disk.available_bytes,
        suggestion,
        notes,
    })
}

/// For inference that does not fit: the planner's own suggestion, else the lightest precision
/// that fits.
fn smallest_fitting(p: &qp::Plan) -> Option<String> {
    if let Some(s) = &p.inference_suggestion {
        return Some(s.change.clone());
    }
    [Precision::Int8, Precision::Nf4, Precision::Nf4Dq]
        .into_iter()
        .find(|&q| p.inference.get(q).verdict.fits())
        .map(|q| format!("load it in {}", q.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings' device set to the CPU: "this machine" is planned against system RAM, and the
    /// page says why, whatever GPU the machine has.
    #[test]
    fn cpu_device_plans_against_system_ram() {
        let model = crate::chat_engine::tests::starter();
        let req = PlanRequest {
            model: model.display().to_string(),
            gpu: GpuChoice::ThisMachine,
            precision: "nf4".into(),
            context: 256,
            train: true,
            batch_size: 1,
            lora_rank: 8,
            gradient_checkpointing: true,
        };
        let cache = tempfile::tempdir().unwrap();
        let settings = crate::settings::Settings { offline: true, ..Default::default() };
        let hub = crate::hub::client(&settings, cache.path().to_path_buf()).unwrap();
        let r = plan(&req, hub, qlora_engine::DeviceChoice::Cpu).unwrap();
        assert_eq!(r.device, "CPU (system RAM)");
        assert!(r.notes.iter().any(|n| n.contains("set to the CPU in Settings")), "{:?}", r.notes);
        assert_eq!(r.verdict, Verdict::Fits, "{r:?}");
    }
}
