//! The one-step recipe as data: the timestep of the single UNet call and how the output latent
//! is formed from its ε̂. A bundle's manifest records it (`recipe`); a one-step bundle without
//! one, and `--one-step` on any bundle, get [`OneStep::standard`] — PGP-DiffSR-S1's and
//! OSEDiff's recipe (pgp-model.md §4).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedulers::euler::EulerConfig;

/// How the output latent x0 is formed from the encoded input z and the UNet's ε̂.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum X0 {
    /// The DDPM estimate at the timestep: `x0 = (z − sqrt(1 − ᾱ_t)·ε̂) / sqrt(ᾱ_t)` (OSEDiff,
    /// PGP-DiffSR-S1).
    Epsilon,
    /// The prediction is the residual: `x0 = z − ε̂` (PiSA-SR).
    Residual,
}

/// One UNet call at `timestep` on the encoded input, no guidance, then `x0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneStep {
    /// The UNet's timestep.
    pub timestep: u32,
    /// How the output latent is formed.
    pub x0: X0,
}

impl OneStep {
    /// The last training timestep and the DDPM estimate.
    pub fn standard(scheduler: &EulerConfig) -> Self {
        Self {
            timestep: (scheduler.num_train_timesteps - 1) as u32,
            x0: X0::Epsilon,
        }
    }

    /// Checks the timestep against the scheduler's training range.
    pub fn validate(&self, scheduler: &EulerConfig) -> Result<()> {
        if self.timestep as usize >= scheduler.num_train_timesteps {
            return Err(Error::config(format!(
                "the one-step recipe's timestep {} is outside the scheduler's 0..{}",
                self.timestep, scheduler.num_train_timesteps
            )));
        }
        Ok(())
    }

    /// The output latent from the encoded input `z` and the UNet's `eps`.
    pub fn x0(&self, scheduler: &EulerConfig, z: Tensor<4>, eps: Tensor<4>) -> Tensor<4> {
        match self.x0 {
            X0::Residual => z - eps,
            X0::Epsilon => {
                let a = f64::from(scheduler.alphas_cumprod()[self.timestep as usize]);
                (z - eps * (1.0 - a).sqrt()) / a.sqrt()
            }
        }
    }
}
