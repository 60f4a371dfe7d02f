//! Model families: what a bundle of each family holds and how a run of it goes. A family is
//! named in the manifest (`"family"`, absent in bundles older than the field: FaithDiff).
//!
//! - [`Family::FaithDiff`]: FaithDiff and PGP-DiffSR (and their one-step S1 forms): FaithDiff's
//!   UNet with its LQ fusion, the `denoise_encoder`, SDXL's two text encoders; its run is
//!   [`crate::pipeline::run`] (tiled Euler with CFG, or one step).
//! - [`Family::Sd21`]: Stable Diffusion 2.1-base one-step models (OSEDiff, PiSA-SR): a plain
//!   `UNet2DConditionModel`, one CLIP text encoder conditioning on `last_hidden_state`, the VAE;
//!   its run is [`sd21`] (the encoded input, one UNet call, the recipe's x0, decode).
//!
//! A third family is one more variant here, its component set, its builders in
//! [`crate::bundle::Configs`] and its run beside [`sd21`].

pub mod sd21;

use serde::{Deserialize, Serialize};

use crate::bundle::Component;

/// A bundle's model family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// FaithDiff / PGP-DiffSR on SDXL.
    #[default]
    FaithDiff,
    /// One-step models on Stable Diffusion 2.1-base.
    Sd21,
}

impl Family {
    /// Its name in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Self::FaithDiff => "faithdiff",
            Self::Sd21 => "sd21",
        }
    }

    /// Every component its bundles hold, in the order the writer writes them.
    pub fn components(self) -> &'static [Component] {
        match self {
            Self::FaithDiff => &Component::ALL,
            Self::Sd21 => &[
                Component::Unet,
                Component::Vae,
                Component::TextEncoder,
                Component::EmptyPrompt,
            ],
        }
    }

    /// What an upscaler needs for the empty prompt (no text encoders).
    pub fn image_components(self) -> &'static [Component] {
        match self {
            Self::FaithDiff => &Component::IMAGE,
            Self::Sd21 => &[Component::Unet, Component::Vae, Component::EmptyPrompt],
        }
    }

    /// Its text encoders.
    pub fn text_components(self) -> &'static [Component] {
        match self {
            Self::FaithDiff => &Component::TEXT,
            Self::Sd21 => &[Component::TextEncoder],
        }
    }
}
