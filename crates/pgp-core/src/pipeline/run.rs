//! The pipeline as one orchestrator (pipeline.md steps 1–9): pre-upscale, LQ features, prompt,
//! start latent, tiled Euler sampling with Gaussian blending, decode, colour fix — as a [`Run`]
//! that does one unit of GPU work per [`Run::next`] and awaits it, so a caller sees progress
//! as work finishes, can stop between units, and a browser's event loop keeps turning.

use burn::tensor::{Device, Tensor, TensorData};

use super::color_fix::ColorFix;
use super::image::{
    RgbImage, crop, from_signed, from_unit, pad_to_multiple, resize_lanczos, to_signed_tensor,
    to_unit_tensor,
};
use super::one_step::OneStep;
use super::tiling::{Tile, TileLimits, gaussian_weights, largest_tile_px, tile_grid};
use crate::device::{read_back, settle};
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::models::faithdiff::FaithDiffUNet;
use crate::models::probe::{CallInfo, Probe, reborrow};
use crate::models::unet_2d::UNetConditioning;
use crate::models::vae::{AutoencoderKL, DecodeRun, DenoiseEncoder};
use crate::rng::SplitMix64;
use crate::schedulers::euler::{EulerConfig, EulerSchedule, input_scale, schedule};
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

impl Start {
    /// Parses `lr` or `noise`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "lr" => Ok(Self::Lr),
            "noise" => Ok(Self::Noise),
            other => Err(Error::input(format!(
                "unknown start `{other}` (known: lr, noise)"
            ))),
        }
    }
}

/// The smallest tile a UNet tile that ran out of device memory is retried at.
pub const MIN_RETRY_TILE_PX: usize = 64;

/// The latent tile size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSize {
    /// The largest tile whose buffers fit the device's limit and, with
    /// [`Options::max_memory`], whose activations fit beside the weights (the whole image
    /// when it fits).
    Auto,
    /// Tiles of this many output pixels (a positive multiple of 8); tiles overlap by half.
    Pixels(usize),
}

/// What a caller chooses for one run. `Default` is FaithDiff's recipe with automatic tiles (the
/// largest that fit the device; the CLI's default is FaithDiff's 1024); a one-step (S1) bundle's
/// [`crate::Upscaler::default_options`] turn `one_step` on.
#[derive(Clone, Debug)]
pub struct Options {
    /// Upscaling factor.
    pub scale: usize,
    /// Euler steps.
    pub steps: usize,
    /// Classifier-free guidance scale (used only when the prompt is not empty).
    pub guidance: f64,
    /// The prompt (`""` by default: the bundle's cached empty-prompt embeddings).
    pub prompt: String,
    /// Latent tile size.
    pub tile: TileSize,
    /// Colour correction.
    pub color_fix: ColorFix,
    /// Start point.
    pub start: Start,
    /// Seed of the host-side noise generator ([`crate::rng`]): the same seed gives the same
    /// noise on every device.
    pub seed: u64,
    /// The one-step mode: one UNet call on the encoded input (`z = scaling·VAE.sample`), no
    /// CFG, the output latent by the model's recipe ([`Models::one_step`]; by default the last
    /// training timestep and `x0 = (z − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ)`). For S1 checkpoints (LoRA
    /// merged); `steps`, `start` and `guidance` are ignored.
    pub one_step: bool,
    /// Explicit noise instead of the seeded generator (to reproduce a reference run).
    pub noise: Option<NoiseData>,
    /// A device memory budget in bytes for [`TileSize::Auto`]: the weights plus one tile's
    /// estimated activations stay within it. `None`: only the buffer limit counts (wgpu does
    /// not report a device's memory). Whatever the tile, one that runs out of device memory is
    /// retried at half the size, down to [`MIN_RETRY_TILE_PX`].
    pub max_memory: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            scale: 2,
            steps: 20,
            guidance: 5.0,
            prompt: String::new(),
            tile: TileSize::Auto,
            color_fix: ColorFix::Adain,
            start: Start::Lr,
            seed: 0,
            one_step: false,
            noise: None,
            max_memory: None,
        }
    }
}

