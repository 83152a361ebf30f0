//! The inference path on CUDA (not training: none of these kernels has a backward). Launched one
//! by one, a decode step of a small model costs what its launches cost on the host more than
//! what the weights' bytes cost, so each layer here is about eight launches instead of fifty (and
//! a one-token step is replayed as one CUDA graph, `decode_graph.rs`):
//!
//! 1. residual add + RMSNorm in one kernel (the add of the previous block is carried along);
//! 2. q, k, v as one NF4 GEMV when all three are plain NF4 (else their own forwards);
//! 3. k rotated and written with v into a preallocated KV cache, in place (no `Tensor::cat`);
//! 4. attention: one token against the cache in one kernel (RoPE on q, grouped heads read in
//!    place, online softmax; for one token, step 3 happens inside the same launch); a prompt
//!    (several tokens) through cuBLAS with grouped heads batched without `repeat_kv` copies
//!    and the causal mask made inside the softmax kernel;
//! 5. o_proj; 6. residual add + RMSNorm; 7. gate and up in one NF4 GEMV with the activation;
//! 8. down_proj.
//!
//! For one token (decode), 3 happens inside 4 (seven launches a layer). With
//! `QLORA_NORM_PROLOGUE=1` (`qkv`, `glu`: one of them), in a decode step with a [`Workspace`]
//! (the CUDA graph's), 1 happens inside 2 and 6 inside 7 when the projections are plain NF4 and
//! the norm an RMSNorm: the GEMV's blocks compute the add and the norm in their prologue
//! ([`fused::norm_gemv_multi_into`], bit for bit the two launches; five launches a layer); off
//! by default, measured slower on Mistral-7B ([`fused::norm_prologue_on`]). By default
//! (`QLORA_FUSED_NORM=0` turns it off), 5 + 6 and 8 + the next layer's step 1 are one launch
//! each when the projection is plain NF4 and the norm an RMSNorm
//! ([`fused::gemv_add_rms_norm_into`]: the GEMV's last block adds and normalises; five launches
//! a layer, [`fused_norm_on`]), which leaves the prologue nothing to fold. And by
//! default (since session 11; `QLORA_FOLD_NORM=0` goes back to the tail: [`fold_on`]), at one
//! row of x, o_proj and down_proj instead add the residual and leave what the next GEMV needs
//! to apply the norm itself ([`Carry::Folded`]): no launch and no serial tail for the norms
//! between layers; the tail stays for the final norm and where the fold does not apply.
//!
//! The position of a step reaches the kernels either as a launch parameter or, for a decode step
//! replayed as a CUDA graph (`decode_graph.rs`), from a u32 on the device ([`FastStep::dev_len`]);
//! such a step's layer kernels write into a preallocated [`Workspace`] (a graph of kernel nodes
//! only, where programmatic dependent launch overlaps consecutive kernels).
//!
//! Anything the kernels do not cover (LayerNorm, Phi's MLP, LoRA-wrapped or dense projections,
//! more than 8 rows) runs through the same modules' ordinary forward, so every architecture
//! takes this path; the results match the unfused path within float rounding
//! (`tests/gpu_conformance.rs`, `tests/gpu_kernels.rs`).

use super::config::{Activation, NormKind};
use super::layers::{Attention, DecoderLayer, Mlp, Norm};
use super::{KvCache, Model};
use crate::linear::ArcLinear;
use candle_core::{DType, Device, Result, Tensor};
use qlora_quant::cuda::fused::{self, GluAct, Nf4Proj, NormedInput};
use qlora_quant::cuda::infer::{self, CacheLen};

/// Positions a fresh cache holds before it has to grow (rounded up to this).
const CACHE_CHUNK: usize = 256;

impl Model {
    /// Whether [`Model::forward_hidden`] takes the fused path.
    pub(super) fn fast_path(&self) -> bool {
        let c = &self.cfg;
        self.device.is_cuda()
            && !self.training
            && matches!(self.dtype, DType::F32 | DType::BF16 | DType::F16)
            && infer::attention_unsupported(c.head_dim, c.rotary_dim / 2, c.num_heads, c.num_kv_heads).is_none()
    }

    pub(super) fn forward_hidden_fast(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let mut scratch;
        let cache = match cache {
            Some(c) => c,
            None => {
                scratch = self.new_cache();
                &mut scratch
            }
        };
        let h = self.hidden_fast(ids, cache, None, None)?;
        cache.len += t;
        Ok(h)
    }

