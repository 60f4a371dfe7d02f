//! diffusers `AutoencoderKL` (`autoencoder_kl.py`, `vae.py`): the encoder (latent mean), the
//! decoder, and FaithDiff's `denoise_encoder` (the encoder without its output head).

use burn::tensor::{FloatDType, Tensor};
use serde::Deserialize;

use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::attention::{DIFFUSERS, MultiHeadAttention};
use crate::config::at_most;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, from_tokens, silu, to_tokens};
use crate::weights::VarBuilder;

fn d3() -> usize {
    3
}
fn d4() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_layers() -> usize {
    1
}
fn d_scale() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

/// The fields of a diffusers `AutoencoderKL` `config.json` this runtime reads.
#[derive(Clone, Debug, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(default = "d3")]
    pub in_channels: usize,
    #[serde(default = "d3")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d4")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// The image size tiled encoding and decoding work in (diffusers' `tile_sample_min_size`).
    #[serde(default = "d_sample")]
    pub sample_size: usize,
}

fn d_sample() -> usize {
    512
}

impl AutoencoderKLConfig {
    /// Parses a `config.json` dict and rejects what this runtime does not implement.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let cfg: Self = crate::config::parse(value, "AutoencoderKL")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks block types and widths.
    pub fn validate(&self) -> Result<()> {
        for t in &self.down_block_types {
            if t != "DownEncoderBlock2D" {
                return Err(Error::config(format!(
                    "unsupported VAE down block type `{t}` (supported: DownEncoderBlock2D)"
                )));
            }
        }
        for t in &self.up_block_types {
            if t != "UpDecoderBlock2D" {
                return Err(Error::config(format!(
                    "unsupported VAE up block type `{t}` (supported: UpDecoderBlock2D)"
                )));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::config(
                "VAE block types and block_out_channels must have the same, non-zero length",
            ));
        }
        if self.norm_num_groups == 0 {
            return Err(Error::config("VAE norm_num_groups must be positive"));
        }
        at_most(n, 8, "VAE block_out_channels (levels)")?;
        at_most(self.layers_per_block, 16, "VAE layers_per_block")?;
        // Latents are divided by it before decoding: a factor far from 1 (or 0, or not a
        // number) flattens the image.
        if !(self.scaling_factor.is_finite()
            && self.scaling_factor > 1e-3
            && self.scaling_factor < 1e3)
        {
            return Err(Error::config(format!(
                "VAE scaling_factor {:?} must be a positive number between 0.001 and 1000",
                self.scaling_factor
            )));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| *c % self.norm_num_groups != 0)
        {
            return Err(Error::config(format!(
                "VAE width {c} is not divisible by norm_num_groups {}",
                self.norm_num_groups
            )));
        }
        Ok(())
    }

    /// Spatial downsampling factor (8 for SD VAEs).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `UNetMidBlock2D` of the VAE: resnet, single-head attention over pixels, resnet.
#[derive(Clone, Debug)]
pub struct VaeMidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<(GroupNorm, MultiHeadAttention)>,
}

impl VaeMidBlock {
    fn new(vb: &VarBuilder, c: usize, groups: usize, add_attention: bool) -> Self {
        let resnet =
            |j: usize| ResnetBlock2D::new(&vb.pp("resnets").pp(j), c, c, None, groups, 1e-6);
        let attention = add_attention.then(|| {
            let a = vb.pp("attentions.0");
            (
                GroupNorm::new(&a.pp("group_norm"), groups, c, 1e-6),
                MultiHeadAttention::new(&a, &DIFFUSERS, c, c, c, 1, true),
            )
        });
        Self {
            resnets: [resnet(0), resnet(1)],
            attention,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some((norm, attn)) = &self.attention {
            let [_, _, h, w] = x.dims();
            let t = attn.forward(to_tokens(norm.forward(x.clone())), None, false);
            x = from_tokens(t, h, w) + x;
        }
        self.resnets[1].forward(x, None)
    }
}

/// The VAE encoder. With `head = false` it is FaithDiff's `denoise_encoder`.
#[derive(Clone, Debug)]
pub struct Encoder {
    in_channels: usize,
    conv_in: Conv2d,
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: VaeMidBlock,
    head: Option<(GroupNorm, Conv2d)>,
}

impl Encoder {
    /// Keys `conv_in`, `down_blocks.*`, `mid_block.*` and, with `head`, `conv_norm_out`,
    /// `conv_out` (to 2 × latent channels).
    pub fn new(vb: &VarBuilder, cfg: &AutoencoderKLConfig, head: bool) -> Self {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let n = ch.len();
        let mut prev = ch[0];
        let down = (0..n)
            .map(|i| {
                let b = vb.pp("down_blocks").pp(i);
                let resnets = (0..cfg.layers_per_block)
                    .map(|j| {
                        let cin = if j == 0 { prev } else { ch[i] };
                        ResnetBlock2D::new(&b.pp("resnets").pp(j), cin, ch[i], None, g, 1e-6)
                    })
                    .collect();
                prev = ch[i];
                let ds =
                    (i + 1 < n).then(|| Downsample2D::new(&b.pp("downsamplers.0"), ch[i], true));
                (resnets, ds)
            })
            .collect();
        let c = ch[n - 1];
        Self {
            in_channels: cfg.in_channels,
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1),
            down,
            mid: VaeMidBlock::new(&vb.pp("mid_block"), c, g, cfg.mid_block_add_attention),
            head: head.then(|| {
                (
                    GroupNorm::new(&vb.pp("conv_norm_out"), g, c, 1e-6),
                    Conv2d::new(&vb.pp("conv_out"), c, 2 * cfg.latent_channels, 3, 1, 1),
                )
            }),
        }
    }

