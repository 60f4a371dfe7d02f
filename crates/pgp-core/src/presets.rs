//! The architectures users run, as the config dicts their checkpoints ship with: SDXL's UNet
//! (RealVisXL_V4.0 / FaithDiff), the two PGP-DiffSR pruning stages, SDXL's VAE and FaithDiff's
//! extras. Pruned presets differ from SDXL only in transformer depths (pgp-model.md §1).

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::models::faithdiff::FaithDiffConfig;
use crate::models::peam::PeamConfig;
use crate::models::unet_2d::UNet2DConditionConfig;
use crate::models::vae::AutoencoderKLConfig;

/// The SDXL UNet `config.json` (RealVisXL_V4.0, stable-diffusion-xl-base-1.0).
pub fn sdxl_unet_json() -> Value {
    json!({
        "in_channels": 4, "out_channels": 4, "sample_size": 128,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
        "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
        "cross_attention_dim": 2048, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
        "use_linear_projection": true, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": true, "freq_shift": 0
    })
}

/// The SDXL VAE `config.json` (sdxl-vae-fp16-fix).
pub fn sdxl_vae_json() -> Value {
    json!({
        "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
        "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025
    })
}

/// SDXL's text encoders' `config.json`: CLIP ViT-L (`text_encoder`) or, with `second`,
/// OpenCLIP bigG with projection (`text_encoder_2`).
pub fn sdxl_text_encoder_json(second: bool) -> Value {
    let (hidden, layers, heads, act) = if second {
        (1280, 32, 20, "gelu")
    } else {
        (768, 12, 12, "quick_gelu")
    };
    json!({
        "vocab_size": 49408, "hidden_size": hidden, "intermediate_size": 4 * hidden,
        "projection_dim": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "max_position_embeddings": 77, "hidden_act": act, "layer_norm_eps": 1e-5,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1
    })
}

/// SDXL's `scheduler_config.json` (EulerDiscreteScheduler).
pub fn sdxl_scheduler_json() -> Value {
    json!({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1,
        "interpolation_type": "linear", "use_karras_sigmas": false
    })
}

/// An architecture preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// FaithDiff: the full SDXL UNet ("w/o PPA").
    FaithDiff,
    /// PGP-DiffSR after the coarse pruning stage ("w/ Coarse").
    PgpCoarse,
    /// PGP-DiffSR after the fine stage, with PEAM ("Ours").
    Pgp,
}

impl Arch {
    /// Every preset, in the paper's order.
    pub const ALL: [Arch; 3] = [Arch::FaithDiff, Arch::PgpCoarse, Arch::Pgp];

    /// Parses `faithdiff`, `pgp-coarse` or `pgp`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "faithdiff" => Ok(Self::FaithDiff),
            "pgp-coarse" => Ok(Self::PgpCoarse),
            "pgp" => Ok(Self::Pgp),
            other => Err(Error::config(format!(
                "unknown architecture `{other}` (known: faithdiff, pgp-coarse, pgp)"
            ))),
        }
    }

    /// The preset's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::FaithDiff => "faithdiff",
            Self::PgpCoarse => "pgp-coarse",
            Self::Pgp => "pgp",
        }
    }

    /// The UNet config dict.
    pub fn unet_json(self) -> Value {
        let mut cfg = sdxl_unet_json();
        self.apply_depths(&mut cfg).expect("SDXL has three levels");
        cfg
    }

    /// Sets the preset's transformer depths in a three-level SDXL-style UNet config dict
    /// (`faithdiff` leaves it as it is).
    pub fn apply_depths(self, cfg: &mut Value) -> Result<()> {
        let up_l2 = match self {
            Self::FaithDiff => return Ok(()),
            Self::PgpCoarse => 10,
            Self::Pgp => 4,
        };
        let levels = cfg["block_out_channels"].as_array().map_or(0, Vec::len);
        if levels != 3 {
            return Err(Error::config(format!(
                "the `{}` preset prunes SDXL's three-level UNet; this config has {levels} levels \
                 (give the checkpoint's own UNet config)",
                self.name()
            )));
        }
        crate::config::set_fields(
            cfg,
            vec![
                ("transformer_layers_per_block", json!([1, 1, 1])),
                ("mid_transformer_layers_per_block", json!(1)),
                (
                    "reverse_transformer_layers_per_block",
                    json!([[up_l2, up_l2, up_l2], [2, 2, 2], [1, 1, 1]]),
                ),
            ],
        )
    }

    /// The parsed UNet config.
    pub fn unet_config(self) -> UNet2DConditionConfig {
        UNet2DConditionConfig::from_json(&self.unet_json()).expect("presets are valid")
    }

    /// FaithDiff's extras (the real model: 512 LQ channels, 8 heads, 2 blocks, 32 groups).
    pub fn faithdiff_config(self) -> FaithDiffConfig {
        FaithDiffConfig::default()
    }

    /// The PEAM placed in the UNet, if any.
    pub fn peam_config(self) -> Option<PeamConfig> {
        (self == Self::Pgp).then(PeamConfig::default)
    }
}

/// The SDXL VAE config (the `denoise_encoder` shares its encoder layout).
pub fn sdxl_vae_config() -> AutoencoderKLConfig {
    AutoencoderKLConfig::from_json(&sdxl_vae_json()).expect("preset is valid")
}