    /// Hidden states after the final norm for `ids` at `cache.len` (which the caller advances).
    /// With `dev_len` the kernels read the cache length after this step from it instead of
    /// taking `cache.len` as a launch parameter (what a CUDA graph capture needs). With `ws`
    /// (one-token steps of its batch size only) the layers' kernels write into its buffers.
    pub(super) fn hidden_fast(&self, ids: &Tensor, cache: &mut KvCache, dev_len: Option<&Tensor>, ws: Option<&Workspace>) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let past = cache.len;
        let inv_freq = self.rope.inv_freq(past + t);
        let tables = if t > 1 { Some(self.rope_tables(past, t)?) } else { None };
        let ws = ws.filter(|w| t == 1 && w.batch == ids.dim(0).unwrap_or(0) && w.dtype == self.dtype);
        let step = FastStep { tables: tables.as_ref(), past, inv_freq: &inv_freq, dev_len, ws };
        let mut carry = Carry::Pending(self.embed(ids)?, None);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = &mut cache.fused[i];
            let capacity = cache.capacity;
            let next = self.layers.get(i + 1);
            let next_norm = next.map_or(&self.norm, |l| &l.input_norm);
            // The next layer's q/k/v GEMV can take this layer's output with its norm folded in.
            let fold_next = t == 1 && ids.dim(0)? == 1 && next.is_some_and(|l| l.attn.qkv_foldable(&l.input_norm, self.dtype, self.cfg.hidden_size));
            carry = layer.forward_fast(carry, (next_norm, fold_next), &step, slot, capacity)?;
        }
        match carry {
            Carry::Pending(x, pending) => Ok(self.norm.add_forward(&x, pending.as_ref())?.1),
            Carry::Normed(_, h) => Ok(h),
            Carry::Folded(s, ..) => Ok(self.norm.add_forward(&s, None)?.1),
        }
    }
}

/// What a layer hands the next one (or the final norm).
pub(super) enum Carry {
    /// The residual stream and the block output still to be added to it (the next norm adds it).
    Pending(Tensor, Option<Tensor>),
    /// The residual stream with everything added, and the next norm already applied to it (the
    /// last projection's GEMV did the add and the norm: [`fused::gemv_add_rms_norm`]).
    Normed(Tensor, Tensor),
    /// The residual stream with everything added, that stream times the next norm's weight,
    /// and the partial sums of squares of the stream, from which the next GEMV applies the
    /// next norm itself ([`fused::gemv_add_sumsq_into`]).
    Folded(Tensor, Tensor, Tensor),
}

/// Whether the RMSNorm between a projection and the next GEMVs is folded into them at one row
/// of x ([`fused::gemv_add_sumsq_into`], [`fused::fold_gemv_multi_into`],
/// [`fused::fold_gemv_glu_into`]): the projection's blocks add the residual and write partial
/// sums of squares, the next GEMV multiplies its input by the norm weight and its sums by
/// 1 / rms; no block normalises the whole row alone (the serial tail of
/// [`fused::gemv_add_rms_norm_into`], which stays for the model's final norm). **On by
/// default** since session 11, `QLORA_FOLD_NORM=0` turns it off. Session 9 measured it slower
/// (TinyLlama 928 / 913 µs a step against 885 / 908, Mistral-7B 3199 / 3203 against 2908 /
/// 2939): the tail it removes ran while the next GEMV's blocks resolved their block scales
/// before their programmatic-launch wait, and without the tail that prologue was exposed. With
/// lane scales (session 10) the next GEMV has no such prologue, and its blocks copy the
/// partials right after the wait; then it is faster (session 11, same binary, alternating,
/// NF4 b1 tok/s: TinyLlama 1,308 / 1,244 / 1,283 against 1,197 / 1,202 / 1,223, Mistral-7B
/// 365.0 / 364.6 / 363.9 against 358.8 / 358.8 / 359.0; bench/gpu/results/h100-2026-11-27-s11-fold-ab.*).
fn fold_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("QLORA_FOLD_NORM").map(|v| v.trim().to_ascii_lowercase()).as_deref(), Ok("0" | "false" | "off")))
}

/// Whether GEMVs over `ls` can take the folded `norm` of a one-row residual stream of `width`
/// `dt` values.
fn foldable(norm: &Norm, ls: &[&ArcLinear], dt: DType, width: usize) -> bool {
    fold_on()
        && matches!(norm.kind, NormKind::Rms | NormKind::RmsOnePlus)
        && norm.weight.dtype() == dt
        && norm.weight.is_contiguous()
        && fused::fold_unsupported(1, width, dt).is_none()
        && ls.iter().map(|l| nf4_proj(l)).collect::<Option<Vec<_>>>().is_some_and(|p| fused::fused_unsupported(1, width, dt, &p).is_none())
}