/// Largest classifier-free guidance scale accepted (SDXL front ends offer up to 20–30).
pub const MAX_GUIDANCE: f64 = 30.0;

impl Options {
    /// UNet steps the run takes: one in the one-step mode, else `steps`.
    pub fn sampling_steps(&self) -> usize {
        if self.one_step { 1 } else { self.steps }
    }

    /// Units of work from the start of sampling step `step` to the end: the UNet tiles of the
    /// remaining steps, the VAE decode tiles of an `lh × lw` latent, the colour fix.
    fn units_from(
        &self,
        step: usize,
        tiles: usize,
        vae: &AutoencoderKL,
        lh: usize,
        lw: usize,
    ) -> usize {
        let fix = usize::from(self.color_fix != ColorFix::None);
        (self.sampling_steps() - step) * tiles + vae.decode_tiles(lh, lw) + fix
    }

    /// Checks the values that do not depend on the image.
    pub fn validate(&self) -> Result<()> {
        if self.scale == 0 || self.scale > 16 {
            return Err(Error::input(format!(
                "the scale must be 1 to 16, not {}",
                self.scale
            )));
        }
        if self.steps == 0 || self.steps > 1000 {
            return Err(Error::input(format!(
                "steps must be 1 to 1000, not {}",
                self.steps
            )));
        }
        if !(0.0..=MAX_GUIDANCE).contains(&self.guidance) {
            return Err(Error::input(format!(
                "the guidance scale must be 0 to {MAX_GUIDANCE}, not {} (beyond that the \
                 guided prediction is dominated by the prompt difference and the image saturates)",
                self.guidance
            )));
        }
        if let TileSize::Pixels(t) = self.tile
            && (t == 0 || !t.is_multiple_of(8))
        {
            return Err(Error::input(format!(
                "the tile size must be a positive multiple of 8, not {t}"
            )));
        }
        Ok(())
    }
}

/// Explicit noise for a reproducible run, both `[1, 4, H/8, W/8]` of the padded image, NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseData {
    /// ε of the start latent.
    pub latent: Vec<f32>,
    /// ε of the VAE posterior sample.
    pub vae: Vec<f32>,
}

impl NoiseData {
    /// The seeded generator's noise for a `[1, 4, lh, lw]` latent ([`crate::rng`]).
    pub fn seeded(seed: u64, lh: usize, lw: usize) -> Self {
        let mut rng = SplitMix64::new(seed);
        let latent = rng.normals(4 * lh * lw);
        let vae = rng.normals(4 * lh * lw);
        Self { latent, vae }
    }
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
    /// Embeddings of prompts encoded ahead (`Upscaler::prepare_prompt`), by prompt.
    pub prompts: Vec<(String, (Tensor<3>, Tensor<2>))>,
    /// The scheduler config.
    pub scheduler: EulerConfig,
    /// The one-step recipe (the bundle's, else [`OneStep::standard`]), used when
    /// [`Options::one_step`] is on.
    pub one_step: OneStep,
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

/// One finished unit of GPU work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unit {
    /// FaithDiff's LQ features of the pre-upscaled image.
    LqEncode,
    /// The prompt's embeddings (instant for the empty prompt: they are cached).
    Prompt,
    /// The start latent (VAE encode and noise).
    StartLatent,
    /// One UNet tile of one sampling step (1-based).
    Denoise {
        step: usize,
        steps: usize,
        tile: usize,
        tiles: usize,
    },
    /// A UNet tile ran out of device memory: the step restarts with tiles of `tile_px`
    /// (half the size), and the run's total grows accordingly.
    Retry {
        tile_px: usize,
        reason: &'static str,
    },
    /// One VAE decode tile (1-based).
    Decode { tile: usize, tiles: usize },
    /// The colour correction.
    ColorFix,
}

