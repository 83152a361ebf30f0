//! The whole plan of one model against one machine: the `--json` object documented in
//! docs/PLANNER.md. Every field name here is part of that stable shape.

use crate::PlanError;
use crate::arch::Arch;
use crate::disk::{PipelineDisk, pipeline_disk};
use crate::inference::{InferenceMemory, inference_memory};
use crate::overheads::Overheads;
use crate::source::{ModelMeta, TensorsFrom};
use crate::target::Target;
use crate::tensors::parameter_count;
use crate::training::{TrainOptions, TrainingMemory, training_memory};
use crate::verdict::{Fit, Suggestion};
use crate::weights::Precision;
use serde::{Deserialize, Serialize};

/// What to plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Context length (prompt + generated tokens); default min(2048, max_position_embeddings).
    pub context: Option<u64>,
    pub batch: u64,
    pub train: Option<TrainOptions>,
    /// Checkpoints kept during training (disk).
    pub checkpoints: u64,
    pub merged_export: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { context: None, batch: 1, train: None, checkpoints: 2, merged_export: false }
    }
}

/// One precision's inference memory and verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferencePlan {
    #[serde(flatten)]
    pub memory: InferenceMemory,
    pub verdict: Fit,
}

/// Inference for every precision (fixed keys: the `--json` shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceTable {
    pub fp32: InferencePlan,
    pub bf16: InferencePlan,
    pub fp16: InferencePlan,
    pub int8: InferencePlan,
    pub nf4: InferencePlan,
    pub nf4_dq: InferencePlan,
}

impl InferenceTable {
    pub fn get(&self, p: Precision) -> &InferencePlan {
        match p {
            Precision::Fp32 => &self.fp32,
            Precision::Bf16 => &self.bf16,
            Precision::Fp16 => &self.fp16,
            Precision::Int8 => &self.int8,
            Precision::Nf4 => &self.nf4,
            Precision::Nf4Dq => &self.nf4_dq,
        }
    }
}

/// QLoRA training memory, its configuration and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingPlan {
    pub options: TrainOptions,
    #[serde(flatten)]
    pub memory: TrainingMemory,
    pub verdict: Fit,
    /// The smallest change that makes it fit, when it does not.
    pub suggestion: Option<Suggestion>,
}

/// The plan (`qlora plan --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    pub architecture: Arch,
    pub tensors_from: TensorsFrom,
    pub parameters: u64,
    /// Bytes a download would fetch now (selected files not yet in the cache).
    pub download_bytes: u64,
    /// Bytes of all the files a load needs, cached or not.
    pub model_bytes: u64,
    /// False when sizes come from the architecture rather than the file listing.
    pub download_exact: bool,
    pub context: u64,
    pub batch: u64,
    pub target: Target,
    pub inference: InferenceTable,
    /// The 16-bit precision this target computes in: `bf16`, or `fp16` before Ampere.
    pub preferred_16bit: Precision,
    /// For inference at the asked context: the smallest change that makes the preferred
    /// 16-bit load fit, when it does not.
    pub inference_suggestion: Option<Suggestion>,
    pub training: Option<TrainingPlan>,
    pub disk: PipelineDisk,
    /// True while configs/overheads.json still holds estimates rather than measurements.
    pub overheads_estimated: bool,
    pub notes: Vec<String>,
}

/// Plans `meta` for `target`.
pub fn plan(meta: &ModelMeta, target: &Target, opts: &PlanOptions, overheads: &Overheads) -> Result<Plan, PlanError> {
    let s = &meta.spec;
    let context = opts.context.unwrap_or(s.max_position_embeddings.min(2048));
    if context == 0 || opts.batch == 0 {
        return Err(PlanError::BadOption { option: "context/batch".into(), reason: "must be at least 1".into() });
    }
    let tight = overheads.verdict.tight_fraction.value;
    let judge = |total: u64| Fit::judge(total, target.available_bytes, tight);
    let infer = |p: Precision, ctx: u64| inference_memory(s, &meta.tensors, p, ctx, opts.batch, target.device, overheads);
    let entry = |p: Precision| {
        let memory = infer(p, context);
        InferencePlan { verdict: judge(memory.total_bytes), memory }
    };
    let inference = InferenceTable {
        fp32: entry(Precision::Fp32),
        bf16: entry(Precision::Bf16),
        fp16: entry(Precision::Fp16),
        int8: entry(Precision::Int8),
        nf4: entry(Precision::Nf4),
        nf4_dq: entry(Precision::Nf4Dq),
    };
    let preferred = if target.bf16 { Precision::Bf16 } else { Precision::Fp16 };
    let inference_suggestion = if inference.get(preferred).verdict.fits() {
        None
    } else {
        Some(suggest_inference(&inference, context, &|p, c| infer(p, c).total_bytes, &judge))
    };
    let training = match &opts.train {
        None => None,
        Some(t) => {
            let memory = training_memory(s, &meta.tensors, t, target.device, overheads)?;
            let verdict = judge(memory.total_bytes);
            let suggestion = if verdict.fits() {
                None
            } else {
                Some(suggest_training(t, &|o| training_memory(s, &meta.tensors, o, target.device, overheads).map(|m| m.total_bytes), &judge)?)
            };
            Some(TrainingPlan { options: t.clone(), memory, verdict, suggestion })
        }
    };
    let parameters = parameter_count(s, &meta.tensors);
    let lora = training.as_ref().map_or(0, |t| t.memory.lora_parameters);
    let disk = pipeline_disk(meta.download.to_fetch_bytes, meta.download.selected_bytes, lora, opts.checkpoints, opts.merged_export, parameters);
    let mut notes = Vec::new();
    if meta.tensors_from == TensorsFrom::Architecture && s.prequantized {
        notes.push("bitsandbytes pre-quantized checkpoint: tensor shapes are computed from config.json's architecture (its headers hold packed codes); the download is exact".into());
    } else if meta.tensors_from == TensorsFrom::Architecture {
        notes.push("no safetensors weights were found: tensor shapes are computed from config.json's architecture, and download sizes are the weights at the published dtype".into());
    }
    if let Some(n) = &target.note {
        notes.push(n.clone());
    }
    if context > s.max_position_embeddings {
        notes.push(format!(
            "context {context} is longer than the model's max_position_embeddings ({}); quality past it is not assured",
            s.max_position_embeddings
        ));
    }
    if let Some(t) = opts.train.as_ref().filter(|t| t.seq_len > s.max_position_embeddings) {
        notes.push(format!("sequence length {} is longer than the model's max_position_embeddings ({})", t.seq_len, s.max_position_embeddings));
    }
    if s.prequantized {
        notes.push(
            "config.json announces a bitsandbytes pre-quantized checkpoint: the nf4/int8 rows apply; the 16-bit rows would need the dense original"
                .into(),
        );
    }
    Ok(Plan {
        model: meta.model.clone(),
        architecture: s.arch,
        tensors_from: meta.tensors_from,
        parameters,
        download_bytes: meta.download.to_fetch_bytes,
        model_bytes: meta.download.selected_bytes,
        download_exact: meta.download.exact,
        context,
        batch: opts.batch,
        target: target.clone(),
        inference,
        preferred_16bit: preferred,
        inference_suggestion,
        training,
        disk,
        overheads_estimated: overheads.has_estimates(),
        notes,
    })
}