/// [`Carry::Folded`] for `norm`: `resid + x Wᵀ`, it times the norm's weight, and its partial
/// sums of squares in one launch ([`fused::gemv_add_sumsq_into`]) when `l` is plain NF4 and x
/// one row, into `into` (a workspace's norm buffer, s then s · w, and its partials) or fresh
/// buffers; else `None`.
fn proj_add_sumsq(x: &Tensor, l: &ArcLinear, resid: &Tensor, norm: &Norm, into: Option<(&Tensor, &Tensor)>) -> Result<Option<Carry>> {
    let n = resid.dims().last().copied().unwrap_or(0);
    if fused::fold_unsupported(resid.elem_count() / n.max(1), n, resid.dtype()).is_some() || x.dtype() != resid.dtype() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let Some(p) = fused_projs(&x, &[l]) else { return Ok(None) };
    let np = fused::fold_partials(n);
    let (s_out, xw_out, part) = match into {
        Some((norm_buf, part)) => (head_of(norm_buf, n)?, norm_buf.narrow(0, n, n)?, part.clone()),
        None => {
            let buf = |len: usize, dt: DType| Tensor::zeros(len, dt, resid.device());
            (buf(n, resid.dtype())?, buf(n, resid.dtype())?, buf(np, DType::F32)?)
        }
    };
    let one_plus = norm.kind == NormKind::RmsOnePlus;
    let (s, xw) = fused::gemv_add_sumsq_into(&x, &p[0], resid, (&norm.weight, one_plus), &s_out, &xw_out, &part)?;
    Ok(Some(Carry::Folded(s, xw, part)))
}

/// Whether a projection's GEMV does the following residual add + RMSNorm in its launch (the
/// last block to finish adds and normalises the row): **on by default**, `QLORA_FUSED_NORM=0`
/// turns it off. Session 4 measured it slower (its tail walked the row 128 elements at a time,
/// each load after the previous store, about 10 µs a fold; and it allocated inside the decode
/// graph). Session 6 loads the row with every load in flight first (16-bit T, one row of x),
/// counts the blocks with an acquire-release atomic instead of a fence in every block, and
/// writes into the workspace (`fused::gemv_add_rms_norm_into`): on an H100, same call, NF4 b1,
/// TinyLlama 887.2 / 878.9 µs a step against 939.7 / 931.3 without, Mistral-7B 3139.9 /
/// 3113.8 against 3160.0 / 3107.0 (bench/gpu/results/h100-2026-11-27-s6-ab-*).
fn fused_norm_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("QLORA_FUSED_NORM").map(|v| v.trim().to_ascii_lowercase()).as_deref(), Ok("0" | "false" | "off")))
}

/// `(resid + x Wᵀ, norm(..))` in one launch when `l` is plain NF4, `x` is one row of a 16-bit
/// dtype and `norm` an RMSNorm, else `None` (the caller runs the projection and the norm apart). With `into`
/// (a workspace's projection and norm buffers) the launch writes there and allocates nothing.
fn proj_add_norm(x: &Tensor, l: &ArcLinear, resid: &Tensor, norm: &Norm, into: Option<(&Tensor, &Tensor)>) -> Result<Option<(Tensor, Tensor)>> {
    let one_plus = match norm.kind {
        NormKind::Rms => false,
        NormKind::RmsOnePlus => true,
        NormKind::LayerNorm => return Ok(None),
    };
    // One row of x in a 16-bit dtype, rows of 8k <= 4096 elements: the last block's vector tail
    // (kernels/nf4.cu norm_tail_vec). Otherwise its scalar tail walks the row 128 elements at a
    // time: session 6's final H100 run had it at 8 rows, the NF4 b8 step 3.98 ms on TinyLlama
    // and 14.6 ms on Mistral-7B against 1.92 / 8.55 ms with the norm's own launch (session 5).
    if !fused_norm_on() || x.elem_count() != x.dims().last().copied().unwrap_or(0) || x.dtype() == DType::F32 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let Some(p) = fused_projs(&x, &[l]) else { return Ok(None) };
    let n = p[0].w.shape().dims()[0];
    if !n.is_multiple_of(8) || n > 4096 {
        return Ok(None);
    }
    Ok(Some(match into {
        Some((a, out)) => fused::gemv_add_rms_norm_into(&x, &p[0], resid, &norm.weight, (norm.eps, one_plus), a, out)?,
        None => fused::gemv_add_rms_norm(&x, &p[0], resid, &norm.weight, norm.eps, one_plus)?,
    }))
}

