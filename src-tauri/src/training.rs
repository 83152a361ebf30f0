//! Training from the wizard: a preset config file (`configs/*.yaml`) with the wizard's base
//! model, dataset, output folder and step count put in, the data prepared and checked first
//! (so a file that is not a dataset is refused at once, with the trainer's own message), then
//! `qlora_train::Trainer` on its own thread, its events turned into the app's `train` events.

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::{DatasetPreview, TrainEvent, TrainRequest};
use qlora_jobs::CancelToken;
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

/// The run's config: the preset file with the wizard's choices put in.
pub fn config(req: &TrainRequest) -> CmdResult<TrainConfig> {
    let Some(path) = req.config.as_deref().filter(|p| !p.trim().is_empty()) else {
        return Err(AppError::invalid("pick a preset config file (configs/*.yaml), such as configs/demo_smollm2.yaml"));
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
    // The wizard's knobs start at the preset's values (the UI fills them from the preset's
    // defaults); whatever the user changed is what runs, and what the planner judged.
    cfg.max_steps = Some(req.steps.max(1) as usize);
    cfg.optimizer.lr = req.learning_rate;
    cfg.lora.rank = req.lora_rank.max(1) as usize;
    cfg.lora.alpha = req.lora_alpha as f64;
    cfg.micro_batch = req.batch_size.max(1) as usize;
    cfg.data.max_len = req.context.max(1) as usize;
    Ok(cfg)
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
        CoreEvent::Start { total_steps, start_step, .. } => TrainEvent::Started { job, total_steps: total_steps as u32, resumed_from: start_step as u32 },
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
        CoreEvent::End { adapter_dir, .. } => TrainEvent::Finished {
            job,
            adapter_dir: adapter_dir.map(|d| d.display().to_string()).unwrap_or_default(),
            samples: Vec::new(),
        },
        _ => return None,
    })
}

/// Loads the model and trains (blocking), sending every event to `emit`.
pub fn run(job: u64, cfg: TrainConfig, data: PreparedData, resume: bool, cancel: &CancelToken, emit: &(dyn Fn(TrainEvent) + Sync)) {
    let device = qlora_engine::candle_core::Device::Cpu;
    let result = Trainer::new(cfg, data, &device).and_then(|mut t| {
        let sink = |e: CoreEvent| {
            if let Some(ev) = map(job, e) {
                emit(ev);
            }
        };
        t.run(resume, &sink, cancel)
    });
    if let Err(e) = result {
        emit(TrainEvent::Failed { job, error: to_app(e) });
    }
}