    /// Checks an image's channels.
    pub fn check_input(&self, x: &Tensor<4>) -> Result<()> {
        let c = x.dims()[1];
        if c != self.in_channels {
            return Err(Error::input(format!(
                "image has {c} channels, the VAE encoder takes {}",
                self.in_channels
            )));
        }
        Ok(())
    }

    /// `[B, 3, H, W]` in [-1, 1] → moments `[B, 2L, H/8, W/8]` (or features without head).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        for (resnets, ds) in &self.down {
            for r in resnets {
                x = r.forward(x, None);
            }
            if let Some(ds) = ds {
                x = ds.forward(x);
            }
        }
        x = self.mid.forward(x);
        match &self.head {
            Some((norm, conv)) => conv.forward(silu(norm.forward(x))),
            None => x,
        }
    }
}

/// The VAE decoder.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: VaeMidBlock,
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// Keys `conv_in`, `mid_block.*`, `up_blocks.*`, `conv_norm_out`, `conv_out`.
    pub fn new(vb: &VarBuilder, cfg: &AutoencoderKLConfig) -> Self {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let n = rev.len();
        let mut prev = rev[0];
        let up = (0..n)
            .map(|i| {
                let b = vb.pp("up_blocks").pp(i);
                let resnets = (0..cfg.layers_per_block + 1)
                    .map(|j| {
                        let cin = if j == 0 { prev } else { rev[i] };
                        ResnetBlock2D::new(&b.pp("resnets").pp(j), cin, rev[i], None, g, 1e-6)
                    })
                    .collect();
                prev = rev[i];
                (
                    resnets,
                    (i + 1 < n).then(|| Upsample2D::new(&b.pp("upsamplers.0"), rev[i])),
                )
            })
            .collect();
        let c0 = cfg.block_out_channels[0];
        Self {
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1),
            mid: VaeMidBlock::new(&vb.pp("mid_block"), rev[0], g, cfg.mid_block_add_attention),
            up,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), g, c0, 1e-6),
            conv_out: Conv2d::new(&vb.pp("conv_out"), c0, cfg.out_channels, 3, 1, 1),
        }
    }

    /// Latents `[B, L, h, w]` (after `post_quant_conv`) → image `[B, 3, 8h, 8w]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid.forward(self.conv_in.forward(z));
        for (resnets, us) in &self.up {
            for r in resnets {
                x = r.forward(x, None);
            }
            if let Some(us) = us {
                x = us.forward(x, None);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// `AutoencoderKL`: encoder + `quant_conv`, `post_quant_conv` + decoder.
#[derive(Clone, Debug)]
pub struct AutoencoderKL {
    encoder: Encoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder: Decoder,
    latent_channels: usize,
    /// The config's `scaling_factor` (0.13025 for sdxl-vae-fp16-fix).
    pub scaling_factor: f64,
    /// `Some((tile_sample, tile_latent))` when tiled encoding/decoding is on.
    tiling: Option<(usize, usize)>,
    tile_sizes: (usize, usize),
}

/// Overlap of diffusers' VAE tiles.
const TILE_OVERLAP: f64 = 0.25;

/// Blends the last `extent` rows (`dim` 2) or columns (`dim` 3) of `a` into the first ones of
/// `b`, linearly, as diffusers' `blend_v` / `blend_h`.
fn blend(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let e = extent.min(a.dims()[dim]).min(b.dims()[dim]);
    if e == 0 {
        return b;
    }
    let device = b.device();
    let w: Vec<f32> = (0..e).map(|y| (y as f64 / e as f64) as f32).collect();
    let inv: Vec<f32> = (0..e).map(|y| (1.0 - y as f64 / e as f64) as f32).collect();
    let mut shape = [1, 1, 1, 1];
    shape[dim] = e;
    let dtype = b.dtype();
    let w = Tensor::<4>::from_data(burn::tensor::TensorData::new(w, shape), (&device, dtype));
    let inv = Tensor::<4>::from_data(burn::tensor::TensorData::new(inv, shape), (&device, dtype));
    let n = a.dims()[dim];
    let tail = a.clone().narrow(dim, n - e, e);
    let head = b.clone().narrow(dim, 0, e);
    let mixed = tail * inv + head * w;
    let rest = b.dims()[dim] - e;
    if rest == 0 {
        mixed
    } else {
        Tensor::cat(vec![mixed, b.narrow(dim, e, rest)], dim)
    }
}

/// diffusers' tiled encode/decode, one tile at a time: tiles of `tile_in` every `stride` on
/// the input, each run through the network, blended over `extent` output pixels with the tiles
/// above and to the left (after their own blending) and cropped to `limit`.
pub struct TiledRun {
    x: Tensor<4>,
    tile_in: usize,
    extent: usize,
    limit: usize,
    /// Tile origins, row by row.
    rows_at: Vec<usize>,
    cols_at: Vec<usize>,
    rows: Vec<Vec<Tensor<4>>>,
}

impl TiledRun {
    fn new(x: Tensor<4>, tile_in: usize, stride: usize, extent: usize, limit: usize) -> Self {
        let [_, _, h, w] = x.dims();
        Self {
            x,
            tile_in,
            extent,
            limit,
            rows_at: (0..h).step_by(stride).collect(),
            cols_at: (0..w).step_by(stride).collect(),
            rows: Vec::new(),
        }
    }

    /// One tile covering all of `x`.
    fn whole(x: Tensor<4>) -> Self {
        let [_, _, h, w] = x.dims();
        let side = h.max(w).max(1);
        Self::new(x, side, side, 0, usize::MAX)
    }

    /// How many tiles in all.
    pub fn tiles(&self) -> usize {
        self.rows_at.len() * self.cols_at.len()
    }

    /// How many tiles have run.
    pub fn done(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    /// Runs the next tile through `f` and returns it (blended); `None` when every tile has run.
    fn step(&mut self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Option<Tensor<4>> {
        let cols = self.cols_at.len();
        if self.rows.last().is_none_or(|r| r.len() == cols) {
            if self.rows.len() == self.rows_at.len() {
                return None;
            }
            self.rows.push(Vec::new());
        }
        let [b, c, h, w] = self.x.dims();
        let r = self.rows.len() - 1;
        let (i, j) = (self.rows_at[r], self.cols_at[self.rows[r].len()]);
        let t = self.x.clone().slice([
            0..b,
            0..c,
            i..(i + self.tile_in).min(h),
            j..(j + self.tile_in).min(w),
        ]);
        let mut t = f(t);
        let k = self.rows[r].len();
        if r > 0 {
            t = blend(&self.rows[r - 1][k], t, self.extent, 2);
        }
        if let Some(left) = self.rows[r].last() {
            t = blend(left, t, self.extent, 3);
        }
        self.rows[r].push(t.clone());
        Some(t)
    }

    /// The blended result (call after every tile has run).
    fn finish(self) -> Tensor<4> {
        let limit = self.limit;
        let crop = |t: &Tensor<4>| {
            let [tb, tc, th, tw] = t.dims();
            t.clone()
                .slice([0..tb, 0..tc, 0..th.min(limit), 0..tw.min(limit)])
        };
        let rows: Vec<Tensor<4>> = self
            .rows
            .iter()
            .map(|r| Tensor::cat(r.iter().map(crop).collect(), 3))
            .collect();
        Tensor::cat(rows, 2)
    }

    /// Every tile, then the result.
    fn run(mut self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
        while self.step(&f).is_some() {}
        self.finish()
    }
}

/// A decode in progress, one tile per [`DecodeRun::step`].
pub struct DecodeRun<'a> {
    vae: &'a AutoencoderKL,
    run: TiledRun,
}

impl DecodeRun<'_> {
    /// Tiles in all (1 when the latent is decoded whole).
    pub fn tiles(&self) -> usize {
        self.run.tiles()
    }
    /// Tiles decoded so far.
    pub fn done(&self) -> usize {
        self.run.done()
    }
    /// Decodes the next tile and returns it (blended), `None` when none is left.
    pub fn step(&mut self) -> Option<Tensor<4>> {
        let vae = self.vae;
        self.run.step(|z| vae.decode_tile(z))
    }
    /// The image (after every tile).
    pub fn finish(self) -> Tensor<4> {
        self.run.finish()
    }
}

impl AutoencoderKL {
    /// Turns diffusers' tiled encoding and decoding on or off (`enable_tiling()`): images larger
    /// than `sample_size` (latents larger than `sample_size / 8`) are processed in overlapping
    /// tiles, so memory stays bounded whatever the image size.
    pub fn set_tiling(&mut self, on: bool) {
        self.tiling = on.then_some(self.tile_sizes);
    }

    /// Tiling on, with tiles of `image_px` (latent tiles of `image_px / 8`) instead of the
    /// config's `sample_size`: images up to that size are encoded and decoded whole.
    pub fn set_tiling_at(&mut self, image_px: usize) {
        let down = self.tile_sizes.0 / self.tile_sizes.1.max(1);
        self.tile_sizes = (image_px, image_px / down.max(1));
        self.tiling = Some(self.tile_sizes);
    }
    /// Keys as diffusers names them (`encoder.*`, `quant_conv`, `post_quant_conv`, `decoder.*`).
    pub fn new(vb: &VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.validate()?;
        let l2 = 2 * cfg.latent_channels;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(&vb.pp("encoder"), cfg, true),
            quant_conv: cfg
                .use_quant_conv
                .then(|| Conv2d::new(&vb.pp("quant_conv"), l2, l2, 1, 1, 0)),
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| Conv2d::new(&vb.pp("post_quant_conv"), l, l, 1, 1, 0)),
            decoder: Decoder::new(&vb.pp("decoder"), cfg),
            latent_channels: l,
            scaling_factor: cfg.scaling_factor,
            tiling: None,
            tile_sizes: (cfg.sample_size, cfg.sample_size / cfg.downscale()),
        })
    }

    /// The posterior's moments `[B, 2L, h, w]` (mean ‖ log-variance), in f32 whatever the
    /// network's precision (tiles are blended in f32).
    pub fn encode_moments(&self, image: Tensor<4>) -> Result<Tensor<4>> {
        self.encoder.check_input(&image)?;
        let encode = |x: Tensor<4>| {
            let m = self.encoder.forward(x);
            let m = match &self.quant_conv {
                Some(q) => q.forward(m),
                None => m,
            };
            m.cast(FloatDType::F32)
        };
        let [_, _, h, w] = image.dims();
        let run = match self.tiling {
            Some((sample, latent)) if h > sample || w > sample => {
                let stride = (sample as f64 * (1.0 - TILE_OVERLAP)) as usize;
                let extent = (latent as f64 * TILE_OVERLAP) as usize;
                TiledRun::new(image, sample, stride.max(1), extent, latent - extent)
            }
            _ => return Ok(encode(image)),
        };
        Ok(run.run(encode))
    }

    /// `latent_dist.mean` (unscaled).
    pub fn encode_mean(&self, image: Tensor<4>) -> Result<Tensor<4>> {
        let m = self.encode_moments(image)?;
        let [b, _, h, w] = m.dims();
        Ok(m.slice([0..b, 0..self.latent_channels, 0..h, 0..w]))
    }

    /// A posterior sample `mean + std·ε` with `ε` `[B, L, h, w]` given (diffusers clamps the
    /// log-variance to [-30, 20]).
    pub fn encode_sample(&self, image: Tensor<4>, eps: Tensor<4>) -> Result<Tensor<4>> {
        let m = self.encode_moments(image)?;
        let [b, c2, h, w] = m.dims();
        let l = c2 / 2;
        if eps.dims() != [b, l, h, w] {
            return Err(Error::input(format!(
                "posterior noise is {:?}, expected {:?}",
                eps.dims(),
                [b, l, h, w]
            )));
        }
        let mean = m.clone().slice([0..b, 0..l, 0..h, 0..w]);
        let logvar = m.slice([0..b, l..c2, 0..h, 0..w]).clamp(-30.0, 20.0);
        Ok(mean + (logvar * 0.5).exp() * eps)
    }

    /// Unscaled latents → image in (roughly) [-1, 1], f32 whatever the network's precision.
    pub fn decode(&self, z: Tensor<4>) -> Result<Tensor<4>> {
        let mut run = self.decode_steps(z)?;
        while run.step().is_some() {}
        Ok(run.finish())
    }

    /// [`AutoencoderKL::decode`] one tile at a time (one tile when tiling is off or the latent
    /// fits in one).
    pub fn decode_steps(&self, z: Tensor<4>) -> Result<DecodeRun<'_>> {
        let c = z.dims()[1];
        if c != self.latent_channels {
            return Err(Error::input(format!(
                "latents have {c} channels, the VAE has {}",
                self.latent_channels
            )));
        }
        let [_, _, h, w] = z.dims();
        let run = match self.decode_plan(h, w) {
            Some((tile, stride, extent, limit)) => TiledRun::new(z, tile, stride, extent, limit),
            None => TiledRun::whole(z),
        };
        Ok(DecodeRun { vae: self, run })
    }

    /// diffusers' decode tiling for an `h × w` latent: (tile, stride, blend extent, crop), or
    /// `None` when it is decoded whole.
    fn decode_plan(&self, h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
        let (sample, latent) = self.tiling?;
        (h > latent || w > latent).then(|| {
            let stride = (latent as f64 * (1.0 - TILE_OVERLAP)) as usize;
            let extent = (sample as f64 * TILE_OVERLAP) as usize;
            (latent, stride.max(1), extent, sample - extent)
        })
    }

    /// How many tiles [`AutoencoderKL::decode_steps`] runs for an `h × w` latent.
    pub fn decode_tiles(&self, h: usize, w: usize) -> usize {
        match self.decode_plan(h, w) {
            Some((_, stride, _, _)) => h.div_ceil(stride) * w.div_ceil(stride),
            None => 1,
        }
    }

    fn decode_tile(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        self.decoder.forward(z).cast(FloatDType::F32)
    }
}

