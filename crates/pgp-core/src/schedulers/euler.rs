//! diffusers `EulerDiscreteScheduler` (epsilon prediction, no Karras sigmas): the schedule,
//! the model-input scaling and the Euler step, as plain functions.

use serde::Deserialize;

use crate::error::{Error, Result};

fn d_start() -> f64 {
    0.00085
}
fn d_end() -> f64 {
    0.012
}
fn d_schedule() -> String {
    "scaled_linear".into()
}
fn d_train() -> usize {
    1000
}
fn d_pred() -> String {
    "epsilon".into()
}
fn d_spacing() -> String {
    "leading".into()
}
fn d_offset() -> usize {
    1
}
fn d_interp() -> String {
    "linear".into()
}

/// The fields of the scheduler's `scheduler_config.json` this runtime reads.
#[derive(Clone, Debug, Deserialize)]
pub struct EulerConfig {
    #[serde(default = "d_start")]
    pub beta_start: f64,
    #[serde(default = "d_end")]
    pub beta_end: f64,
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_pred")]
    pub prediction_type: String,
    #[serde(default = "d_spacing")]
    pub timestep_spacing: String,
    #[serde(default = "d_offset")]
    pub steps_offset: usize,
    #[serde(default = "d_interp")]
    pub interpolation_type: String,
    #[serde(default)]
    pub use_karras_sigmas: bool,
}

impl Default for EulerConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("all fields have defaults")
    }
}

impl EulerConfig {
    /// Parses a scheduler config dict, rejecting what is not implemented.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let cfg: Self = crate::config::parse(value, "EulerDiscreteScheduler")?;
        if cfg.beta_schedule != "scaled_linear" && cfg.beta_schedule != "linear" {
            return Err(Error::config(format!(
                "unsupported beta_schedule `{}` (supported: scaled_linear, linear)",
                cfg.beta_schedule
            )));
        }
        if cfg.prediction_type != "epsilon" {
            return Err(Error::config(format!(
                "unsupported prediction_type `{}` (supported: epsilon)",
                cfg.prediction_type
            )));
        }
        if !["leading", "trailing", "linspace"].contains(&cfg.timestep_spacing.as_str()) {
            return Err(Error::config(format!(
                "unsupported timestep_spacing `{}`",
                cfg.timestep_spacing
            )));
        }
        if cfg.interpolation_type != "linear" || cfg.use_karras_sigmas {
            return Err(Error::config(
                "only linear sigma interpolation without Karras sigmas is supported",
            ));
        }
        crate::config::at_most(cfg.num_train_timesteps, 100_000, "num_train_timesteps")?;
        if cfg.num_train_timesteps < 2 {
            return Err(Error::config("num_train_timesteps must be at least 2"));
        }
        let beta_ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !beta_ok(cfg.beta_start) || !beta_ok(cfg.beta_end) || cfg.beta_start > cfg.beta_end {
            return Err(Error::config(format!(
                "beta_start {} and beta_end {} must lie in (0, 1), beta_start ≤ beta_end",
                cfg.beta_start, cfg.beta_end
            )));
        }
        Ok(cfg)
    }

    /// ᾱ_t for every training timestep, computed in f32 as diffusers does.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = (0..n)
            .map(|i| {
                let frac = i as f64 / (n - 1) as f64;
                if self.beta_schedule == "linear" {
                    (self.beta_start + frac * (self.beta_end - self.beta_start)) as f32
                } else {
                    let (a, b) = (self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32);
                    let v = a + (b - a) * frac as f32;
                    v * v
                }
            })
            .collect();
        let mut acc = 1f32;
        betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }
}

/// A schedule: timesteps, sigmas (with the final 0) and the initial noise scale.
#[derive(Clone, Debug, PartialEq)]
pub struct EulerSchedule {
    /// Timesteps the model is called at, high to low.
    pub timesteps: Vec<f64>,
    /// σ for each timestep, then 0.
    pub sigmas: Vec<f64>,
    /// `init_noise_sigma`.
    pub init_noise_sigma: f64,
}

