//! The tensors a model is made of — read from its safetensors headers when it has weights, or
//! computed from the architecture's own shapes when only config.json is known — and the role
//! each plays in our engine, which decides how it is stored (quantized or 16-bit).

use crate::arch::{Arch, ArchSpec};
use serde::{Deserialize, Serialize};

/// One tensor: name, shape and the dtype it is published in (safetensors spelling: BF16, F32…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: String,
}

impl TensorSpec {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// What a tensor is to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A weight of one of the decoder layers' linear projections: quantized for int8 / NF4.
    Projection,
    Embedding,
    LmHead,
    /// Biases, norm weights and biases: kept in the compute dtype.
    Small,
    /// In the file but not loaded by the engine (rotary `inv_freq` buffers, a tied head's copy).
    Unused,
}

/// Projection names of one decoder layer, as the checkpoint spells them (same list as the
/// engine's `ModelConfig::projection_names`).
pub fn projection_names(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Phi => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense", "mlp.fc1", "mlp.fc2"],
        _ => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    }
}

/// The role of a tensor by name, as the engine loads it. A tensor the engine does not load
/// (rotary buffers, a tied head's copy, anything else a checkpoint carries) is `Unused`.
pub fn role_of(spec: &ArchSpec, name: &str) -> Role {
    match name {
        "model.embed_tokens.weight" => return Role::Embedding,
        "lm_head.weight" => return if spec.tie_embeddings { Role::Unused } else { Role::LmHead },
        "lm_head.bias" if spec.arch == Arch::Phi && !spec.tie_embeddings => return Role::Small,
        "model.norm.weight" | "model.final_layernorm.weight" | "model.final_layernorm.bias" => return Role::Small,
        _ => {}
    }
    let Some(rest) = name.strip_prefix("model.layers.") else { return Role::Unused };
    let Some((index, rest)) = rest.split_once('.') else { return Role::Unused };
    if index.parse::<u64>().map_or(true, |i| i >= spec.num_layers) {
        return Role::Unused;
    }
    let Some((module, kind)) = rest.rsplit_once('.') else { return Role::Unused };
    let is_norm = module == "input_layernorm" || (module == "post_attention_layernorm" && !spec.parallel_block);
    let norm_bias = spec.arch == Arch::Phi;
    match (projection_names(spec.arch).contains(&module), kind) {
        (true, "weight") => Role::Projection,
        (true, "bias") => Role::Small,
        (false, "weight") if is_norm => Role::Small,
        (false, "bias") if is_norm && norm_bias => Role::Small,
        _ => Role::Unused,
    }
}

/// `(out, in)` of every projection of one decoder layer, in checkpoint order.
pub fn layer_projections(s: &ArchSpec) -> Vec<(&'static str, u64, u64)> {
    let (h, im) = (s.hidden_size, s.intermediate_size);
    let names = projection_names(s.arch);
    let mut out = vec![(names[0], s.q_dim(), h), (names[1], s.kv_dim(), h), (names[2], s.kv_dim(), h), (names[3], h, s.q_dim())];
    if s.parallel_block {
        out.extend([(names[4], im, h), (names[5], h, im)]);
    } else {
        out.extend([(names[4], im, h), (names[5], im, h), (names[6], h, im)]);
    }
    out
}

