//! The decoder-only transformer for every supported architecture, loaded from a Hugging Face
//! model folder. One code path with per-architecture switches decided in [`config`], so a
//! fix to attention or caching applies to all five families at once.
//!
//! For inference: [`Model::forward`] with a [`KvCache`] (prefill, then one token at a time).
//! For training: [`Model::set_training`] switches to differentiable ops everywhere;
//! [`Model::forward_hidden`] over a `[B, T]` batch returns the hidden states before the
//! LM head so the loss can be computed in chunks ([`Model::logits`]); the layer-level calls
//! ([`Model::embed`], [`Model::layer_forward`], [`Model::final_norm`]) let a trainer
//! checkpoint per layer; [`Model::projections`] / [`Model::replace_projection`] give
//! named access (`model.layers.0.self_attn.q_proj`) for attaching LoRA.

pub mod backward;
pub mod config;
#[cfg(feature = "cuda")]
mod decode_graph;
#[cfg(feature = "cuda")]
mod fast;
pub mod layers;
#[cfg(feature = "cuda")]
mod prefill;
pub mod rope;

use crate::error::{Error, Result};
use crate::linear::{ArcLinear, LinearLoader, Quant};
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Tensor};
use config::{Arch, ModelConfig, NormKind};
use layers::{Attention, DecoderLayer, Mlp, Norm, Step};
use rope::Rope;
use std::path::{Path, PathBuf};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype for activations and dense weights.
    pub dtype: DType,
    /// Storage of the projections (ignored for bitsandbytes pre-quantized checkpoints,
    /// which stay in the storage they were saved in).
    pub quant: Quant,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, quant: Quant::None, device: Device::Cpu }
    }
}

/// Per-layer key/value cache for incremental decoding. The CPU (and training) path grows
/// `(k, v)` per call; the fused CUDA path keeps one preallocated `[2, B, kv_heads, capacity,
/// head_dim]` tensor per layer, written in place, grown (doubled) only when a generation
/// outlasts it. On that path a one-token step is replayed as a CUDA graph captured for this
/// cache (`model/decode_graph.rs`); clones share the cache's tensors and that graph.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fused: Vec<Option<Tensor>>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    capacity: usize,
    len: usize,
    /// Whether decode steps may replay a CUDA graph ([`KvCache::set_cuda_graphs`]).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    graphs: bool,
    #[cfg(feature = "cuda")]
    graph: decode_graph::GraphSlot,
    /// Where this cache's fused buffers and decode graphs go when it is dropped, for the
    /// model's next cache that fits in them ([`Model::new_cache_with_capacity`]).
    #[cfg(feature = "cuda")]
    spare: Option<SpareCache>,
}

/// A dropped cache's fused buffers and decode graphs, kept by the model (one at a time) for its
/// next cache that fits in them: that cache's first decode steps then replay the graphs
/// captured before instead of running one step eagerly and capturing the next (on an H100,
/// TinyLlama's NF4 first two steps took 2.0 and 2.6 ms against 0.83 for a replay). The stale
/// positions in the buffers are never read: a step attends only to the positions below the
/// cache's length, and the prompt writes from position 0.
#[cfg(feature = "cuda")]
#[derive(Debug)]
struct Spare {
    /// Positions the buffers hold (allocated in chunks of 256, or grown).
    positions: usize,
    fused: Vec<Option<Tensor>>,
    graph: decode_graph::GraphSlot,
}

#[cfg(feature = "cuda")]
type SpareCache = std::sync::Arc<std::sync::Mutex<Option<Spare>>>;

#[cfg(feature = "cuda")]
impl Drop for KvCache {
    fn drop(&mut self) {
        let Some(spare) = self.spare.take() else { return };
        // Only a cache no clone shares (clones share the graph slot and the buffers), with its
        // fused buffers all allocated.
        if !self.graphs || !self.graph.unshared() || self.fused.iter().any(Option::is_none) {
            return;
        }
        let Some(positions) = self.fused.iter().flatten().map(|t| t.dim(3).unwrap_or(0)).min() else { return };
        if let Ok(mut s) = spare.lock() {
            *s = Some(Spare { positions, fused: std::mem::take(&mut self.fused), graph: std::mem::take(&mut self.graph) });
        }
    }
}

