//! The small layers every network is made of, as plain structs holding their tensors, with
//! PyTorch's semantics (weights in PyTorch's layouts, the same epsilons, the same defaults).

use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, Int, Tensor, TensorData, activation};

use crate::weights::VarBuilder;

/// The float dtype of a tensor (f32 or f16 here).
pub fn dtype_of<const D: usize>(t: &Tensor<D>) -> FloatDType {
    FloatDType::from(t.dtype())
}

/// `nn.Linear`: `y = x·Wᵀ + b`, weight stored `[out, in]` as in PyTorch. Layers compute in
/// their weights' dtype (inputs are cast to it), so a network's precision is its weights'.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight transposed to `[in, out]`, burn's layout for `linear`.
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias` is true) under `vb`.
    pub fn new(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Self {
        let weight = vb.get("weight", [d_out, d_in]).transpose();
        let bias = bias.then(|| vb.get("bias", [d_out]));
        Self { weight, bias }
    }

    /// A linear layer from a `[out, in]` weight and optional bias already loaded.
    pub fn from_parts(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: weight.transpose(),
            bias,
        }
    }

    /// Applies the layer over the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = x.cast(dtype_of(&self.weight));
        linear(x, self.weight.clone(), self.bias.clone())
    }
}

/// `nn.Conv2d` with square kernel, zero padding (symmetric, or `(top, bottom, left, right)`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
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
        conv2d(
            x.cast(dtype_of(&self.weight)),
            self.weight.clone(),
            self.bias.clone(),
            self.options.clone(),
        )
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
    activation::silu(x)
}

/// Exact (erf) GELU, PyTorch's default.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::gelu(x)
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
    x.select(2, indices(h, out_h)).select(3, indices(w, out_w))
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
