//! diffusers `UNet2DConditionModel` as SDXL uses it (`unet_2d_condition.py`), with the depth
//! of every transformer read from the config so that pruned configs load by config alone.

use burn::tensor::{FloatDType, Tensor};
use serde::Deserialize;

use super::embeddings::{TimestepEmbedding, Timesteps};
use super::probe::Probe;
use super::unet_2d_blocks::{AttnParams, DownBlock, MidBlock, UpBlock};
use crate::config::{PerBlock, at_most};
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, silu};
use crate::weights::VarBuilder;

fn d_channels() -> usize {
    4
}
fn d_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_one() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_heads() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_cross() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_kernel() -> usize {
    3
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}

/// The fields of a diffusers `UNet2DConditionModel` `config.json` this runtime reads.
/// Fields it does not support are checked and rejected by [`UNet2DConditionConfig::validate`].
#[derive(Clone, Debug, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default = "d_channels")]
    pub in_channels: usize,
    #[serde(default = "d_channels")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<PerBlock<usize>>>,
    /// Not a diffusers field: the mid block's depth in pruned checkpoints (diffusers takes the
    /// last entry of `transformer_layers_per_block`).
    #[serde(default)]
    pub mid_transformer_layers_per_block: Option<usize>,
    /// diffusers' historical misnomer: the number of heads when `num_attention_heads` is unset.
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub only_cross_attention: PerBlockBool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default = "d_default")]
    pub attention_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
}

/// `only_cross_attention`: a bool or a list of bools.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum PerBlockBool {
    /// One value.
    One(bool),
    /// One per block.
    Each(Vec<bool>),
    /// Absent.
    #[default]
    Unset,
}

/// The derived per-level layout: everything a block constructor needs.
#[derive(Clone, Debug)]
pub struct UNetLayout {
    pub channels: Vec<usize>,
    pub heads: Vec<usize>,
    pub cross: Vec<usize>,
    pub layers: Vec<usize>,
    pub down_attn: Vec<bool>,
    pub down_depth: Vec<usize>,
    pub mid_depth: usize,
    pub up_attn: Vec<bool>,
    /// Depth per up block and per resnet within it.
    pub up_depth: Vec<Vec<usize>>,
    pub temb: usize,
}

