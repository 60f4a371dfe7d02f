//! The pipeline as one orchestrator (pipeline.md steps 1–9): pre-upscale, LQ features, prompt,
//! start latent, tiled Euler sampling with Gaussian blending, decode, colour fix.

use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::color_fix::ColorFix;
use super::image::{
    RgbImage, crop, from_signed, from_unit, pad_to_multiple, resize_lanczos, to_signed_tensor,
    to_unit_tensor,
};
use super::tiling::{gaussian_weights, largest_tile_px, tile_grid};
use crate::device::read_back;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::models::faithdiff::FaithDiffUNet;
use crate::models::unet_2d::UNetConditioning;
use crate::models::vae::{AutoencoderKL, DenoiseEncoder};
use crate::schedulers::euler::{EulerConfig, input_scale, schedule};
use crate::tokenizer::ClipTokenizer;

/// Where sampling starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// `sqrt(ᾱ_999)·z_lr + sqrt(1 − ᾱ_999)·σ_init·ε` from the encoded input (FaithDiff's default).
    #[default]
    Lr,
    /// Pure noise `σ_init·ε`.
    Noise,
}

/// What a user chooses for one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Upscaling factor.
    pub scale: usize,
    /// Euler steps.
    pub steps: usize,
    /// Classifier-free guidance scale (used only when the prompt is not empty).
    pub guidance: f64,
    /// The prompt (`""` by default).
    pub prompt: String,
    /// Latent tile size in output pixels (a multiple of 8; tiles overlap by half); 0 = the
    /// largest whose buffers stay within `buffer_limit` (the whole image when it fits).
    pub tile: usize,
    /// The largest buffer the device allows (WebGPU: `min(maxBufferSize,
    /// maxStorageBufferBindingSize)`), for `tile == 0`; `u64::MAX` where there is no limit.
    pub buffer_limit: u64,
    /// Colour correction.
    pub color_fix: ColorFix,
    /// Start point.
    pub start: Start,
    /// RNG seed, used when no explicit noise is given.
    pub seed: u64,
    /// The one-step S1 mode: one UNet call at the last training timestep on the encoded input
    /// (`z = 0.13025·VAE.sample`), no CFG, `x0 = (z − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ)`. For S1
    /// checkpoints (LoRA merged); `steps`, `start` and `guidance` are ignored.
    pub one_step: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            scale: 2,
            steps: 20,
            guidance: 5.0,
            prompt: String::new(),
            tile: 1024,
            buffer_limit: u64::MAX,
            color_fix: ColorFix::Adain,
            start: Start::Lr,
            seed: 0,
            one_step: false,
        }
    }
}

/// Explicit noise for a reproducible run: both `[1, 4, H/8, W/8]` for the padded image.
#[derive(Clone, Debug)]
pub struct Noise {
    /// ε of the start latent.
    pub latent: Tensor<4>,
    /// ε of the VAE posterior sample (`--start lr`).
    pub vae: Tensor<4>,
}

/// The networks a run needs.
pub struct Models {
    /// FaithDiff's UNet.
    pub unet: FaithDiffUNet,
    /// FaithDiff's LQ encoder.
    pub denoise_encoder: DenoiseEncoder,
    /// The VAE.
    pub vae: AutoencoderKL,
    /// The empty prompt's embeddings `[1, 77, D]`, `[1, P]`.
    pub empty_prompt: (Tensor<3>, Tensor<2>),
    /// Text encoders and tokenizers, needed only for a non-empty prompt.
    pub text: Option<TextEncoders>,
    /// The scheduler config.
    pub scheduler: EulerConfig,
}

/// SDXL's two text encoders with their tokenizers.
pub struct TextEncoders {
    /// CLIP ViT-L and its tokenizer.
    pub first: (ClipTextModel, ClipTokenizer),
    /// OpenCLIP bigG (with projection) and its tokenizer.
    pub second: (ClipTextModel, ClipTokenizer),
}

impl TextEncoders {
    /// `(prompt_embeds [1, 77, D1 + D2], pooled [1, P])`.
    pub fn encode(&self, prompt: &str) -> Result<(Tensor<3>, Tensor<2>)> {
        let ids =
            |t: &ClipTokenizer| vec![t.encode(prompt).ids.iter().map(|&i| i64::from(i)).collect()];
        let a = self.first.0.forward(&ids(&self.first.1))?;
        let b = self.second.0.forward(&ids(&self.second.1))?;
        Ok((Tensor::cat(vec![a.penultimate, b.penultimate], 2), b.pooled))
    }
}

