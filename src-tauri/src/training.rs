//! Training from the wizard: a preset config file (`configs/*.yaml`), or with no preset a
//! config made for the base model from its config.json (`qlora_train::defaults`), with the
//! wizard's base model, dataset, output folder and knobs put in; the data prepared and checked
//! first (so a file that is not a dataset is refused at once, with the trainer's own message),
//! then `qlora_train::Trainer` on its own thread on the device Settings chose, its events turned
//! into the app's `train` events, and once the adapter is saved, sample answers before and
//! after ([`crate::samples`]).

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::{DatasetPreview, TrainDefaults, TrainEvent, TrainRequest};
use qlora_engine::candle_core::Device;
use qlora_jobs::CancelToken;
use qlora_train::defaults::{self, DefaultsError, Target};
use qlora_train::events::TrainEvent as CoreEvent;
use qlora_train::trainer::{self, PreparedData, Trainer};
use qlora_train::{TrainConfig, TrainError};
use std::path::{Path, PathBuf};

fn to_app(e: TrainError) -> AppError {
    let code = match &e {
        TrainError::Config(_) => ErrorCode::InvalidInput,
        TrainError::Data(_) => ErrorCode::BadFormat,
        TrainError::Model { .. } => ErrorCode::NotFound,
        TrainError::Io { .. } | TrainError::Checkpoint(_) => ErrorCode::Io,
        _ => ErrorCode::Internal,
    };
    AppError::new(code, e.to_string())
}

/// What a config made without a preset is for: the CPU, or a GPU computing in bf16 if its
/// compute capability allows.
pub fn target(device: &Device) -> Target {
    match device {
        Device::Cpu => Target::Cpu,
        _ => Target::Cuda { bf16: qlora_gpu::detect_gpus().ok().and_then(|g| g.first().map(|g| g.supports_bf16())).unwrap_or(false) },
    }
}

fn defaults_err(e: DefaultsError) -> AppError {
    let code = match &e {
        DefaultsError::Model { .. } => ErrorCode::BadFormat,
        _ => ErrorCode::InvalidInput,
    };
    AppError::new(code, e.to_string())
}

/// A config for the base model with no preset: needs the base, a dataset and an output folder.
fn made_for_model(req: &TrainRequest, target: Target) -> CmdResult<TrainConfig> {
    let need = |v: &str, what: &str| {
        if v.trim().is_empty() { Err(AppError::invalid(format!("without a preset config, {what}"))) } else { Ok(PathBuf::from(v.trim())) }
    };
    let model = need(&req.base_model, "pick the base model folder")?;
    let data = need(&req.dataset, "pick a dataset file (a preset brings its own; here there is none)")?;
    // The dataset step previews before an output folder is picked; a run needs one
    // (start_training checks).
    let out = if req.output_dir.trim().is_empty() { model.join("qlora-output") } else { PathBuf::from(req.output_dir.trim()) };
    if !model.is_dir() {
        return Err(AppError::new(
            ErrorCode::NotFound,
            format!("base model folder '{}' does not exist: pick a ready model, or download it first", model.display()),
        ));
    }
    defaults::for_model(&model, vec![data], out, target).map_err(defaults_err)
}

/// The knobs of the config made for `base_model` with no preset, to fill the form.
pub fn defaults_for(base_model: &str, target: Target) -> CmdResult<TrainDefaults> {
    let req = TrainRequest {
        base_model: base_model.into(),
        dataset: "data.jsonl".into(),
        config: None,
        output_dir: "out".into(),
        steps: 1,
        learning_rate: 0.0,
        lora_rank: 0,
        lora_alpha: 0.0,
        batch_size: 0,
        context: 0,
        resume: false,
    };
    let c = made_for_model(&req, target)?;
    Ok(TrainDefaults {
        learning_rate: c.optimizer.lr,
        lora_rank: c.lora.rank as u32,
        lora_alpha: c.lora.alpha as f32,
        batch_size: c.micro_batch as u32,
        context: c.data.max_len as u32,
        notes: vec![
            format!("LoRA on {}", c.lora.target_modules.join(", ")),
            format!(
                "{} compute on an NF4 base, {}, cosine schedule",
                format!("{:?}", c.compute_dtype).to_lowercase(),
                if c.grad_accum > 1 { format!("gradients accumulated over {} batches", c.grad_accum) } else { "no gradient accumulation".into() }
            ),
        ],
    })
}