impl UNet2DConditionConfig {
    /// Parses a `config.json` dict.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let cfg: Self = crate::config::parse(value, "UNet2DConditionModel")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects every option this runtime does not implement, naming it.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: &str| Err(Error::config(format!("unsupported UNet {what}")));
        for t in &self.down_block_types {
            if t != "DownBlock2D" && t != "CrossAttnDownBlock2D" {
                return unsupported(&format!(
                    "down block type `{t}` (supported: DownBlock2D, CrossAttnDownBlock2D)"
                ));
            }
        }
        for t in &self.up_block_types {
            if t != "UpBlock2D" && t != "CrossAttnUpBlock2D" {
                return unsupported(&format!(
                    "up block type `{t}` (supported: UpBlock2D, CrossAttnUpBlock2D)"
                ));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return unsupported(&format!(
                "mid block type `{:?}` (supported: UNetMidBlock2DCrossAttn)",
                self.mid_block_type
            ));
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::config(
                "down_block_types, up_block_types and block_out_channels must have the same, non-zero length",
            ));
        }
        if !self.use_linear_projection {
            return unsupported("use_linear_projection = false (SDXL uses linear projections)");
        }
        match self.addition_embed_type.as_deref() {
            None | Some("text_time") => {}
            Some(other) => return unsupported(&format!("addition_embed_type `{other}`")),
        }
        if self.addition_embed_type.is_some()
            && (self.addition_time_embed_dim.is_none()
                || self.projection_class_embeddings_input_dim.is_none())
        {
            return Err(Error::config(
                "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim",
            ));
        }
        if let Some(c) = &self.class_embed_type {
            return unsupported(&format!("class_embed_type `{c}`"));
        }
        if self.encoder_hid_dim.is_some() {
            return unsupported("encoder_hid_dim");
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported("time_cond_proj_dim");
        }
        if self.time_embedding_dim.is_some() {
            return unsupported("time_embedding_dim");
        }
        match &self.only_cross_attention {
            PerBlockBool::One(true) => return unsupported("only_cross_attention"),
            PerBlockBool::Each(v) if v.iter().any(|b| *b) => {
                return unsupported("only_cross_attention");
            }
            _ => {}
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention");
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported(&format!(
                "resnet_time_scale_shift `{}`",
                self.resnet_time_scale_shift
            ));
        }
        if self.time_embedding_type != "positional" {
            return unsupported(&format!(
                "time_embedding_type `{}`",
                self.time_embedding_type
            ));
        }
        if self.attention_type != "default" {
            return unsupported(&format!("attention_type `{}`", self.attention_type));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return unsupported("even conv_in_kernel / conv_out_kernel");
        }
        if self.norm_num_groups == 0 || !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::config(format!(
                "norm_num_groups ({}) and norm_eps ({}) must be positive",
                self.norm_num_groups, self.norm_eps
            )));
        }
        // Bounded before the layout is computed from them.
        at_most(n, 8, "block_out_channels (levels)")?;
        for &l in self.layers_per_block.values() {
            at_most(l, 16, "layers_per_block")?;
        }
        let reverse = self.reverse_transformer_layers_per_block.iter().flatten();
        let depths = self
            .transformer_layers_per_block
            .values()
            .iter()
            .chain(reverse.flat_map(PerBlock::values))
            .chain(&self.mid_transformer_layers_per_block);
        for &d in depths {
            at_most(d, 64, "transformer_layers_per_block")?;
        }
        let layout = self.layout()?;
        if let Some(i) = layout.heads.iter().position(|&h| h == 0) {
            return Err(Error::config(format!(
                "level {i} has 0 attention heads (attention_head_dim / num_attention_heads)"
            )));
        }
        for (i, &c) in layout.channels.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                return Err(Error::config(format!(
                    "block_out_channels[{i}] = {c} is not divisible by norm_num_groups {}",
                    self.norm_num_groups
                )));
            }
            if c % layout.heads[i] != 0 {
                return Err(Error::config(format!(
                    "block_out_channels[{i}] = {c} is not divisible by its {} heads",
                    layout.heads[i]
                )));
            }
        }
        Ok(())
    }

    /// Channels of encoder level `level` (0: `conv_in`'s output, `i + 1`: down block `i`'s),
    /// or `None` past the last down block.
    pub fn encoder_level_channels(&self, level: usize) -> Option<usize> {
        match level {
            0 => self.block_out_channels.first().copied(),
            l => self.block_out_channels.get(l - 1).copied(),
        }
    }

    /// Derives the per-level layout, following diffusers' constructor.
    pub fn layout(&self) -> Result<UNetLayout> {
        let n = self.block_out_channels.len();
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n, "attention_head_dim")?;
        let cross = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let layers = self.layers_per_block.expand(n, "layers_per_block")?;
        let down_depth = self
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")?;
        let mid_depth = self
            .mid_transformer_layers_per_block
            .unwrap_or(*down_depth.last().expect("n > 0"));
        let up_depth: Vec<Vec<usize>> = match &self.reverse_transformer_layers_per_block {
            Some(rev) => {
                if rev.len() != n {
                    return Err(Error::config(format!(
                        "reverse_transformer_layers_per_block has {} entries, expected {n}",
                        rev.len()
                    )));
                }
                rev.iter()
                    .enumerate()
                    .map(|(i, d)| {
                        d.expand(
                            layers[n - 1 - i] + 1,
                            "reverse_transformer_layers_per_block",
                        )
                    })
                    .collect::<Result<_>>()?
            }
            None => (0..n)
                .map(|i| vec![down_depth[n - 1 - i]; layers[n - 1 - i] + 1])
                .collect(),
        };
        Ok(UNetLayout {
            channels: self.block_out_channels.clone(),
            heads,
            cross,
            layers,
            down_attn: self
                .down_block_types
                .iter()
                .map(|t| t.starts_with("CrossAttn"))
                .collect(),
            down_depth,
            mid_depth,
            up_attn: self
                .up_block_types
                .iter()
                .map(|t| t.starts_with("CrossAttn"))
                .collect(),
            up_depth,
            temb: self.block_out_channels[0] * 4,
        })
    }
}

/// The conditioning one UNet call takes besides the noisy sample.
#[derive(Clone, Debug)]
pub struct UNetConditioning {
    /// `[B]` timesteps.
    pub timestep: Tensor<1>,
    /// `[B, L, cross_attention_dim]` text embeddings.
    pub encoder_hidden_states: Tensor<3>,
    /// `[B, P]` pooled text embeddings (`text_time` only).
    pub text_embeds: Option<Tensor<2>>,
    /// `[B, 6]` size conditioning (`text_time` only).
    pub time_ids: Option<Tensor<2>>,
}