/// How a cache's decode steps went through CUDA graphs ([`KvCache::graph_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeGraphStats {
    /// Graphs captured (one per batch size, cache capacity, dtype and output kind seen).
    pub captures: usize,
    /// Decode steps replayed from a captured graph.
    pub replays: usize,
    /// Captures that failed; those steps ran eagerly (one line on stderr the first time).
    pub failures: usize,
    /// The latest captured graph's kernel nodes.
    pub kernel_nodes: usize,
    /// The latest captured graph's memory allocation and free nodes.
    pub memory_nodes: usize,
    /// The latest captured graph's other nodes (copies, memsets, ...).
    pub other_nodes: usize,
}

/// Whether `QLORA_CUDA_GRAPHS` leaves CUDA graphs on (anything but `0`, `false`, `off`).
pub fn cuda_graphs_enabled_by_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("QLORA_CUDA_GRAPHS").map_or(true, |v| !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off")))
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// A cache that will hold `capacity` positions without growing (the fused CUDA path
    /// allocates it on first use).
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            fused: vec![None; num_layers],
            capacity,
            len: 0,
            graphs: cuda_graphs_enabled_by_env(),
            #[cfg(feature = "cuda")]
            graph: Default::default(),
            #[cfg(feature = "cuda")]
            spare: None,
        }
    }

    /// Turns the replay of decode steps as CUDA graphs on or off for this cache (on by default
    /// unless `QLORA_CUDA_GRAPHS=0`); off, every step launches its kernels one by one.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    /// Captures, replays and failed captures of CUDA graphs so far (zeros without CUDA).
    pub fn graph_stats(&self) -> DecodeGraphStats {
        #[cfg(feature = "cuda")]
        return self.graph.stats();
        #[cfg(not(feature = "cuda"))]
        DecodeGraphStats::default()
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.fused.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }
}

/// A loaded decoder-only language model.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    dir: PathBuf,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    lm_head: candle_nn::Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
    training: bool,
    /// Set once the projections are wrapped for LoRA ([`Model::lora_layers`]).
    lora: Option<crate::lora::LoraLayers>,
    /// Gemma's sqrt(hidden) in the model dtype on the device, made once (no upload per step).
    embed_scale: Option<Tensor>,
    /// Identifies these weights for a captured CUDA graph: new at load and at every
    /// [`Model::replace_projection`].
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    revision: u64,
    /// Every projection is as loaded or plain NF4: nothing whose forward can change behind the
    /// model's back (LoRA decorators), so a captured graph stays valid.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    graph_safe: bool,
    /// The latest dropped cache's buffers and graphs (shared by the model's clones).
    #[cfg(feature = "cuda")]
    spare: SpareCache,
}

