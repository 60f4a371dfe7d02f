//! Parameter and FLOP counts of an architecture, by walking its module configs.
//!
//! Parameters are counted from the shapes the real constructors ask for (the loader's
//! shape-only pass), so the count is exactly what a checkpoint must contain. FLOPs are
//! 2 × multiply-adds of every convolution, linear layer and attention product (scores and
//! values) in one UNet evaluation; norms and element-wise ops are not counted.

use burn::tensor::Device;
use serde::Serialize;

use crate::error::Result;
use crate::models::faithdiff::{FaithDiffFusion, FaithDiffUNet};
use crate::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::DenoiseEncoder;
use crate::presets::{Arch, sdxl_vae_config};
use crate::weights::count_params;

/// Text tokens the cross-attention sees.
const TEXT_TOKENS: usize = 77;

/// What `pgp-wgpu info` reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ArchInfo {
    /// Preset name.
    pub arch: String,
    /// UNet parameters.
    pub unet_params: u64,
    /// FaithDiff additions: `denoise_encoder`, `condition_embedding`, alignment stack,
    /// `spatial_ch_projs`.
    pub extras_params: u64,
    /// PEAM parameters (0 without PEAM).
    pub peam_params: u64,
    /// Transformer blocks in the UNet.
    pub transformer_blocks: usize,
    /// FLOPs of one UNet evaluation at a 128×128 latent (1024² pixels), batch 1.
    pub flops_1024: u64,
}

/// Counts an architecture preset. `device` only holds the shape pass's 1-element placeholders.
pub fn arch_info(arch: Arch, device: &Device) -> Result<ArchInfo> {
    let cfg = arch.unet_config();
    let unet_params = count_params(device, |vb| UNet2DConditionModel::new(&vb, &cfg))?;
    let vae = sdxl_vae_config();
    let fd = arch.faithdiff_config();
    let c0 = cfg.block_out_channels[0];
    let extras_params = count_params(device, |vb| DenoiseEncoder::new(&vb, &vae))?
        + count_params(device, |vb| FaithDiffFusion::new(&vb, &fd, c0, true))?;
    let peam_params = match arch.peam_config() {
        // The whole model with and without its PEAMs (a shape-only pass: nothing is allocated).
        Some(p) => {
            count_params(device, |vb| FaithDiffUNet::new(&vb, &cfg, &fd, Some(&p)))?
                - count_params(device, |vb| FaithDiffUNet::new(&vb, &cfg, &fd, None))?
        }
        None => 0,
    };
    let l = cfg.layout()?;
    let transformer_blocks = (0..l.channels.len())
        .map(|i| {
            if l.down_attn[i] {
                l.down_depth[i] * l.layers[i]
            } else {
                0
            }
        })
        .sum::<usize>()
        + l.mid_depth
        + (0..l.channels.len())
            .map(|i| {
                if l.up_attn[i] {
                    l.up_depth[i].iter().sum()
                } else {
                    0
                }
            })
            .sum::<usize>();
    Ok(ArchInfo {
        arch: arch.name().to_string(),
        unet_params,
        extras_params,
        peam_params,
        transformer_blocks,
        flops_1024: unet_flops(&cfg, 128, 128)?,
    })
}

/// Accumulates 2·MAC counts while walking the UNet's forward pass.
struct Flops {
    total: u64,
    temb: u64,
    cross: u64,
}

impl Flops {
    fn conv(&mut self, cin: usize, cout: usize, k: usize, h: usize, w: usize) {
        self.total += 2 * (cin * cout * k * k * h * w) as u64;
    }
    fn linear(&mut self, din: usize, dout: usize, tokens: usize) {
        self.total += 2 * (din * dout * tokens) as u64;
    }
    fn resnet(&mut self, cin: usize, cout: usize, h: usize, w: usize) {
        self.conv(cin, cout, 3, h, w);
        self.linear(self.temb as usize, cout, 1);
        self.conv(cout, cout, 3, h, w);
        if cin != cout {
            self.conv(cin, cout, 1, h, w);
        }
    }
    fn transformer(&mut self, c: usize, depth: usize, h: usize, w: usize) {
        let n = h * w;
        let cross = self.cross as usize;
        self.linear(c, c, n); // proj_in
        for _ in 0..depth {
            self.linear(c, 3 * c, n); // q, k, v
            self.total += 2 * 2 * (n * n * c) as u64; // scores and values
            self.linear(c, c, n); // out
            self.linear(c, c, n); // cross q
            self.linear(cross, 2 * c, TEXT_TOKENS); // cross k, v
            self.total += 2 * 2 * (n * TEXT_TOKENS * c) as u64;
            self.linear(c, c, n); // cross out
            self.linear(c, 8 * c, n); // GEGLU proj
            self.linear(4 * c, c, n); // ff out
        }
        self.linear(c, c, n); // proj_out
    }
}

/// FLOPs of one UNet evaluation on an `h`×`w` latent, batch 1.
pub fn unet_flops(cfg: &UNet2DConditionConfig, h: usize, w: usize) -> Result<u64> {
    let l = cfg.layout()?;
    let n = l.channels.len();
    let mut f = Flops {
        total: 0,
        temb: l.temb as u64,
        cross: l.cross[0] as u64,
    };
    let c0 = l.channels[0];
    f.linear(c0, l.temb, 1);
    f.linear(l.temb, l.temb, 1);
    if let Some(input) = cfg.projection_class_embeddings_input_dim {
        f.linear(input, l.temb, 1);
        f.linear(l.temb, l.temb, 1);
    }
    let (mut h, mut w) = (h, w);
    f.conv(cfg.in_channels, c0, cfg.conv_in_kernel, h, w);
    let mut prev = c0;
    let mut sizes = Vec::new();
    for i in 0..n {
        f.cross = l.cross[i] as u64;
        for j in 0..l.layers[i] {
            f.resnet(
                if j == 0 { prev } else { l.channels[i] },
                l.channels[i],
                h,
                w,
            );
            if l.down_attn[i] {
                f.transformer(l.channels[i], l.down_depth[i], h, w);
            }
        }
        prev = l.channels[i];
        if i + 1 < n {
            sizes.push((h, w));
            h = h.div_ceil(2);
            w = w.div_ceil(2);
            f.conv(prev, prev, 3, h, w);
        }
    }
    let c = l.channels[n - 1];
    f.resnet(c, c, h, w);
    f.transformer(c, l.mid_depth, h, w);
    f.resnet(c, c, h, w);
    for i in 0..n {
        let level = n - 1 - i;
        let cout = l.channels[level];
        let skip_last = l.channels[level.saturating_sub(1)];
        f.cross = l.cross[level] as u64;
        let layers = l.layers[level] + 1;
        for j in 0..layers {
            let skip = if j == layers - 1 { skip_last } else { cout };
            f.resnet(if j == 0 { prev } else { cout } + skip, cout, h, w);
            if l.up_attn[i] {
                f.transformer(cout, l.up_depth[i][j], h, w);
            }
        }
        prev = cout;
        if i + 1 < n {
            (h, w) = sizes.pop().expect("one size per downsample");
            f.conv(cout, cout, 3, h, w);
        }
    }
    f.conv(c0, cfg.out_channels, cfg.conv_out_kernel, h, w);
    Ok(f.total)
}
