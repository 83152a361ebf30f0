//! A one-token decode step on CUDA replayed as one CUDA graph. The fused path (`fast.rs`) is
//! about 180 launches a token on TinyLlama (8 per layer), each costing 4-15 µs of host time
//! through candle and cudarc (allocation, launch, free). Replaying the whole step (embedding,
//! every layer, final norm and, through [`Model::forward`], the LM head) costs one graph launch
//! plus a few copies, and leaves the GPU's own time: on an H100 (bench/gpu/results/
//! h100-2026-11-27-s3-*) TinyLlama's NF4 step went from 2.01 to 1.85 ms, its bf16 step from 3.65
//! to 2.35 ms. What remains is GPU time, not launches: with the faster GEMV and decode
//! attention since, TinyLlama's NF4 step is 1.17 ms (docs/BENCHMARKS.md, "GPU") for 0.21 ms of
//! weights at the copy bandwidth; its small kernels are latency-bound.
//!
//! How it stays replayable:
//! * Everything that changes between steps comes from device memory: the token ids are copied
//!   into a buffer of the graph before each replay, and the cache length after the step into a
//!   u32 the KV append and the decode attention read (`infer::CacheLen::Device`); their grids do
//!   not depend on the position, so the same launches serve every position up to the cache's
//!   capacity. RoPE's inverse frequencies are launch parameters, constant for a model (and part
//!   of the key, for dynamic NTK scaling that changes them past the context).
//! * No host synchronisation or upload during capture (candle's capture guard turns one into an
//!   error, so the capture fails cleanly instead of recording a dangling host pointer); Gemma's
//!   embedding scale is made once at load.
//! * The layers' kernels write into a workspace allocated before the capture and kept with the
//!   graph (`fast.rs`, `Workspace`), so between the embedding and the head the graph holds
//!   kernel nodes only: consecutive kernels launched with PDL (`qlora_quant::cuda::pdl`) then
//!   overlap one's start with the other's end (a memory node between them would prevent it).
//!   What still allocates during capture (the embedding, the first and final norms, the head)
//!   is stream-ordered (`cuMemAllocAsync`), so it becomes the graph's own memory nodes, freed
//!   inside the graph; [`DecodeGraphStats`] counts the node kinds. The result is copied into an
//!   output buffer allocated before capture, and each replay returns a copy of it (the caller
//!   may keep it past the next step).
//! * A graph is keyed by the model's weights ([`Model::revision`]), batch size, the cache's
//!   tensors (so its capacity), dtype, output kind (hidden states or logits) and inverse
//!   frequencies; anything else recaptures. The first step of a new key runs eagerly (it loads
//!   kernels, cuBLAS picks its algorithm, candle's capture cache receives the shapes and strides
//!   some of its kernels upload per launch), the next one captures. A cache made by
//!   [`Model::new_cache_with_capacity`] leaves its buffers and graphs to the model when dropped
//!   (the cache's `Spare`), and the model's next cache that fits in those buffers starts with
//!   them: same tensors, so same key, and its first step replays.
//!
//! * A greedy step ([`Output::Greedy`], [`Model::greedy_decode`]) ends with the GPU argmax
//!   writing the picked ids over the graph's own id buffer and adding one to its length buffer:
//!   the next replay needs nothing from the host, so it is queued before this one's ids are
//!   copied back (measured on an H100 in the same call, `bench/gpu/results/
//!   h100-2026-11-27-s7-greedy-ab.*`: 128-token generations 1.9% faster on TinyLlama, 3.7% on
//!   Mistral-7B, and steadier).
//!
//! Not used (the eager fused path runs) for prompts, more than 8 sequences, a cache about to
//! grow, LoRA-wrapped or other replaced projections ([`Model::graph_safe`]), training, or when
//! turned off (`QLORA_CUDA_GRAPHS=0`, [`KvCache::set_cuda_graphs`]). When a capture fails the
//! step runs eagerly, one line goes to stderr (once per process) and that key is not tried
//! again. The capture assumes nothing else enqueues work on the model's CUDA stream meanwhile
//! (candle drives one stream per device; a second thread using it during the capture would have
//! its work recorded instead of run).
//!
//! Checked by `tests/gpu_conformance.rs`: greedy ids and logits through the graph equal the eager
//! fused path across a cache growth, a sliding window and batch 2.