/// The run's config: the preset file (or, with none, one made for the base model) with the
/// wizard's choices put in.
pub fn config(req: &TrainRequest, target: Target) -> CmdResult<TrainConfig> {
    let Some(path) = req.config.as_deref().filter(|p| !p.trim().is_empty()) else {
        let mut cfg = made_for_model(req, target)?;
        knobs(&mut cfg, req);
        return Ok(cfg);
    };
    let mut cfg = TrainConfig::from_file(Path::new(path.trim())).map_err(|e| to_app(e.into()))?;
    let set = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()));
    if let Some(m) = set(&req.base_model) {
        cfg.model = m;
    }
    if let Some(d) = set(&req.dataset) {
        cfg.data.files = vec![d];
    }
    if let Some(o) = set(&req.output_dir) {
        cfg.output_dir = o;
    }
    knobs(&mut cfg, req);
    Ok(cfg)
}

fn knobs(cfg: &mut TrainConfig, req: &TrainRequest) {
    // The wizard's knobs start at the preset's values (the UI fills them from the preset's
    // defaults); whatever the user changed is what runs, and what the planner judged.
    cfg.max_steps = Some(req.steps.max(1) as usize);
    cfg.optimizer.lr = req.learning_rate;
    cfg.lora.rank = req.lora_rank.max(1) as usize;
    cfg.lora.alpha = req.lora_alpha as f64;
    cfg.micro_batch = req.batch_size.max(1) as usize;
    cfg.data.max_len = req.context.max(1) as usize;
}

/// Reads and checks the data (blocking).
pub fn prepare(cfg: &TrainConfig) -> CmdResult<PreparedData> {
    for f in &cfg.data.files {
        if !f.is_file() {
            return Err(AppError::new(ErrorCode::NotFound, format!("dataset file '{}' does not exist", f.display())));
        }
    }
    trainer::prepare_data(cfg).map_err(to_app)
}

/// The wizard's dataset step: the preflight report, shown before a run.
pub fn preview(cfg: &TrainConfig, data: &PreparedData) -> DatasetPreview {
    let p = &data.preflight;
    let sample = p
        .example
        .iter()
        .map(|e| e.spans.iter().map(|s| if s.trained { format!("[[{}]]", s.text) } else { s.text.clone() }).collect::<String>())
        .collect();
    let mut warnings: Vec<String> = p.bad_examples.iter().map(|b| format!("skipped {}: {}", b.source, b.message)).collect();
    if p.truncated > 0 {
        warnings.push(format!("{} samples are longer than max_len {} and get cut", p.truncated, p.max_len));
    }
    DatasetPreview {
        path: cfg.data.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
        format: format!("{:?}", p.shape).to_lowercase(),
        rows: (p.train_samples + p.valid_samples) as u32,
        sample,
        token_stats: Some(format!(
            "{} train + {} validation samples · {} tokens, {} trained (loss) · longest {} of max {}",
            p.train_samples, p.valid_samples, p.train_tokens, p.trained_tokens, p.longest, p.max_len
        )),
        warnings,
    }
}

