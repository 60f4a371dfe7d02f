//! The SD2.1 family's run: one-step models on Stable Diffusion 2.1-base (OSEDiff, PiSA-SR), as
//! OSEDiff's `test_osediff.py` + `OSEDiff_test.forward` run them:
//!
//! 1. the input resized ×scale by Pillow's BICUBIC, then by LANCZOS down to a multiple of 8
//!    (Pillow copies when it already is one);
//! 2. `ToTensor()·2 − 1`, the VAE posterior sample (`mean + std·ε`, ε from the seed or given)
//!    × `scaling_factor`;
//! 3. one UNet call at the recipe's timestep with the prompt's `last_hidden_state` (the cached
//!    empty prompt by default), in OSEDiff's latent tiles when the latent's area is over 96²
//!    (square tiles of `min(96, h, w)` overlapping by 32, the last flush with the edge, summed
//!    column by column as OSEDiff's loops go, Gaussian weights with its `H/2` centre; OSEDiff
//!    adds its f64 weights in f64, here they are f32 — WebGPU has no f64 —, a difference of at
//!    most an ulp per add);
//! 4. the recipe's x0 ([`OneStep`]), decode, clamp, `(x·0.5 + 0.5)·255` truncated to u8 (as
//!    torchvision's `ToPILImage`);
//! 5. the colour fix against the resized input, clamped and truncated again;
//! 6. when step 1 trimmed the size, the result resized back to ×scale by BICUBIC (what
//!    PiSA-SR's script does; OSEDiff's computes it and drops it).
//!
//! OSEDiff's pre-resize of inputs under 128 px and its RAM tagger are not applied: the prompt
//! is the caller's. The VAE works whole up to 1024-px images (OSEDiff's encoder tile) and in
//! diffusers-style tiles beyond, where OSEDiff's own tiled VAE would differ slightly.

use burn::tensor::{Device, Tensor, TensorData};

use crate::device::{read_back, settle};
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::models::unet_2d::{UNet2DConditionModel, UNetConditioning};
use crate::models::vae::{AutoencoderKL, DecodeRun};
use crate::pipeline::color_fix::ColorFix;
use crate::pipeline::image::{Filter, RgbImage, resize, resize_plane};
use crate::pipeline::one_step::OneStep;
use crate::pipeline::run::{Event, Ledger, NoiseData, Options, Output, TileSize, Unit};
use crate::pipeline::tiling::{Tile, TileLimits, gaussian_weights, largest_tile_px, tile_starts};
use crate::schedulers::euler::EulerConfig;
use crate::tokenizer::ClipTokenizer;

/// OSEDiff's latent tile and overlap (`--latent_tiled_size 96 --latent_tiled_overlap 32`).
pub const LATENT_TILE: usize = 96;
/// See [`LATENT_TILE`].
pub const LATENT_OVERLAP: usize = 32;
/// Images up to this size go through the VAE whole (OSEDiff's encoder tile).
pub const VAE_TILE_PX: usize = 1024;

/// The networks an SD2.1 one-step run needs.
pub struct Models {
    /// The plain diffusers UNet (LoRA merged).
    pub unet: UNet2DConditionModel,
    /// The VAE (its encoder's LoRA merged).
    pub vae: AutoencoderKL,
    /// The empty prompt's `last_hidden_state` `[1, 77, D]`.
    pub empty_prompt: Tensor<3>,
    /// The text encoder and its tokenizer, for a prompt.
    pub text: Option<(ClipTextModel, ClipTokenizer)>,
    /// Prompts encoded ahead, by prompt.
    pub prompts: Vec<(String, Tensor<3>)>,
    /// The scheduler config (its ᾱ).
    pub scheduler: EulerConfig,
    /// The one-step recipe.
    pub recipe: OneStep,
}

/// `last_hidden_state` of `prompt` (SD 2.x's conditioning).
pub fn encode(text: &(ClipTextModel, ClipTokenizer), prompt: &str) -> Result<Tensor<3>> {
    let ids = vec![
        text.1
            .encode(prompt)
            .ids
            .iter()
            .map(|&i| i64::from(i))
            .collect(),
    ];
    Ok(text.0.forward(&ids)?.last_hidden_state)
}

