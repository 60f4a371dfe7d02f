//! The small layers every network is made of, as plain structs holding their tensors, with
//! PyTorch's semantics (weights in PyTorch's layouts, the same epsilons, the same defaults).

use burn::tensor::module::{conv2d, linear, unfold4d};
use burn::tensor::ops::{ConvOptions, PadMode, UnfoldOptions};
use burn::tensor::{FloatDType, Int, Tensor, TensorData, activation};

use crate::device::is_cpu;
use crate::profile;
use crate::weights::VarBuilder;

/// The float dtype of a tensor (f32 or f16 here).
pub fn dtype_of<const D: usize>(t: &Tensor<D>) -> FloatDType {
    FloatDType::from(t.dtype())
}

/// On the CPU backend, a linear layer with at most this many rows (tokens × batch) runs
/// weight-stationary, `(W·xᵀ)ᵀ`: the gemm streams the `[out, in]` weight in its stored order.
/// A whole UNet call at a 16² latent (16–77 rows) was 0.50 s this way against 0.60 s with a
/// contiguous `[in, out]` copy and 1.46 s through burn's `linear` on the transposed view; with
/// thousands of rows the weight-stationary product slows down (3× at 1024 rows), and burn's
/// `linear` is within 1.35× of the contiguous copy (docs/PERFORMANCE.md).
const WEIGHT_STATIONARY_ROWS: usize = 512;

/// `nn.Linear`: `y = x·Wᵀ + b`, weight stored `[out, in]` as in PyTorch. Layers compute in
/// their weights' dtype (inputs are cast to it), so a network's precision is its weights'.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight transposed to `[in, out]` (a view of the stored `[out, in]`), burn's layout for
    /// `linear`.
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    /// On burn's CPU backend (see [`WEIGHT_STATIONARY_ROWS`]).
    cpu: bool,
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias` is true) under `vb`.
    pub fn new(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Self {
        let weight = vb.get("weight", [d_out, d_in]);
        let bias = bias.then(|| vb.get("bias", [d_out]));
        Self::from_parts(weight, bias)
    }

    /// A linear layer from a `[out, in]` weight and optional bias already loaded.
    pub fn from_parts(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            cpu: is_cpu(&weight.device()),
            weight: weight.transpose(),
            bias,
        }
    }

    /// Applies the layer over the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let [d_in, d_out] = self.weight.dims();
        let rows = x.shape().num_elements() / d_in.max(1);
        profile::scope(
            || format!("linear {d_in}→{d_out} ×{rows}"),
            || {
                let x = x.cast(dtype_of(&self.weight));
                if self.cpu && rows <= WEIGHT_STATIONARY_ROWS {
                    self.weight_stationary(x, rows)
                } else {
                    linear(x, self.weight.clone(), self.bias.clone())
                }
            },
        )
    }

    /// `(W·xᵀ + b)ᵀ` with `W` in its stored `[out, in]` order; the same values as `linear`
    /// up to summation order.
    fn weight_stationary<const D: usize>(&self, x: Tensor<D>, rows: usize) -> Tensor<D> {
        let mut shape = x.dims();
        let [d_in, d_out] = self.weight.dims();
        let xt = x.reshape([rows, d_in]).transpose();
        let mut y = self.weight.clone().transpose().matmul(xt);
        if let Some(b) = &self.bias {
            y = y + b.clone().reshape([d_out, 1]);
        }
        shape[D - 1] = d_out;
        y.transpose().reshape(shape)
    }
}

/// `nn.Conv2d` with square kernel, zero padding (symmetric, or `(top, bottom, left, right)`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    /// On burn's CPU backend: kernels over 1×1 run as one matmul (see [`Conv2d::unfolded`]).
    cpu: bool,
}

impl Conv2d {
    /// Loads `weight` `[out, in, k, k]` and `bias` `[out]` under `vb`.
    pub fn new(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self::with_padding(vb, c_in, c_out, kernel, stride, [(padding, padding); 2])
    }

    /// Like [`Conv2d::new`] with explicit `(begin, end)` padding for height and width.
    pub fn with_padding(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: [(usize, usize); 2],
    ) -> Self {
        Self {
            cpu: is_cpu(vb.device()),
            weight: vb.get("weight", [c_out, c_in, kernel, kernel]),
            bias: Some(vb.get("bias", [c_out])),
            options: ConvOptions {
                stride: [stride; 2],
                padding,
                dilation: [1; 2],
                groups: 1,
            },
        }
    }

    /// Applies the convolution to `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [co, ci, k, _] = self.weight.dims();
        let [_, _, h, w] = x.dims();
        let key = move || {
            let stride = self.options.stride[0];
            let s = if stride > 1 {
                format!("/{stride}")
            } else {
                String::new()
            };
            format!("conv2d {k}x{k}{s} {ci}→{co} @{h}x{w}")
        };
        profile::scope(key, || {
            let x = x.cast(dtype_of(&self.weight));
            if self.takes_unfolded(h, w) {
                return self.unfolded(x);
            }
            conv2d(
                x,
                self.weight.clone(),
                self.bias.clone(),
                self.options.clone(),
            )
        })
    }

    /// Whether an `h × w` input runs through [`Conv2d::unfolded`]: on the CPU backend, kernels
    /// over 1×1 while the output has at most `4·Co` pixels.
    fn takes_unfolded(&self, h: usize, w: usize) -> bool {
        let [co, _, k, _] = self.weight.dims();
        let stride = self.options.stride[0];
        self.cpu && k > 1 && (h / stride) * (w / stride) <= 4 * co
    }

    /// The convolution as `W[Co, Ci·k·k] · unfold(pad(x))` plus the bias: burn's CPU conv
    /// re-lays out the whole weight on every call (59 MB for SDXL's 1280-channel 3×3), which
    /// at small feature maps costs several times the product itself (docs/PERFORMANCE.md).
    /// Here the weight is used in its stored order, with no copy; the unfolded input is
    /// `oh·ow / Co` times the weight's size, so [`Conv2d::forward`] takes this path only while
    /// the output has at most `4·Co` pixels (10× faster for 1280 channels at 4×4, even at
    /// 640 channels at 32×32, 1.2× slower than burn's for 320 channels at 64×64).
    fn unfolded(&self, x: Tensor<4>) -> Tensor<4> {
        let [co, ci, k, _] = self.weight.dims();
        let [b, _, h, w] = x.dims();
        let [(pt, pb), (pl, pr)] = self.options.padding;
        let stride = self.options.stride;
        let (oh, ow) = (
            (h + pt + pb - k) / stride[0] + 1,
            (w + pl + pr - k) / stride[1] + 1,
        );
        let x = if pt + pb + pl + pr > 0 {
            x.pad([(pt, pb), (pl, pr)], PadMode::Constant(0.0))
        } else {
            x
        };
        // [B, Ci·k·k, oh·ow], rows in the weight's (c, kh, kw) order.
        let cols = unfold4d(x, [k, k], UnfoldOptions::new(stride, [0, 0], [1, 1]));
        let w2 = self.weight.clone().reshape([co, ci * k * k]);
        let mut y = if b == 1 {
            w2.matmul(cols.reshape([ci * k * k, oh * ow]))
                .unsqueeze::<3>()
        } else {
            w2.unsqueeze::<3>().matmul(cols)
        };
        if let Some(bias) = &self.bias {
            y = y + bias.clone().reshape([1, co, 1]);
        }
        y.reshape([b, co, oh, ow])
    }
}

