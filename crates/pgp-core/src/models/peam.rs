//! The phase-exchange adapter module, PEAM (paper eq. 3–5; pgp-model.md §2):
//! `H~ = IFFT2(|FFT2(H)|·exp(i·∠FFT2(F)))`, `e = convs(cat(H~, H))`, `a, b = split(e)`,
//! `H^ = a ⊙ H~ + b`. Every reading the paper leaves open is a config value.

use burn::tensor::Tensor;
use burn::tensor::activation::leaky_relu;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::nn::Conv2d;
use crate::phase::phase_exchange;
use crate::weights::VarBuilder;

/// The Table 5 ablation variants.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeamVariant {
    /// "w/ Add": FaithDiff's additive fusion only; the adapter leaves `H` as it is.
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

/// PEAM hyper-parameters.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
    variant: PeamVariant,
    slope: f64,
}

impl Peam {
    /// Keys `convs.{i}.weight` / `.bias`; no tensors for the `add` variant.
    pub fn new(vb: &VarBuilder, cfg: &PeamConfig, channels: usize) -> Result<Self> {
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
            variant: cfg.variant,
            slope: cfg.negative_slope,
        })
    }

    /// `f` LQ features and `h` UNet features, both `[B, C, h, w]` → the new `H`.
    pub fn forward(&self, f: Tensor<4>, h: Tensor<4>) -> Result<Tensor<4>> {
        let (base, donor) = match self.variant {
            PeamVariant::Add => return Ok(h),
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