fn map(job: u64, e: CoreEvent) -> Option<TrainEvent> {
    Some(match e {
        CoreEvent::Start { total_steps, start_step, .. } => {
            TrainEvent::Started { job, total_steps: total_steps as u32, resumed_from: start_step as u32 }
        }
        CoreEvent::Step { step, loss, lr, tokens_per_s, eta_s, memory, .. } => TrainEvent::Step {
            job,
            step: step as u32,
            loss: loss as f32,
            lr,
            tokens_per_sec: tokens_per_s,
            eta_secs: eta_s,
            memory_bytes: Some(memory.rss_bytes),
        },
        CoreEvent::Eval { step, loss } => TrainEvent::Eval { job, step: step as u32, loss: loss as f32 },
        CoreEvent::Checkpoint { step, path } => TrainEvent::Checkpoint { job, step: step as u32, path: path.display().to_string() },
        CoreEvent::End { step, interrupted: true, .. } => TrainEvent::Cancelled { job, step: step as u32 },
        CoreEvent::End { adapter_dir, .. } => {
            TrainEvent::Finished { job, adapter_dir: adapter_dir.map(|d| d.display().to_string()).unwrap_or_default() }
        }
        _ => return None,
    })
}

/// Loads the model and trains (blocking) on `device`, sending every event to `emit`; once the
/// adapter is saved, answers a few of the dataset's prompts before and after.
pub fn run(job: u64, cfg: TrainConfig, data: PreparedData, resume: bool, device: &Device, cancel: &CancelToken, emit: &(dyn Fn(TrainEvent) + Sync)) {
    let prompts = crate::samples::prompts(&data.dataset, crate::samples::PROMPTS);
    let (model, load) = (cfg.model.clone(), crate::samples::load_options(&cfg, device));
    let result = Trainer::new(cfg, data, device).and_then(|mut t| {
        let sink = |e: CoreEvent| {
            if let Some(ev) = map(job, e) {
                emit(ev);
            }
        };
        t.run(resume, &sink, cancel)
    });
    match result {
        Err(e) => emit(TrainEvent::Failed { job, error: to_app(e) }),
        Ok(outcome) => {
            let Some(adapter) = outcome.adapter_dir.filter(|_| !outcome.interrupted) else { return };
            if prompts.is_empty() {
                return;
            }
            let (samples, error) = match crate::samples::answer_before_and_after(&model, &load, &adapter, &prompts, cancel) {
                Ok(s) => (s, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            emit(TrainEvent::Samples { job, samples, error });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(config: Option<&str>, dataset: &str) -> TrainRequest {
        TrainRequest {
            base_model: crate::chat_engine::tests::starter().display().to_string(),
            dataset: dataset.into(),
            config: config.map(String::from),
            output_dir: "/tmp/qlora-out".into(),
            steps: 5,
            learning_rate: 1e-3,
            lora_rank: 4,
            lora_alpha: 8.0,
            batch_size: 2,
            context: 64,
            resume: false,
        }
    }

    #[test]
    fn without_a_preset_the_config_is_made_for_the_model_with_the_knobs_put_in() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/quillbury_mayor.jsonl");
        let cfg = config(&request(None, &data.display().to_string()), Target::Cpu).unwrap();
        assert_eq!(cfg.lora.target_modules.len(), 7, "{:?}", cfg.lora.target_modules);
        assert_eq!(cfg.compute_dtype, qlora_train::config::ComputeDtype::F32);
        assert_eq!((cfg.max_steps, cfg.lora.rank, cfg.micro_batch, cfg.data.max_len), (Some(5), 4, 2, 64));
        assert_eq!(cfg.data.files, [data]);
        let d = defaults_for(&request(None, "").base_model, Target::Cpu).unwrap();
        assert_eq!((d.lora_rank, d.context, d.batch_size), (16, 256, 4));
        assert!(d.notes[0].contains("gate_proj"), "{:?}", d.notes);
        // No dataset and no preset: said so, naming what to pick.
        let e = config(&request(None, ""), Target::Cpu).unwrap_err();
        assert!(e.message.contains("without a preset config, pick a dataset file"), "{}", e.message);
        let e = config(&TrainRequest { base_model: "/nope".into(), ..request(None, "d.jsonl") }, Target::Cpu).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message);
    }
}
