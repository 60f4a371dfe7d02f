//! Feature probes: an optional observer of one UNet call's intermediate features, for the
//! progressive pruning analysis (PPA, pgp-model.md §3; [`crate::ppa`]). Names follow diffusers'
//! module paths. Without a probe a forward pass builds no names, clones no tensor and computes
//! nothing extra.

use burn::tensor::Tensor;

/// Which UNet call of a run the next features come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// Sampling step, 0-based.
    pub step: usize,
    /// Sampling steps of the run.
    pub steps: usize,
    /// Tile of the step, 0-based.
    pub tile: usize,
    /// 0: the call with the empty prompt; 1: the prompt's call under classifier-free guidance.
    pub branch: usize,
}

/// Receives named features during UNet calls (`Send`, so a job's futures stay `Send`).
pub trait Probe: Send {
    /// Called before each UNet call of a run (not by a bare forward pass).
    fn begin(&mut self, call: CallInfo) {
        let _ = call;
    }

    /// The output of one UNet level, `[B, C, h, w]`: `down_blocks.{i}` (after its
    /// downsampler and, for FaithDiff / PGP-DiffSR, after the fusion at that level),
    /// `mid_block`, `up_blocks.{i}` (after its upsampler).
    fn level(&mut self, name: &str, features: &Tensor<4>);

    /// Whether [`Probe::block`] should see the decoder's transformer blocks.
    fn wants_blocks(&self) -> bool {
        true
    }

    /// One decoder `BasicTransformerBlock`'s input and output tokens, `[B, h·w, C]`, named
    /// `up_blocks.{i}.attentions.{j}.transformer_blocks.{k}`.
    fn block(&mut self, name: &str, input: &Tensor<3>, output: &Tensor<3>);
}

/// What a transformer calls around block `k` (`k`, input, output).
pub type TokenProbe<'a> = &'a mut dyn FnMut(usize, &Tensor<3>, &Tensor<3>);

/// What an up block calls with (attention `j`, block `k`, input, output).
pub type BlockProbe<'a> = &'a mut dyn FnMut(usize, usize, &Tensor<3>, &Tensor<3>);

/// Reborrows an optional probe for one call: the trait object's lifetime shortens to the
/// borrow's (`Option::as_deref_mut` keeps it, and `&mut` makes it invariant).
pub fn reborrow<'a>(probe: &'a mut Option<&mut dyn Probe>) -> Option<&'a mut dyn Probe> {
    match probe {
        Some(p) => Some(&mut **p),
        None => None,
    }
}