/// OSEDiff's latent tiles of an `h × w` latent: the whole latent when its area is at most
/// `tile²`, else tiles of `min(tile, h, w)` overlapping by `overlap` (at most half a tile), the
/// last of each row and column flush with the edge, in OSEDiff's order (column by column).
pub fn latent_tiles(h: usize, w: usize, tile: usize, overlap: usize) -> Vec<Tile> {
    if h * w <= tile * tile {
        return vec![Tile {
            top: 0,
            left: 0,
            height: h,
            width: w,
        }];
    }
    let t = tile.min(h).min(w);
    // OSEDiff's loop never ends when the overlap reaches the tile (a thin, long latent): cap it.
    // Its offsets are `tile_starts`': `i·step` while a tile ends short of the edge, then flush.
    let step = t - overlap.min(t / 2);
    let (lefts, tops) = (tile_starts(w, t, step), tile_starts(h, t, step));
    // Column by column, as OSEDiff's `for row … for col …` (its `row` walks x) sums them.
    let mut out = Vec::new();
    for &left in &lefts {
        for &top in &tops {
            out.push(Tile {
                top,
                left,
                height: t,
                width: t,
            });
        }
    }
    out
}

/// `[1, 3, H, W]` of `ToTensor()` (`u8 / 255`), optionally `·2 − 1`, in that order.
fn tensor(img: &RgbImage, signed: bool, device: &Device) -> Tensor<4> {
    let (w, h) = (img.width, img.height);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let v = f32::from(px[c]) / 255.0;
            planar[c * w * h + i] = if signed { v * 2.0 - 1.0 } else { v };
        }
    }
    Tensor::from_data(TensorData::new(planar, [1, 3, h, w]), device)
}