/// What one fused forward shares across its layers.
pub(super) struct FastStep<'a> {
    /// `(cos, sin)` for a prompt (several tokens); one decode token rotates inside the kernels.
    tables: Option<&'a (Tensor, Tensor)>,
    /// Positions cached before this call (a launch parameter unless `dev_len` is set).
    past: usize,
    /// The rotary inverse frequencies for this call's sequence length.
    inv_freq: &'a [f32],
    /// A u32 on the device holding the cache length after this call, read by the kernels.
    dev_len: Option<&'a Tensor>,
    /// Preallocated outputs for a one-token step's kernels (a CUDA graph capture).
    ws: Option<&'a Workspace>,
}

/// The outputs of a one-token step's layer kernels, allocated once (per batch size and dtype)
/// outside a CUDA graph capture and reused by every layer. Without it each kernel's output is
/// a `cuMemAllocAsync` and its drop a `cuMemFreeAsync`, which a capture records as memory
/// nodes between the kernel nodes: a graph of kernel nodes only lets consecutive kernels
/// overlap through programmatic dependent launch (`cuda/pdl.rs`), and saves the memory nodes'
/// own cost at every replay. Buffers are reused in stream order: every kernel of the step
/// waits for its predecessor to complete before it writes (`griddepcontrol.wait` with PDL), so
/// a buffer is only overwritten after its last reader has finished.
pub(super) struct Workspace {
    batch: usize,
    dtype: DType,
    /// `[2, B, 1, hidden]` each: `(s, norm(s))` of the input norm (`norm[0]`) and of the
    /// post-attention norm (`norm[1]`), or `(s, s · w)` of a folded norm; each reads the
    /// other's `s`, so they never alias.
    norm: [Tensor; 2],
    /// q, k and v side by side.
    qkv: Tensor,
    /// The attention output.
    attn: Tensor,
    /// o_proj's and down_proj's output (each read by the next norm before the other writes).
    proj: Tensor,
    /// The gated MLP's activation.
    glu: Tensor,
    /// The partial sums of squares of a folded norm (`fused::fold_partials(hidden)` f32).
    partials: Tensor,
}

impl Workspace {
    pub(super) fn new(model: &Model, batch: usize) -> Result<Self> {
        let c = &model.cfg;
        let (dt, dev) = (model.dtype, &model.device);
        let buf = |n: usize| Tensor::zeros(n, dt, dev);
        let (nq, nk) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        Ok(Self {
            batch,
            dtype: dt,
            norm: [buf(2 * batch * c.hidden_size)?, buf(2 * batch * c.hidden_size)?],
            qkv: buf(batch * (nq + 2 * nk))?,
            attn: buf(batch * nq)?,
            proj: buf(batch * c.hidden_size)?,
            glu: buf(batch * c.intermediate_size)?,
            partials: Tensor::zeros(fused::fold_partials(c.hidden_size), DType::F32, dev)?,
        })
    }
}

/// `norm.add_forward(x, pending)`, into `out` when there is one, the residual is pending and
/// the norm an RMSNorm.
fn norm_into(norm: &Norm, x: &Tensor, pending: Option<&Tensor>, out: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let one_plus = match norm.kind {
        NormKind::Rms => false,
        NormKind::RmsOnePlus => true,
        NormKind::LayerNorm => return norm.add_forward(x, pending),
    };
    match (pending, out) {
        (Some(p), Some(out)) => infer::add_rms_norm_into(x, p, &norm.weight, norm.eps, one_plus, out),
        _ => norm.add_forward(x, pending),
    }
}

/// `l`'s output on `x`: into `out` when there is one and `l` is plain NF4 (the fused GEMV).
fn proj_into(x: &Tensor, l: &ArcLinear, out: Option<&Tensor>) -> Result<Tensor> {
    if let Some(out) = out {
        let x = x.contiguous()?;
        if let Some(p) = fused_projs(&x, &[l]) {
            return fused::gemv_multi_into(&x, &p, out);
        }
    }
    l.forward(x)
}

