//! The one attention entry point. Every attention in every network (UNet self- and
//! cross-attention, the VAE's pixel attention, CLIP's causal attention, FaithDiff's alignment
//! blocks) goes through [`attention`], so a fused kernel can take over in one place.

use burn::tensor::module;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Tensor};

use crate::kernels;
use crate::nn::Linear;
use crate::weights::VarBuilder;

/// `softmax(q·kᵀ/√D [+ causal mask])·v` for `q` `[B, H, S, D]`, `k`, `v` `[B, H, Skv, D]`:
/// the WGSL flash-attention kernel on burn's wgpu runtime (head dims up to 128; a causal mask
/// only for square attention, the one case the networks use), burn's `module::attention`
/// elsewhere.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let [_, heads, s, d] = q.dims();
    let skv = k.dims()[2];
    crate::profile::scope(
        || format!("attention {heads}h {s}x{skv}x{d}"),
        || attend(q, k, v, causal),
    )
}

fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let (d, dv) = (q.dims()[3], v.dims()[3]);
    let square = q.dims()[2] == k.dims()[2];
    if kernels::attention::supports(d, dv) && (square || !causal) && kernels::available(&q.device())
    {
        return kernels::flash_attention(q, k, v, causal);
    }
    reference_attention(q, k, v, causal)
}

/// The plain-burn attention (`module::attention`): the fallback and the kernel's reference.
/// Half-precision inputs are attended in f32 (the softmax needs it) and the output cast back.
pub fn reference_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let dtype = crate::nn::dtype_of(&q);
    if dtype != FloatDType::F32 {
        let f = |t: Tensor<4>| t.cast(FloatDType::F32);
        return reference_attention(f(q), f(k), f(v), causal).cast(dtype);
    }
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    module::attention(q, k, v, None, None, options)
}

/// Splits `[B, S, H·D]` into heads `[B, H, S, D]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, s, inner] = x.dims();
    x.reshape([b, s, heads, inner / heads]).swap_dims(1, 2)
}

/// Merges heads `[B, H, S, D]` back into `[B, S, H·D]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, s, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * d])
}

/// Multi-head attention with separate q/k/v/out projections, as diffusers' `Attention`
/// (`to_q`, `to_k`, `to_v`, `to_out.0`) and transformers' CLIP attention
/// (`q_proj`, `k_proj`, `v_proj`, `out_proj`) lay them out.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

/// Key names of the four projections.
pub struct ProjectionNames {
    /// Query projection.
    pub q: &'static str,
    /// Key projection.
    pub k: &'static str,
    /// Value projection.
    pub v: &'static str,
    /// Output projection.
    pub out: &'static str,
}

/// diffusers' `Attention` names.
pub const DIFFUSERS: ProjectionNames = ProjectionNames {
    q: "to_q",
    k: "to_k",
    v: "to_v",
    out: "to_out.0",
};

/// transformers' CLIP attention names.
pub const CLIP: ProjectionNames = ProjectionNames {
    q: "q_proj",
    k: "k_proj",
    v: "v_proj",
    out: "out_proj",
};

impl MultiHeadAttention {
    /// `dim` query width, `kv_dim` context width, `inner = heads · head_dim`.
    pub fn new(
        vb: &VarBuilder,
        names: &ProjectionNames,
        dim: usize,
        kv_dim: usize,
        inner: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Self {
        Self {
            q: Linear::new(&vb.pp(names.q), dim, inner, qkv_bias),
            k: Linear::new(&vb.pp(names.k), kv_dim, inner, qkv_bias),
            v: Linear::new(&vb.pp(names.v), kv_dim, inner, qkv_bias),
            out: Linear::new(&vb.pp(names.out), inner, dim, true),
            heads,
        }
    }

    /// Attends from `x` `[B, S, dim]` to `context` `[B, Skv, kv_dim]` (self-attention when
    /// `context` is `None`).
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>, causal: bool) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = split_heads(self.q.forward(x), self.heads);
        let k = split_heads(self.k.forward(context.clone()), self.heads);
        let v = split_heads(self.v.forward(context), self.heads);
        self.out.forward(merge_heads(attention(q, k, v, causal)))
    }
}
