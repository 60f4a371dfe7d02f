//! FaithDiff's additions to the SDXL UNet (`unet_2d_condition_vae_extension.py`): the LQ
//! `condition_embedding`, the alignment stack `information_transformer_layes` (sic) and
//! `spatial_ch_projs`, fused into the UNet right after `conv_in`; and, for the PGP-DiffSR
//! presets, the PEAMs at their encoder levels.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::peam::{Peam, PeamConfig};
use super::probe::Probe;
use super::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel, UNetConditioning};
use crate::attention::{attention, merge_heads, split_heads};
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear, from_tokens, quick_gelu, silu, to_tokens};
use crate::weights::VarBuilder;

fn d_lq() -> usize {
    512
}
fn d_heads() -> usize {
    8
}
fn d_layers() -> usize {
    2
}
fn d_groups() -> usize {
    32
}

/// FaithDiff's extra hyper-parameters (the real model: 512, 8, 2, 32).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FaithDiffConfig {
    /// Channels of the LQ features (`denoise_encoder` output).
    #[serde(default = "d_lq")]
    pub lq_channels: usize,
    /// Heads of each alignment block's `nn.MultiheadAttention`.
    #[serde(default = "d_heads")]
    pub align_heads: usize,
    /// Number of alignment blocks.
    #[serde(default = "d_layers")]
    pub align_layers: usize,
    /// GroupNorm groups of `condition_embedding.norm_in`.
    #[serde(default = "d_groups")]
    pub cond_norm_groups: usize,
}

impl Default for FaithDiffConfig {
    fn default() -> Self {
        Self {
            lq_channels: d_lq(),
            align_heads: d_heads(),
            align_layers: d_layers(),
            cond_norm_groups: d_groups(),
        }
    }
}

/// `condition_embedding`: GroupNorm (eps 1e-6) → conv3×3 → SiLU → conv3×3 to `conv_in` width.
#[derive(Clone, Debug)]
pub struct ConditionEmbedding {
    norm_in: GroupNorm,
    conv_in: Conv2d,
    conv_out: Conv2d,
}

impl ConditionEmbedding {
    /// `lq` LQ channels → `c0` UNet channels.
    pub fn new(vb: &VarBuilder, lq: usize, c0: usize, groups: usize) -> Self {
        Self {
            norm_in: GroupNorm::new(&vb.pp("norm_in"), groups, lq, 1e-6),
            conv_in: Conv2d::new(&vb.pp("conv_in"), lq, lq, 3, 1, 1),
            conv_out: Conv2d::new(&vb.pp("conv_out"), lq, c0, 3, 1, 1),
        }
    }

    /// `[B, lq, h, w]` → `[B, c0, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_out
            .forward(silu(self.conv_in.forward(self.norm_in.forward(x))))
    }
}

/// One CLIP-style residual attention block of the alignment stack, `nn.MultiheadAttention`
/// with `batch_first=False` applied to `(B, HW, d)`: the sequence axis is the batch, so each
/// pixel attends across the images of the batch. With one image it is exactly
/// `out_proj(W_v·x + b_v)`; never batch different tiles or images through it.
#[derive(Clone, Debug)]
pub struct AlignmentBlock {
    ln_1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl AlignmentBlock {
    /// Width `d`, `heads` heads, MLP `d → 2d → d`.
    pub fn new(vb: &VarBuilder, d: usize, heads: usize) -> Self {
        let attn = vb.pp("attn");
        let part = |i: usize| {
            Linear::from_parts(
                attn.get_rows("in_proj_weight", [3 * d, d], i * d..(i + 1) * d),
                Some(attn.get_range("in_proj_bias", 3 * d, i * d..(i + 1) * d)),
            )
        };
        Self {
            ln_1: LayerNorm::new(&vb.pp("ln_1"), d, 1e-5),
            q: part(0),
            k: part(1),
            v: part(2),
            out_proj: Linear::new(&attn.pp("out_proj"), d, d, true),
            ln_2: LayerNorm::new(&vb.pp("ln_2"), d, 1e-5),
            c_fc: Linear::new(&vb.pp("mlp.c_fc"), d, 2 * d, true),
            c_proj: Linear::new(&vb.pp("mlp.c_proj"), 2 * d, d, true),
            heads,
        }
    }

    /// `x` `[B, HW, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, _, _] = x.dims();
        let y = self.ln_1.forward(x.clone());
        let attended = if b == 1 {
            // Softmax over a single key is 1: the block reduces to its value path.
            self.v.forward(y)
        } else {
            // Sequence = batch axis: attend across images at every pixel.
            let t = y.swap_dims(0, 1); // [HW, B, d]
            let (q, k, v) = (
                self.q.forward(t.clone()),
                self.k.forward(t.clone()),
                self.v.forward(t),
            );
            let o = attention(
                split_heads(q, self.heads),
                split_heads(k, self.heads),
                split_heads(v, self.heads),
                false,
            );
            merge_heads(o).swap_dims(0, 1)
        };
        let x = x + self.out_proj.forward(attended);
        let h = self
            .c_proj
            .forward(quick_gelu(self.c_fc.forward(self.ln_2.forward(x.clone()))));
        x + h
    }
}

