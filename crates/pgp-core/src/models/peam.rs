//! The phase-exchange adapter module, PEAM (paper eq. 3–5; pgp-model.md §2):
//! `H~ = IFFT2(|FFT2(H)|·exp(i·∠FFT2(F)))`, `e = convs(cat(H~, H))`, `a, b = split(e)`,
//! `H^ = a ⊙ H~ + b`. Every reading the paper leaves open is a config value.
//!
//! Placement (a choice; pgp-model.md §2): encoder level 0 is `conv_in`'s output, where FaithDiff
//! fuses its LQ features; level `i + 1` is down block `i`'s output. `F` is the LQ branch output
//! `condition_embedding(denoise_encoder(LQ))` (the UNet's first width); at a level `ℓ ≥ 1` it is
//! average-pooled to the level's size and projected to its width by a 1×1 convolution
//! (`lq_proj`, our addition: the paper does not say how `F` reaches deeper levels). With
//! `keep_faithdiff_fusion` (the default) FaithDiff's alignment fusion runs first and PEAM refines
//! its output; without it PEAM takes the fusion's place, and `add` means `H + F`.

use burn::tensor::Tensor;
use burn::tensor::activation::leaky_relu;
use burn::tensor::module::adaptive_avg_pool2d;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::Conv2d;
use crate::phase::phase_exchange;
use crate::weights::VarBuilder;

/// The Table 5 ablation variants.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeamVariant {
    /// "w/ Add": the LQ features are added, `H + F` — with FaithDiff's fusion kept, that
    /// fusion is the addition and no PEAM runs at all.
    Add,
    /// "w/ Phase change": `H~` replaces `H`.
    PhaseChange,
    /// "w/ Fusion conv": the convolution stack on `cat(F, H)` without the exchange,
    /// `H^ = a ⊙ H + b`.
    FusionConv,
    /// The full module.
    #[default]
    Peam,
}

fn d_levels() -> Vec<usize> {
    vec![0]
}
fn d_hidden() -> usize {
    64
}
fn d_stack() -> usize {
    11
}
fn d_slope() -> f64 {
    0.2
}
fn d_keep() -> bool {
    true
}

/// PEAM hyper-parameters (the manifest's and case.json's `peam`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct PeamConfig {
    /// Encoder levels that get a PEAM (0 = right after `conv_in`).
    #[serde(default = "d_levels")]
    pub levels: Vec<usize>,
    /// Which Table 5 variant.
    #[serde(default)]
    pub variant: PeamVariant,
    /// Width of the convolution stack.
    #[serde(default = "d_hidden")]
    pub hidden: usize,
    /// Convolutions after the first (`hidden → hidden` × (n − 1), then `hidden → 2C`).
    #[serde(default = "d_stack")]
    pub stacked_convs: usize,
    /// LeakyReLU slope between convolutions.
    #[serde(default = "d_slope")]
    pub negative_slope: f64,
    /// Whether FaithDiff's alignment fusion stays at level 0 (PEAM then refines its output);
    /// `false`: PEAM replaces it and the alignment weights are not part of the model.
    #[serde(default = "d_keep")]
    pub keep_faithdiff_fusion: bool,
}

impl PeamConfig {
    /// Whether any PEAM runs: the `add` variant with FaithDiff's fusion kept is FaithDiff itself.
    pub fn is_active(&self) -> bool {
        !(self.variant == PeamVariant::Add && self.keep_faithdiff_fusion)
    }
}

impl Default for PeamConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("all fields have defaults")
    }
}

/// One PEAM at a level of width `C`.
#[derive(Clone, Debug)]
pub struct Peam {
    convs: Vec<Conv2d>,
    lq_proj: Option<Conv2d>,
    variant: PeamVariant,
    slope: f64,
}

impl Peam {
    /// Keys `convs.{i}.weight` / `.bias` (none for `add` and `phase_change`), and
    /// `lq_proj.weight` / `.bias` when `lq_channels` is given: `F` arrives with that width and
    /// is projected to `channels` (deeper levels).
    pub fn new(
        vb: &VarBuilder,
        cfg: &PeamConfig,
        channels: usize,
        lq_channels: Option<usize>,
    ) -> Result<Self> {
        if cfg.stacked_convs == 0 {
            return Err(Error::config("PEAM needs at least one stacked convolution"));
        }
        let with_convs = matches!(cfg.variant, PeamVariant::Peam | PeamVariant::FusionConv);
        let convs = if with_convs {
            let n = cfg.stacked_convs + 1;
            (0..n)
                .map(|i| {
                    let cin = if i == 0 { 2 * channels } else { cfg.hidden };
                    let cout = if i == n - 1 { 2 * channels } else { cfg.hidden };
                    Conv2d::new(&vb.pp("convs").pp(i), cin, cout, 3, 1, 1)
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            convs,
            lq_proj: lq_channels.map(|c| Conv2d::new(&vb.pp("lq_proj"), c, channels, 1, 1, 0)),
            variant: cfg.variant,
            slope: cfg.negative_slope,
        })
    }

    /// `f` LQ features and `h` UNet features `[B, C, h, w]` → the new `H`. With `lq_proj`,
    /// `f` may have another width and size: it is average-pooled to `h`'s size and projected.
    pub fn forward(&self, f: Tensor<4>, h: Tensor<4>) -> Result<Tensor<4>> {
        let f = match &self.lq_proj {
            Some(proj) => {
                let [_, _, hh, ww] = h.dims();
                proj.forward(adaptive_avg_pool2d(f, [hh, ww]))
            }
            None => f,
        };
        if f.dims() != h.dims() {
            return Err(Error::input(format!(
                "PEAM: LQ features {:?} and UNet features {:?} differ in shape",
                f.dims(),
                h.dims()
            )));
        }
        let (base, donor) = match self.variant {
            PeamVariant::Add => return Ok(h + f),
            PeamVariant::PhaseChange => return phase_exchange(f, h),
            PeamVariant::Peam => (phase_exchange(f, h.clone())?, None),
            PeamVariant::FusionConv => (h.clone(), Some(f)),
        };
        let mut e = Tensor::cat(vec![donor.unwrap_or_else(|| base.clone()), h], 1);
        let n = self.convs.len();
        for (i, conv) in self.convs.iter().enumerate() {
            e = conv.forward(e);
            if i + 1 < n {
                e = leaky_relu(e, self.slope);
            }
        }
        let [b, c2, hh, ww] = e.dims();
        let c = c2 / 2;
        let a = e.clone().slice([0..b, 0..c, 0..hh, 0..ww]);
        let bias = e.slice([0..b, c..c2, 0..hh, 0..ww]);
        Ok(a * base + bias)
    }
}