/// Every tensor the engine loads, computed from the architecture (for a folder with only
/// config.json). Names follow the Hugging Face checkpoints; dtype is the published one.
pub fn from_arch(s: &ArchSpec) -> Vec<TensorSpec> {
    let dtype = match s.torch_dtype.as_deref() {
        Some("float32") => "F32",
        Some("float16") => "F16",
        _ => "BF16",
    };
    let t = |name: String, shape: Vec<u64>| TensorSpec { name, shape, dtype: dtype.to_string() };
    let (h, v) = (s.hidden_size, s.vocab_size);
    let norm_has_bias = s.arch == Arch::Phi;
    let norm = |out: &mut Vec<TensorSpec>, name: String| {
        out.push(t(format!("{name}.weight"), vec![h]));
        if norm_has_bias {
            out.push(t(format!("{name}.bias"), vec![h]));
        }
    };
    let mut out = vec![t("model.embed_tokens.weight".into(), vec![v, h])];
    for i in 0..s.num_layers {
        let p = format!("model.layers.{i}");
        for (name, o, inp) in layer_projections(s) {
            out.push(t(format!("{p}.{name}.weight"), vec![o, inp]));
            let bias = if name.starts_with("mlp.") {
                s.mlp_bias
            } else if name.ends_with("o_proj") || name.ends_with("dense") {
                s.o_bias
            } else {
                s.qkv_bias
            };
            if bias {
                out.push(t(format!("{p}.{name}.bias"), vec![o]));
            }
        }
        norm(&mut out, format!("{p}.input_layernorm"));
        if !s.parallel_block {
            norm(&mut out, format!("{p}.post_attention_layernorm"));
        }
    }
    norm(&mut out, if s.arch == Arch::Phi { "model.final_layernorm".into() } else { "model.norm".into() });
    if !s.tie_embeddings {
        out.push(t("lm_head.weight".into(), vec![v, h]));
        if s.arch == Arch::Phi {
            out.push(t("lm_head.bias".into(), vec![v]));
        }
    }
    out
}

/// Parameters the engine loads (tensors with role other than `Unused`).
pub fn parameter_count(spec: &ArchSpec, tensors: &[TensorSpec]) -> u64 {
    tensors.iter().filter(|t| role_of(spec, &t.name) != Role::Unused).map(TensorSpec::numel).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(name: &str) -> ArchSpec {
        let p = format!("{}/../../tests/fixtures/hub-configs/{name}/config.json", env!("CARGO_MANIFEST_DIR"));
        ArchSpec::from_json(Path::new(&p), &std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    /// The published parameter counts, from shapes alone (derivations in docs/PLANNER.md).
    #[test]
    fn shape_derived_parameter_counts_equal_the_published_ones() {
        for (name, expected) in [
            ("TinyLlama--TinyLlama-1.1B-Chat-v1.0", 1_100_048_384u64),
            ("microsoft--phi-2", 2_779_683_840),
            ("google--gemma-2b", 2_506_172_416),
            ("mistralai--Mistral-7B-v0.1", 7_241_732_096),
        ] {
            let s = spec(name);
            assert_eq!(parameter_count(&s, &from_arch(&s)), expected, "{name}");
        }
    }

    #[test]
    fn roles_follow_the_engine() {
        let s = spec("google--gemma-2b");
        assert_eq!(role_of(&s, "model.layers.3.mlp.down_proj.weight"), Role::Projection);
        assert_eq!(role_of(&s, "model.layers.3.mlp.down_proj.bias"), Role::Small);
        assert_eq!(role_of(&s, "model.layers.3.input_layernorm.weight"), Role::Small);
        assert_eq!(role_of(&s, "model.embed_tokens.weight"), Role::Embedding);
        assert_eq!(role_of(&s, "lm_head.weight"), Role::Unused, "gemma ties its head");
        assert_eq!(role_of(&s, "model.layers.0.self_attn.rotary_emb.inv_freq"), Role::Unused);
        assert_eq!(role_of(&s, "model.layers.18.mlp.down_proj.weight"), Role::Unused, "past the last layer");
        assert_eq!(role_of(&s, "greedy_logits"), Role::Unused);
        assert_eq!(role_of(&s, "model.norm.weight"), Role::Small);
        let phi = spec("microsoft--phi-2");
        assert_eq!(role_of(&phi, "model.layers.0.self_attn.dense.weight"), Role::Projection);
        assert_eq!(role_of(&phi, "model.layers.0.mlp.fc1.weight"), Role::Projection);
        assert_eq!(role_of(&phi, "lm_head.weight"), Role::LmHead);
    }
}