/// Lower precisions first (the least quality lost), then shorter contexts in NF4 + DQ.
fn suggest_inference(t: &InferenceTable, context: u64, total: &dyn Fn(Precision, u64) -> u64, judge: &dyn Fn(u64) -> Fit) -> Suggestion {
    for (p, flag) in [(Precision::Int8, "int8"), (Precision::Nf4, "nf4"), (Precision::Nf4Dq, "nf4-dq")] {
        let e = t.get(p);
        if e.verdict.fits() {
            return Suggestion { change: format!("load in {} (--quant {flag})", p.key()), total_bytes: e.memory.total_bytes, fit: e.verdict };
        }
    }
    let mut ctx = context / 2;
    while ctx >= 128 {
        let bytes = total(Precision::Nf4Dq, ctx);
        if judge(bytes).fits() {
            return Suggestion {
                change: format!("load in nf4_dq with a context of {ctx} tokens (--quant nf4-dq --context {ctx})"),
                total_bytes: bytes,
                fit: judge(bytes),
            };
        }
        ctx /= 2;
    }
    Suggestion {
        change: "a smaller model: even NF4 with a 128-token context does not fit".into(),
        total_bytes: t.nf4_dq.memory.total_bytes,
        fit: Fit::WontFit,
    }
}

/// Single changes in order of how little they cost the run, then the same changes together.
fn suggest_training(
    o: &TrainOptions,
    total: &dyn Fn(&TrainOptions) -> Result<u64, PlanError>,
    judge: &dyn Fn(u64) -> Fit,
) -> Result<Suggestion, PlanError> {
    let mut steps: Vec<(String, TrainOptions)> = Vec::new();
    if !o.checkpointing {
        steps.push(("gradient checkpointing (--checkpointing)".into(), TrainOptions { checkpointing: true, ..o.clone() }));
    }
    if o.base == Precision::Nf4 {
        steps.push(("double quantization (nf4_dq base)".into(), TrainOptions { base: Precision::Nf4Dq, ..o.clone() }));
    }
    if o.micro_batch > 1 {
        steps.push((
            "micro-batch 1 (--micro-batch 1; raise gradient accumulation to keep the batch)".into(),
            TrainOptions { micro_batch: 1, ..o.clone() },
        ));
    }
    let mut seq = o.seq_len / 2;
    while seq >= 128 {
        steps.push((format!("sequence length {seq} (--seq-len {seq})"), TrainOptions { seq_len: seq, ..o.clone() }));
        seq /= 2;
    }
    for (change, opts) in &steps {
        let bytes = total(opts)?;
        if judge(bytes).fits() {
            return Ok(Suggestion { change: change.clone(), total_bytes: bytes, fit: judge(bytes) });
        }
    }
    // Together: checkpointing, DQ, micro-batch 1, then shorter sequences.
    let mut all = TrainOptions { checkpointing: true, base: Precision::Nf4Dq, micro_batch: 1, ..o.clone() };
    let mut words: Vec<String> = ["--checkpointing", "nf4_dq base", "--micro-batch 1"].map(String::from).to_vec();
    loop {
        let bytes = total(&all)?;
        if judge(bytes).fits() {
            let change = format!("{} (together)", words.join(", "));
            return Ok(Suggestion { change, total_bytes: bytes, fit: judge(bytes) });
        }
        if all.seq_len <= 128 {
            return Ok(Suggestion {
                change: "a smaller model: even micro-batch 1 with 128-token sequences does not fit".into(),
                total_bytes: bytes,
                fit: Fit::WontFit,
            });
        }
        all.seq_len /= 2;
        words.retain(|w| !w.starts_with("--seq-len"));
        words.push(format!("--seq-len {}", all.seq_len));
    }
}