/// FaithDiff's fusion after `conv_in`: `s + spatial_ch_projs(align(cat(s, cond(lq))))`.
/// Without its alignment part (a PGP-DiffSR model whose PEAM replaces it) only
/// `condition_embedding` remains, making the LQ features PEAM takes.
#[derive(Clone, Debug)]
pub struct FaithDiffFusion {
    lq_channels: usize,
    condition_embedding: ConditionEmbedding,
    align: Option<(Vec<AlignmentBlock>, Linear)>,
}

impl FaithDiffFusion {
    /// Keys `condition_embedding.*`, and with `align`: `information_transformer_layes.{i}.*`,
    /// `spatial_ch_projs.*`.
    pub fn new(vb: &VarBuilder, cfg: &FaithDiffConfig, c0: usize, align: bool) -> Result<Self> {
        if !cfg.lq_channels.is_multiple_of(cfg.cond_norm_groups) {
            return Err(Error::config(format!(
                "faithdiff.lq_channels {} is not divisible by cond_norm_groups {}",
                cfg.lq_channels, cfg.cond_norm_groups
            )));
        }
        if !(2 * c0).is_multiple_of(cfg.align_heads) {
            return Err(Error::config(format!(
                "alignment width {} is not divisible by align_heads {}",
                2 * c0,
                cfg.align_heads
            )));
        }
        Ok(Self {
            lq_channels: cfg.lq_channels,
            condition_embedding: ConditionEmbedding::new(
                &vb.pp("condition_embedding"),
                cfg.lq_channels,
                c0,
                cfg.cond_norm_groups,
            ),
            align: align.then(|| {
                let blocks = (0..cfg.align_layers)
                    .map(|i| {
                        AlignmentBlock::new(
                            &vb.pp("information_transformer_layes").pp(i),
                            2 * c0,
                            cfg.align_heads,
                        )
                    })
                    .collect();
                let proj = Linear::new(&vb.pp("spatial_ch_projs"), 2 * c0, c0, true);
                (blocks, proj)
            }),
        })
    }

    /// `condition_embedding(lq)` after checking `lq` `[B, lq, h, w]` against `s` `[B, c0, h, w]`.
    pub fn condition(&self, s: &Tensor<4>, lq: Tensor<4>) -> Result<Tensor<4>> {
        let [b, _, h, w] = s.dims();
        let [lb, lc, lh, lw] = lq.dims();
        if [lb, lc, lh, lw] != [b, self.lq_channels, h, w] {
            return Err(Error::input(format!(
                "LQ features are {:?}; expected [{b}, {}, {h}, {w}] for a latent of {:?}",
                lq.dims(),
                self.lq_channels,
                s.dims()
            )));
        }
        Ok(self.condition_embedding.forward(lq))
    }

