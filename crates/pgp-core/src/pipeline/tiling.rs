//! MultiDiffusion-style latent tiling (pipeline.md step 7): the tile grid and FaithDiff's
//! Gaussian blending weights with their asymmetric centres.

use std::f64::consts::PI;

use crate::models::unet_2d::UNetLayout;

/// The largest single f32 buffer one batch-1 UNet call on a `latent × latent` tile allocates,
/// as far as the network's shapes say: per level, burn's materialised attention scores
/// (`heads × tokens × tokens`, and `× context` for cross-attention), GEGLU's projection
/// (`tokens × 8C`) and the widest feature map (an up block's skip concatenation). Kernels'
/// own scratch (e.g. a convolution's im2col) is not counted, so treat it as a lower bound.
pub fn unet_largest_buffer(layout: &UNetLayout, latent: usize, context: usize) -> u64 {
    let n = layout.channels.len();
    let mut largest = 0u64;
    let mut side = latent as u64;
    for i in 0..n {
        let tokens = side * side;
        let c = layout.channels[i] as u64;
        let c_next = layout.channels[(i + 1).min(n - 1)] as u64;
        let attn = layout.down_attn[i]
            || layout.up_attn[n - 1 - i]
            || (i == n - 1 && layout.mid_depth > 0);
        let mut level = (c + c_next) * tokens;
        if attn {
            let h = layout.heads[i] as u64;
            level = level
                .max(h * tokens * tokens.max(context as u64))
                .max(8 * c * tokens);
        }
        largest = largest.max(4 * level);
        if i + 1 < n {
            side = side.div_ceil(2);
        }
    }
    largest
}

/// What one batch-1 UNet call on a `latent × latent` tile is expected to hold at its peak,
/// with activations of `elem_bytes` each: the feature maps the encoder keeps for the decoder's
/// skips, the largest working buffer ([`unet_largest_buffer`], f32) four times over (its input,
/// its output and two temporaries), and 128 MiB for the pools' page granularity and kernels'
/// scratch (measured: 114 MiB above the weights for a 16² latent of the full networks,
/// docs/PERFORMANCE.md). An estimate for choosing tiles, not a bound.
pub fn unet_activation_bytes(layout: &UNetLayout, latent: usize, elem_bytes: u64) -> u64 {
    let mut skips = 0u64;
    let mut side = latent as u64;
    for (i, &c) in layout.channels.iter().enumerate() {
        let per_level = layout.layers.get(i).copied().unwrap_or(2) as u64 + 1;
        skips += per_level * c as u64 * side * side;
        if i + 1 < layout.channels.len() {
            side = side.div_ceil(2);
        }
    }
    skips * elem_bytes + 4 * unet_largest_buffer(layout, latent, 77) + (128 << 20)
}

/// What decides the automatic tile (`-t 0`): the device's largest buffer and, when known, a
/// memory budget for the weights (already on the device) plus one tile's activations.
#[derive(Clone, Copy, Debug)]
pub struct TileLimits {
    /// The largest buffer the device allows.
    pub buffer_bytes: u64,
    /// The whole budget, when the caller gives one.
    pub budget_bytes: Option<u64>,
    /// The weights' bytes on the device.
    pub weights_bytes: u64,
    /// Bytes per activation value (2 in f16, 4 in f32).
    pub elem_bytes: u64,
}

/// The largest latent tile, in output pixels (a multiple of 8, at most `max_side_px` rounded up
/// to 8), whose UNet call needs no buffer over the buffer limit and, with a budget, whose
/// estimated activations fit beside the weights — `-t 0`. `None` when not even an 8-pixel tile
/// fits the budget.
pub fn largest_tile_px(
    layout: &UNetLayout,
    limits: &TileLimits,
    max_side_px: usize,
) -> Option<usize> {
    let top = max_side_px.div_ceil(8).max(1);
    let fits = |l: usize| {
        unet_largest_buffer(layout, l, 77) <= limits.buffer_bytes
            && limits.budget_bytes.is_none_or(|b| {
                limits.weights_bytes + unet_activation_bytes(layout, l, limits.elem_bytes) <= b
            })
    };
    let l = (1..=top).rev().find(|&l| fits(l));
    match (l, limits.budget_bytes) {
        (Some(l), _) => Some(l * 8),
        // Nothing fits the buffer limit alone: the smallest tile, as before.
        (None, None) => Some(8),
        (None, Some(_)) => None,
    }
}

/// Start offsets of tiles of `tile` along an axis of `len`, `stride` apart, the last one
/// snapped to the edge; an axis shorter than a tile is one tile.
pub fn tile_starts(len: usize, tile: usize, stride: usize) -> Vec<usize> {
    if len <= tile || stride == 0 {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + tile < len)
        .collect();
    starts.push(len - tile);
    starts.dedup();
    starts
}

/// One tile of the latent: top-left corner and size, in latent units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// Every tile covering an `h × w` latent, row by row.
pub fn tile_grid(h: usize, w: usize, tile: usize, stride: usize) -> Vec<Tile> {
    let (th, tw) = (tile.min(h), tile.min(w));
    let mut tiles = Vec::new();
    for top in tile_starts(h, tile, stride) {
        for left in tile_starts(w, tile, stride) {
            tiles.push(Tile {
                top,
                left,
                height: th,
                width: tw,
            });
        }
    }
    tiles
}

