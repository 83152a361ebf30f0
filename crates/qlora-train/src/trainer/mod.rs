//! The training loop: frozen base (NF4 by default) from the engine, LoRA on the targeted
//! projections, micro-batches with gradient accumulation, global-norm clipping, AdamW on the
//! LoRA parameters only, the LR schedule, eval every N steps, a NaN/inf guard, checkpoints
//! (every N, keep K, atomic) and resume, the final adapter in PEFT format. Progress goes to a
//! [`ProgressSink`] as [`TrainEvent`]s; the [`CancelToken`] is checked after every optimizer
//! step (a checkpoint is written first, so a cancelled run resumes where it stopped).

pub mod stash;
pub mod state;
pub mod step;

use crate::adapter::{self, AdapterError};
use crate::checkpoint::{self, Action, Policy};
use crate::config::{ComputeDtype, ConfigError, LossScale, QuantKind, TrainConfig};
use crate::data::batch::{self, Batcher};
use crate::data::{self, DataError, Dataset, model_text};
use crate::events::{Memory, TrainEvent};
use crate::lora::{self, Attached, TrainLora};
use crate::optim::{self, AdamW, Param};
use crate::preflight::{self, PreflightReport};
use crate::schedule::Schedule;
use candle_core::{DType, Device, Tensor};
use qlora_engine::linear::Quant;
use qlora_engine::model::{LoadOptions, Model};
use qlora_jobs::{CancelToken, ProgressSink, Throughput};
use state::{LogEntry, TrainerState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("cannot load the model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(
        "lora.target_modules: `{name}` matches no projection of this model; available: {}",
        available.join(", ")
    )]
    TargetModule { name: String, available: Vec<String> },
    #[error(
        "step {step}: the {what} is not finite ({value}); training stopped. {} Lower optimizer.lr, \
         enable grad_clip, or use compute_dtype: f32",
        match last_checkpoint { Some(p) => format!("The last good checkpoint is {}.", p.display()), None => "No checkpoint was written yet.".into() }
    )]
    NonFinite { step: usize, what: &'static str, value: f64, last_checkpoint: Option<PathBuf> },
    #[error("cannot resume from {path}: {message}")]
    Resume { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write a checkpoint: {0}")]
    Checkpoint(#[from] std::io::Error),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}

/// The data side of a run, ready before the model is loaded (so preflight is quick).
pub struct PreparedData {
    pub dataset: Dataset,
    pub preflight: PreflightReport,
    pub pad_id: u32,
}

/// Reads, tokenizes and checks the data with the model folder's tokenizer and template.
pub fn prepare_data(cfg: &TrainConfig) -> Result<PreparedData, TrainError> {
    if !cfg.model.is_dir() {
        return Err(TrainError::Model {
            path: cfg.model.clone(),
            message: "no such folder; set `model` to a Hugging Face-style folder (config.json, \
                      *.safetensors, tokenizer.json)"
                .into(),
        });
    }
    let (enc, renderer) = model_text::load(&cfg.model, cfg.data.fallback_template.as_deref())
        .map_err(|message| TrainError::Model { path: cfg.model.clone(), message })?;
    let dataset = data::prepare(&cfg.data, cfg.seed, renderer.as_ref(), &enc)?;
    let preflight = preflight::report(&dataset, &enc);
    Ok(PreparedData { dataset, preflight, pad_id: data::template::TextEncoder::pad_id(&enc) })
}

/// A run set up: model loaded, LoRA attached, data batched.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Model,
    pub lora: Attached,
    pub preflight: PreflightReport,
    train: Batcher,
    valid: Option<Batcher>,
    pub total_steps: usize,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub step: usize,
    pub interrupted: bool,
    /// The final adapter (absent when interrupted).
    pub adapter_dir: Option<PathBuf>,
    pub log: Vec<LogEntry>,
}

fn compute_dtype(c: ComputeDtype) -> DType {
    match c {
        ComputeDtype::Bf16 => DType::BF16,
        ComputeDtype::F16 => DType::F16,
        ComputeDtype::F32 => DType::F32,
    }
}

impl Trainer {
    /// Loads the model and attaches LoRA; `data` from [`prepare_data`].
    pub fn new(cfg: TrainConfig, data: PreparedData, device: &Device) -> Result<Self, TrainError> {
        let quant = match (cfg.quant.kind, cfg.quant.double_quant) {
            (QuantKind::None, _) => Quant::None,
            (QuantKind::Nf4, false) => Quant::Nf4,
            (QuantKind::Nf4, true) => Quant::Nf4DoubleQuant,
        };
        let opts = LoadOptions { dtype: compute_dtype(cfg.compute_dtype), quant, device: device.clone() };
        let mut model = Model::load(&cfg.model, &opts).map_err(|e| TrainError::Model { path: cfg.model.clone(), message: e.to_string() })?;
        model.set_training(true);
        let lora = attach(&mut model, &cfg)?;
        let ds = &data.dataset;
        fn refs(v: &[data::Prepared]) -> Vec<&crate::data::tokenize::Tokenized> {
            v.iter().map(|p| &p.tokens).collect()
        }
        let rows = |v: &[data::Prepared], seed| {
            if cfg.data.packing { batch::packed(&refs(v), cfg.data.max_len, seed) } else { batch::unpacked(&refs(v)) }
        };
        let train = Batcher::new(rows(&ds.train, cfg.seed), cfg.micro_batch, cfg.seed, data.pad_id);
        let valid = (!ds.valid.is_empty()).then(|| Batcher::new(rows(&ds.valid, cfg.seed), cfg.micro_batch, cfg.seed, data.pad_id));
        let total_steps = total_steps(&cfg, train.batches_per_epoch());
        Ok(Self { cfg, model, lora, preflight: data.preflight, train, valid, total_steps })
    }

    /// LoRA parameters, named `{module}.lora_A` / `{module}.lora_B`.
    pub fn params(&self) -> Vec<Param> {
        self.lora
            .iter()
            .flat_map(|(p, l)| [Param { name: format!("{p}.lora_A"), var: l.a.clone() }, Param { name: format!("{p}.lora_B"), var: l.b.clone() }])
            .collect()
    }

    fn checkpoint_root(&self) -> PathBuf {
        self.cfg.output_dir.join("checkpoints")
    }

    /// Validation loss (mean over trained tokens), dropout off.
    pub fn eval_loss(&self) -> Result<Option<f64>, TrainError> {
        let Some(valid) = &self.valid else { return Ok(None) };
        self.lora.iter().for_each(|(_, l)| l.set_train_mode(false));
        let (mut sum, mut count) = (0.0, 0.0);
        for b in valid.all_in_order() {
            let (ids, labels, weights) = step::batch_tensors(&b, self.model.device())?;
            let hidden = self.model.forward_hidden(&ids, None)?.detach();
            let (s, c) = crate::loss::loss_sum(&self.model, &hidden, &labels, &weights)?;
            sum += s;
            count += c;
        }
        self.lora.iter().for_each(|(_, l)| l.set_train_mode(true));
        Ok(Some(sum / count.max(1.0)))
    }

    /// Runs to the end (or until cancelled). With `resume`, continues from the newest
    /// checkpoint in `output_dir/checkpoints`.
    pub fn run(&mut self, resume: bool, sink: &dyn ProgressSink<TrainEvent>, cancel: &CancelToken) -> Result<Outcome, TrainError> {
        let root = self.checkpoint_root();
        checkpoint::clean_partial(&root).map_err(|e| TrainError::io(&root, e))?;
        let mut opt = AdamW::new(self.params(), (&self.cfg.optimizer).into())?;
        let mut st = self.start_state(resume, &root, &mut opt)?;
        let sched = Schedule::new(&self.cfg.schedule, self.cfg.optimizer.lr, self.total_steps);
        let policy = Policy { every: self.cfg.checkpoint.every, keep_last: self.cfg.checkpoint.keep_last };
        sink.emit(TrainEvent::Start {
            total_steps: self.total_steps,
            start_step: st.step,
            trainable_params: self.params().iter().map(|p| p.var.elem_count()).sum(),
            train_rows: self.train.row_count(),
            valid_rows: self.valid.as_ref().map_or(0, Batcher::row_count),
            base_weight_bytes: self.model.weight_bytes(),
        });
        let (mut tokens, mut steps_tp, mut tokens_done) = (Throughput::new(), Throughput::new(), 0u64);
        tokens.record(0);
        steps_tp.record(st.step as u64);
        let mut last_ckpt = checkpoint::list(&root).ok().and_then(|l| l.last().map(|s| checkpoint::dir_for(&root, *s)));
        while st.step < self.total_steps {
            let (entry, n_tokens, epoch) = self.optimizer_step(&mut opt, &mut st, &sched, &last_ckpt)?;
            st.step += 1;
            tokens_done += n_tokens as u64;
            tokens.record(tokens_done);
            steps_tp.record(st.step as u64);
            let mut entry = entry;
            sink.emit(TrainEvent::Step {
                step: st.step,
                total_steps: self.total_steps,
                epoch,
                loss: entry.loss,
                lr: entry.lr,
                grad_norm: entry.grad_norm,
                tokens_per_s: tokens.rate(),
                eta_s: steps_tp.eta_secs(self.total_steps as u64),
                memory: Memory::now(),
            });
            let last = st.step == self.total_steps;
            if ((self.cfg.eval_every > 0 && st.step % self.cfg.eval_every == 0) || last)
                && let Some(l) = self.eval_loss()?
            {
                entry.eval_loss = Some(l);
                sink.emit(TrainEvent::Eval { step: st.step, loss: l });
            }
            st.log_history.push(entry);
            let stop = cancel.is_cancelled() && !last;
            let existing = checkpoint::list(&root).map_err(|e| TrainError::io(&root, e))?;
            let force = stop || (last && self.cfg.checkpoint.every > 0);
            for action in policy.actions(st.step, &existing, force) {
                match action {
                    Action::Save(s) => {
                        let path = self.save_checkpoint(&root, s, &opt, &st)?;
                        sink.emit(TrainEvent::Checkpoint { step: s, path: path.clone() });
                        last_ckpt = Some(path);
                    }
                    Action::Delete(s) => {
                        let d = checkpoint::dir_for(&root, s);
                        std::fs::remove_dir_all(&d).map_err(|e| TrainError::io(&d, e))?;
                    }
                }
            }
            if stop {
                sink.emit(TrainEvent::End { step: st.step, interrupted: true, adapter_dir: None });
                return Ok(Outcome { step: st.step, interrupted: true, adapter_dir: None, log: st.log_history });
            }
        }
        let dir = self.cfg.output_dir.join("adapter");
        adapter::save(&dir, &self.lora, &self.cfg.lora, &self.cfg.model.display().to_string())?;
        let log = serde_json::to_vec_pretty(&st.log_history).map_err(|e| TrainError::io(&dir, e.into()))?;
        checkpoint::write_file_atomic(&self.cfg.output_dir.join("log_history.json"), &log).map_err(|e| TrainError::io(&self.cfg.output_dir, e))?;
        sink.emit(TrainEvent::End { step: st.step, interrupted: false, adapter_dir: Some(dir.clone()) });
        Ok(Outcome { step: st.step, interrupted: false, adapter_dir: Some(dir), log: st.log_history })
    }

    fn start_state(&self, resume: bool, root: &Path, opt: &mut AdamW) -> Result<TrainerState, TrainError> {
        let existing = checkpoint::list(root).map_err(|e| TrainError::io(root, e))?;
        match (resume, existing.last()) {
            (true, Some(&s)) => state::load(&checkpoint::dir_for(root, s), &self.cfg, &self.lora, opt),
            (true, None) => Err(TrainError::Resume { path: root.to_path_buf(), message: "no checkpoint there; start without --resume".into() }),
            (false, Some(_)) => Err(TrainError::Resume {
                path: root.to_path_buf(),
                message: "output_dir already holds checkpoints of a run; pass --resume to continue it, \
                          or choose another output_dir"
                    .into(),
            }),
            (false, None) => Ok(TrainerState {
                step: 0,
                micro_batches: 0,
                optimizer_step: 0,
                rng: Default::default(),
                loss_scale: initial_scale(&self.cfg),
                good_steps: 0,
                log_history: Vec::new(),
                fingerprint: state::fingerprint(&self.cfg),
            }),
        }
    }

    fn save_checkpoint(&self, root: &Path, s: usize, opt: &AdamW, st: &TrainerState) -> Result<PathBuf, TrainError> {
        let mut st = st.clone();
        st.optimizer_step = opt.step_count();
        st.rng = self.lora.iter().map(|(p, l)| (p.clone(), l.rng_state())).collect();
        checkpoint::write_atomic::<TrainError>(root, s, |dir| state::save(dir, &self.cfg, &self.lora, opt, &st))
    }

    /// Accumulates `grad_accum` micro-batches, clips, guards and steps the optimizer.
    /// Returns the log entry, tokens processed and the epoch.
    fn optimizer_step(
        &self,
        opt: &mut AdamW,
        st: &mut TrainerState,
        sched: &Schedule,
        last_ckpt: &Option<PathBuf>,
    ) -> Result<(LogEntry, usize, usize), TrainError> {
        let lr = sched.lr(st.step);
        let batches: Vec<_> = (st.micro_batches..st.micro_batches + self.cfg.grad_accum).map(|k| self.train.micro_batch(k)).collect();
        st.micro_batches += self.cfg.grad_accum;
        let norm = batches.iter().map(|(b, _)| b.target_count()).sum::<usize>().max(1) as f64;
        let f16 = self.cfg.compute_dtype == ComputeDtype::F16;
        let scale = if f16 { st.loss_scale } else { 1.0 };
        let (mut losses, mut grads) = (Vec::new(), Vec::<Tensor>::new());
        for (b, _) in &batches {
            let (l, g) = step::micro_step_pending(&self.model, &self.lora, b, norm, scale, self.cfg.checkpointing())?;
            losses.push(l);
            grads = if grads.is_empty() { g } else { grads.iter().zip(g).map(|(a, b)| a + b).collect::<Result<_, _>>()? };
        }
        if scale != 1.0 {
            grads = grads.iter().map(|g| g / scale).collect::<Result<_, _>>()?;
        }
        // Clipping as torch's clip_grad_norm_, the factor applied by the optimizer while it
        // reads the gradients (no scaled copies).
        let grad_norm = optim::global_norm(&grads)?;
        let clip = self.cfg.grad_clip.and_then(|c| optim::clip_factor(grad_norm, c));
        // The norm was read from the device: the losses are ready, reading them waits no more.
        let mut loss = 0.0;
        for l in &losses {
            loss += l.read()?;
        }
        let step = st.step + 1;
        let nonfinite = |what, value| TrainError::NonFinite { step, what, value, last_checkpoint: last_ckpt.clone() };
        if !loss.is_finite() {
            return Err(nonfinite("loss", loss));
        }
        if !grad_norm.is_finite() {
            if f16 && self.cfg.loss_scale == LossScale::Dynamic {
                // As torch's GradScaler: skip this step, halve the scale.
                st.loss_scale /= 2.0;
                st.good_steps = 0;
            } else {
                return Err(nonfinite("gradient norm", grad_norm));
            }
        } else {
            opt.step_scaled(&grads, lr, clip)?;
            st.good_steps += 1;
            if f16 && self.cfg.loss_scale == LossScale::Dynamic && st.good_steps.is_multiple_of(2000) {
                st.loss_scale *= 2.0;
            }
        }
        let n_tokens = batches.iter().map(|(b, _)| b.tokens).sum();
        let epoch = batches.last().map_or(0, |(_, e)| *e);
        Ok((LogEntry { step, loss, lr, grad_norm, eval_loss: None }, n_tokens, epoch))
    }
}

fn initial_scale(cfg: &TrainConfig) -> f64 {
    match cfg.loss_scale {
        LossScale::Dynamic => 65536.0,
        LossScale::Fixed(s) => s,
    }
}

/// Optimizer steps of the run: `max_steps`, or what `epochs` make, whichever is smaller.
pub fn total_steps(cfg: &TrainConfig, batches_per_epoch: usize) -> usize {
    let from_epochs = cfg.epochs.map(|e| ((e * batches_per_epoch as f64) / cfg.grad_accum as f64).ceil().max(1.0) as usize);
    match (cfg.max_steps, from_epochs) {
        (Some(m), Some(e)) => m.min(e),
        (Some(m), None) => m,
        (None, Some(e)) => e,
        (None, None) => 1,
    }
}

/// Wraps every projection matching `lora.target_modules` in a [`TrainLora`]. A target that
/// matches nothing is an error listing what the model has.
pub fn attach(model: &mut Model, cfg: &TrainConfig) -> Result<Attached, TrainError> {
    let projections = model.projections();
    let paths: Vec<String> = projections.iter().map(|(p, _)| p.clone()).collect();
    for t in &cfg.lora.target_modules {
        if !paths.iter().any(|p| lora::matches(p, t)) {
            return Err(TrainError::TargetModule { name: t.clone(), available: lora::available(&paths) });
        }
    }
    let mut out = Vec::new();
    let device = model.device().clone();
    for (i, (path, base)) in projections.into_iter().enumerate() {
        if !cfg.lora.target_modules.iter().any(|t| lora::matches(&path, t)) {
            continue;
        }
        let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let l = Arc::new(TrainLora::new(base, cfg.lora.rank, cfg.lora.scaling(), cfg.lora.dropout, seed, &device)?);
        model.replace_projection(&path, l.clone()).map_err(|e| TrainError::Model { path: cfg.model.clone(), message: e.to_string() })?;
        out.push((path, l));
    }
    Ok(out)
}