impl std::fmt::Display for Unit {
    /// What a progress line shows: `LQ encode`, `step 2/20, tile 3/15`, `decode tile 1/4`, ….
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unit::LqEncode => write!(f, "LQ encode"),
            Unit::Prompt => write!(f, "prompt"),
            Unit::StartLatent => write!(f, "start latent"),
            Unit::Denoise {
                step,
                steps,
                tile,
                tiles,
            } => write!(f, "step {step}/{steps}, tile {tile}/{tiles}"),
            Unit::Retry { tile_px, reason } => {
                write!(f, "{reason}: retrying with {tile_px}-pixel tiles")
            }
            Unit::Decode { tile, tiles } => write!(f, "decode tile {tile}/{tiles}"),
            Unit::ColorFix => write!(f, "colour fix"),
        }
    }
}

/// Progress: the unit just finished and where the run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// What finished.
    pub unit: Unit,
    /// Units finished so far, this one included.
    pub done: u32,
    /// Units in the whole run.
    pub total: u32,
}

/// Intermediate results, kept only when asked for ([`Run::record_stages`]).
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

/// The result: the image in 8 bits and, when asked for, its float values (planar `[3, H, W]`
/// in `[0, 1]`, before the final rounding to 8 bits).
pub struct Output {
    /// 8-bit RGB, `scale ×` the input.
    pub image: RgbImage,
    /// Float values for deeper outputs.
    pub unit: Option<Vec<f32>>,
    /// The same values on the device, `[1, 3, H, W]`, when asked for ([`Run::keep_tensor`]).
    pub tensor: Option<Tensor<4>>,
}

enum Phase<'a> {
    Lq,
    Prompt,
    Start,
    Denoise {
        step: usize,
        tile: usize,
        acc: Tensor<4>,
    },
    Decode(DecodeRun<'a>),
    ColorFix(RgbImage),
    Done,
}

/// What every family's run keeps beside its phases: the units done and in all, the recorded
/// stages, the result and whether it also stays on the device.
#[derive(Default)]
pub struct Ledger {
    pub(crate) keep_tensor: bool,
    pub(crate) done: u32,
    pub(crate) total: u32,
    pub(crate) stages: Option<Stages>,
    pub(crate) output: Option<Output>,
}

impl Ledger {
    /// A ledger for a run of `total` units.
    pub(crate) fn new(total: usize) -> Result<Self> {
        Ok(Self {
            total: u32::try_from(total).map_err(|_| Error::input("too many tiles"))?,
            ..Self::default()
        })
    }

    /// Keeps the result on the device too ([`Output::tensor`]).
    pub fn keep_tensor(&mut self) {
        self.keep_tensor = true;
    }

    /// Keeps the intermediate tensors ([`Stages`]) from now on.
    pub fn record_stages(&mut self) {
        self.stages.get_or_insert_with(Stages::default);
    }

    /// The intermediate tensors, if recorded.
    pub fn stages(&self) -> Option<&Stages> {
        self.stages.as_ref()
    }

    /// Units in the whole run.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The result, once the run is over (taken once).
    pub fn take_output(&mut self) -> Option<Output> {
        self.output.take()
    }

    /// Records into the stages, when they are recorded.
    pub(crate) fn stage(&mut self, f: impl FnOnce(&mut Stages)) {
        if let Some(s) = self.stages.as_mut() {
            f(s);
        }
    }

    /// Counts a finished unit.
    pub(crate) fn finished(&mut self, unit: Unit) -> Event {
        self.done += 1;
        Event {
            unit,
            done: self.done,
            total: self.total,
        }
    }
}

/// One upscale in progress.
pub struct Run<'a> {
    models: &'a Models,
    device: Device,
    options: Options,
    keep_unit: bool,
    /// The Lanczos-upscaled input (the colour fix's reference) and its padded copy's size.
    up: RgbImage,
    padded: (usize, usize),
    x: Option<Tensor<4>>,
    lq: Option<Tensor<4>>,
    cond: Option<(Tensor<3>, Tensor<2>)>,
    latent: Option<Tensor<4>>,
    sched: EulerSchedule,
    tile_px: usize,
    grid: Vec<Tile>,
    weights: Vec<Tensor<4>>,
    weight_sum: Option<Tensor<4>>,
    phase: Phase<'a>,
    ledger: Ledger,
    /// Testing: UNet tiles larger than this fail as an out-of-memory device would.
    fail_tiles_over: Option<usize>,
}

