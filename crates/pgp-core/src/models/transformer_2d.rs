//! diffusers `Transformer2DModel` with `use_linear_projection = True` (SDXL), and its
//! `BasicTransformerBlock` with a GEGLU `FeedForward` (`attention.py`, `transformer_2d.py`).

use burn::tensor::Tensor;

use super::probe::TokenProbe;
use crate::attention::{DIFFUSERS, MultiHeadAttention};
use crate::nn::{GroupNorm, LayerNorm, Linear, from_tokens, gelu, to_tokens};
use crate::weights::VarBuilder;

/// `FeedForward(dim, activation_fn="geglu")`: `net.0.proj` (dim → 2·4·dim), GEGLU, `net.2`.
#[derive(Clone, Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    /// Inner width `4·dim`.
    pub fn new(vb: &VarBuilder, dim: usize) -> Self {
        let inner = 4 * dim;
        Self {
            proj: Linear::new(&vb.pp("net.0.proj"), dim, 2 * inner, true),
            out: Linear::new(&vb.pp("net.2"), inner, dim, true),
        }
    }

    /// `net.2(h · gelu(gate))` where `h, gate = net.0.proj(x).chunk(2)`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hg = self.proj.forward(x);
        let [b, s, two_inner] = hg.dims();
        let inner = two_inner / 2;
        let h = hg.clone().slice([0..b, 0..s, 0..inner]);
        let gate = hg.slice([0..b, 0..s, inner..two_inner]);
        self.out.forward(h * gelu(gate))
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each with a
/// pre-LayerNorm (eps 1e-5) and a residual.
#[derive(Clone, Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: MultiHeadAttention,
    norm2: LayerNorm,
    attn2: MultiHeadAttention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// `dim = heads · head_dim`; `cross_dim` is the text embedding width.
    pub fn new(vb: &VarBuilder, dim: usize, heads: usize, cross_dim: usize) -> Self {
        Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), dim, 1e-5),
            attn1: MultiHeadAttention::new(
                &vb.pp("attn1"),
                &DIFFUSERS,
                dim,
                dim,
                dim,
                heads,
                false,
            ),
            norm2: LayerNorm::new(&vb.pp("norm2"), dim, 1e-5),
            attn2: MultiHeadAttention::new(
                &vb.pp("attn2"),
                &DIFFUSERS,
                dim,
                cross_dim,
                dim,
                heads,
                false,
            ),
            norm3: LayerNorm::new(&vb.pp("norm3"), dim, 1e-5),
            ff: FeedForward::new(&vb.pp("ff"), dim),
        }
    }

    /// `x` `[B, S, dim]`, `context` `[B, L, cross_dim]`.
    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = self
            .attn1
            .forward(self.norm1.forward(x.clone()), None, false)
            + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context.clone()), false)
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `Transformer2DModel` (continuous input, linear projections): GroupNorm (eps 1e-6),
/// `proj_in`, `depth` transformer blocks, `proj_out`, residual.
#[derive(Clone, Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl Transformer2DModel {
    /// `channels` in and out; `heads` × (`channels / heads`) attention.
    pub fn new(
        vb: &VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        cross_dim: usize,
        groups: usize,
    ) -> Self {
        Self {
            norm: GroupNorm::new(&vb.pp("norm"), groups, channels, 1e-6),
            proj_in: Linear::new(&vb.pp("proj_in"), channels, channels, true),
            blocks: (0..depth)
                .map(|i| {
                    BasicTransformerBlock::new(
                        &vb.pp("transformer_blocks").pp(i),
                        channels,
                        heads,
                        cross_dim,
                    )
                })
                .collect(),
            proj_out: Linear::new(&vb.pp("proj_out"), channels, channels, true),
        }
    }

    /// `x` `[B, C, H, W]`, `context` `[B, L, cross_dim]`.
    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        self.forward_probed(x, context, None)
    }

    /// [`Transformer2DModel::forward`], calling `probe(k, input, output)` around block `k`.
    pub fn forward_probed(
        &self,
        x: Tensor<4>,
        context: &Tensor<3>,
        mut probe: Option<TokenProbe<'_>>,
    ) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let mut t = self
            .proj_in
            .forward(to_tokens(self.norm.forward(x.clone())));
        for (k, block) in self.blocks.iter().enumerate() {
            t = match probe.as_deref_mut() {
                Some(p) => {
                    let out = block.forward(t.clone(), context);
                    p(k, &t, &out);
                    out
                }
                None => block.forward(t, context),
            };
        }
        from_tokens(self.proj_out.forward(t), h, w) + x
    }
}