use super::fast::Workspace;
use super::{DecodeGraphStats, KvCache, Model};
use candle_core::cuda_backend::cudarc::driver::{CudaGraph, sys};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{DType, Device, Result, Tensor, TensorId};
use qlora_quant::cuda::{GEMV_MAX_ROWS, infer};
use std::sync::{Arc, Mutex};

/// What a captured step hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    /// Hidden states after the final norm, `[B, 1, hidden]` ([`Model::forward_hidden`]).
    Hidden = 0,
    /// Logits, `[B, 1, vocab]` ([`Model::forward`]).
    Logits = 1,
    /// The greedy pick, `[B, 1]` u32 ([`Model::greedy_decode`]): the captured step ends with
    /// the argmax writing the next ids into the graph's own id buffer and adding one to its
    /// length, so a replay can be queued before the previous one's ids are read.
    Greedy = 2,
}

/// Everything a captured graph depends on besides the values in its input buffers.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    revision: u64,
    batch: usize,
    capacity: usize,
    dtype: DType,
    output: Output,
    inv_freq: Vec<u32>,
    kv: Vec<TensorId>,
}

struct Captured {
    key: Key,
    graph: CudaGraph,
    /// `[B, 1]` u32: the token ids, written before each replay.
    ids: Tensor,
    /// `[1]` u32: the cache length after the step, written before each replay.
    len: Tensor,
    /// The step's result, written by the graph.
    out: Tensor,
    /// The layers' kernel outputs, allocated before the capture (the graph writes into them).
    _ws: Workspace,
}

// SAFETY: a CUDA graph may be used from any thread as long as calls on it are serialised
// (CUDA's graph thread-safety rules); every use goes through the slot's mutex.
unsafe impl Send for Captured {}

#[derive(Default)]
enum State {
    #[default]
    Empty,
    /// Seen once (that step ran eagerly): capture on the next step with the same key.
    Warm(Key),
    Ready(Box<Captured>),
    /// The capture failed: run this key eagerly from now on.
    Failed(Key),
}

#[derive(Default)]
struct Inner {
    states: [State; 3],
    stats: DecodeGraphStats,
}

/// The decode graphs of one KV cache (one per output kind), shared by the cache's clones, which
/// share its tensors too.
#[derive(Clone, Default)]
pub(super) struct GraphSlot(Arc<Mutex<Inner>>);

impl std::fmt::Debug for GraphSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphSlot({:?})", self.stats())
    }
}

impl GraphSlot {
    pub(super) fn stats(&self) -> DecodeGraphStats {
        self.0.lock().map(|i| i.stats).unwrap_or_default()
    }

    /// Whether no clone of the cache shares these graphs.
    pub(super) fn unshared(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Zeroes the counts (a spare cache's graphs handed to a new cache, which counts its own).
    pub(super) fn reset_stats(&self) {
        if let Ok(mut i) = self.0.lock() {
            i.stats = DecodeGraphStats { captures: 0, replays: 0, failures: 0, ..i.stats };
        }
    }
}

/// Prints why a capture failed, once per process.
fn report_failure(e: &candle_core::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!("qlora: capturing the decode step as a CUDA graph failed ({e}); decoding without graphs (QLORA_CUDA_GRAPHS=0 turns them off)")
    });
}