/// Planar `[3, H, W]` in `[0, 1]` → u8 by `mul(255).byte()` (truncation).
fn to_u8(planar: &[f32], width: usize, height: usize) -> Result<RgbImage> {
    let n = width * height;
    let mut data = vec![0u8; 3 * n];
    for c in 0..3 {
        for i in 0..n {
            data[i * 3 + c] = (planar[c * n + i].clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    RgbImage::new(width, height, data)
}

enum Phase<'a> {
    Encode,
    Prompt,
    Unet {
        tile: usize,
        acc: Tensor<4>,
        wsum: Tensor<4>,
    },
    Decode(DecodeRun<'a>),
    ColorFix(RgbImage),
    Done,
}

/// One SD2.1 one-step upscale in progress (the same protocol as [`crate::pipeline::run::Run`]).
pub struct Run<'a> {
    models: &'a Models,
    device: Device,
    options: Options,
    keep_unit: bool,
    /// The requested output size (×scale).
    size: (usize, usize),
    /// The resized input (the model's input and the colour fix's reference).
    up: RgbImage,
    z: Option<Tensor<4>>,
    cond: Option<Tensor<3>>,
    grid: Vec<Tile>,
    phase: Phase<'a>,
    ledger: Ledger,
}

impl<'a> Run<'a> {
    /// Prepares a run on the host (resizing, the tile grid); no GPU work until [`Run::next`].
    pub fn new(
        models: &'a Models,
        device: &Device,
        image: &RgbImage,
        options: &Options,
        limits: TileLimits,
        keep_unit: bool,
    ) -> Result<Self> {
        options.validate()?;
        let (Some(w), Some(h)) = (
            image.width.checked_mul(options.scale),
            image.height.checked_mul(options.scale),
        ) else {
            return Err(Error::input("the output size overflows"));
        };
        let (w8, h8) = (w - w % 8, h - h % 8);
        if w8 == 0 || h8 == 0 {
            return Err(Error::input(format!(
                "the upscaled image ({w}×{h}) must be at least 8×8 pixels"
            )));
        }
        let cached = models.prompts.iter().any(|(p, _)| *p == options.prompt);
        if !options.prompt.is_empty() && models.text.is_none() && !cached {
            return Err(Error::input(
                "a prompt needs the text encoder, which this upscaler has not loaded",
            ));
        }
        let up = resize(image, w, h, Filter::Bicubic)?;
        let up = resize(&up, w8, h8, Filter::Lanczos)?;
        let (lh, lw) = (h8 / 8, w8 / 8);
        if let Some(n) = &options.noise
            && n.vae.len() != 4 * lh * lw
        {
            return Err(Error::input(format!(
                "explicit posterior noise has {} values; the image needs [1, 4, {lh}, {lw}] ({})",
                n.vae.len(),
                4 * lh * lw
            )));
        }
        let tile = match options.tile {
            // OSEDiff's tile, or a smaller one where the device's buffer limit or the memory
            // budget needs it (the UNet attends at level 0: 9,216 tokens at OSEDiff's tile).
            TileSize::Auto => {
                let fit = largest_tile_px(models.unet.layout(), &limits, LATENT_TILE * 8)
                    .ok_or_else(|| {
                        Error::input(format!(
                            "the weights ({} MiB) and the smallest tile do not fit in the memory \
                             budget of {} MiB",
                            limits.weights_bytes >> 20,
                            limits.budget_bytes.unwrap_or(0) >> 20
                        ))
                    })?;
                (fit / 8).clamp(1, LATENT_TILE)
            }
            TileSize::Pixels(t) => (t / 8).max(1),
        };
        // A smaller tile than OSEDiff's (`TileSize::Pixels`) keeps the overlap under half of it.
        let grid = latent_tiles(lh, lw, tile, LATENT_OVERLAP.min(tile / 2));
        let fix = usize::from(options.color_fix != ColorFix::None);
        let total = 2 + grid.len() + models.vae.decode_tiles(lh, lw) + fix;
        Ok(Self {
            models,
            device: device.clone(),
            options: options.clone(),
            keep_unit,
            size: (w, h),
            up,
            z: None,
            cond: None,
            grid,
            phase: Phase::Encode,
            ledger: Ledger::new(total)?,
        })
    }

    /// Its counts, recorded stages and result.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// [`Self::ledger`], to ask for stages or a device result, or to take the result.
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Runs the next unit and waits until the device has finished it; `None` when over.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        if matches!(self.phase, Phase::Done) {
            return None;
        }
        let r = self.advance().await;
        if r.is_err() {
            self.phase = Phase::Done;
        }
        Some(r.map(|unit| self.ledger.finished(unit)))
    }

    async fn advance(&mut self) -> Result<Unit> {
        let device = self.device.clone();
        let models = self.models;
        let (w8, h8) = (self.up.width, self.up.height);
        let (lh, lw) = (h8 / 8, w8 / 8);
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Encode => {
                let eps = match self.options.noise.take() {
                    Some(n) => n.vae,
                    None => NoiseData::seeded(self.options.seed, lh, lw).vae,
                };
                let eps = Tensor::<4>::from_data(TensorData::new(eps, [1, 4, lh, lw]), &device);
                let x = tensor(&self.up, true, &device);
                let z = models.vae.encode_sample(x, eps)? * models.vae.scaling_factor;
                settle(&z).await?;
                self.ledger.stage(|s| s.start_latent = Some(z.clone()));
                self.z = Some(z);
                self.phase = Phase::Prompt;
                Ok(Unit::StartLatent)
            }
            Phase::Prompt => {
                let prompt = &self.options.prompt;
                let cond = if prompt.is_empty() {
                    models.empty_prompt.clone()
                } else {
                    match (
                        models.prompts.iter().find(|(p, _)| p == prompt),
                        &models.text,
                    ) {
                        (Some((_, c)), _) => c.clone(),
                        (None, Some(text)) => encode(text, prompt)?,
                        (None, None) => unreachable!("checked by Run::new"),
                    }
                };
                settle(&cond).await?;
                self.cond = Some(cond);
                self.phase = Phase::Unet {
                    tile: 0,
                    acc: Tensor::zeros([1, 4, lh, lw], &device),
                    wsum: Tensor::zeros([1, 1, lh, lw], &device),
                };
                Ok(Unit::Prompt)
            }
            Phase::Unet { tile, acc, wsum } => {
                let t = self.grid[tile];
                let z = self.z.as_ref().expect("encoded");
                let r = [
                    0..1,
                    0..4,
                    t.top..t.top + t.height,
                    t.left..t.left + t.width,
                ];
                let timestep = Tensor::<1>::from_data(
                    TensorData::new(vec![models.recipe.timestep as f32], [1]),
                    &device,
                );
                let eps = models.unet.forward(
                    z.clone().slice(r.clone()),
                    &UNetConditioning {
                        timestep,
                        encoder_hidden_states: self.cond.clone().expect("prompt unit ran"),
                        text_embeds: None,
                        time_ids: None,
                    },
                )?;
                let tiles = self.grid.len();
                let (acc, wsum) = if tiles == 1 {
                    (eps, wsum)
                } else {
                    let wt = Tensor::<4>::from_data(
                        // OSEDiff's Gaussian is FaithDiff's (x centred at (W − 1)/2, y at H/2).
                        TensorData::new(
                            gaussian_weights(t.height, t.width),
                            [1, 1, t.height, t.width],
                        ),
                        &device,
                    );
                    let r1 = [0..1, 0..1, r[2].clone(), r[3].clone()];
                    (
                        acc.clone()
                            .slice_assign(r.clone(), acc.slice(r) + eps * wt.clone()),
                        wsum.clone().slice_assign(r1.clone(), wsum.slice(r1) + wt),
                    )
                };
                settle(&acc).await?;
                if tile + 1 < tiles {
                    self.phase = Phase::Unet {
                        tile: tile + 1,
                        acc,
                        wsum,
                    };
                } else {
                    let eps = if tiles == 1 { acc } else { acc / wsum };
                    let z = self.z.take().expect("encoded");
                    let latent = models.recipe.x0(&models.scheduler, z, eps);
                    let (sum, _) = read_back(latent.clone().sum()).await?;
                    if !sum[0].is_finite() {
                        return Err(Error::input(
                            "the model produced non-finite values (NaN or infinity): the \
                             weights are broken, or f16 overflowed (try precision f32)",
                        ));
                    }
                    self.ledger.stage(|s| s.latent_final = Some(latent.clone()));
                    self.phase = Phase::Decode(
                        models
                            .vae
                            .decode_steps(latent / models.vae.scaling_factor)?,
                    );
                }
                Ok(Unit::Denoise {
                    step: 1,
                    steps: 1,
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
                let decoded = run.finish().clamp(-1.0, 1.0) * 0.5 + 0.5;
                self.ledger
                    .stage(|s| s.decoded = Some(decoded.clone() * 2.0 - 1.0));
                if self.options.color_fix == ColorFix::None {
                    let tensor = self.ledger.keep_tensor.then(|| decoded.clone());
                    let (values, _) = read_back(decoded).await?;
                    let raw = to_u8(&values, w8, h8)?;
                    self.ledger.stage(|s| s.image_raw = Some(raw.clone()));
                    self.finish(raw, values, tensor)?;
                } else {
                    let (values, _) = read_back(decoded).await?;
                    let raw = to_u8(&values, w8, h8)?;
                    self.ledger.stage(|s| s.image_raw = Some(raw.clone()));
                    self.phase = Phase::ColorFix(raw);
                }
                Ok(unit)
            }
            Phase::ColorFix(raw) => {
                let fixed = self.options.color_fix.apply(
                    tensor(&raw, false, &device),
                    tensor(&self.up, false, &device),
                )?;
                let tensor = self.ledger.keep_tensor.then(|| fixed.clone());
                let (values, _) = read_back(fixed).await?;
                let image = to_u8(&values, w8, h8)?;
                self.finish(image, values, tensor)?;
                Ok(Unit::ColorFix)
            }
            Phase::Done => unreachable!("checked by next"),
        }
    }

    /// The output at the requested size: as it is, or resized back by BICUBIC when the
    /// multiple-of-8 step trimmed it (the float values too, for 16-bit and device outputs).
    fn finish(
        &mut self,
        image: RgbImage,
        values: Vec<f32>,
        tensor: Option<Tensor<4>>,
    ) -> Result<()> {
        let (w, h) = self.size;
        let (w8, h8) = (image.width, image.height);
        if (w, h) == (w8, h8) {
            self.ledger.output = Some(Output {
                image,
                unit: self.keep_unit.then_some(values),
                tensor,
            });
            return Ok(());
        }
        let image = resize(&image, w, h, Filter::Bicubic)?;
        let floats = if self.keep_unit || tensor.is_some() {
            let n = w8 * h8;
            let mut out = Vec::with_capacity(3 * w * h);
            for c in 0..3 {
                let plane = &values[c * n..(c + 1) * n];
                out.extend(resize_plane(plane, (w8, h8), (w, h), Filter::Bicubic)?);
            }
            Some(out)
        } else {
            None
        };
        let tensor = match (&floats, tensor) {
            (Some(v), Some(_)) => Some(
                Tensor::<4>::from_data(TensorData::new(v.clone(), [1, 3, h, w]), &self.device)
                    .clamp(0.0, 1.0),
            ),
            _ => None,
        };
        self.ledger.output = Some(Output {
            image,
            unit: if self.keep_unit { floats } else { None },
            tensor,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_tiles_follow_osediff() {
        // Untiled up to an area of 96²: a 64 × 144 latent (9216) is one tile, 64 × 145 is not.
        assert_eq!(latent_tiles(64, 144, 96, 32).len(), 1);
        let t = latent_tiles(64, 145, 96, 32);
        // Tiles of min(96, 64, 145) = 64, step 32: x at 0, 32, 64, 81 (flush); y at 0.
        let lefts: Vec<usize> = t.iter().map(|t| t.left).collect();
        assert_eq!(lefts, [0, 32, 64, 81]);
        assert!(
            t.iter()
                .all(|t| t.top == 0 && t.height == 64 && t.width == 64)
        );
        // Column by column: every top of the first column before the next column.
        let t = latent_tiles(200, 200, 96, 32);
        let order: Vec<(usize, usize)> = t.iter().map(|t| (t.left, t.top)).collect();
        assert_eq!(&order[..4], &[(0, 0), (0, 64), (0, 104), (64, 0)]);
        // A thin, long latent ends (OSEDiff's loop would not): the overlap is half the tile.
        let t = latent_tiles(20, 600, 96, 32);
        assert_eq!(t.len(), 59);
        // Every pixel is covered.
        for (h, w) in [(97, 131), (200, 97), (20, 600)] {
            let mut seen = vec![false; h * w];
            for t in latent_tiles(h, w, 96, 32) {
                assert!(t.top + t.height <= h && t.left + t.width <= w);
                for y in t.top..t.top + t.height {
                    for x in t.left..t.left + t.width {
                        seen[y * w + x] = true;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s), "{h}×{w}");
        }
    }

    #[test]
    fn tile_weights_are_osediffs_gaussian() {
        let (h, w) = (4, 6);
        let wt = gaussian_weights(h, w);
        let g = |x: f64, m: f64, n: f64| {
            (-(x - m).powi(2) / (n * n) / 0.02).exp() / (0.02 * std::f64::consts::PI).sqrt()
        };
        for y in 0..h {
            for x in 0..w {
                let e = g(y as f64, 2.0, 4.0) * g(x as f64, 2.5, 6.0);
                assert!((f64::from(wt[y * w + x]) - e).abs() < 1e-6 * e);
            }
        }
        // Symmetric in x about (W − 1)/2, not in y (OSEDiff centres y at H/2).
        assert_eq!(wt[0], wt[w - 1]);
        assert_ne!(wt[0], wt[(h - 1) * w]);
    }
}
