//! Adapters across a whole model: attach a PEFT folder to the model's named linears, create a
//! fresh trainable adapter, export one in PEFT format.
//!
//! The model code wraps each projection once in a [`LoraLinear`] (see [`wrap_all`]) and keeps
//! the map `module path -> Arc<LoraLinear>`; everything here works on that map, so adapters are
//! switched, rescaled and dropped without reloading the base weights.

use super::error::{LoraError, Result};
use super::layer::{LoraLinear, LoraWeights};
use super::peft_format::{AdapterConfig, LoraPairs, PREFIX, TargetModules, load_weights, save_weights};
use crate::linear::{ArcLinear, Linear};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The wrapped linears of a model, keyed by module path (`model.layers.0.self_attn.q_proj`).
pub type LoraLayers = HashMap<String, Arc<LoraLinear>>;

/// Wraps every `(path, linear)` in a [`LoraLinear`] without adapter.
pub fn wrap_all(projections: impl IntoIterator<Item = (String, ArcLinear)>) -> LoraLayers {
    projections.into_iter().map(|(name, base)| (name.clone(), Arc::new(LoraLinear::new(base, name)))).collect()
}

/// What [`attach_adapter`] loaded.
#[derive(Debug, Clone)]
pub struct AttachedAdapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// Module paths that now carry the adapter, sorted.
    pub modules: Vec<String>,
}

fn list(items: &[String], max: usize) -> String {
    let mut s = items.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

/// Loads the PEFT adapter in `dir` onto `layers`, all or nothing: every module of the adapter
/// must exist with matching shapes, else nothing changes and the error lists every problem.
/// Layers the adapter does not cover lose any adapter they had (this switches adapters).
/// Weights are kept in f32 unless `dtype` says otherwise (peft's `autocast_adapter_dtype`).
pub fn attach_adapter(dir: &Path, layers: &LoraLayers, device: &Device, dtype: Option<DType>) -> Result<AttachedAdapter> {
    let config = AdapterConfig::load(dir)?;
    let pairs = load_weights(dir, device, Some(dtype.unwrap_or(DType::F32)))?;
    let mut problems = Vec::new();
    let mut ready = Vec::new();
    for (module, (a, b)) in pairs {
        let Some(layer) = layers.get(&module) else {
            problems.push(format!("{module}: no such linear layer in the base model"));
            continue;
        };
        let (r, _) = config.rank_alpha_for(&module);
        if a.dims().first() != Some(&r) {
            problems.push(format!("{module}: lora_A has rank {:?} but adapter_config.json says r = {r}", a.dims().first()));
            continue;
        }
        let w = LoraWeights { a, b, scaling: config.scaling_for(&module), dropout: config.lora_dropout, vars: None };
        match layer.check_fits(&w) {
            Ok(()) => ready.push((module, w)),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(LoraError::DoesNotFit { path: dir.into(), problems: list(&problems, 8) });
    }
    for layer in layers.values() {
        layer.clear_adapter();
    }
    let mut modules = Vec::new();
    for (module, w) in ready {
        layers[&module].set_adapter(w)?;
        modules.push(module);
    }
    modules.sort();
    Ok(AttachedAdapter { dir: dir.into(), config, modules })
}

/// Drops the adapter of every layer.
pub fn detach_all(layers: &LoraLayers) {
    for l in layers.values() {
        l.clear_adapter();
    }
}

/// Sets the user scale of every layer (0 turns LoRA off, 1 is the adapter as trained).
pub fn set_scale_all(layers: &LoraLayers, scale: f64) {
    for l in layers.values() {
        l.set_user_scale(scale);
    }
}

/// Settings of a new trainable adapter.
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    /// Module-name suffixes (`q_proj`, `mlp.down_proj`) or a full-path regex.
    pub target_modules: TargetModules,
    /// Seeds A's initialisation (modules are initialised in sorted path order).
    pub seed: u64,
    /// dtype of A and B (f32 recommended: peft keeps adapters in f32 for mixed precision).
    pub dtype: DType,
}

/// A freshly created adapter whose A and B are [`Var`]s, attached to its layers.
#[derive(Debug, Clone)]
pub struct TrainableAdapter {
    pub config: AdapterConfig,
    /// The targeted layers, sorted by module path.
    pub layers: Vec<Arc<LoraLinear>>,
}

/// Creates LoRA on every layer matching `spec.target_modules`, initialised as peft does
/// (A kaiming-uniform with a = √5, i.e. U(±1/√in); B zeros), and puts those layers in training
/// mode. A target that matches no layer is an error naming it.
pub fn create_trainable(layers: &LoraLayers, spec: &LoraSpec, device: &Device) -> Result<TrainableAdapter> {
    if spec.r == 0 || !(0.0..1.0).contains(&spec.dropout) {
        return Err(LoraError::Invalid(format!("rank {} / dropout {}: rank must be >= 1 and dropout in [0, 1)", spec.r, spec.dropout)));
    }
    let mut names: Vec<&String> = layers.keys().collect();
    names.sort();
    if let TargetModules::List(targets) = &spec.target_modules {
        let missing: Vec<String> = targets.iter().filter(|t| !names.iter().any(|n| *n == *t || n.ends_with(&format!(".{t}")))).cloned().collect();
        if !missing.is_empty() {
            let mut kinds: Vec<String> = names.iter().filter_map(|n| n.rsplit('.').next().map(String::from)).collect();
            kinds.sort();
            kinds.dedup();
            return Err(LoraError::NoSuchModule { missing: list(&missing, 8), available: kinds.join(", ") });
        }
    }
    let mut chosen = Vec::new();
    for n in names {
        if spec.target_modules.matches(n)? {
            chosen.push(n.clone());
        }
    }
    if chosen.is_empty() {
        return Err(LoraError::NoSuchModule {
            missing: format!("{:?}", spec.target_modules),
            available: list(&layers.keys().cloned().collect::<Vec<_>>(), 8),
        });
    }
    let targets: Vec<String> = match &spec.target_modules {
        TargetModules::List(l) => l.clone(),
        TargetModules::Regex(_) => vec![],
    };
    let mut config = AdapterConfig::new(spec.r, spec.alpha, targets, spec.dropout, spec.use_rslora);
    config.target_modules = spec.target_modules.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut out = Vec::new();
    for name in chosen {
        let layer = layers[&name].clone();
        let (fan_in, fan_out) = (layer.in_features(), layer.out_features());
        let bound = 1.0 / (fan_in as f64).sqrt();
        let a: Vec<f32> = (0..spec.r * fan_in).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (spec.r, fan_in), device)?.to_dtype(spec.dtype)?)?;
        let b = Var::from_tensor(&Tensor::zeros((fan_out, spec.r), spec.dtype, device)?)?;
        let w = LoraWeights {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scaling: config.scaling_for(&name),
            dropout: spec.dropout,
            vars: Some((a, b)),
        };
        layer.set_adapter(w)?;
        layer.set_training(true);
        out.push(layer);
    }
    Ok(TrainableAdapter { config, layers: out })
}

