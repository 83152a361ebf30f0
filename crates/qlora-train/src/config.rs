//! The YAML training config: one file says everything a run needs (model, quantization, LoRA,
//! data, optimizer, schedule, loop, checkpoints), so a run can be repeated and shared.
//!
//! Parsed with `serde_norway` (the maintained fork of the deprecated `serde_yaml`; `serde_yml`
//! was archived with open soundness advisories). Every struct has `deny_unknown_fields`, so a
//! typo is an error that names the field; serde_norway's errors carry the path of the field
//! (`lora.rank: invalid type ...`) and its line and column. After parsing, [`TrainConfig::validate`]
//! checks values serde cannot (a zero rank, betas outside [0, 1), a split of 1.0) and names the
//! field. Relative paths are resolved against the config file's folder, so a config works
//! whatever the current directory.
//!
//! ```
//! let yaml = "model: models/tiny\ndata:\n  files: [data.jsonl]\n  max_len: 128\nmax_steps: 10\n";
//! let cfg = qlora_train::config::TrainConfig::from_yaml_str(yaml, None).unwrap();
//! assert_eq!(cfg.lora.rank, 8);
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What went wrong reading a config. Each variant names the file and, where known, the field
/// and line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}invalid config{}: {message}", file_prefix(path), line_suffix(*line, *column))]
    Parse { path: Option<PathBuf>, line: Option<usize>, column: Option<usize>, message: String },
    #[error("{}invalid value for `{field}`: {message}", file_prefix(path))]
    Invalid { path: Option<PathBuf>, field: String, message: String },
}

fn file_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default()
}

fn line_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l} column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// The whole training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Hugging Face-style model folder (config.json, safetensors, tokenizer.json).
    pub model: PathBuf,
    #[serde(default)]
    pub quant: QuantConfig,
    #[serde(default)]
    pub compute_dtype: ComputeDtype,
    /// Loss scaling for f16 compute (ignored otherwise).
    #[serde(default)]
    pub loss_scale: LossScale,
    #[serde(default)]
    pub lora: LoraConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default = "one")]
    pub micro_batch: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this; `null` turns clipping off.
    #[serde(default = "default_clip")]
    pub grad_clip: Option<f64>,
    /// Optimizer steps to run. One of `max_steps` and `epochs` must be set; with both, the
    /// run stops at whichever comes first.
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default)]
    pub epochs: Option<f64>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Evaluate the validation loss every N optimizer steps (0 = only at the end).
    #[serde(default)]
    pub eval_every: usize,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default = "default_output")]
    pub output_dir: PathBuf,
    /// Recompute each decoder layer's activations in backward instead of keeping them.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With gradient checkpointing on a CUDA device, hold each layer's saved input in pinned
    /// host memory between the forward and the backward (copied on a second stream while the
    /// GPU computes): `[micro_batch, len, hidden]` 16-bit values a layer less GPU memory, the
    /// same gradients. `false` keeps them on the GPU (as does `QLORA_OFFLOAD_CHECKPOINTS=0`).
    #[serde(default = "yes")]
    pub offload_checkpoints: bool,
}

fn one() -> usize {
    1
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}
fn default_seed() -> u64 {
    42
}
fn default_output() -> PathBuf {
    PathBuf::from("output")
}

/// How the frozen base is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    #[serde(default)]
    pub kind: QuantKind,
    #[serde(default = "yes")]
    pub double_quant: bool,
}

fn yes() -> bool {
    true
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self { kind: QuantKind::Nf4, double_quant: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantKind {
    /// NF4 (QLoRA).
    #[default]
    Nf4,
    /// Dense base in the compute dtype (plain LoRA).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    #[default]
    Bf16,
    F16,
    F32,
}

/// Loss scaling for f16: `dynamic` (start at 2^16, halve on overflow, double after 2000 good
/// steps, as torch's GradScaler) or a fixed factor.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossScale {
    #[default]
    Dynamic,
    Fixed(f64),
}

impl Serialize for LossScale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LossScale::Dynamic => s.serialize_str("dynamic"),
            LossScale::Fixed(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for LossScale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(LossScale::Fixed(v)),
            Raw::Str(s) if s == "dynamic" => Ok(LossScale::Dynamic),
            Raw::Str(s) => Err(serde::de::Error::custom(format!("expected `dynamic` or a number, got `{s}`"))),
        }
    }
}