/// `UNet2DConditionModel` (SDXL layout).
#[derive(Clone, Debug)]
pub struct UNet2DConditionModel {
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_time_proj: Option<Timesteps>,
    add_embedding: Option<TimestepEmbedding>,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    in_channels: usize,
    cross_dims: Vec<usize>,
    add_input: Option<usize>,
    layout: UNetLayout,
}

impl UNet2DConditionModel {
    /// Builds the UNet from its config; keys as diffusers names them.
    pub fn new(vb: &VarBuilder, cfg: &UNet2DConditionConfig) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.layout()?;
        let n = l.channels.len();
        let c0 = l.channels[0];
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let add = match cfg.addition_embed_type.as_deref() {
            Some(_) => {
                let dim = cfg.addition_time_embed_dim.expect("validated");
                let input = cfg
                    .projection_class_embeddings_input_dim
                    .expect("validated");
                Some((
                    Timesteps::new(dim, cfg.flip_sin_to_cos, cfg.freq_shift),
                    TimestepEmbedding::new(&vb.pp("add_embedding"), input, l.temb),
                ))
            }
            None => None,
        };
        let (add_time_proj, add_embedding) = add.unzip();
        let attn = |i: usize| AttnParams {
            heads: l.heads[i],
            cross_dim: l.cross[i],
            groups,
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut c_prev = c0;
        for i in 0..n {
            let depths = vec![l.down_depth[i]; l.layers[i]];
            down_blocks.push(DownBlock::new(
                &vb.pp("down_blocks").pp(i),
                c_prev,
                l.channels[i],
                l.temb,
                l.layers[i],
                l.down_attn[i].then_some((attn(i), depths.as_slice())),
                i + 1 < n,
                eps,
                groups,
            ));
            c_prev = l.channels[i];
        }
        let mid_block = MidBlock::new(
            &vb.pp("mid_block"),
            l.channels[n - 1],
            l.temb,
            attn(n - 1),
            l.mid_depth,
            eps,
        );
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = l.channels[n - 1];
        for i in 0..n {
            let level = n - 1 - i;
            let c_out = l.channels[level];
            let c_skip_last = l.channels[level.saturating_sub(1)];
            up_blocks.push(UpBlock::new(
                &vb.pp("up_blocks").pp(i),
                c_skip_last,
                c_out,
                prev,
                l.temb,
                l.layers[level] + 1,
                l.up_attn[i].then_some((attn(level), l.up_depth[i].as_slice())),
                i + 1 < n,
                eps,
                groups,
            ));
            prev = c_out;
        }
        let (kin, kout) = (cfg.conv_in_kernel, cfg.conv_out_kernel);
        Ok(Self {
            time_proj: Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift),
            time_embedding: TimestepEmbedding::new(&vb.pp("time_embedding"), c0, l.temb),
            add_time_proj,
            add_embedding,
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.in_channels, c0, kin, 1, kin / 2),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), groups, c0, eps),
            conv_out: Conv2d::new(&vb.pp("conv_out"), c0, cfg.out_channels, kout, 1, kout / 2),
            in_channels: cfg.in_channels,
            cross_dims: l.cross.clone(),
            add_input: cfg
                .addition_embed_type
                .as_ref()
                .and(cfg.projection_class_embeddings_input_dim),
            layout: l,
        })
    }

    /// The per-level layout it was built with.
    pub fn layout(&self) -> &UNetLayout {
        &self.layout
    }

    /// Time embedding plus the `text_time` add-embedding: `[B, temb]`.
    fn embed(&self, cond: &UNetConditioning, batch: usize) -> Result<Tensor<2>> {
        let t = self
            .time_embedding
            .forward(self.time_proj.forward(cond.timestep.clone()));
        let (Some(proj), Some(emb)) = (&self.add_time_proj, &self.add_embedding) else {
            return Ok(t);
        };
        let (Some(text), Some(ids)) = (&cond.text_embeds, &cond.time_ids) else {
            return Err(Error::input(
                "text_time conditioning needs text_embeds and time_ids",
            ));
        };
        let [b, n_ids] = ids.dims();
        if b != batch || text.dims()[0] != batch {
            return Err(Error::input(
                "text_embeds / time_ids batch differs from the sample's",
            ));
        }
        let width = text.dims()[1] + n_ids * proj.dim();
        if Some(width) != self.add_input {
            return Err(Error::input(format!(
                "text_embeds {:?} and time_ids {:?} give {width} add-embedding inputs, the \
                 config expects {:?}",
                text.dims(),
                ids.dims(),
                self.add_input
            )));
        }
        let time = proj.forward(ids.clone().reshape([b * n_ids]));
        let time = time.reshape([b, n_ids * proj.dim()]);
        // `time` is f32 (sinusoids); the add-embedding's first layer casts the concatenation.
        let text = text.clone().cast(FloatDType::F32);
        Ok(t + emb.forward(Tensor::cat(vec![text, time], 1)))
    }

    /// One denoising call: `sample` `[B, in, h, w]` → `[B, out, h, w]`. Inputs of any float
    /// dtype; the network computes in its weights' dtype and returns f32.
    pub fn forward(&self, sample: Tensor<4>, cond: &UNetConditioning) -> Result<Tensor<4>> {
        self.forward_fused(sample, cond, |_, x| Ok(x))
    }

    /// One call with `fuse(level, features)` applied at every encoder level: level 0 is
    /// `conv_in`'s output (FaithDiff's hook point), level `i + 1` the output of down block `i`.
    /// What `fuse` returns goes on through the encoder and into the skip list.
    pub fn forward_fused(
        &self,
        sample: Tensor<4>,
        cond: &UNetConditioning,
        fuse: impl FnMut(usize, Tensor<4>) -> Result<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        self.forward_probed(sample, cond, fuse, None)
    }

    /// [`UNet2DConditionModel::forward_fused`] with an optional [`Probe`] that sees every
    /// level's output and, when it wants them, the decoder's transformer blocks.
    pub fn forward_probed(
        &self,
        sample: Tensor<4>,
        cond: &UNetConditioning,
        mut fuse: impl FnMut(usize, Tensor<4>) -> Result<Tensor<4>>,
        mut probe: Option<&mut dyn Probe>,
    ) -> Result<Tensor<4>> {
        let [b, c, _, _] = sample.dims();
        if c != self.in_channels {
            return Err(Error::input(format!(
                "sample has {c} channels, the UNet takes {}",
                self.in_channels
            )));
        }
        let [eb, _, ed] = cond.encoder_hidden_states.dims();
        if cond.timestep.dims()[0] != b || eb != b {
            return Err(Error::input(format!(
                "timestep / encoder_hidden_states batch differs from the sample's ({b})"
            )));
        }
        if self.cross_dims.iter().any(|&d| d != ed) {
            return Err(Error::input(format!(
                "encoder_hidden_states width is {ed}, the UNet's cross_attention_dim is {:?}",
                self.cross_dims
            )));
        }
        let temb = self.embed(cond, b)?;
        let context = &cond.encoder_hidden_states;
        let mut x = fuse(0, self.conv_in.forward(sample))?;
        let mut skips = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            x = fuse(i + 1, block.forward(x, &temb, context, &mut skips))?;
            // The block's last skip is its output: keep the two the same.
            *skips.last_mut().expect("every down block adds skips") = x.clone();
            if let Some(p) = probe.as_deref_mut() {
                p.level(&format!("down_blocks.{i}"), &x);
            }
        }
        x = self.mid_block.forward(x, &temb, context);
        if let Some(p) = probe.as_deref_mut() {
            p.level("mid_block", &x);
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            let remaining = skips.len() - block.num_skips();
            // Upsample to the size of the skip the next block consumes first.
            let up_size = (remaining > 0).then(|| {
                let [_, _, sh, sw] = skips[remaining - 1].dims();
                [sh, sw]
            });
            x = match probe.as_deref_mut() {
                Some(p) if p.wants_blocks() => {
                    let mut each = |j: usize, k: usize, a: &Tensor<3>, b: &Tensor<3>| {
                        let name = format!("up_blocks.{i}.attentions.{j}.transformer_blocks.{k}");
                        p.block(&name, a, b);
                    };
                    block.forward(x, &temb, context, &mut skips, up_size, Some(&mut each))
                }
                _ => block.forward(x, &temb, context, &mut skips, up_size, None),
            };
            if let Some(p) = probe.as_deref_mut() {
                p.level(&format!("up_blocks.{i}"), &x);
            }
        }
        let out = self.conv_out.forward(silu(self.conv_norm_out.forward(x)));
        Ok(out.cast(FloatDType::F32))
    }
}