impl Norm {
    /// `(s, norm(s))` with `s = x + pending` (or `x`): one kernel for RMSNorm on CUDA.
    pub fn add_forward(&self, x: &Tensor, pending: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let one_plus = match self.kind {
            NormKind::Rms => false,
            NormKind::RmsOnePlus => true,
            NormKind::LayerNorm => {
                let s = match pending {
                    Some(p) => (x + p)?,
                    None => x.clone(),
                };
                let n = self.forward(&s)?;
                return Ok((s, n));
            }
        };
        infer::add_rms_norm(x, pending, &self.weight, self.eps, one_plus)
    }
}

impl DecoderLayer {
    /// One layer on the fused path. `next_norm` is the norm that follows the layer (the next
    /// layer's input norm or the model's final norm): the layer's last GEMV applies it when it
    /// can ([`Carry::Normed`]), else the output is left pending for it.
    /// `fold_next`: the next layer's q/k/v GEMV takes the layer's output with the next norm
    /// folded in ([`Carry::Folded`]).
    pub(super) fn forward_fast(
        &self,
        carry: Carry,
        (next_norm, fold_next): (&Norm, bool),
        step: &FastStep,
        cache: &mut Option<Tensor>,
        capacity: usize,
    ) -> Result<Carry> {
        // A folded input: the q/k/v GEMV applies the input norm (else its own launch does).
        let carry = match carry {
            Carry::Folded(s, xw, part) => {
                let f = fused::FoldedNorm { xw: &xw, partials: &part, eps: self.input_norm.eps };
                match self.attn.fold_qkv(&f, step.ws)? {
                    Some(qkv) => {
                        let o_in = self.attn.attend_fast(&qkv, step, cache, capacity)?;
                        return self.after_attention(s, o_in, (next_norm, fold_next), step);
                    }
                    None => Carry::Pending(s, None),
                }
            }
            c => c,
        };
        // The input norm inside the q/k/v GEMV's prologue where it can (no norm launch).
        let pro = match (&carry, step.ws, &self.post_attention_norm) {
            (Carry::Pending(x, Some(p)), Some(ws), Some(_)) => self.attn.normin_qkv(&self.input_norm, x, p, ws)?,
            _ => None,
        };
        let (x, o_in) = match pro {
            Some((s, qkv)) => (s, self.attn.attend_fast(&qkv, step, cache, capacity)?),
            None => {
                let (x, h) = match carry {
                    Carry::Pending(x, pending) => norm_into(&self.input_norm, &x, pending.as_ref(), step.ws.map(|w| &w.norm[0]))?,
                    Carry::Normed(x, h) => (x, h),
                    Carry::Folded(s, ..) => self.input_norm.add_forward(&s, None)?,
                };
                if self.post_attention_norm.is_none() {
                    // Attention and MLP side by side on the same normed input (Phi).
                    let o_in = self.attn.forward_fast(&h, step, cache, capacity)?;
                    let a = self.attn.o_proj.forward(&o_in)?;
                    return self.mlp.forward_fast(&h, (x + a)?, None, None);
                }
                let o_in = self.attn.forward_fast(&h, step, cache, capacity)?;
                return self.after_attention(x, o_in, (next_norm, fold_next), step);
            }
        };
        self.after_o_proj(x, o_in, (next_norm, fold_next), step)
    }

    /// The rest of the layer from the attention's output `o_in` and the residual stream `x`.
    fn after_attention(&self, x: Tensor, o_in: Tensor, (next_norm, fold_next): (&Norm, bool), step: &FastStep) -> Result<Carry> {
        let Some(norm) = &self.post_attention_norm else { candle_core::bail!("the fused path lost the post-attention norm") };
        // x is in the first norm buffer (or not in the workspace): the sum goes to the second.
        if let Mlp::Gated { gate, up, .. } = &self.mlp
            && foldable(norm, &[gate, up], x.dtype(), x.dims().last().copied().unwrap_or(0))
            && let Some(Carry::Folded(s, xw, part)) = proj_add_sumsq(&o_in, &self.attn.o_proj, &x, norm, step.ws.map(|w| (&w.norm[1], &w.partials)))?
        {
            let f = fused::FoldedNorm { xw: &xw, partials: &part, eps: norm.eps };
            if let Some(carry) = self.mlp.fold_forward(&s, &f, (next_norm, fold_next), step.ws)? {
                return Ok(carry);
            }
            let (x, h2) = norm.add_forward(&s, None)?;
            return self.mlp.forward_fast(&h2, x, Some((next_norm, fold_next)), step.ws);
        }
        if let Some(both) = proj_add_norm(&o_in, &self.attn.o_proj, &x, norm, step.ws.map(|w| (&w.proj, &w.norm[1])))? {
            return self.mlp.forward_fast(&both.1, both.0, Some((next_norm, fold_next)), step.ws);
        }
        self.after_o_proj(x, o_in, (next_norm, fold_next), step)
    }

