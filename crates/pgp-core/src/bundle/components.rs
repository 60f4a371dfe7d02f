//! The one table of a bundle's components: each component's network, key prefix, config and
//! builder. Every caller that builds, checks, lists or counts a component's network — the
//! loader, `Bundle::check`, the converter's checks, `bench bundle`'s made-up weights — goes
//! through [`Component::declare`] or the typed builders here, so the recipe is written once.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::families::Family;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use crate::models::peam::PeamConfig;
use crate::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig, DenoiseEncoder};
use crate::weights::{TensorSource, VarBuilder, check, wanted_shapes};

/// A bundle's parts, each with its own shards (version 2) and key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Component {
    /// FaithDiff's UNet with its fusion modules (and PEAMs).
    #[serde(rename = "unet")]
    Unet,
    /// FaithDiff's LQ encoder.
    #[serde(rename = "denoise_encoder")]
    DenoiseEncoder,
    /// The VAE.
    #[serde(rename = "vae")]
    Vae,
    /// CLIP ViT-L.
    #[serde(rename = "text_encoder")]
    TextEncoder,
    /// OpenCLIP bigG with projection.
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
    /// The empty prompt's cached embeddings.
    #[serde(rename = "empty_prompt")]
    EmptyPrompt,
}

impl Component {
    /// Every component, in the order `convert` writes them.
    pub const ALL: [Component; 6] = [
        Component::Unet,
        Component::DenoiseEncoder,
        Component::Vae,
        Component::TextEncoder,
        Component::TextEncoder2,
        Component::EmptyPrompt,
    ];
    /// What an upscaler needs for the empty prompt (no text encoders).
    pub const IMAGE: [Component; 4] = [
        Component::Unet,
        Component::DenoiseEncoder,
        Component::Vae,
        Component::EmptyPrompt,
    ];
    /// The two text encoders.
    pub const TEXT: [Component; 2] = [Component::TextEncoder, Component::TextEncoder2];

    /// Its name in manifests and shard file names (`text_encoder_2`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::DenoiseEncoder => "denoise_encoder",
            Self::Vae => "vae",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
            Self::EmptyPrompt => "empty_prompt",
        }
    }

    /// The component a tensor key belongs to (by its prefix `name.`).
    pub fn of_key(key: &str) -> Option<Self> {
        let (head, _) = key.split_once('.')?;
        Self::ALL.into_iter().find(|c| c.name() == head)
    }
}

/// The parsed configs every component's network is built from (a manifest's config dicts, or
/// the converter's inputs before a manifest exists).
#[derive(Clone, Debug)]
pub struct Configs {
    /// The model family: which networks the components are.
    pub family: Family,
    /// diffusers `UNet2DConditionModel` config of the UNet.
    pub unet: UNet2DConditionConfig,
    /// FaithDiff's extra hyper-parameters (the FaithDiff family).
    pub faithdiff: FaithDiffConfig,
    /// PGP-DiffSR's PEAM, if the UNet has one.
    pub peam: Option<PeamConfig>,
    /// diffusers `AutoencoderKL` config (also the `denoise_encoder`'s layout).
    pub vae: AutoencoderKLConfig,
    /// transformers `CLIPTextConfig`s of `text_encoder` (and `text_encoder_2`).
    pub text: Vec<ClipTextConfig>,
}

impl Configs {
    /// Parses the config dicts; `text` holds one per text encoder of the family.
    pub fn from_json(
        family: Family,
        unet: &serde_json::Value,
        faithdiff: FaithDiffConfig,
        peam: Option<PeamConfig>,
        vae: &serde_json::Value,
        text: &[&serde_json::Value],
    ) -> Result<Self> {
        let encoders = family.text_components().len();
        if text.len() != encoders {
            return Err(Error::config(format!(
                "a {} model has {encoders} text encoders, {} configs were given",
                family.name(),
                text.len()
            )));
        }
        if family == Family::Sd21 && peam.is_some() {
            return Err(Error::config("an SD2.1 model has no PEAM"));
        }
        Ok(Self {
            family,
            unet: UNet2DConditionConfig::from_json(unet)?,
            faithdiff,
            peam,
            vae: AutoencoderKLConfig::from_json(vae)?,
            text: text
                .iter()
                .map(|v| ClipTextConfig::from_json(v))
                .collect::<Result<_>>()?,
        })
    }

    /// The plain diffusers UNet (the SD2.1 family); `vb` at the UNet's root.
    pub fn plain_unet(&self, vb: &VarBuilder<'_>) -> Result<UNet2DConditionModel> {
        UNet2DConditionModel::new(vb, &self.unet)
    }

