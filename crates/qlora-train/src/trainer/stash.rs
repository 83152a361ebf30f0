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
    offload_allowed(std::env::var(OFFLOAD_ENV).ok().as_deref())
}

/// `QLORA_OFFLOAD_CHECKPOINTS` unset or anything but `0` / `false` / `off` allows offload.
fn offload_allowed(value: Option<&str>) -> bool {
    !matches!(value.map(|v| v.trim().to_ascii_lowercase()).as_deref(), Some("0" | "false" | "off"))
}

/// The layers' inputs of one micro-batch, pushed in layer order by the forward and taken
/// back in reverse order by the backward.
pub struct Stash {
    inner: Inner,
}

enum Inner {
    Device(Vec<Option<Tensor>>),
    #[cfg(feature = "cuda")]
    Host(qlora_quant::cuda::offload::HostStash),
}

impl Stash {
    /// A stash for `layers` inputs on `dev`: in pinned host memory when `mode` is
    /// [`Checkpointing::Offload`] and `dev` a CUDA device, on `dev` otherwise.
    pub fn new(dev: &Device, layers: usize, mode: Checkpointing) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if mode == Checkpointing::Offload && dev.is_cuda() {
            return Ok(Self { inner: Inner::Host(qlora_quant::cuda::offload::HostStash::new(dev, layers)?) });
        }
        let _ = (dev, mode);
        Ok(Self { inner: Inner::Device(Vec::with_capacity(layers)) })
    }

    /// Whether the inputs go to host memory.
    pub fn offloads(&self) -> bool {
        !matches!(self.inner, Inner::Device(_))
    }

    /// Keeps the next layer's input (on the host: a copy starts, `x` may be dropped at once).
    pub fn push(&mut self, x: &Tensor) -> Result<()> {
        match &mut self.inner {
            Inner::Device(v) => v.push(Some(x.clone())),
            #[cfg(feature = "cuda")]
            Inner::Host(h) => h.push(x)?,
        }
        Ok(())
    }

    /// Layer `i`'s input, back on its device (offloaded: layer `i - 1`'s starts coming back
    /// too, so take them in reverse order). Each input can be taken once.
    pub fn take(&mut self, i: usize) -> Result<Tensor> {
        match &mut self.inner {
            Inner::Device(v) => match v.get_mut(i).and_then(Option::take) {
                Some(t) => Ok(t),
                None => candle_core::bail!("checkpoint stash: layer {i}'s input was not stashed or was already taken"),
            },
            #[cfg(feature = "cuda")]
            Inner::Host(h) => h.take(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_back_what_was_put_in_on_the_cpu() {
        let dev = Device::Cpu;
        let xs: Vec<Tensor> =
            (0..4).map(|i| Tensor::arange(i as f32 * 10.0, i as f32 * 10.0 + 6.0, &dev).unwrap().reshape((1, 2, 3)).unwrap()).collect();
        let mut s = Stash::new(&dev, xs.len(), Checkpointing::Offload).unwrap();
        assert!(!s.offloads(), "the CPU keeps inputs where they are");
        for x in &xs {
            s.push(x).unwrap();
        }
        for i in (0..xs.len()).rev() {
            let got = s.take(i).unwrap();
            assert_eq!(got.to_vec3::<f32>().unwrap(), xs[i].to_vec3::<f32>().unwrap(), "layer {i}");
        }
        let e = s.take(2).unwrap_err().to_string();
        assert!(e.contains("layer 2") && e.contains("already taken"), "{e}");
        let e = s.take(9).unwrap_err().to_string();
        assert!(e.contains("layer 9"), "{e}");
    }

    #[test]
    fn bool_and_env_select_the_mode() {
        assert_eq!(Checkpointing::from(false), Checkpointing::Off);
        assert!(!Checkpointing::Off.is_on());
        assert!(Checkpointing::OnDevice.is_on() && Checkpointing::Offload.is_on());
        assert_eq!(Checkpointing::on(false), Checkpointing::OnDevice);
        // `on(true)` reads QLORA_OFFLOAD_CHECKPOINTS; its values are checked through the parser.
        for (v, allowed) in [(Some("0"), false), (Some(" off "), false), (Some("FALSE"), false), (Some("1"), true), (None, true)] {
            assert_eq!(offload_allowed(v), allowed, "{v:?}");
        }
    }
}