    /// The rest of the layer with o_proj launched on its own.
    fn after_o_proj(&self, x: Tensor, o_in: Tensor, (next_norm, fold_next): (&Norm, bool), step: &FastStep) -> Result<Carry> {
        let Some(norm) = &self.post_attention_norm else { candle_core::bail!("the fused path lost the post-attention norm") };
        let o = proj_into(&o_in, &self.attn.o_proj, step.ws.map(|w| &w.proj))?;
        // The post-attention norm inside the gate/up GEMV's prologue where it can.
        if let Some(ws) = step.ws
            && let Some(carry) = self.mlp.normin_forward(norm, &x, &o, ws)?
        {
            return Ok(carry);
        }
        let (x, h2) = norm_into(norm, &x, Some(&o), step.ws.map(|w| &w.norm[1]))?;
        self.mlp.forward_fast(&h2, x, Some((next_norm, fold_next)), step.ws)
    }
}

/// `norm`'s input to the GEMV prologue (`fused::NormedInput`) when it is an RMSNorm and the
/// prologue is on (`on`: that GEMV's switch of `fused::norm_prologue_on`).
fn normed_input<'a>(norm: &'a Norm, resid: &'a Tensor, pending: &'a Tensor, on: bool) -> Option<NormedInput<'a>> {
    let one_plus = match norm.kind {
        NormKind::Rms => false,
        NormKind::RmsOnePlus => true,
        NormKind::LayerNorm => return None,
    };
    on.then_some(NormedInput { resid, pending, weight: &norm.weight, eps: norm.eps, one_plus })
}

/// The first `n` elements of a workspace buffer (the `s` half of a norm buffer).
fn head_of(buf: &Tensor, n: usize) -> Result<Tensor> {
    buf.narrow(0, 0, n)
}

fn nf4_proj(l: &ArcLinear) -> Option<Nf4Proj> {
    l.as_nf4().map(|(w, b)| Nf4Proj { w: w.clone(), bias: b.cloned() })
}

/// The projections as one fused NF4 launch when they all are plain NF4 and `x` has few rows.
fn fused_projs(x: &Tensor, ls: &[&ArcLinear]) -> Option<Vec<Nf4Proj>> {
    let projs = ls.iter().map(|l| nf4_proj(l)).collect::<Option<Vec<_>>>()?;
    let k = x.dims().last().copied()?;
    let m = x.elem_count() / k.max(1);
    fused::fused_unsupported(m, k, x.dtype(), &projs).is_none().then_some(projs)
}

/// The layer's cache `[2, B, kv_heads, capacity, head_dim]`, allocated or grown to hold `need`.
fn cache_for(slot: &mut Option<Tensor>, shape: (usize, usize, usize), need: usize, hint: usize, dt: DType, dev: &Device) -> Result<Tensor> {
    let (b, nkv, hd) = shape;
    if let Some(c) = slot.as_ref()
        && c.dim(1)? == b
        && c.dim(3)? >= need
    {
        return Ok(c.clone());
    }
    let cap = need.max(hint).next_multiple_of(CACHE_CHUNK);
    let grown = match slot.as_ref() {
        Some(old) if old.dim(1)? == b => {
            let cap = cap.max(2 * old.dim(3)?);
            let new = Tensor::zeros((2, b, nkv, cap, hd), dt, dev)?;
            new.slice_set(old, 3, 0)?;
            new
        }
        _ => Tensor::zeros((2, b, nkv, cap, hd), dt, dev)?,
    };
    *slot = Some(grown.clone());
    Ok(grown)
}

impl Attention {
    /// `(s, q|k|v)`: the input norm of `resid + pending` computed by the q/k/v GEMV's blocks
    /// (`fused::norm_gemv_multi_into`, bit for bit the norm launch and the GEMV), `s` into the
    /// workspace's first norm buffer; `None` where that launch does not apply.
    fn normin_qkv(&self, norm: &Norm, resid: &Tensor, pending: &Tensor, ws: &Workspace) -> Result<Option<(Tensor, Tensor)>> {
        let Some(n) = normed_input(norm, resid, pending, fused::norm_prologue_on().0) else { return Ok(None) };
        let Some(projs) = [&self.q_proj, &self.k_proj, &self.v_proj].iter().map(|l| nf4_proj(l)).collect::<Option<Vec<_>>>() else { return Ok(None) };
        if fused::normin_unsupported(&n, &projs, 1).is_some() {
            return Ok(None);
        }
        let s_out = head_of(&ws.norm[0], resid.elem_count())?;
        let (s, qkv) = fused::norm_gemv_multi_into(&n, &projs, &ws.qkv, &s_out)?;
        Ok(Some((s, qkv)))
    }