impl<'a> Run<'a> {
    /// Prepares a run on the host (pre-upscale, padding, tile grid); no GPU work is issued
    /// until [`Run::next`]. `limits` decide [`TileSize::Auto`];
    /// `keep_unit` keeps the final float values (for 16-bit outputs).
    pub fn new(
        models: &'a Models,
        device: &Device,
        image: &RgbImage,
        options: &Options,
        limits: TileLimits,
        keep_unit: bool,
    ) -> Result<Self> {
        options.validate()?;
        let (w, h) = (
            image.width.checked_mul(options.scale),
            image.height.checked_mul(options.scale),
        );
        let (Some(w), Some(h)) = (w, h) else {
            return Err(Error::input("the output size overflows"));
        };
        let cached = models.prompts.iter().any(|(p, _)| *p == options.prompt);
        if !options.one_step && !options.prompt.is_empty() && models.text.is_none() && !cached {
            return Err(Error::input(
                "a prompt needs the text encoders, which this upscaler has not loaded",
            ));
        }
        // 1. Pre-upscale (the model's input and the colour fix's reference).
        let up = resize_lanczos(image, w, h)?;
        let (wp, hp) = (w.div_ceil(8) * 8, h.div_ceil(8) * 8);
        let (lh, lw) = (hp / 8, wp / 8);
        if let Some(n) = &options.noise
            && (n.latent.len() != 4 * lh * lw || n.vae.len() != 4 * lh * lw)
        {
            return Err(Error::input(format!(
                "explicit noise has {} and {} values; the padded image needs [1, 4, {lh}, {lw}] \
                 ({} each)",
                n.latent.len(),
                n.vae.len(),
                4 * lh * lw
            )));
        }
        let sched = schedule(&models.scheduler, options.steps)?;
        let tile_px = match options.tile {
            TileSize::Auto => {
                let layout = models.unet.unet.layout();
                largest_tile_px(layout, &limits, hp.max(wp)).ok_or_else(|| {
                    Error::input(format!(
                        "the weights ({} MiB) and the smallest tile do not fit in the memory \
                         budget of {} MiB",
                        limits.weights_bytes >> 20,
                        limits.budget_bytes.unwrap_or(0) >> 20
                    ))
                })?
            }
            TileSize::Pixels(t) => t,
        };
        let tile = tile_px / 8;
        let grid = tile_grid(lh, lw, tile, (tile / 2).max(1));
        let total = 3 + options.units_from(0, grid.len(), &models.vae, lh, lw);
        Ok(Self {
            models,
            device: device.clone(),
            options: options.clone(),
            keep_unit,
            up,
            padded: (wp, hp),
            x: None,
            lq: None,
            cond: None,
            latent: None,
            sched,
            tile_px,
            grid,
            weights: Vec::new(),
            weight_sum: None,
            phase: Phase::Lq,
            ledger: Ledger::new(total)?,
            fail_tiles_over: None,
        })
    }

    /// Testing the out-of-memory path: from now on, UNet tiles larger than `px` fail the way a
    /// device that cannot allocate them does ([`Error::DeviceMemory`]).
    #[doc(hidden)]
    pub fn fail_tiles_over(&mut self, px: usize) {
        self.fail_tiles_over = Some(px);
    }