/// FaithDiff's per-tile weights, `[height · width]` row-major: the outer product of
/// `exp(−(x − cx)²/(w²·2·var))/sqrt(2π·var)` with `cx = (w − 1)/2` across and `cy = h/2`
/// down, `var = 0.01`.
pub fn gaussian_weights(height: usize, width: usize) -> Vec<f32> {
    let var = 0.01f64;
    let g = |x: usize, centre: f64, size: usize| {
        let d = x as f64 - centre;
        (-(d * d) / ((size * size) as f64 * 2.0 * var)).exp() / (2.0 * PI * var).sqrt()
    };
    let cx = (width as f64 - 1.0) / 2.0;
    let cy = height as f64 / 2.0;
    let xs: Vec<f64> = (0..width).map(|x| g(x, cx, width)).collect();
    let ys: Vec<f64> = (0..height).map(|y| g(y, cy, height)).collect();
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| (y * x) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_tile_respects_the_buffer_limit() {
        let layout = crate::presets::Arch::FaithDiff
            .unet_config()
            .layout()
            .unwrap();
        // Level-1 self-attention of a 1024² tile: 10 heads × 4096² scores in f32 (pipeline.md).
        assert_eq!(unet_largest_buffer(&layout, 128, 77), 10 * 4096 * 4096 * 4);
        let limits = |buffer_bytes: u64, budget_bytes: Option<u64>| TileLimits {
            buffer_bytes,
            budget_bytes,
            weights_bytes: 5 << 30,
            elem_bytes: 2,
        };
        // WebGPU's default 128 MiB: level-1 side 42 (1764 tokens) fits, 43 does not.
        assert_eq!(
            largest_tile_px(&layout, &limits(128 << 20, None), 4000),
            Some(672)
        );
        // No limit: the whole (padded) image, rounded up to the latent grid.
        assert_eq!(
            largest_tile_px(&layout, &limits(u64::MAX, None), 1500),
            Some(1504)
        );
        // A limit nothing fits still gives the smallest tile.
        assert_eq!(largest_tile_px(&layout, &limits(1, None), 512), Some(8));
        // A budget: the weights plus the tile's estimate fit, one latent row more does not.
        let t = largest_tile_px(&layout, &limits(u64::MAX, Some(6 << 30)), 4000).unwrap();
        let need = |px: usize| (5 << 30) + unet_activation_bytes(&layout, px / 8, 2);
        assert!(need(t) <= 6 << 30 && need(t + 8) > 6 << 30, "{t}");
        assert!(t < 1024, "{t}");
        // A budget smaller than the weights: nothing fits.
        assert_eq!(
            largest_tile_px(&layout, &limits(u64::MAX, Some(4 << 30)), 512),
            None
        );
    }

    #[test]
    fn grid_covers_the_latent_with_half_overlap() {
        assert_eq!(tile_starts(100, 128, 64), vec![0]);
        assert_eq!(tile_starts(128, 128, 64), vec![0]);
        assert_eq!(tile_starts(129, 128, 64), vec![0, 1]);
        assert_eq!(tile_starts(256, 128, 64), vec![0, 64, 128]);
        assert_eq!(tile_starts(300, 128, 64), vec![0, 64, 128, 172]);
        let grid = tile_grid(300, 100, 128, 64);
        assert_eq!(grid.len(), 4);
        assert!(
            grid.iter()
                .all(|t| t.width == 100 && t.height == 128 && t.left == 0)
        );
        for len in 1..400 {
            let s = tile_starts(len, 128, 64);
            let mut covered = vec![false; len];
            for &start in &s {
                covered[start..(start + 128).min(len)]
                    .iter_mut()
                    .for_each(|c| *c = true);
            }
            assert!(covered.iter().all(|&c| c), "{len}");
            assert!(
                s.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 64),
                "{len}"
            );
        }
    }

    #[test]
    fn weights_peak_at_the_asymmetric_centres() {
        let (h, w) = (8, 6);
        let wts = gaussian_weights(h, w);
        // Across: symmetric about (w − 1)/2. Down: peak at row h/2, so row 0 is lower than row h − 1.
        for y in 0..h {
            for x in 0..w / 2 {
                assert!((wts[y * w + x] - wts[y * w + (w - 1 - x)]).abs() < 1e-6);
            }
        }
        let col: Vec<f32> = (0..h).map(|y| wts[y * w]).collect();
        let peak = col.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(col[h / 2], peak);
        assert!(col[0] < col[h - 1]);
        let expected = (-(4.0f64 * 4.0) / (64.0 * 0.02)).exp() / (2.0 * PI * 0.01).sqrt();
        let cx = (-(0.5f64 * 0.5) / (36.0 * 0.02)).exp() / (2.0 * PI * 0.01).sqrt();
        assert!((f64::from(wts[2]) - expected * cx).abs() < 1e-6);
    }
}