/// `nn.GroupNorm` with affine parameters.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    groups: usize,
    eps: f64,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl GroupNorm {
    /// Loads `weight` and `bias` `[channels]` under `vb`.
    pub fn new(vb: &VarBuilder, groups: usize, channels: usize, eps: f64) -> Self {
        Self {
            groups,
            eps,
            weight: vb.get("weight", [channels]),
            bias: vb.get("bias", [channels]),
        }
    }

    /// Normalises `[B, C, H, W]` over each group of channels and all pixels (in f32, whatever
    /// the input's dtype, which the output keeps).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, c, h, w] = x.dims();
        profile::scope(|| format!("group_norm {c} @{h}x{w}"), || self.norm(x))
    }

    fn norm(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let dtype = dtype_of(&x);
        let g = x
            .cast(FloatDType::F32)
            .reshape([b, self.groups, (c / self.groups) * h * w]);
        let (var, mean) = g.clone().var_mean_bias(2);
        let g = (g - mean) / (var + self.eps).sqrt();
        let x = g.reshape([b, c, h, w]);
        let (weight, bias) = (
            self.weight.clone().cast(FloatDType::F32),
            self.bias.clone().cast(FloatDType::F32),
        );
        (x * weight.reshape([1, c, 1, 1]) + bias.reshape([1, c, 1, 1])).cast(dtype)
    }
}

/// `nn.LayerNorm` over the last axis with affine parameters.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    eps: f64,
    weight: Tensor<1>,
    bias: Tensor<1>,
}

impl LayerNorm {
    /// Loads `weight` and `bias` `[dim]` under `vb`.
    pub fn new(vb: &VarBuilder, dim: usize, eps: f64) -> Self {
        Self {
            eps,
            weight: vb.get("weight", [dim]),
            bias: vb.get("bias", [dim]),
        }
    }

    /// Normalises over the last axis (in f32, whatever the input's dtype, which the output
    /// keeps).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dim = self.weight.dims()[0];
        profile::scope(|| format!("layer_norm {dim}"), || self.norm(x))
    }

    fn norm<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = dtype_of(&x);
        let x = x.cast(FloatDType::F32);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = (x - mean) / (var + self.eps).sqrt();
        let dim = self.weight.dims()[0];
        let mut shape = [1; D];
        shape[D - 1] = dim;
        let (weight, bias) = (
            self.weight.clone().cast(FloatDType::F32),
            self.bias.clone().cast(FloatDType::F32),
        );
        (x * weight.reshape(shape) + bias.reshape(shape)).cast(dtype)
    }
}

/// SiLU, `x·σ(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    profile::scope(|| "silu".into(), || activation::silu(x))
}

