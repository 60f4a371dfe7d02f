//! diffusers `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (`resnet.py`, `downsampling.py`,
//! `upsampling.py`), shared by the UNet and the VAE.

use burn::tensor::Tensor;

use crate::nn::{Conv2d, GroupNorm, Linear, silu, upsample_nearest};
use crate::weights::VarBuilder;

/// `ResnetBlock2D` with the default `time_embedding_norm = "default"` and output scale 1.
#[derive(Clone, Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels = None` for the VAE's blocks (no time embedding).
    pub fn new(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Self {
        Self {
            norm1: GroupNorm::new(&vb.pp("norm1"), groups, c_in, eps),
            conv1: Conv2d::new(&vb.pp("conv1"), c_in, c_out, 3, 1, 1),
            time_emb_proj: temb_channels
                .map(|t| Linear::new(&vb.pp("time_emb_proj"), t, c_out, true)),
            norm2: GroupNorm::new(&vb.pp("norm2"), groups, c_out, eps),
            conv2: Conv2d::new(&vb.pp("conv2"), c_out, c_out, 3, 1, 1),
            conv_shortcut: (c_in != c_out)
                .then(|| Conv2d::new(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)),
        }
    }

    /// `x` `[B, C, H, W]`, `temb` `[B, T]` (ignored when the block has no projection).
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(temb.clone()));
            let [b, c] = t.dims();
            h = h + t.reshape([b, c, 1, 1]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// `Downsample2D(use_conv=True)`: a 3×3 stride-2 convolution. The UNet pads 1 on every side;
/// the VAE (`padding=0`) pads zero on the bottom and right only, `F.pad(x, (0, 1, 0, 1))`.
#[derive(Clone, Debug)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    /// `vae_padding`: the VAE's asymmetric (0, 1) padding instead of 1 on each side.
    pub fn new(vb: &VarBuilder, channels: usize, vae_padding: bool) -> Self {
        let padding = if vae_padding { (0, 1) } else { (1, 1) };
        Self {
            conv: Conv2d::with_padding(&vb.pp("conv"), channels, channels, 3, 2, [padding; 2]),
        }
    }

    /// Halves the spatial size (rounding up).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// `Upsample2D(use_conv=True)`: nearest upsampling, then a 3×3 convolution.
#[derive(Clone, Debug)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// A 3×3 convolution on `channels`.
    pub fn new(vb: &VarBuilder, channels: usize) -> Self {
        Self {
            conv: Conv2d::new(&vb.pp("conv"), channels, channels, 3, 1, 1),
        }
    }

    /// Upsamples to `size` (the skip connection's size), or ×2 when `None`.
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let [oh, ow] = size.unwrap_or([2 * h, 2 * w]);
        self.conv.forward(upsample_nearest(x, oh, ow))
    }
}