/// Kernel, memory (allocation and free) and other nodes of a captured graph (zeros when the
/// driver cannot list them).
fn node_counts(graph: &CudaGraph) -> (usize, usize, usize) {
    use sys::CUgraphNodeType as N;
    let g = graph.cu_graph();
    let mut n = 0usize;
    // SAFETY: `g` is the live graph `graph` owns; a null array asks for the count only.
    if unsafe { sys::cuGraphGetNodes(g, std::ptr::null_mut(), &mut n) } != sys::CUresult::CUDA_SUCCESS {
        return (0, 0, 0);
    }
    let mut nodes = vec![std::ptr::null_mut(); n];
    // SAFETY: `nodes` holds `n` entries, as the driver was told.
    if unsafe { sys::cuGraphGetNodes(g, nodes.as_mut_ptr(), &mut n) } != sys::CUresult::CUDA_SUCCESS {
        return (0, 0, 0);
    }
    let mut counts = (0, 0, 0);
    for node in nodes.into_iter().take(n) {
        let mut ty = N::CU_GRAPH_NODE_TYPE_EMPTY;
        // SAFETY: `node` is one of the graph's nodes, listed just above.
        if unsafe { sys::cuGraphNodeGetType(node, &mut ty) } != sys::CUresult::CUDA_SUCCESS {
            continue;
        }
        match ty {
            N::CU_GRAPH_NODE_TYPE_KERNEL => counts.0 += 1,
            N::CU_GRAPH_NODE_TYPE_MEM_ALLOC | N::CU_GRAPH_NODE_TYPE_MEM_FREE => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    counts
}

impl Model {
    /// Whether nothing in the model can change behind a captured graph.
    fn graphs_allowed(&self) -> bool {
        self.graph_safe && self.lora.is_none() && !self.training
    }

    /// The graph key of a one-token step of `ids` on `cache`, or `None` when the step must run
    /// eagerly (see the module docs).
    fn graph_key(&self, ids: &Tensor, cache: &KvCache, output: Output) -> Result<Option<Key>> {
        if !cache.graphs || !self.graphs_allowed() {
            return Ok(None);
        }
        let (b, t) = ids.dims2()?;
        if t != 1 || b == 0 || b > GEMV_MAX_ROWS || ids.dtype() != DType::U32 || !ids.device().same_device(&self.device) {
            return Ok(None);
        }
        let mut kv = Vec::with_capacity(cache.fused.len());
        let mut capacity = None;
        for slot in &cache.fused {
            let Some(c) = slot else { return Ok(None) };
            let (_, cb, _, cap, _) = c.dims5()?;
            if cb != b || capacity.is_some_and(|x| x != cap) {
                return Ok(None);
            }
            capacity = Some(cap);
            kv.push(c.id());
        }
        let Some(capacity) = capacity.filter(|cap| cache.len < *cap) else { return Ok(None) };
        let inv_freq = self.rope.inv_freq(cache.len + 1).iter().map(|f| f.to_bits()).collect();
        Ok(Some(Key { revision: self.revision, batch: b, capacity, dtype: self.dtype, output, inv_freq, kv }))
    }

    /// One decode step through the cache's graph: `Some(result)` with the cache advanced, or
    /// `None` when the caller must run the step eagerly (nothing was changed then).
    pub(super) fn graph_step(&self, ids: &Tensor, cache: &mut KvCache, output: Output) -> Result<Option<Tensor>> {
        let Some(key) = self.graph_key(ids, cache, output)? else { return Ok(None) };
        let Device::Cuda(dev) = &self.device else { return Ok(None) };
        let slot = cache.graph.0.clone();
        let mut inner = slot.lock().map_err(|_| candle_core::Error::Msg("decode graph: lock poisoned".into()))?;
        let inner = &mut *inner;
        let state = &mut inner.states[output as usize];
        let ready = matches!(state, State::Ready(c) if c.key == key);
        if !ready {
            match std::mem::take(state) {
                State::Failed(k) if k == key => {
                    *state = State::Failed(k);
                    return Ok(None);
                }
                State::Warm(k) if k == key => match self.capture(dev, &key, cache) {
                    Ok(c) => {
                        inner.stats.captures += 1;
                        let (kernels, memory, other) = node_counts(&c.graph);
                        (inner.stats.kernel_nodes, inner.stats.memory_nodes, inner.stats.other_nodes) = (kernels, memory, other);
                        *state = State::Ready(Box::new(c));
                    }
                    Err(e) => {
                        report_failure(&e);
                        inner.stats.failures += 1;
                        *state = State::Failed(key);
                        return Ok(None);
                    }
                },
                _ => {
                    let y = self.warm_step(dev, ids, cache, output)?;
                    *state = State::Warm(key);
                    return Ok(Some(y));
                }
            }
        }
        let State::Ready(c) = state else { return Ok(None) };
        infer::write_u32(&c.len, &[(cache.len + 1) as u32])?;
        c.ids.slice_set(ids, 0, 0)?;
        c.graph.launch().w()?;
        cache.len += 1;
        inner.stats.replays += 1;
        Ok(Some(c.out.copy()?))
    }

    /// The first step of a new key, run eagerly with candle's capture cache on: the small
    /// uploads some candle kernels make per launch (index_select's shape and strides, a
    /// broadcast's strides) go to device buffers the capture can then reuse.
    /// It also ends with the copy into an output buffer, so every kernel the capture records has
    /// been loaded and run once.
    fn warm_step(&self, dev: &CudaDevice, ids: &Tensor, cache: &mut KvCache, output: Output) -> Result<Tensor> {
        let _guard = dev.enable_cuda_graph_htod_cache();
        let out = self.output_buffer(ids.dim(0)?, output)?;
        self.step_into(ids, None, None, &out, cache, output)?;
        cache.len += 1;
        Ok(out)
    }

    fn output_buffer(&self, b: usize, output: Output) -> Result<Tensor> {
        let n = match output {
            Output::Hidden => self.cfg.hidden_size,
            Output::Logits => self.cfg.vocab_size,
            Output::Greedy => return Tensor::zeros((b, 1), DType::U32, &self.device),
        };
        Tensor::zeros((b, 1, n), self.dtype, &self.device)
    }

    /// Records one step of `key` on the device's stream into a graph (nothing runs).
    fn capture(&self, dev: &CudaDevice, key: &Key, cache: &mut KvCache) -> Result<Captured> {
        let b = key.batch;
        let ids = Tensor::zeros((b, 1), DType::U32, &self.device)?;
        let len = Tensor::zeros(1, DType::U32, &self.device)?;
        // The greedy step writes its pick over its own input ids (read at its start).
        let out = if key.output == Output::Greedy { ids.clone() } else { self.output_buffer(b, key.output)? };
        let ws = Workspace::new(self, b)?;
        let stream = dev.cuda_stream();
        let guard = dev.enable_cuda_graph_htod_cache();
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).w()?;
        // Every temporary of the step is dropped inside this call, so its free is captured too.
        let body = self.step_into(&ids, Some(&len), Some(&ws), &out, cache, key.output);
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        drop(guard);
        if body.is_err() || graph.is_err() {
            // Frees recorded into a broken capture leave an error on the context: clear it.
            let _ = stream.context().check_err();
        }
        body?;
        let graph = graph.w()?.ok_or_else(|| candle_core::Error::Msg("the capture recorded nothing".into()))?;
        graph.upload().w()?;
        Ok(Captured { key: key.clone(), graph, ids, len, out, _ws: ws })
    }

    /// One step at `cache.len` (not advanced here), its result copied into `out`.
    fn step_into(&self, ids: &Tensor, len: Option<&Tensor>, ws: Option<&Workspace>, out: &Tensor, cache: &mut KvCache, output: Output) -> Result<()> {
        let h = self.hidden_fast(ids, cache, len, ws)?;
        let y = match output {
            Output::Hidden => h,
            Output::Logits => self.logits(&h)?,
            Output::Greedy => {
                let l = self.logits(&h)?;
                let (b, t, v) = l.dims3()?;
                return infer::argmax_into(&l.reshape((b * t, v))?, out, len);
            }
        };
        out.slice_set(&y.contiguous()?, 2, 0)
    }

    /// Greedy steps through the cache's greedy graph, pipelined (see [`Model::greedy_decode`]):
    /// `Ok(None)` when that graph is not ready for this step (the caller runs a step through
    /// [`Model::graph_step`] or eagerly, which warms and captures it), else the number of steps
    /// run. Each replay's ids are copied to pinned host memory behind it; the next replay is
    /// queued before they are read, so the GPU does not wait for the host between steps.
    pub(super) fn greedy_pipelined(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        max: usize,
        emit: &mut dyn FnMut(&[u32]) -> crate::error::Result<bool>,
    ) -> crate::error::Result<Option<usize>> {
        let Some(key) = self.graph_key(ids, cache, Output::Greedy)? else { return Ok(None) };
        let Device::Cuda(dev) = &self.device else { return Ok(None) };
        let slot = cache.graph.0.clone();
        let mut inner = slot.lock().map_err(|_| candle_core::Error::Msg("decode graph: lock poisoned".into()))?;
        let inner = &mut *inner;
        let State::Ready(c) = &inner.states[Output::Greedy as usize] else { return Ok(None) };
        if c.key != key {
            return Ok(None);
        }
        // The key holds for every step up to the capacity (the same inverse frequencies: dynamic
        // NTK scaling changes them past the context, so stop one short of that as well).
        let cap = key.capacity;
        let mut n = max.min(cap - cache.len);
        while n > 0 && self.rope.inv_freq(cache.len + n).iter().map(|f| f.to_bits()).ne(key.inv_freq.iter().copied()) {
            n -= 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let b = key.batch;
        let stream = dev.cuda_stream();
        let ctx = stream.context().clone();
        // SAFETY: u32 is valid for any bits; flags 0 (not write-combined: the host reads it).
        let mut host = [unsafe { ctx.alloc_pinned_with_flags::<u32>(b, 0) }.w()?, unsafe { ctx.alloc_pinned_with_flags::<u32>(b, 0) }.w()?];
        // Our own events: cudarc records a pinned buffer's event only when it manages stream
        // synchronisation, which candle turns off, so its `as_slice` would not wait for the copy.
        let done = [ctx.new_event(None).w()?, ctx.new_event(None).w()?];
        infer::write_u32(&c.len, &[(cache.len + 1) as u32])?;
        c.ids.slice_set(ids, 0, 0)?;
        let (st, l) = c.ids.storage_and_layout();
        let candle_core::Storage::Cuda(cs) = &*st else { return Err(candle_core::Error::Msg("decode graph: ids not on CUDA".into()).into()) };
        let src = cs.as_cuda_slice::<u32>()?.slice(l.start_offset()..l.start_offset() + b);
        let (mut launched, mut consumed) = (0usize, 0usize);
        let mut row = vec![0u32; b];
        // An error from `emit` ends the loop like a stop: the queued steps are still waited
        // for and taken off the cache below, then the error is returned.
        let mut failed = None;
        while consumed < n {
            if launched < n && launched - consumed < 2 {
                c.graph.launch().w()?;
                stream.memcpy_dtoh(&src, &mut host[launched % 2]).w()?;
                done[launched % 2].record(&stream).w()?;
                cache.len += 1;
                inner.stats.replays += 1;
                launched += 1;
                continue;
            }
            done[consumed % 2].synchronize().w()?;
            row.copy_from_slice(host[consumed % 2].as_slice().w()?);
            consumed += 1;
            match emit(&row) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Steps queued past the one that stopped: not part of the sequence.
        stream.synchronize().w()?;
        cache.len -= launched - consumed;
        match failed {
            Some(e) => Err(e),
            None => Ok(Some(consumed)),
        }
    }
}