/// A fresh [`Model::revision`].
fn next_revision() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Model {
    /// Loads `dir/config.json` and the folder's safetensors weights.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg = ModelConfig::from_dir(dir)?;
        let weights = Weights::from_dir(dir)?;
        Self::from_weights(cfg, &weights, opts)
    }

    /// Builds the model from an already-parsed config and opened weights.
    pub fn from_weights(cfg: ModelConfig, w: &Weights, opts: &LoadOptions) -> Result<Self> {
        let (dt, dev) = (opts.dtype, &opts.device);
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = dev {
            qlora_quant::cuda::infer::single_stream_fast_alloc(d);
        }
        let loader = LinearLoader { weights: w, dtype: dt, device: dev, quant: opts.quant, prequantized: cfg.quantization.clone() };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed = w.get_as("model.embed_tokens.weight", &[v, h], dt, dev)?;
        let norm_at = |name: &str| -> Result<Norm> {
            let weight = w.get_as(&format!("{name}.weight"), &[h], dt, dev)?;
            let bias = match cfg.norm {
                NormKind::LayerNorm => Some(w.get_as(&format!("{name}.bias"), &[h], dt, dev)?),
                _ => None,
            };
            Ok(Norm { kind: cfg.norm, weight, bias, eps: cfg.norm_eps })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            layers.push(load_layer(&cfg, &loader, i, &norm_at)?);
        }
        let final_name = if cfg.arch == Arch::Phi { "model.final_layernorm" } else { "model.norm" };
        let norm = norm_at(final_name)?;
        let lm_head = if cfg.tie_embeddings {
            candle_nn::Linear::new(embed.clone(), None)
        } else {
            let weight = w.get_as("lm_head.weight", &[v, h], dt, dev)?;
            let bias = if cfg.arch == Arch::Phi { Some(w.get_as("lm_head.bias", &[v], dt, dev)?) } else { None };
            candle_nn::Linear::new(weight, bias)
        };
        let embed_scale = if cfg.scale_embeddings {
            // transformers multiplies by sqrt(hidden) rounded to the model dtype.
            Some(Tensor::new((h as f32).sqrt(), dev)?.to_dtype(dt)?)
        } else {
            None
        };
        Ok(Self {
            rope: Rope::new(&cfg),
            embed_scale,
            revision: next_revision(),
            graph_safe: true,
            #[cfg(feature = "cuda")]
            spare: Default::default(),
            cfg,
            dir: w.dir().to_path_buf(),
            embed,
            layers,
            norm,
            lm_head,
            dtype: dt,
            device: dev.clone(),
            training: false,
            lora: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's context length (`max_position_embeddings`).
    pub fn context_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// A cache sized for `positions` (prompt plus new tokens), so decoding never reallocates it.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let mut cache = KvCache::with_capacity(self.layers.len(), positions);
        #[cfg(feature = "cuda")]
        if cache.graphs && self.device.is_cuda() {
            // A dropped cache's buffers and graphs, if they hold `positions`.
            if let Ok(mut s) = self.spare.lock()
                && let Some(sp) = s.take_if(|sp| sp.positions >= positions && sp.fused.len() == self.layers.len())
            {
                cache.fused = sp.fused;
                cache.graph = sp.graph;
                cache.graph.reset_stats();
            }
            cache.spare = Some(self.spare.clone());
        }
        cache
    }

    /// Training mode uses only differentiable ops (candle's fused softmax has no backward).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Token embeddings of `ids` (`[B, T]` u32), scaled by sqrt(hidden) for Gemma.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        match &self.embed_scale {
            Some(scale) => x.broadcast_mul(scale),
            None => Ok(x),
        }
    }

    /// Rotary tables for positions `offset .. offset + len`.
    pub fn rope_tables(&self, offset: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        self.rope.tables(offset, len, &self.device)
    }

    /// One decoder layer without cache, positions starting at 0 (`cos`/`sin` from
    /// [`Model::rope_tables`]`(0, T)`), for per-layer gradient checkpointing.
    pub fn layer_forward(&self, i: usize, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let step = Step { tables: Some((cos, sin)), past: 0, training: self.training, inv_freq: None };
        self.layers[i].forward(x, &step, None)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.norm.forward(x)
    }

    /// Logits (`[..., vocab]`, model dtype) from final hidden states.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// The LM head's weight `[vocab, hidden]` (the embedding matrix when tied) and bias, for a
    /// loss that writes the head's gradient out (`∂L/∂h = ∂L/∂logits · W`, no transpose).
    pub fn head(&self) -> (&Tensor, Option<&Tensor>) {
        (self.lm_head.weight(), self.lm_head.bias())
    }

    /// Hidden states after the final norm, `[B, T, hidden]`. With a cache, `ids` are the new
    /// tokens and the cache grows by `T`.
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    pub fn forward_hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.fast_path()
            && let Some(c) = cache.as_deref_mut()
            && let Some(h) = self.graph_step(ids, c, decode_graph::Output::Hidden)?
        {
            return Ok(h);
        }
        self.forward_hidden_eager(ids, cache)
    }

    /// [`Model::forward_hidden`] launching every kernel itself (no CUDA graph).
    fn forward_hidden_eager(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.fast_path() {
            return self.forward_hidden_fast(ids, cache);
        }
        let (_, t) = ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len);
        let (cos, sin) = self.rope_tables(past, t)?;
        let step = Step { tables: Some((&cos, &sin)), past, training: self.training, inv_freq: None };
        let mut x = self.embed(ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &step, slot)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm.forward(&x)
    }

    /// Logits `[B, T, vocab]` in the model dtype. On CUDA, a one-token step with a cache
    /// replays the whole step (layers, final norm, LM head) as one CUDA graph.
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    pub fn forward(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.fast_path()
            && let Some(c) = cache.as_deref_mut()
            && let Some(l) = self.graph_step(ids, c, decode_graph::Output::Logits)?
        {
            return Ok(l);
        }
        let h = self.forward_hidden_eager(ids, cache)?;
        self.logits(&h)
    }

    /// Greedy decoding: feeds `ids` (`[B, 1]` u32: the last picked tokens, not yet in the
    /// cache), then each step's pick, for up to `max` steps, handing each step's `B` picks to
    /// `emit` in order; `emit` returning `false` ends the decoding after that step. Returns the
    /// steps run; the cache then holds exactly the ids fed. The pick is the argmax of the
    /// step's logits, the first index on ties, as candle's argmax.
    ///
    /// On CUDA the pick runs on the GPU (`qlora_quant::cuda::infer::argmax_into`), and once the
    /// step's greedy CUDA graph is captured (a new shape's first two steps warm and capture it)
    /// the steps are replayed pipelined: each replay writes the next ids and cache length into
    /// the graph's own buffers, and the next replay is queued before the host reads this one's
    /// ids, so the GPU does not wait for the host between steps (one step past a stop is
    /// computed and dropped). Elsewhere each step is [`Model::forward`] and an argmax.
    pub fn greedy_decode(&self, ids: &Tensor, cache: &mut KvCache, max: usize, mut emit: impl FnMut(&[u32]) -> Result<bool>) -> Result<usize> {
        let mut cur = ids.clone();
        let mut done = 0;
        while done < max {
            #[cfg(feature = "cuda")]
            if self.fast_path() {
                let (mut last, mut stopped) = (Vec::new(), false);
                let mut track = |row: &[u32]| -> Result<bool> {
                    last = row.to_vec();
                    let go = emit(row)?;
                    stopped = !go;
                    Ok(go)
                };
                if let Some(n) = self.greedy_pipelined(&cur, cache, max - done, &mut track)? {
                    done += n;
                    if stopped || done == max {
                        break;
                    }
                    cur = Tensor::from_vec(last, cur.dims(), &self.device)?;
                    continue;
                }
            }
            let next = self.greedy_step(&cur, cache)?;
            done += 1;
            if !emit(&next.flatten_all()?.to_vec1::<u32>()?)? {
                break;
            }
            cur = next;
        }
        Ok(done)
    }

    /// One greedy step of [`Model::greedy_decode`] without the pipeline: the next ids `[B, 1]`.
    fn greedy_step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.fast_path() {
            if let Some(next) = self.graph_step(ids, cache, decode_graph::Output::Greedy)? {
                return Ok(next);
            }
            let logits = self.forward_hidden_eager(ids, Some(cache)).and_then(|h| self.logits(&h))?;
            return Ok(qlora_quant::cuda::infer::argmax_rows(&logits)?);
        }
        let logits = self.forward(ids, Some(cache))?;
        Ok(logits.argmax(candle_core::D::Minus1)?)
    }

    /// Logits of the last position only, `[B, vocab]`, advancing `cache` by `T`: a prompt's
    /// full `[T, vocab]` logits are never made (for Gemma's 256k vocabulary at 2k tokens they
    /// were the largest tensor of a prefill), and a one-token step goes through [`Model::forward`]
    /// (its CUDA graph included).
    pub fn forward_last(&self, ids: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        if ids.dim(1)? == 1 {
            return self.forward(ids, Some(cache))?.squeeze(1);
        }
        let hidden = self.forward_hidden(ids, Some(cache))?;
        let hidden = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        self.logits(&hidden)?.squeeze(1)
    }

    /// Every projection with its module path (`model.layers.3.mlp.down_proj`), in layer order.
    pub fn projections(&self) -> Vec<(String, ArcLinear)> {
        let mut layers = self.layers.clone();
        let mut out = Vec::new();
        for (i, layer) in layers.iter_mut().enumerate() {
            for (name, lin) in layer.projections_mut() {
                out.push((format!("model.layers.{i}.{name}"), lin.clone()));
            }
        }
        out
    }

    /// Replaces the projection at `path` (e.g. with a LoRA-wrapped one). Shapes must agree.
    pub fn replace_projection(&mut self, path: &str, new: ArcLinear) -> Result<ArcLinear> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, lin) in layer.projections_mut() {
                if format!("model.layers.{i}.{name}") == path {
                    if (lin.in_features(), lin.out_features()) != (new.in_features(), new.out_features()) {
                        return Err(Error::InvalidOption(format!(
                            "{path}: replacement is {}x{}, the layer is {}x{}",
                            new.out_features(),
                            new.in_features(),
                            lin.out_features(),
                            lin.in_features()
                        )));
                    }
                    self.revision = next_revision();
                    self.graph_safe &= new.as_nf4().is_some();
                    return Ok(std::mem::replace(lin, new));
                }
            }
        }
        Err(Error::InvalidOption(format!("no projection named '{path}' in this {:?} model", self.cfg.arch)))
    }

    /// Wraps every projection in a [`crate::lora::LoraLinear`] (once; later calls return the
    /// same layers), so adapters can be attached, rescaled, switched and dropped without
    /// reloading the base: pass the map to `lora::attach_adapter`, `set_scale_all`, ...
    pub fn lora_layers(&mut self) -> Result<crate::lora::LoraLayers> {
        if let Some(l) = &self.lora {
            return Ok(l.clone());
        }
        let layers = crate::lora::wrap_all(self.projections());
        for (path, layer) in &layers {
            self.replace_projection(path, layer.clone())?;
        }
        self.lora = Some(layers.clone());
        Ok(layers)
    }

    /// Embedding matrix `[vocab, hidden]` (dense, as bitsandbytes leaves it).
    pub fn embed_weight(&self) -> &Tensor {
        &self.embed
    }

    /// Bytes held by the weights (projections in their storage, plus embeddings, norms, head).
    pub fn weight_bytes(&self) -> usize {
        let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
        let proj: usize = self.projections().iter().map(|(_, l)| l.storage_bytes()).sum();
        let head = if self.cfg.tie_embeddings { 0 } else { t(self.lm_head.weight()) };
        proj + t(&self.embed) + head
    }
}