impl TrainableAdapter {
    /// Every trainable tensor under its PEFT file name (`base_model.model.<path>.lora_A.weight`).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for l in &self.layers {
            if let Some((a, b)) = l.adapter().and_then(|w| w.vars.clone()) {
                v.push((format!("{PREFIX}{}.lora_A.weight", l.name()), a));
                v.push((format!("{PREFIX}{}.lora_B.weight", l.name()), b));
            }
        }
        v
    }

    /// Training mode (dropout on) or inference mode for every layer of this adapter.
    pub fn set_training(&self, training: bool) {
        for l in &self.layers {
            l.set_training(training);
        }
    }

    /// Writes `adapter_config.json` + `adapter_model.safetensors` as peft does.
    pub fn save_peft(&self, dir: &Path) -> Result<()> {
        let layers: LoraLayers = self.layers.iter().map(|l| (l.name().to_string(), l.clone())).collect();
        export_peft(dir, &self.config, &layers)
    }
}

/// Writes the adapters currently attached to `layers` as a PEFT folder (config + weights),
/// each file atomically. Errors if no layer carries an adapter.
pub fn export_peft(dir: &Path, config: &AdapterConfig, layers: &LoraLayers) -> Result<()> {
    let mut pairs = LoraPairs::new();
    for (name, l) in layers {
        if let Some(w) = l.adapter() {
            pairs.insert(name.clone(), (w.a.detach(), w.b.detach()));
        }
    }
    if pairs.is_empty() {
        return Err(LoraError::Invalid("no layer carries an adapter: nothing to export".into()));
    }
    save_weights(dir, &pairs)?;
    config.save(dir)
}