/// `set_timesteps(steps)`.
pub fn schedule(cfg: &EulerConfig, steps: usize) -> Result<EulerSchedule> {
    let n = cfg.num_train_timesteps;
    if steps == 0 || steps > n {
        return Err(Error::config(format!(
            "steps must be in 1..={n}, got {steps}"
        )));
    }
    let timesteps: Vec<f64> = match cfg.timestep_spacing.as_str() {
        "linspace" => (0..steps)
            .map(|i| (n - 1) as f64 * (steps - 1 - i) as f64 / (steps - 1).max(1) as f64)
            .collect(),
        "leading" => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f64 + cfg.steps_offset as f64)
                .collect()
        }
        _ => {
            let ratio = n as f64 / steps as f64;
            (0..steps)
                .map(|i| (n as f64 - i as f64 * ratio).round() - 1.0)
                .collect()
        }
    };
    let ac = cfg.alphas_cumprod();
    let all: Vec<f64> = ac
        .iter()
        .map(|&a| (((1.0 - a) / a) as f64).sqrt())
        .map(|s| s as f32 as f64)
        .collect();
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| {
            let lo = (t.floor() as usize).min(n - 1);
            let hi = (lo + 1).min(n - 1);
            let f = t - lo as f64;
            all[lo] * (1.0 - f) + all[hi] * f
        })
        .map(|s| s as f32 as f64)
        .collect();
    sigmas.push(0.0);
    let max = sigmas.iter().copied().fold(0.0, f64::max);
    let init_noise_sigma =
        if cfg.timestep_spacing == "linspace" || cfg.timestep_spacing == "trailing" {
            max
        } else {
            (max * max + 1.0).sqrt()
        };
    Ok(EulerSchedule {
        timesteps,
        sigmas,
        init_noise_sigma,
    })
}

/// The factor the model input is multiplied by at σ: `1/sqrt(σ² + 1)`.
pub fn input_scale(sigma: f64) -> f64 {
    1.0 / (sigma * sigma + 1.0).sqrt()
}

/// The Euler step's coefficient on ε̂: `x ← x + (σ_next − σ)·ε̂`.
pub fn step_coefficient(sigma: f64, sigma_next: f64) -> f64 {
    sigma_next - sigma
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_leading_twenty_steps() {
        let s = schedule(&EulerConfig::default(), 20).unwrap();
        let expected: Vec<f64> = (0..20).rev().map(|i| (i * 50 + 1) as f64).collect();
        assert_eq!(s.timesteps, expected);
        assert_eq!(s.sigmas.len(), 21);
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
        assert!((s.sigmas[0] - 11.0283).abs() < 1e-3, "{}", s.sigmas[0]);
        assert!((s.init_noise_sigma - 11.0736).abs() < 1e-3);
        // x_T coefficients of the "lr" start point (pipeline.md step 5).
        let a = EulerConfig::default().alphas_cumprod()[999] as f64;
        assert!((a.sqrt() - 0.068265).abs() < 1e-5);
        assert!(((1.0 - a).sqrt() * s.init_noise_sigma - 11.0477).abs() < 1e-3);
    }

    #[test]
    fn trailing_and_linspace_run_high_to_low() {
        for spacing in ["trailing", "linspace"] {
            let cfg = EulerConfig::from_json(&serde_json::json!({ "timestep_spacing": spacing }))
                .unwrap();
            let s = schedule(&cfg, 10).unwrap();
            assert_eq!(s.timesteps[0], 999.0, "{spacing}");
            assert!(s.timesteps.windows(2).all(|w| w[0] > w[1]), "{spacing}");
        }
    }

    #[test]
    fn unsupported_options_are_named() {
        let err = EulerConfig::from_json(&serde_json::json!({ "prediction_type": "v_prediction" }))
            .unwrap_err();
        assert!(err.to_string().contains("v_prediction"));
        assert!(schedule(&EulerConfig::default(), 0).is_err());
    }
}
