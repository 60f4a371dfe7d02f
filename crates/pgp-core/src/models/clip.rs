//! transformers `CLIPTextModel` and `CLIPTextModelWithProjection` (`modeling_clip.py`):
//! causal text transformer, penultimate hidden states for SDXL, pooled output at the first
//! end-of-text token.

use burn::tensor::module::embedding;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::attention::{CLIP, MultiHeadAttention};
use crate::error::{Error, Result};
use crate::nn::{Activation, LayerNorm, Linear};
use crate::weights::VarBuilder;

fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_eos() -> i64 {
    2
}

/// The fields of a transformers `CLIPTextConfig` this runtime reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
}

impl ClipTextConfig {
    /// Parses a `config.json` dict.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let cfg: Self = crate::config::parse(value, "CLIPTextModel")?;
        Activation::parse(&cfg.hidden_act)?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(Error::config(format!(
                "CLIP hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.num_hidden_layers < 2 {
            return Err(Error::config(
                "CLIP needs at least 2 layers (SDXL uses the penultimate)",
            ));
        }
        crate::config::at_most(cfg.num_hidden_layers, 128, "CLIP num_hidden_layers")?;
        if cfg.max_position_embeddings < 77 {
            return Err(Error::config(format!(
                "CLIP max_position_embeddings {} is under the 77 tokens of a prompt",
                cfg.max_position_embeddings
            )));
        }
        Ok(cfg)
    }
}

/// What the text encoders give the pipeline.
#[derive(Clone, Debug)]
pub struct ClipOutput {
    /// `hidden_states[-2]`: the penultimate layer's output, no final LayerNorm, `[B, S, D]`.
    pub penultimate: Tensor<3>,
    /// `pooler_output` (final LayerNorm at the first eos), projected by `text_projection` for
    /// the model with projection, `[B, D or P]`.
    pub pooled: Tensor<2>,
    /// `last_hidden_state`: the last layer's output after the final LayerNorm, `[B, S, D]`
    /// (SD 2.x's conditioning).
    pub last_hidden_state: Tensor<3>,
}

#[derive(Clone, Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: MultiHeadAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// `CLIPTextModel` (`projection = false`) or `CLIPTextModelWithProjection`.
#[derive(Clone, Debug)]
pub struct ClipTextModel {
    token_embedding: Tensor<2>,
    position_embedding: Tensor<2>,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    act: Activation,
    eos_token_id: i64,
    max_positions: usize,
}

impl ClipTextModel {
    /// Keys `text_model.*` (and `text_projection.weight` with `projection`). With
    /// `text_model_prefix = false` the transformer's keys have no `text_model.` prefix, as in
    /// the state dict of transformers 5's `CLIPTextModel`; see [`ClipTextModel::has_prefix`].
    pub fn new(
        vb: &VarBuilder,
        cfg: &ClipTextConfig,
        projection: bool,
        text_model_prefix: bool,
    ) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act)?;
        let d = cfg.hidden_size;
        let tm = if text_model_prefix {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = tm.pp("encoder.layers").pp(i);
                EncoderLayer {
                    layer_norm1: LayerNorm::new(&l.pp("layer_norm1"), d, cfg.layer_norm_eps),
                    self_attn: MultiHeadAttention::new(
                        &l.pp("self_attn"),
                        &CLIP,
                        d,
                        d,
                        d,
                        cfg.num_attention_heads,
                        true,
                    ),
                    layer_norm2: LayerNorm::new(&l.pp("layer_norm2"), d, cfg.layer_norm_eps),
                    fc1: Linear::new(&l.pp("mlp.fc1"), d, cfg.intermediate_size, true),
                    fc2: Linear::new(&l.pp("mlp.fc2"), cfg.intermediate_size, d, true),
                }
            })
            .collect();
        let text_projection = if projection {
            let p = cfg
                .projection_dim
                .ok_or_else(|| Error::config("CLIPTextModelWithProjection needs projection_dim"))?;
            Some(Linear::new(&vb.pp("text_projection"), d, p, false))
        } else {
            None
        };
        Ok(Self {
            token_embedding: tm.get("embeddings.token_embedding.weight", [cfg.vocab_size, d]),
            position_embedding: tm.get(
                "embeddings.position_embedding.weight",
                [cfg.max_position_embeddings, d],
            ),
            layers,
            final_layer_norm: LayerNorm::new(&tm.pp("final_layer_norm"), d, cfg.layer_norm_eps),
            text_projection,
            act,
            eos_token_id: cfg.eos_token_id,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// Whether a checkpoint stores the transformer under `text_model.` (diffusers folders
    /// and `CLIPTextModelWithProjection` do; transformers 5's `CLIPTextModel` does not).
    pub fn has_prefix(src: &dyn crate::weights::TensorSource) -> bool {
        src.all_keys().iter().any(|k| k.starts_with("text_model."))
    }

    /// Index of the pooled token in one row, as transformers picks it: the first `eos`, or
    /// (legacy configs with `eos_token_id == 2`) the first occurrence of the largest id.
    fn pool_index(&self, row: &[i64]) -> usize {
        if self.eos_token_id == 2 {
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&t| t == max).unwrap_or(0)
        } else {
            row.iter()
                .position(|&t| t == self.eos_token_id)
                .unwrap_or(0)
        }
    }

    /// Runs the encoder on token rows of equal length.
    pub fn forward(&self, ids: &[Vec<i64>]) -> Result<ClipOutput> {
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        if b == 0 || s == 0 || s > self.max_positions || ids.iter().any(|r| r.len() != s) {
            return Err(Error::input(format!(
                "token rows must be non-empty, of equal length, at most {} long",
                self.max_positions
            )));
        }
        let vocab = self.token_embedding.dims()[0] as i64;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
            return Err(Error::input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let device = self.token_embedding.device();
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &device);
        let d = self.token_embedding.dims()[1];
        let pos = self
            .position_embedding
            .clone()
            .slice([0..s, 0..d])
            .unsqueeze::<3>();
        let mut x = embedding(self.token_embedding.clone(), idx) + pos;
        let mut penultimate = None;
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            if i == n - 1 {
                penultimate = Some(x.clone());
            }
            x = l
                .self_attn
                .forward(l.layer_norm1.forward(x.clone()), None, true)
                + x;
            let h = l.fc2.forward(
                self.act
                    .forward(l.fc1.forward(l.layer_norm2.forward(x.clone()))),
            );
            x = x + h;
        }
        let x = self.final_layer_norm.forward(x);
        let rows: Vec<Tensor<2>> = ids
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let p = self.pool_index(row);
                x.clone().slice([r..r + 1, p..p + 1, 0..d]).reshape([1, d])
            })
            .collect();
        let pooled = Tensor::cat(rows, 0);
        let pooled = match &self.text_projection {
            Some(p) => p.forward(pooled),
            None => pooled,
        };
        // Outputs in f32 whatever the network's precision.
        Ok(ClipOutput {
            penultimate: penultimate
                .expect("at least 2 layers")
                .cast(FloatDType::F32),
            pooled: pooled.cast(FloatDType::F32),
            last_hidden_state: x.cast(FloatDType::F32),
        })
    }
}