/// Exact (erf) GELU, PyTorch's default.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    profile::scope(|| "gelu".into(), || activation::gelu(x))
}

/// CLIP's QuickGELU, `x·σ(1.702·x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * activation::sigmoid(x * 1.702)
}

/// Activation by its transformers name (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU.
    Gelu,
    /// QuickGELU.
    QuickGelu,
}

impl Activation {
    /// Parses a transformers `hidden_act` value.
    pub fn parse(name: &str) -> crate::Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "quick_gelu" => Ok(Self::QuickGelu),
            other => Err(crate::Error::config(format!(
                "unsupported hidden_act `{other}` (supported: gelu, quick_gelu)"
            ))),
        }
    }

    /// Applies the activation.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => gelu(x),
            Self::QuickGelu => quick_gelu(x),
        }
    }
}

/// `F.interpolate(x, size=(oh, ow), mode="nearest")`, with PyTorch's index rule
/// `src = min(floor(dst · (in / out)), in − 1)` computed in f32, as PyTorch does.
pub fn upsample_nearest(x: Tensor<4>, out_h: usize, out_w: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let device = x.device();
    let indices = |input: usize, output: usize| -> Tensor<1, Int> {
        let scale = input as f32 / output as f32;
        let idx: Vec<i64> = (0..output)
            .map(|d| ((d as f32 * scale).floor() as usize).min(input - 1) as i64)
            .collect();
        Tensor::from_data(TensorData::new(idx, [output]), &device)
    };
    profile::scope(
        || format!("upsample_nearest @{h}x{w}"),
        || x.select(2, indices(h, out_h)).select(3, indices(w, out_w)),
    )
}

/// Reshapes `[B, C, H, W]` to tokens `[B, H·W, C]`.
pub fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// Reshapes tokens `[B, H·W, C]` back to `[B, C, H, W]`.
pub fn from_tokens(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, c, h, w])
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::conformance::rel_l2;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// The CPU paths (unfolded convolution, weight-stationary linear) against burn's own ops.
    #[test]
    fn cpu_layouts_match_burns_ops() {
        let device = Device::flex();
        let vb = VarBuilder::random(&device);
        let n = Distribution::Normal(0.0, 1.0);
        // (c_in, c_out, kernel, stride, padding, batch, h, w): SDXL's 3×3, the stride-2
        // downsampler, the VAE's bottom/right-only padding, a 1×1 shortcut, batch 2, odd sizes,
        // and a feature map too large for the unfolded path (burn's conv).
        let cases = [
            (8, 12, 3, 1, [(1, 1), (1, 1)], 1, 6, 5),
            (8, 8, 3, 2, [(1, 1), (1, 1)], 1, 7, 6),
            (6, 6, 3, 2, [(0, 1), (0, 1)], 2, 8, 8),
            (5, 7, 3, 1, [(1, 1), (1, 1)], 2, 4, 4),
            (8, 4, 1, 1, [(0, 0), (0, 0)], 1, 3, 3),
            (2, 2, 3, 1, [(1, 1), (1, 1)], 1, 8, 8),
        ];
        for (ci, co, k, s, pad, b, h, w) in cases {
            let conv = Conv2d::with_padding(&vb.pp("c"), ci, co, k, s, pad);
            // The 3×3 kernels take the unfolded path, but the last, whose 8×8 output is more
            // than 4·Co = 8 pixels; the 1×1 never does.
            let unfolded = k > 1 && (ci, h) != (2, 8);
            assert_eq!(
                conv.takes_unfolded(h, w),
                unfolded,
                "{ci}→{co} k{k} @{h}x{w}"
            );
            let bias = Tensor::<1>::random([co], n, &device);
            let conv = Conv2d {
                bias: Some(bias),
                ..conv
            };
            let x = Tensor::<4>::random([b, ci, h, w], n, &device);
            let want = conv2d(
                x.clone(),
                conv.weight.clone(),
                conv.bias.clone(),
                conv.options.clone(),
            );
            let got = conv.forward(x);
            assert_eq!(got.dims(), want.dims(), "{ci}→{co} k{k} s{s} {pad:?}");
            let e = rel_l2(&values(got), &values(want));
            assert!(e < 1e-6, "{ci}→{co} k{k} s{s} {pad:?}: rel L2 {e}");
        }
        for rows in [1, 3, WEIGHT_STATIONARY_ROWS, WEIGHT_STATIONARY_ROWS + 1] {
            let weight = Tensor::<2>::random([9, 6], n, &device);
            let bias = Tensor::<1>::random([9], n, &device);
            let layer = Linear::from_parts(weight.clone(), Some(bias.clone()));
            assert!(layer.cpu);
            let x = Tensor::<3>::random([1, rows, 6], n, &device);
            let want = linear(x.clone(), weight.transpose(), Some(bias));
            let got = layer.forward(x);
            assert_eq!(got.dims(), [1, rows, 9]);
            let e = rel_l2(&values(got), &values(want));
            assert!(e < 1e-6, "{rows} rows: rel L2 {e}");
        }
    }
}