    /// Whether the q/k/v GEMV takes its input with `norm` folded in ([`Attention::fold_qkv`]).
    pub(super) fn qkv_foldable(&self, norm: &Norm, dt: DType, hidden: usize) -> bool {
        foldable(norm, &[&self.q_proj, &self.k_proj, &self.v_proj], dt, hidden)
    }

    /// q|k|v of the folded `norm(s)` (`f`, [`fused::fold_gemv_multi_into`]), into the
    /// workspace's buffer or a fresh one; `None` where the fold does not apply.
    fn fold_qkv(&self, f: &fused::FoldedNorm, ws: Option<&Workspace>) -> Result<Option<Tensor>> {
        let Some(projs) = [&self.q_proj, &self.k_proj, &self.v_proj].iter().map(|l| nf4_proj(l)).collect::<Option<Vec<_>>>() else { return Ok(None) };
        let cols: usize = projs.iter().map(|p| p.w.shape().dims()[0]).sum();
        let y_out = match ws {
            Some(ws) => ws.qkv.clone(),
            None => Tensor::zeros(cols, f.xw.dtype(), f.xw.device())?,
        };
        Ok(Some(fused::fold_gemv_multi_into(f, &projs, &y_out)?))
    }

    fn forward_fast(&self, x: &Tensor, step: &FastStep, slot: &mut Option<Tensor>, capacity: usize) -> Result<Tensor> {
        let x = x.contiguous()?;
        match fused_projs(&x, &[&self.q_proj, &self.k_proj, &self.v_proj]) {
            Some(projs) => {
                let y = match step.ws {
                    Some(ws) => fused::gemv_multi_into(&x, &projs, &ws.qkv)?,
                    None => fused::gemv_multi(&x, &projs)?,
                };
                self.attend_fast(&y, step, slot, capacity)
            }
            None => {
                let qkv = (self.q_proj.forward(&x)?, self.k_proj.forward(&x)?, self.v_proj.forward(&x)?);
                self.attend_parts(qkv, step, slot, capacity)
            }
        }
    }

    /// The attention of q, k and v side by side in `y` `[B, t, (heads + 2 kv heads) · head_dim]`.
    fn attend_fast(&self, y: &Tensor, step: &FastStep, slot: &mut Option<Tensor>, capacity: usize) -> Result<Tensor> {
        let (nq, nk) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        self.attend_parts((y.narrow(2, 0, nq)?, y.narrow(2, nq, nk)?, y.narrow(2, nq + nk, nk)?), step, slot, capacity)
    }

    fn attend_parts(&self, (q, k, v): (Tensor, Tensor, Tensor), step: &FastStep, slot: &mut Option<Tensor>, capacity: usize) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (hd, nkv) = (self.head_dim, self.num_kv_heads);
        let inv = step.inv_freq;
        let len = step.past + t;
        let cache = cache_for(slot, (b, nkv, hd), len, capacity, q.dtype(), q.device())?;
        let (at, attn_len) = match step.dev_len {
            Some(l) => (CacheLen::Device(l), CacheLen::Device(l)),
            None => (CacheLen::Host(step.past), CacheLen::Host(len)),
        };
        let scale = 1.0 / (hd as f64).sqrt();
        if t == 1 {
            // The KV append folded into the attention launch: one kernel less per layer.
            match step.ws {
                Some(ws) => infer::decode_attention_append_into(&q, (&k, &v), &cache, attn_len, self.sliding_window, scale, inv, &ws.attn),
                None => infer::decode_attention_append_at(&q, (&k, &v), &cache, attn_len, self.sliding_window, scale, inv),
            }
        } else {
            infer::kv_append_at(&cache, &k, &v, at, inv)?;
            let Some((cos, sin)) = step.tables else { candle_core::bail!("rotary tables were not computed for this prompt") };
            super::prefill::attention(self, &q, &cache, (cos, sin), step.past)
        }
    }
}