/// LoRA hyper-parameters, as peft names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// rsLoRA: scale by alpha/sqrt(r) instead of alpha/r.
    #[serde(default)]
    pub rslora: bool,
    /// Projection names (`q_proj`, `v_proj`, ...), matched against the last part of a
    /// module's name as peft does; `all-linear` targets every linear layer but the head.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.0, rslora: false, target_modules: default_targets() }
    }
}

impl LoraConfig {
    /// The factor LoRA's update is multiplied by: alpha/r, or alpha/sqrt(r) with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.rslora { self.alpha / (self.rank as f64).sqrt() } else { self.alpha / self.rank as f64 }
    }
}

/// Where the examples come from and how they become token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// JSONL, JSON, CSV or Parquet files (picked by extension).
    pub files: Vec<PathBuf>,
    #[serde(default)]
    pub format: DataFormat,
    /// Longest sequence in tokens.
    pub max_len: usize,
    /// Cut samples longer than `max_len` (counted); off: such a sample is an error.
    #[serde(default = "yes")]
    pub truncation: bool,
    /// Concatenate samples into `max_len` rows (no padding waste).
    #[serde(default)]
    pub packing: bool,
    /// Fraction of samples held out for the eval loss (0 = none).
    #[serde(default)]
    pub validation_split: f64,
    #[serde(default)]
    pub loss_on: LossOn,
    /// Skip lines that fail to parse or have the wrong shape (counted in preflight) instead
    /// of stopping with an error.
    #[serde(default)]
    pub skip_bad_lines: bool,
    /// Chat template to use when the model ships none (`chatml`).
    #[serde(default)]
    pub fallback_template: Option<String>,
    /// System prompt prepended to conversations that have none.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    #[default]
    Auto,
    Alpaca,
    Sharegpt,
    Messages,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// Only the assistant's replies (and their end-of-turn token).
    #[default]
    Assistant,
    /// Every token.
    All,
}

/// AdamW, as torch.optim.AdamW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_lr() -> f64 {
    2e-4
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self { lr: default_lr(), betas: default_betas(), eps: default_eps(), weight_decay: 0.0 }
    }
}

/// Learning-rate schedule, as transformers' `get_*_schedule_with_warmup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub kind: ScheduleKind,
    #[serde(default)]
    pub warmup_steps: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup_steps: 0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Linear,
    Cosine,
}

/// Checkpoints every N optimizer steps, keeping the last K.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// 0 = no intermediate checkpoints.
    #[serde(default)]
    pub every: usize,
    #[serde(default = "default_keep")]
    pub keep_last: usize,
}

fn default_keep() -> usize {
    2
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 0, keep_last: default_keep() }
    }
}

impl TrainConfig {
    /// What a micro-step does with the layers' activations (`gradient_checkpointing` and
    /// `offload_checkpoints` together).
    pub fn checkpointing(&self) -> crate::trainer::stash::Checkpointing {
        use crate::trainer::stash::Checkpointing;
        if self.gradient_checkpointing { Checkpointing::on(self.offload_checkpoints) } else { Checkpointing::Off }
    }

