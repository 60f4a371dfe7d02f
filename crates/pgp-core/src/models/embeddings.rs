//! diffusers `Timesteps` and `TimestepEmbedding` (`embeddings.py`).

use burn::tensor::{Tensor, TensorData};

use crate::nn::{Linear, silu};
use crate::weights::VarBuilder;

/// Sinusoidal projection `Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)`, max period
/// 10000, computed like diffusers' `get_timestep_embedding` (frequencies in f32).
#[derive(Clone, Debug)]
pub struct Timesteps {
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
}

impl Timesteps {
    /// A projection to `dim` channels.
    pub fn new(dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> Self {
        Self {
            dim,
            flip_sin_to_cos,
            freq_shift,
        }
    }

    /// Output width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `[N]` timesteps → `[N, dim]` embeddings, in f32 whatever the model's precision (the
    /// sines of timesteps up to 999 need it; the next linear layer casts).
    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let t = t.cast(burn::tensor::FloatDType::F32);
        let half = self.dim / 2;
        let device = t.device();
        let log_max = -(10000f32.ln());
        let freqs: Vec<f32> = (0..half)
            .map(|i| (log_max * i as f32 / (half as f32 - self.freq_shift)).exp())
            .collect();
        let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device);
        let n = t.dims()[0];
        let args = t.reshape([n, 1]) * freqs.reshape([1, half]);
        let (sin, cos) = (args.clone().sin(), args.cos());
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(vec![cos, sin], 1)
        } else {
            Tensor::cat(vec![sin, cos], 1)
        };
        if self.dim % 2 == 1 {
            Tensor::cat(vec![emb, Tensor::zeros([n, 1], &device)], 1)
        } else {
            emb
        }
    }
}

/// `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Clone, Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// `d_in` → `d_out` → `d_out`.
    pub fn new(vb: &VarBuilder, d_in: usize, d_out: usize) -> Self {
        Self {
            linear_1: Linear::new(&vb.pp("linear_1"), d_in, d_out, true),
            linear_2: Linear::new(&vb.pp("linear_2"), d_out, d_out, true),
        }
    }

    /// Applies the two layers.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