impl Mlp {
    /// The gated MLP of `norm(resid + pending)` with the norm computed by the gate/up GEMV's
    /// blocks (`fused::norm_gemv_glu_into`), `s` into the workspace's second norm buffer, the
    /// down projection's output left pending; `None` where that launch does not apply.
    fn normin_forward(&self, norm: &Norm, resid: &Tensor, pending: &Tensor, ws: &Workspace) -> Result<Option<Carry>> {
        let Mlp::Gated { gate, up, down, act } = self else { return Ok(None) };
        let Some(n) = normed_input(norm, resid, pending, fused::norm_prologue_on().1) else { return Ok(None) };
        let (Some(g), Some(u)) = (nf4_proj(gate), nf4_proj(up)) else { return Ok(None) };
        let projs = [g, u];
        if fused::normin_unsupported(&n, &projs, 2).is_some() {
            return Ok(None);
        }
        let act = glu_act(*act);
        let s_out = head_of(&ws.norm[1], resid.elem_count())?;
        let (s, a) = fused::norm_gemv_glu_into(&n, &projs[0], &projs[1], act, &ws.glu, &s_out)?;
        Ok(Some(Carry::Pending(s, Some(proj_into(&a, down, Some(&ws.proj))?))))
    }

    /// The MLP of `x` to be added to the residual stream `resid`: left pending, or, with
    /// `then = Some((norm, fold))`, added by the down projection's GEMV when it can, which
    /// then leaves the partial sums of squares for the next GEMV (`fold`, [`proj_add_sumsq`])
    /// or applies the norm itself ([`proj_add_norm`]).
    fn forward_fast(&self, x: &Tensor, resid: Tensor, then: Option<(&Norm, bool)>, ws: Option<&Workspace>) -> Result<Carry> {
        if let Mlp::Gated { gate, up, down, act } = self {
            let x = x.contiguous()?;
            if let Some(p) = fused_projs(&x, &[gate, up]) {
                let act = glu_act(*act);
                let g = match ws {
                    Some(ws) => fused::gemv_glu_into(&x, &p[0], &p[1], act, &ws.glu)?,
                    None => fused::gemv_glu(&x, &p[0], &p[1], act)?,
                };
                return down_carry(down, &g, resid, then, ws);
            }
        }
        Ok(Carry::Pending(resid, Some(super::prefill::mlp(self, x)?)))
    }

    /// The gated MLP of the folded `norm(s)` (`f`, [`fused::fold_gemv_glu_into`]), its down
    /// projection as in [`Mlp::forward_fast`]; `None` where the fold does not apply.
    fn fold_forward(&self, s: &Tensor, f: &fused::FoldedNorm, then: (&Norm, bool), ws: Option<&Workspace>) -> Result<Option<Carry>> {
        let Mlp::Gated { gate, up, down, act } = self else { return Ok(None) };
        let (Some(g), Some(u)) = (nf4_proj(gate), nf4_proj(up)) else { return Ok(None) };
        let y_out = match ws {
            Some(ws) => ws.glu.clone(),
            None => Tensor::zeros(g.w.shape().dims()[0], f.xw.dtype(), f.xw.device())?,
        };
        let a = fused::fold_gemv_glu_into(f, &g, &u, glu_act(*act), &y_out)?;
        Ok(Some(down_carry(down, &a, s.clone(), Some(then), ws)?))
    }
}

/// The down projection of the gated activation `g` and what it hands on (see [`Mlp::forward_fast`]).
/// `resid` is in the workspace's second norm buffer (or not in the workspace): the sum goes to the first.
fn down_carry(down: &ArcLinear, g: &Tensor, resid: Tensor, then: Option<(&Norm, bool)>, ws: Option<&Workspace>) -> Result<Carry> {
    if let Some((norm, fold)) = then {
        if fold && let Some(carry) = proj_add_sumsq(g, down, &resid, norm, ws.map(|w| (&w.norm[0], &w.partials)))? {
            return Ok(carry);
        }
        if let Some((s, h)) = proj_add_norm(g, down, &resid, norm, ws.map(|w| (&w.proj, &w.norm[0])))? {
            return Ok(Carry::Normed(s, h));
        }
    }
    Ok(Carry::Pending(resid, Some(proj_into(g, down, ws.map(|w| &w.proj))?)))
}

fn glu_act(act: Activation) -> GluAct {
    match act {
        Activation::Silu => GluAct::Silu,
        Activation::GeluTanh => GluAct::GeluTanh,
        Activation::Gelu => GluAct::GeluErf,
    }
}