/// FaithDiff's `denoise_encoder`: the VAE encoder without `conv_norm_out`/`conv_out`, keys
/// prefixed `denoise_encoder.` in `FaithDiff.bin`.
#[derive(Clone, Debug)]
pub struct DenoiseEncoder {
    encoder: Encoder,
    /// `Some((tile_sample, tile_latent))` when tiled encoding is on.
    tiling: Option<(usize, usize)>,
    tile_sizes: (usize, usize),
}

impl DenoiseEncoder {
    /// `vb` is positioned at `denoise_encoder`.
    pub fn new(vb: &VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            encoder: Encoder::new(vb, cfg, false),
            tiling: None,
            tile_sizes: (cfg.sample_size, cfg.sample_size / cfg.downscale()),
        })
    }

    /// Turns FaithDiff's own tiling of the `denoise_encoder` on or off (its `tiled_encode`, which
    /// FaithDiff's scripts enable with the VAE's settings: tiles of the config's `sample_size`
    /// (1024), overlap 0.25). Its trigger is a side longer than `sample_size / 8` pixels (sic:
    /// FaithDiff compares the image with the latent tile size); up to `0.75 · sample_size` the
    /// single tile is the whole image, so only larger images are actually split.
    pub fn set_tiling(&mut self, on: bool) {
        self.tiling = on.then_some(self.tile_sizes);
    }

    /// Tiling on, with tiles of `image_px` (latent tiles of `image_px / 8`) instead of the
    /// config's `sample_size`: images up to that size are encoded and decoded whole.
    pub fn set_tiling_at(&mut self, image_px: usize) {
        let down = self.tile_sizes.0 / self.tile_sizes.1.max(1);
        self.tile_sizes = (image_px, image_px / down.max(1));
        self.tiling = Some(self.tile_sizes);
    }

    /// `[B, 3, H, W]` in [-1, 1] → LQ features `[B, C, H/8, W/8]` (f32, tiles blended in f32).
    pub fn forward(&self, image: Tensor<4>) -> Result<Tensor<4>> {
        self.encoder.check_input(&image)?;
        let [_, _, h, w] = image.dims();
        let encode = |t: Tensor<4>| self.encoder.forward(t).cast(FloatDType::F32);
        Ok(match self.tiling {
            Some((sample, latent)) if h > latent || w > latent => {
                let stride = (sample as f64 * (1.0 - TILE_OVERLAP)) as usize;
                let extent = (latent as f64 * TILE_OVERLAP) as usize;
                TiledRun::new(image, sample, stride.max(1), extent, latent - extent).run(encode)
            }
            _ => encode(image),
        })
    }
}
