//! diffusers' UNet blocks (`unet_2d_blocks.py`): `DownBlock2D` / `CrossAttnDownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D` / `CrossAttnUpBlock2D`. A block without attention has
//! an empty `attentions` list, so one struct serves both kinds, as in diffusers' key layout.

use burn::tensor::Tensor;

use super::probe::BlockProbe;
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer_2d::Transformer2DModel;
use crate::weights::VarBuilder;

/// What every attention block of one UNet level shares.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    /// Number of heads.
    pub heads: usize,
    /// Text embedding width.
    pub cross_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
}

/// A down block: resnets (each optionally followed by a transformer), then a downsampler.
#[derive(Clone, Debug)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// `depths[j]` is the transformer depth after resnet `j`; `attn = None` for `DownBlock2D`.
    pub fn new(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        temb: usize,
        layers: usize,
        attn: Option<(AttnParams, &[usize])>,
        add_downsample: bool,
        eps: f64,
        groups: usize,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let cin = if j == 0 { c_in } else { c_out };
                ResnetBlock2D::new(&vb.pp("resnets").pp(j), cin, c_out, Some(temb), groups, eps)
            })
            .collect();
        let attentions = match attn {
            Some((p, depths)) => (0..layers)
                .map(|j| {
                    Transformer2DModel::new(
                        &vb.pp("attentions").pp(j),
                        c_out,
                        p.heads,
                        depths[j],
                        p.cross_dim,
                        p.groups,
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let downsampler =
            add_downsample.then(|| Downsample2D::new(&vb.pp("downsamplers.0"), c_out, false));
        Self {
            resnets,
            attentions,
            downsampler,
        }
    }

    /// Runs the block, pushing every intermediate output onto the skip list.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer.
#[derive(Clone, Debug)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// One attention layer of transformer depth `depth`.
    pub fn new(
        vb: &VarBuilder,
        channels: usize,
        temb: usize,
        attn: AttnParams,
        depth: usize,
        eps: f64,
    ) -> Self {
        let resnet = |j: usize| {
            ResnetBlock2D::new(
                &vb.pp("resnets").pp(j),
                channels,
                channels,
                Some(temb),
                attn.groups,
                eps,
            )
        };
        Self {
            resnets: vec![resnet(0), resnet(1)],
            attentions: vec![Transformer2DModel::new(
                &vb.pp("attentions.0"),
                channels,
                attn.heads,
                depth,
                attn.cross_dim,
                attn.groups,
            )],
        }
    }

    /// Runs the block.
    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context), Some(temb));
        }
        x
    }
}

/// An up block: resnets over (x ‖ skip) (each optionally followed by a transformer), then an
/// upsampler to the next skip's size.
#[derive(Clone, Debug)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `prev` is the previous up block's width, `c_skip_last` the width of this block's last
    /// skip (the matching down level's input width).
    pub fn new(
        vb: &VarBuilder,
        c_skip_last: usize,
        c_out: usize,
        prev: usize,
        temb: usize,
        layers: usize,
        attn: Option<(AttnParams, &[usize])>,
        add_upsample: bool,
        eps: f64,
        groups: usize,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let skip = if j == layers - 1 { c_skip_last } else { c_out };
                let cin = if j == 0 { prev } else { c_out };
                ResnetBlock2D::new(
                    &vb.pp("resnets").pp(j),
                    cin + skip,
                    c_out,
                    Some(temb),
                    groups,
                    eps,
                )
            })
            .collect();
        let attentions = match attn {
            Some((p, depths)) => (0..layers)
                .map(|j| {
                    Transformer2DModel::new(
                        &vb.pp("attentions").pp(j),
                        c_out,
                        p.heads,
                        depths[j],
                        p.cross_dim,
                        p.groups,
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let upsampler = add_upsample.then(|| Upsample2D::new(&vb.pp("upsamplers.0"), c_out));
        Self {
            resnets,
            attentions,
            upsampler,
        }
    }

    /// Number of skips this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// Runs the block, popping its skips; upsamples to `up_size` when it has an upsampler.
    /// `probe(j, k, input, output)` sees transformer block `k` of attention `j`.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
        up_size: Option<[usize; 2]>,
        mut probe: Option<BlockProbe<'_>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path pushed one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = match probe.as_deref_mut() {
                    Some(p) => attn.forward_probed(x, context, Some(&mut |k, a, b| p(j, k, a, b))),
                    None => attn.forward(x, context),
                };
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(x, up_size),
            None => x,
        }
    }
}