    /// `s` = `conv_in` output `[B, c0, h, w]`, `c` = [`FaithDiffFusion::condition`]'s output;
    /// `s` unchanged without the alignment part.
    pub fn fuse(&self, s: Tensor<4>, c: Tensor<4>) -> Tensor<4> {
        let Some((blocks, proj)) = &self.align else {
            return s;
        };
        let [_, _, h, w] = s.dims();
        let mut t = to_tokens(Tensor::cat(vec![s.clone(), c], 1));
        for block in blocks {
            t = block.forward(t);
        }
        s + from_tokens(proj.forward(t), h, w)
    }
}

/// FaithDiff's UNet: the SDXL UNet plus its fusion of LQ features (pipeline.md step 6); with
/// a PEAM config, PGP-DiffSR's UNet (the pruning is in the UNet config's depths).
#[derive(Clone, Debug)]
pub struct FaithDiffUNet {
    /// The (fine-tuned, possibly pruned) SDXL UNet, keys without prefix.
    pub unet: UNet2DConditionModel,
    /// The fusion modules.
    pub fusion: FaithDiffFusion,
    /// `(level, module)` for every PEAM, keys `peam.{level}.*`.
    pub peams: Vec<(usize, Peam)>,
}

impl FaithDiffUNet {
    /// The UNet, the fusion and the PEAMs from one state dict, as in `FaithDiff.bin`.
    pub fn new(
        vb: &VarBuilder,
        cfg: &UNet2DConditionConfig,
        fd: &FaithDiffConfig,
        peam: Option<&PeamConfig>,
    ) -> Result<Self> {
        let c0 = cfg.block_out_channels[0];
        let active = peam.filter(|p| p.is_active());
        let mut peams = Vec::new();
        if let Some(p) = active {
            let mut levels = p.levels.clone();
            levels.sort_unstable();
            levels.dedup();
            if levels.len() != p.levels.len() {
                return Err(Error::config(format!(
                    "peam.levels {:?} lists a level twice",
                    p.levels
                )));
            }
            for level in levels {
                let c = cfg.encoder_level_channels(level).ok_or_else(|| {
                    Error::config(format!(
                        "peam level {level}: the UNet has encoder levels 0..={}",
                        cfg.block_out_channels.len()
                    ))
                })?;
                let lq = (level > 0).then_some(c0);
                peams.push((level, Peam::new(&vb.pp("peam").pp(level), p, c, lq)?));
            }
        }
        let keep_fusion = active.is_none_or(|p| p.keep_faithdiff_fusion);
        Ok(Self {
            unet: UNet2DConditionModel::new(vb, cfg)?,
            fusion: FaithDiffFusion::new(vb, fd, c0, keep_fusion)?,
            peams,
        })
    }

    /// One denoising call with LQ features `input_embedding` `[B, lq, h, w]`.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        cond: &UNetConditioning,
        input_embedding: Tensor<4>,
    ) -> Result<Tensor<4>> {
        self.forward_probed(sample, cond, input_embedding, None)
    }

    /// [`FaithDiffUNet::forward`] with an optional [`Probe`] on the UNet's features.
    pub fn forward_probed(
        &self,
        sample: Tensor<4>,
        cond: &UNetConditioning,
        input_embedding: Tensor<4>,
        probe: Option<&mut dyn Probe>,
    ) -> Result<Tensor<4>> {
        let mut lq = Some(input_embedding);
        let mut f = None;
        let mut peams = self.peams.iter().peekable();
        let fuse = |level: usize, x: Tensor<4>| {
            let x = if level == 0 {
                let c = self
                    .fusion
                    .condition(&x, lq.take().expect("level 0 comes once"))?;
                f = Some(c.clone());
                self.fusion.fuse(x, c)
            } else {
                x
            };
            match peams.next_if(|(l, _)| *l == level) {
                Some((_, peam)) => peam.forward(f.clone().expect("set at level 0"), x),
                None => Ok(x),
            }
        };
        self.unet.forward_probed(sample, cond, fuse, probe)
    }
}