    /// Reads, parses, validates and resolves paths against the file's folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut cfg = Self::from_yaml_str(&text, Some(path))?;
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        Ok(cfg)
    }

    /// Parses and validates YAML text; `path` only labels errors.
    pub fn from_yaml_str(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let cfg: TrainConfig = serde_norway::from_str(text).map_err(|e| {
            let loc = e.location();
            let mut message = e.to_string();
            // serde_norway appends " at line L column C"; we print it ourselves.
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            ConfigError::Parse {
                path: path.map(Path::to_path_buf),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message,
            }
        })?;
        cfg.validate().map_err(|(field, message)| ConfigError::Invalid { path: path.map(Path::to_path_buf), field, message })?;
        Ok(cfg)
    }

    /// Makes relative `model`, `data.files` and `output_dir` relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.model);
        fix(&mut self.output_dir);
        self.data.files.iter_mut().for_each(fix);
    }

    /// Checks the values serde accepted; returns the bad field's path and what to do.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        let l = &self.lora;
        if l.rank == 0 {
            return bad("lora.rank", "must be at least 1 (8 or 16 are usual)");
        }
        if !(l.alpha.is_finite() && l.alpha > 0.0) {
            return bad("lora.alpha", "must be a positive number (often 2 x rank)");
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return bad("lora.dropout", "must be in [0, 1)");
        }
        if l.target_modules.is_empty() {
            return bad("lora.target_modules", "name at least one module, e.g. [q_proj, v_proj]");
        }
        let d = &self.data;
        if d.files.is_empty() {
            return bad("data.files", "name at least one JSONL, JSON, CSV or Parquet file");
        }
        if d.max_len < 2 {
            return bad("data.max_len", "must be at least 2 tokens");
        }
        if !(0.0..1.0).contains(&d.validation_split) {
            return bad("data.validation_split", "must be in [0, 1): the fraction held out");
        }
        if let Some(t) = &d.fallback_template
            && !crate::data::template::FALLBACK_NAMES.contains(&t.as_str())
        {
            return Err((
                "data.fallback_template".into(),
                format!("unknown template `{t}`; known: {}", crate::data::template::FALLBACK_NAMES.join(", ")),
            ));
        }
        self.validate_optim()?;
        self.validate_loop()
    }

    fn validate_optim(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad("optimizer.lr", "must be a positive number, e.g. 2e-4");
        }
        if !(0.0..1.0).contains(&o.betas.0) || !(0.0..1.0).contains(&o.betas.1) {
            return bad("optimizer.betas", "both must be in [0, 1), e.g. [0.9, 0.999]");
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("optimizer.eps", "must be a small positive number, e.g. 1e-8");
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad("optimizer.weight_decay", "must be 0 or positive");
        }
        if let LossScale::Fixed(s) = self.loss_scale
            && !(s.is_finite() && s > 0.0)
        {
            return bad("loss_scale", "must be `dynamic` or a positive number");
        }
        Ok(())
    }

    fn validate_loop(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if self.micro_batch == 0 {
            return bad("micro_batch", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad("grad_clip", "must be a positive number, or null to turn clipping off");
        }
        match (self.max_steps, self.epochs) {
            (None, None) => return bad("max_steps", "set `max_steps` or `epochs` (or both)"),
            (Some(0), _) => return bad("max_steps", "must be at least 1"),
            (_, Some(e)) if !(e.is_finite() && e > 0.0) => return bad("epochs", "must be positive"),
            _ => {}
        }
        if self.checkpoint.every > 0 && self.checkpoint.keep_last == 0 {
            return bad("checkpoint.keep_last", "must be at least 1 when checkpoint.every is set");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "model: m\ndata:\n  files: [d.jsonl]\n  max_len: 64\nmax_steps: 5\n";

    fn err(yaml: &str) -> String {
        TrainConfig::from_yaml_str(yaml, Some(Path::new("c.yaml"))).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = TrainConfig::from_yaml_str(MIN, None).unwrap();
        assert!(c.offload_checkpoints, "offload is on by default");
        assert_eq!(c.checkpointing(), crate::trainer::stash::Checkpointing::Off, "checkpointing is off unless asked");
        assert_eq!(c.quant, QuantConfig { kind: QuantKind::Nf4, double_quant: true });
        assert_eq!(c.compute_dtype, ComputeDtype::Bf16);
        assert_eq!(c.data.loss_on, LossOn::Assistant);
        assert!(c.data.truncation);
        assert_eq!(c.optimizer.betas, (0.9, 0.999));
        assert_eq!(c.grad_clip, Some(1.0));
        assert_eq!(c.loss_scale, LossScale::Dynamic);
        assert_eq!(c.lora.scaling(), 2.0);
    }

    #[test]
    fn full_config_parses() {
        let y = r#"
model: /m
quant: {kind: none, double_quant: false}
compute_dtype: f16
loss_scale: 1024
lora: {rank: 4, alpha: 8, dropout: 0.1, rslora: true, target_modules: [q_proj, k_proj]}
data: {files: [a.csv], format: alpaca, max_len: 32, truncation: false, packing: true,
       validation_split: 0.2, loss_on: all, skip_bad_lines: true, fallback_template: chatml}
optimizer: {lr: 0.001, betas: [0.8, 0.9], eps: 1.0e-6, weight_decay: 0.01}
schedule: {kind: cosine, warmup_steps: 3}
micro_batch: 2
grad_accum: 4
grad_clip: null
epochs: 2
seed: 7
eval_every: 10
checkpoint: {every: 5, keep_last: 3}
output_dir: out
gradient_checkpointing: true
offload_checkpoints: false
"#;
        let c = TrainConfig::from_yaml_str(y, None).unwrap();
        assert!(!c.offload_checkpoints);
        assert_eq!(c.checkpointing(), crate::trainer::stash::Checkpointing::OnDevice);
        assert_eq!(c.loss_scale, LossScale::Fixed(1024.0));
        assert_eq!(c.lora.scaling(), 8.0 / 2.0);
        assert_eq!(c.schedule.kind, ScheduleKind::Cosine);
        assert_eq!(c.grad_clip, None);
        assert_eq!(c.data.format, DataFormat::Alpaca);
        assert_eq!(c.epochs, Some(2.0));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = err(&format!("{MIN}lora:\n  rnak: 8\n"));
        assert!(e.contains("c.yaml"), "{e}");
        assert!(e.contains("unknown field `rnak`"), "{e}");
        assert!(e.contains("line 7"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field_path() {
        let e = err(&format!("{MIN}lora:\n  rank: eight\n"));
        assert!(e.contains("lora.rank"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_an_error_with_a_line() {
        let e = err("model: m\ndata: [unclosed\n");
        assert!(e.contains("invalid config") && e.contains("line"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (patch, field) in [
            ("lora: {rank: 0}", "lora.rank"),
            ("lora: {dropout: 1.5}", "lora.dropout"),
            ("lora: {target_modules: []}", "lora.target_modules"),
            ("optimizer: {lr: -1}", "optimizer.lr"),
            ("optimizer: {betas: [1.0, 0.9]}", "optimizer.betas"),
            ("micro_batch: 0", "micro_batch"),
            ("grad_clip: -2", "grad_clip"),
            ("checkpoint: {every: 2, keep_last: 0}", "checkpoint.keep_last"),
        ] {
            let e = err(&format!("{MIN}{patch}\n"));
            assert!(e.contains(&format!("`{field}`")), "{patch}: {e}");
        }
        let e = err("model: m\ndata: {files: [a], max_len: 8, validation_split: 1.0}\nmax_steps: 1\n");
        assert!(e.contains("data.validation_split"), "{e}");
        let e = err("model: m\ndata: {files: [a], max_len: 8}\n");
        assert!(e.contains("max_steps"), "{e}");
        let e = err("model: m\ndata: {files: [a], max_len: 8, fallback_template: nope}\nmax_steps: 1\n");
        assert!(e.contains("unknown template `nope`"), "{e}");
    }

    #[test]
    fn bad_enum_lists_the_choices() {
        let e = err(&format!("{MIN}compute_dtype: fp8\n"));
        assert!(e.contains("compute_dtype") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, MIN).unwrap();
        let c = TrainConfig::from_file(&p).unwrap();
        assert_eq!(c.model, dir.path().join("m"));
        assert_eq!(c.data.files[0], dir.path().join("d.jsonl"));
    }
}