fn load_layer(cfg: &ModelConfig, l: &LinearLoader, i: usize, norm_at: &dyn Fn(&str) -> Result<Norm>) -> Result<DecoderLayer> {
    let p = format!("model.layers.{i}");
    let (h, hd, im) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let o_name = if cfg.arch == Arch::Phi { "dense" } else { "o_proj" };
    let attn = Attention {
        q_proj: l.load(&format!("{p}.self_attn.q_proj"), h, q_out, cfg.qkv_bias)?,
        k_proj: l.load(&format!("{p}.self_attn.k_proj"), h, kv_out, cfg.qkv_bias)?,
        v_proj: l.load(&format!("{p}.self_attn.v_proj"), h, kv_out, cfg.qkv_bias)?,
        o_proj: l.load(&format!("{p}.self_attn.{o_name}"), q_out, h, cfg.o_bias)?,
        num_heads: cfg.num_heads,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: hd,
        sliding_window: cfg.sliding_window.get(i).copied().flatten(),
    };
    let mlp = if cfg.arch == Arch::Phi {
        Mlp::Plain { fc1: l.load(&format!("{p}.mlp.fc1"), h, im, true)?, fc2: l.load(&format!("{p}.mlp.fc2"), im, h, true)?, act: cfg.activation }
    } else {
        Mlp::Gated {
            gate: l.load(&format!("{p}.mlp.gate_proj"), h, im, cfg.mlp_bias)?,
            up: l.load(&format!("{p}.mlp.up_proj"), h, im, cfg.mlp_bias)?,
            down: l.load(&format!("{p}.mlp.down_proj"), im, h, cfg.mlp_bias)?,
            act: cfg.activation,
        }
    };
    let post_attention_norm = if cfg.parallel_block { None } else { Some(norm_at(&format!("{p}.post_attention_layernorm"))?) };
    Ok(DecoderLayer { input_norm: norm_at(&format!("{p}.input_layernorm"))?, post_attention_norm, attn, mlp })
}