    /// FaithDiff's UNet with its fusion modules (and PEAMs); `vb` at the UNet's root.
    pub fn unet(&self, vb: &VarBuilder<'_>) -> Result<FaithDiffUNet> {
        FaithDiffUNet::new(vb, &self.unet, &self.faithdiff, self.peam.as_ref())
    }

    /// FaithDiff's LQ encoder; `vb` at the root of the key space (its keys keep their
    /// `denoise_encoder.` prefix in FaithDiff's checkpoint too).
    pub fn denoise_encoder(&self, vb: &VarBuilder<'_>) -> Result<DenoiseEncoder> {
        DenoiseEncoder::new(&vb.pp("denoise_encoder"), &self.vae)
    }

    /// The VAE; `vb` at its root.
    pub fn vae(&self, vb: &VarBuilder<'_>) -> Result<AutoencoderKL> {
        AutoencoderKL::new(vb, &self.vae)
    }

    /// Text encoder `i` (0: CLIP ViT-L, 1: OpenCLIP bigG with projection); `vb` at its root,
    /// `prefixed` when its keys start with `text_model.` (always so in a bundle).
    pub fn text_encoder(
        &self,
        vb: &VarBuilder<'_>,
        i: usize,
        prefixed: bool,
    ) -> Result<ClipTextModel> {
        let cfg = self.text.get(i).ok_or_else(|| {
            Error::config(format!(
                "a {} model has no text encoder {i}",
                self.family.name()
            ))
        })?;
        // SDXL's second encoder has the projection; SD2.1's one encoder has none.
        ClipTextModel::new(vb, cfg, i == 1, prefixed)
    }
}

impl Component {
    /// Its key prefix in a bundle (`unet.`).
    pub fn prefix(self) -> String {
        format!("{}.", self.name())
    }

    /// Builds this component's network on `vb`, a builder at the root of a bundle's key space
    /// (a loader, a shape lister or a counter); the cached prompt has no network and asks for
    /// its two tensors.
    pub fn declare(self, vb: &VarBuilder<'_>, cfg: &Configs) -> Result<()> {
        if !cfg.family.components().contains(&self) {
            return Err(Error::config(format!(
                "a {} bundle has no {} component",
                cfg.family.name(),
                self.name()
            )));
        }
        match self {
            Self::Unet if cfg.family == Family::Sd21 => cfg.plain_unet(&vb.pp("unet")).map(drop),
            Self::Unet => cfg.unet(&vb.pp("unet")).map(drop),
            Self::DenoiseEncoder => cfg.denoise_encoder(vb).map(drop),
            Self::Vae => cfg.vae(&vb.pp("vae")).map(drop),
            Self::TextEncoder => cfg.text_encoder(&vb.pp("text_encoder"), 0, true).map(drop),
            Self::TextEncoder2 => cfg
                .text_encoder(&vb.pp("text_encoder_2"), 1, true)
                .map(drop),
            Self::EmptyPrompt => {
                let vb = vb.pp("empty_prompt");
                let len = crate::tokenizer::MAX_LEN;
                match cfg.family {
                    // SDXL's conditioning: both encoders' penultimate states side by side, and
                    // the second's projected pooled output.
                    Family::FaithDiff => {
                        let dim = cfg.text[0].hidden_size + cfg.text[1].hidden_size;
                        let pooled = cfg.text[1]
                            .projection_dim
                            .unwrap_or(cfg.text[1].hidden_size);
                        vb.get("prompt_embeds", [1, len, dim]);
                        vb.get("pooled_prompt_embeds", [1, pooled]);
                    }
                    // SD 2.x's: the one encoder's last_hidden_state.
                    Family::Sd21 => {
                        vb.get("prompt_embeds", [1, len, cfg.text[0].hidden_size]);
                    }
                }
                Ok(())
            }
        }
    }

    /// Every key and shape this component holds in a bundle (nothing is read).
    pub fn wanted(
        self,
        cfg: &Configs,
        device: &Device,
    ) -> Result<std::collections::BTreeMap<String, Vec<usize>>> {
        wanted_shapes(device, |vb| self.declare(&vb, cfg))
    }

    /// Checks `src` (a bundle's key space) against this component's network: every missing,
    /// unexpected or mis-shaped tensor in one error.
    pub fn check(self, src: &dyn TensorSource, cfg: &Configs, device: &Device) -> Result<()> {
        check(src, &self.prefix(), device, |vb| self.declare(&vb, cfg))
    }
}