/// Progress of a run, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Step being run (1-based).
    pub step: usize,
    /// Of how many.
    pub steps: usize,
    /// Tile just finished (1-based).
    pub tile: usize,
    /// Of how many per step.
    pub tiles: usize,
}

/// Intermediate results, for parity tests and debugging.
#[derive(Default)]
pub struct Stages {
    /// LQ features of the padded image.
    pub lq_features: Option<Tensor<4>>,
    /// The start latent.
    pub start_latent: Option<Tensor<4>>,
    /// The latent after the first step.
    pub latent_step_1: Option<Tensor<4>>,
    /// The final latent.
    pub latent_final: Option<Tensor<4>>,
    /// The decoded padded image in `[-1, 1]`.
    pub decoded: Option<Tensor<4>>,
    /// The output before colour correction.
    pub image_raw: Option<RgbImage>,
}

/// Upscales one RGB image.
pub async fn upscale(
    models: &Models,
    image: &RgbImage,
    settings: &Settings,
    noise: Option<Noise>,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
    stages: &mut Stages,
) -> Result<RgbImage> {
    if settings.scale == 0 || settings.steps == 0 || !settings.tile.is_multiple_of(8) {
        return Err(Error::config(
            "scale and steps must be positive and the tile size a multiple of 8",
        ));
    }
    // 1. Pre-upscale, pad, map to [-1, 1].
    let up = resize_lanczos(
        image,
        image.width * settings.scale,
        image.height * settings.scale,
    )?;
    let padded = pad_to_multiple(&up, 8);
    let (hp, wp) = (padded.height, padded.width);
    let (lh, lw) = (hp / 8, wp / 8);
    let x = to_signed_tensor(&padded, device);
    // 2. Prompt: the cached empty prompt, or the text encoders plus CFG against it.
    let (uncond, uncond_pooled) = models.empty_prompt.clone();
    let cond = if settings.prompt.is_empty() {
        None
    } else {
        let text = models.text.as_ref().ok_or_else(|| {
            Error::config("a non-empty prompt needs the text encoders, which were not loaded")
        })?;
        Some(text.encode(&settings.prompt)?)
    };
    // 3. LQ features.
    let lq = models.denoise_encoder.forward(x.clone())?;
    stages.lq_features = Some(lq.clone());
    // 4–5. Schedule and start latent.
    let sched = schedule(&models.scheduler, settings.steps)?;
    let noise = match noise {
        Some(n) => {
            for t in [&n.latent, &n.vae] {
                if t.dims() != [1, 4, lh, lw] {
                    return Err(Error::input(format!(
                        "noise is {:?}, the padded image needs [1, 4, {lh}, {lw}]",
                        t.dims()
                    )));
                }
            }
            n
        }
        None => {
            device.seed(settings.seed);
            let normal = Distribution::Normal(0.0, 1.0);
            Noise {
                latent: Tensor::random([1, 4, lh, lw], normal, device),
                vae: Tensor::random([1, 4, lh, lw], normal, device),
            }
        }
    };
    let init = sched.init_noise_sigma;
    let scaling = models.vae.scaling_factor;
    let mut latent = match settings.start {
        _ if settings.one_step => models.vae.encode_sample(x, noise.vae)? * scaling,
        Start::Lr => {
            let a = f64::from(
                models.scheduler.alphas_cumprod()[models.scheduler.num_train_timesteps - 1],
            );
            let z = models.vae.encode_sample(x, noise.vae)? * scaling;
            z * a.sqrt() + noise.latent * ((1.0 - a).sqrt() * init)
        }
        Start::Noise => noise.latent * init,
    };
    stages.start_latent = Some(latent.clone());
    // 6–7. Tiled Euler sampling.
    let tile_px = if settings.tile == 0 {
        largest_tile_px(models.unet.unet.layout(), settings.buffer_limit, hp.max(wp))
    } else {
        settings.tile
    };
    let tile = tile_px / 8;
    let grid = tile_grid(lh, lw, tile, (tile / 2).max(1));
    let mut weight_sum = Tensor::<4>::zeros([1, 1, lh, lw], device);
    let weights: Vec<Tensor<4>> = grid
        .iter()
        .map(|t| {
            let w = gaussian_weights(t.height, t.width);
            Tensor::from_data(TensorData::new(w, [1, 1, t.height, t.width]), device)
        })
        .collect();
    for (t, w) in grid.iter().zip(&weights) {
        let r = [
            0..1,
            0..1,
            t.top..t.top + t.height,
            t.left..t.left + t.width,
        ];
        weight_sum = weight_sum
            .clone()
            .slice_assign(r.clone(), weight_sum.slice(r) + w.clone());
    }
    let time_ids = |top: usize, left: usize| {
        let v = [hp, wp, top, left, tile_px, tile_px].map(|x| x as f32);
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, 6]), device)
    };
    // ε̂ over the whole latent: every tile through the UNet, blended by the Gaussian weights.
    let blended = |latent: &Tensor<4>,
                   in_scale: f64,
                   t_value: f64,
                   cond: Option<&(Tensor<3>, Tensor<2>)>,
                   step: usize,
                   steps: usize,
                   progress: &mut dyn FnMut(Progress)|
     -> Result<Tensor<4>> {
        let timestep = Tensor::<1>::from_data(TensorData::new(vec![t_value as f32], [1]), device);
        let mut acc = Tensor::<4>::zeros([1, 4, lh, lw], device);
        for (k, (t, w)) in grid.iter().zip(&weights).enumerate() {
            let r = [
                0..1,
                0..4,
                t.top..t.top + t.height,
                t.left..t.left + t.width,
            ];
            let x_in = latent.clone().slice(r.clone()) * in_scale;
            let lq_t = lq
                .clone()
                .slice([0..1, 0..lq.dims()[1], r[2].clone(), r[3].clone()]);
            let call = |text: &Tensor<3>, pooled: &Tensor<2>| {
                models.unet.forward(
                    x_in.clone(),
                    &UNetConditioning {
                        timestep: timestep.clone(),
                        encoder_hidden_states: text.clone(),
                        text_embeds: Some(pooled.clone()),
                        time_ids: Some(time_ids(t.top, t.left)),
                    },
                    lq_t.clone(),
                )
            };
            let eps_u = call(&uncond, &uncond_pooled)?;
            let eps = match cond {
                Some((c, p)) => eps_u.clone() + (call(c, p)? - eps_u) * settings.guidance,
                None => eps_u,
            };
            acc = acc
                .clone()
                .slice_assign(r.clone(), acc.slice(r) + eps * w.clone());
            progress(Progress {
                step,
                steps,
                tile: k + 1,
                tiles: grid.len(),
            });
        }
        Ok(acc / weight_sum.clone())
    };
    if settings.one_step {
        // S1 (pgp-model.md §4): one call at the last training timestep on the encoded input,
        // no CFG, then x0 = (z − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ).
        let last = models.scheduler.num_train_timesteps - 1;
        let a = f64::from(models.scheduler.alphas_cumprod()[last]);
        let eps = blended(&latent, 1.0, last as f64, None, 1, 1, progress)?;
        latent = (latent - eps * (1.0 - a).sqrt()) / a.sqrt();
        stages.latent_step_1 = Some(latent.clone());
    } else {
        for i in 0..settings.steps {
            let (sigma, sigma_next) = (sched.sigmas[i], sched.sigmas[i + 1]);
            let eps = blended(
                &latent,
                input_scale(sigma),
                sched.timesteps[i],
                cond.as_ref(),
                i + 1,
                settings.steps,
                progress,
            )?;
            latent = latent + eps * (sigma_next - sigma);
            if i == 0 {
                stages.latent_step_1 = Some(latent.clone());
            }
        }
    }
    stages.latent_final = Some(latent.clone());
    // 8. Decode, to u8, crop the padding.
    let decoded = models.vae.decode(latent / scaling)?;
    stages.decoded = Some(decoded.clone());
    let (values, _) = read_back(decoded).await?;
    let raw = crop(&from_signed(&values, wp, hp)?, up.width, up.height);
    stages.image_raw = Some(raw.clone());
    // 9. Colour fix against the pre-upscaled input.
    if settings.color_fix == ColorFix::None {
        return Ok(raw);
    }
    let fixed = settings
        .color_fix
        .apply(to_unit_tensor(&raw, device), to_unit_tensor(&up, device))?;
    let (values, _) = read_back(fixed).await?;
    from_unit(&values, up.width, up.height)
}