    /// Its counts, recorded stages and result.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// [`Self::ledger`], to ask for stages or a device result, or to take the result.
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Runs the next unit of work and waits until the device has finished it; `None` when the
    /// run is over (the output is then ready).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.next_probed(None).await
    }

    /// [`Run::next`], showing a UNet tile's features to `probe` ([`Probe::begin`] before each
    /// UNet call, then the call's features).
    pub async fn next_probed(&mut self, probe: Option<&mut dyn Probe>) -> Option<Result<Event>> {
        if matches!(self.phase, Phase::Done) {
            return None;
        }
        let r = self.advance(probe).await;
        if r.is_err() {
            self.phase = Phase::Done;
        }
        Some(r.map(|unit| self.ledger.finished(unit)))
    }

    async fn advance(&mut self, probe: Option<&mut dyn Probe>) -> Result<Unit> {
        let device = self.device.clone();
        let models = self.models;
        let (wp, hp) = self.padded;
        let (lh, lw) = (hp / 8, wp / 8);
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Lq => {
                let x = to_signed_tensor(&pad_to_multiple(&self.up, 8), &device);
                let lq = models.denoise_encoder.forward(x.clone())?;
                settle(&lq).await?;
                self.ledger.stage(|s| s.lq_features = Some(lq.clone()));
                (self.x, self.lq) = (Some(x), Some(lq));
                self.phase = Phase::Prompt;
                Ok(Unit::LqEncode)
            }
            Phase::Prompt => {
                // The one-step recipe runs without CFG: a prompt is not used.
                let prompt = &self.options.prompt;
                if !prompt.is_empty() && !self.options.one_step {
                    let cached = models.prompts.iter().find(|(p, _)| p == prompt);
                    self.cond = match (cached, &models.text) {
                        (Some((_, cond)), _) => Some(cond.clone()),
                        (None, Some(text)) => {
                            let cond = text.encode(prompt)?;
                            settle(&cond.1).await?;
                            Some(cond)
                        }
                        (None, None) => unreachable!("checked by Run::new"),
                    };
                }
                self.phase = Phase::Start;
                Ok(Unit::Prompt)
            }
            Phase::Start => {
                let noise = match self.options.noise.take() {
                    Some(n) => n,
                    None => NoiseData::seeded(self.options.seed, lh, lw),
                };
                let t = |v: Vec<f32>| {
                    Tensor::<4>::from_data(TensorData::new(v, [1, 4, lh, lw]), &device)
                };
                let (eps, eps_vae) = (t(noise.latent), t(noise.vae));
                let x = self.x.take().expect("the LQ unit ran");
                let scaling = models.vae.scaling_factor;
                let latent = match self.options.start {
                    _ if self.options.one_step => models.vae.encode_sample(x, eps_vae)? * scaling,
                    Start::Lr => {
                        let a = f64::from(
                            models.scheduler.alphas_cumprod()
                                [models.scheduler.num_train_timesteps - 1],
                        );
                        let z = models.vae.encode_sample(x, eps_vae)? * scaling;
                        z * a.sqrt() + eps * ((1.0 - a).sqrt() * self.sched.init_noise_sigma)
                    }
                    Start::Noise => eps * self.sched.init_noise_sigma,
                };
                settle(&latent).await?;
                self.ledger.stage(|s| s.start_latent = Some(latent.clone()));
                self.latent = Some(latent);
                self.prepare_tiles();
                self.phase = self.denoise_phase(0);
                Ok(Unit::StartLatent)
            }
            Phase::Denoise { step, tile, acc } => {
                if self.fail_tiles_over.is_some_and(|px| self.tile_px > px) {
                    let e = Error::DeviceMemory(format!(
                        "a {}-pixel tile does not fit (simulated)",
                        self.tile_px
                    ));
                    return self.shrink_tiles(step, e);
                }
                let acc = self.denoise_tile(step, tile, acc, probe)?;
                if let Err(e) = settle(&acc).await {
                    drop(acc);
                    return self.shrink_tiles(step, e);
                }
                let tiles = self.grid.len();
                let steps = self.options.sampling_steps();
                if tile + 1 < tiles {
                    self.phase = Phase::Denoise {
                        step,
                        tile: tile + 1,
                        acc,
                    };
                } else {
                    self.finish_step(step, acc);
                    self.phase = if step + 1 < steps {
                        self.denoise_phase(step + 1)
                    } else {
                        let latent = self.latent.clone().expect("sampling ran");
                        self.ledger.stage(|s| s.latent_final = Some(latent.clone()));
                        // NaN and ∞ survive a sum: never decode them into a flat image.
                        let (sum, _) = read_back(latent.clone().sum()).await?;
                        if !sum[0].is_finite() {
                            return Err(Error::input(
                                "sampling produced non-finite values (NaN or infinity): the \
                                 weights or the settings are broken, or f16 overflowed (try \
                                 precision f32)",
                            ));
                        }
                        Phase::Decode(
                            models
                                .vae
                                .decode_steps(latent / models.vae.scaling_factor)?,
                        )
                    };
                }
                Ok(Unit::Denoise {
                    step: step + 1,
                    steps,
                    tile: tile + 1,
                    tiles,
                })
            }
            Phase::Decode(mut run) => {
                let tile = run.step().expect("a decode tile is left");
                settle(&tile).await?;
                let unit = Unit::Decode {
                    tile: run.done(),
                    tiles: run.tiles(),
                };
                if run.done() < run.tiles() {
                    self.phase = Phase::Decode(run);
                    return Ok(unit);
                }
                let decoded = run.finish();
                self.ledger.stage(|s| s.decoded = Some(decoded.clone()));
                let (w, h) = (self.up.width, self.up.height);
                let tensor = (self.ledger.keep_tensor && self.options.color_fix == ColorFix::None)
                    .then(|| {
                        decoded
                            .clone()
                            .slice([0..1, 0..3, 0..h, 0..w])
                            .clamp(-1.0, 1.0)
                            / 2.0
                            + 0.5
                    });
                let (values, _) = read_back(decoded).await?;
                let raw = crop(&from_signed(&values, wp, hp)?, w, h);
                self.ledger.stage(|s| s.image_raw = Some(raw.clone()));
                let unit_values = (self.keep_unit && self.options.color_fix == ColorFix::None)
                    .then(|| {
                        let n = wp * hp;
                        (0..3)
                            .flat_map(|c| {
                                let v = &values[c * n..(c + 1) * n];
                                (0..h).flat_map(move |y| {
                                    v[y * wp..y * wp + w]
                                        .iter()
                                        .map(|x| x.clamp(-1.0, 1.0) / 2.0 + 0.5)
                                })
                            })
                            .collect()
                    });
                if self.options.color_fix == ColorFix::None {
                    self.ledger.output = Some(Output {
                        image: raw,
                        unit: unit_values,
                        tensor,
                    });
                } else {
                    self.phase = Phase::ColorFix(raw);
                }
                Ok(unit)
            }
            Phase::ColorFix(raw) => {
                let fixed = self.options.color_fix.apply(
                    to_unit_tensor(&raw, &device),
                    to_unit_tensor(&self.up, &device),
                )?;
                let tensor = self.ledger.keep_tensor.then(|| fixed.clone());
                let (values, _) = read_back(fixed).await?;
                let image = from_unit(&values, self.up.width, self.up.height)?;
                self.ledger.output = Some(Output {
                    image,
                    unit: self.keep_unit.then_some(values),
                    tensor,
                });
                Ok(Unit::ColorFix)
            }
            Phase::Done => unreachable!("checked by next"),
        }
    }

    /// After a UNet tile failed for want of device memory: tiles of half the size, and the step
    /// starts over (its accumulator went with the failure; the latent is untouched). Other
    /// errors, and a failure at the smallest tile, end the run.
    fn shrink_tiles(&mut self, step: usize, err: Error) -> Result<Unit> {
        let Error::DeviceMemory(reason) = err else {
            return Err(err);
        };
        let next = self.tile_px / 2 / 8 * 8;
        if next < MIN_RETRY_TILE_PX {
            return Err(Error::DeviceMemory(format!(
                "{reason} (even with {}-pixel tiles)",
                self.tile_px
            )));
        }
        let (wp, hp) = self.padded;
        let tile = next / 8;
        self.tile_px = next;
        self.grid = tile_grid(hp / 8, wp / 8, tile, (tile / 2).max(1));
        self.prepare_tiles();
        let tiles = self.grid.len();
        let remaining = self
            .options
            .units_from(step, tiles, &self.models.vae, hp / 8, wp / 8);
        self.ledger.total = u32::try_from(self.ledger.done as usize + 1 + remaining)
            .map_err(|_| Error::input("too many tiles"))?;
        self.phase = self.denoise_phase(step);
        Ok(Unit::Retry {
            tile_px: next,
            reason: "out of device memory",
        })
    }

    /// The Gaussian weights of every tile and their sum over the latent.
    fn prepare_tiles(&mut self) {
        let device = &self.device;
        let (wp, hp) = self.padded;
        let mut weight_sum = Tensor::<4>::zeros([1, 1, hp / 8, wp / 8], device);
        self.weights = self
            .grid
            .iter()
            .map(|t| {
                let w = gaussian_weights(t.height, t.width);
                Tensor::from_data(TensorData::new(w, [1, 1, t.height, t.width]), device)
            })
            .collect();
        for (t, w) in self.grid.iter().zip(&self.weights) {
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
        self.weight_sum = Some(weight_sum);
    }

    fn denoise_phase(&self, step: usize) -> Phase<'a> {
        let (wp, hp) = self.padded;
        Phase::Denoise {
            step,
            tile: 0,
            acc: Tensor::zeros([1, 4, hp / 8, wp / 8], &self.device),
        }
    }

    /// (input scale, timestep) of a step.
    fn step_inputs(&self, step: usize) -> (f64, f64) {
        if self.options.one_step {
            (1.0, f64::from(self.models.one_step.timestep))
        } else {
            (
                input_scale(self.sched.sigmas[step]),
                self.sched.timesteps[step],
            )
        }
    }

    /// ε̂ of one tile through the UNet (with CFG against the empty prompt when there is a
    /// prompt), weighted into `acc`.
    fn denoise_tile(
        &self,
        step: usize,
        k: usize,
        acc: Tensor<4>,
        mut probe: Option<&mut dyn Probe>,
    ) -> Result<Tensor<4>> {
        let models = self.models;
        let device = &self.device;
        let (wp, hp) = self.padded;
        let (in_scale, t_value) = self.step_inputs(step);
        let (t, w) = (self.grid[k], &self.weights[k]);
        let latent = self.latent.as_ref().expect("the start latent exists");
        let lq = self.lq.as_ref().expect("the LQ features exist");
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
        let timestep = Tensor::<1>::from_data(TensorData::new(vec![t_value as f32], [1]), device);
        let time_ids = {
            let v = [hp, wp, t.top, t.left, self.tile_px, self.tile_px].map(|x| x as f32);
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, 6]), device)
        };
        let mut call = |text: &Tensor<3>, pooled: &Tensor<2>, branch: usize| {
            if let Some(p) = reborrow(&mut probe) {
                p.begin(CallInfo {
                    step,
                    steps: self.options.sampling_steps(),
                    tile: k,
                    branch,
                });
            }
            crate::profile::scope(
                || crate::profile::UNET_CALL.into(),
                || {
                    models.unet.forward_probed(
                        x_in.clone(),
                        &UNetConditioning {
                            timestep: timestep.clone(),
                            encoder_hidden_states: text.clone(),
                            text_embeds: Some(pooled.clone()),
                            time_ids: Some(time_ids.clone()),
                        },
                        lq_t.clone(),
                        reborrow(&mut probe),
                    )
                },
            )
        };
        let (uncond, uncond_pooled) = &models.empty_prompt;
        let eps_u = call(uncond, uncond_pooled, 0)?;
        let eps = match &self.cond {
            Some((c, p)) => eps_u.clone() + (call(c, p, 1)? - eps_u) * self.options.guidance,
            None => eps_u,
        };
        Ok(acc
            .clone()
            .slice_assign(r.clone(), acc.slice(r) + eps * w.clone()))
    }

    /// The Euler update (or S1's x0) from the blended ε̂ of a whole step.
    fn finish_step(&mut self, step: usize, acc: Tensor<4>) {
        let eps = acc / self.weight_sum.clone().expect("tiles prepared");
        let latent = self.latent.take().expect("the start latent exists");
        let latent = if self.options.one_step {
            let models = self.models;
            models.one_step.x0(&models.scheduler, latent, eps)
        } else {
            let (sigma, sigma_next) = (self.sched.sigmas[step], self.sched.sigmas[step + 1]);
            latent + eps * (sigma_next - sigma)
        };
        if step == 0 {
            self.ledger
                .stage(|s| s.latent_step_1 = Some(latent.clone()));
        }
        self.latent = Some(latent);
    }
}
