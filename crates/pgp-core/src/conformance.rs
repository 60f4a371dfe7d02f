//! Numerical parity cases (`shared/spec/conformance.md`): a case is a `case.json`, optional
//! `weights.safetensors` (reference key names) and `tensors.safetensors` (inputs and
//! `expected*` outputs). [`run_case`] runs one on any device and reports the worst relative L2
//! error. File access stays with the caller, so this also runs where there is no file system.

use burn::tensor::{Device, FloatDType, Tensor};
use serde::Deserialize;

use crate::attention::attention;
use crate::device::read_back;
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use crate::models::peam::PeamConfig;
use crate::models::probe::{CallInfo, Probe};
use crate::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel, UNetConditioning};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig, DenoiseEncoder};
use crate::phase::phase_exchange;
use crate::ppa::Analysis;
use crate::schedulers::euler::{EulerConfig, schedule};
use crate::weights::{WeightFile, load_checked};

/// The kinds of case this runner knows.
pub const KINDS: &[&str] = &[
    "unet",
    "faithdiff_unet",
    "vae_encode",
    "vae_decode",
    "denoise_encoder",
    "clip_text",
    "clip_text_with_projection",
    "euler_schedule",
    "phase_exchange",
    "attention",
    "ppa_measures",
];

#[derive(Deserialize)]
struct Tolerance {
    max_rel_l2: f64,
}

#[derive(Deserialize)]
struct CaseJson {
    kind: String,
    #[serde(default)]
    config: serde_json::Value,
    tolerance: Tolerance,
    #[serde(default)]
    faithdiff: Option<FaithDiffConfig>,
    /// This project's extension for `faithdiff_unet`: PGP-DiffSR's PEAM (pgp-model.md §2),
    /// keys `peam.{level}.*`.
    #[serde(default)]
    peam: Option<PeamConfig>,
    #[serde(default)]
    num_inference_steps: Option<usize>,
    /// This project's extension for `vae_encode` / `vae_decode` / `denoise_encoder`: the
    /// reference ran with diffusers' `enable_tiling()` (FaithDiff's own tiling for the
    /// `denoise_encoder`).
    #[serde(default)]
    tiling: bool,
}

/// A case's files, already read by the caller.
pub struct CaseFiles {
    /// Contents of `case.json`.
    pub case_json: String,
    /// `weights.safetensors`, for kinds that have weights.
    pub weights: Option<WeightFile>,
    /// `tensors.safetensors`.
    pub tensors: WeightFile,
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct CaseOutcome {
    /// The case's kind.
    pub kind: String,
    /// Relative L2 error of each expected tensor.
    pub errors: Vec<(String, f64)>,
    /// The worst of them.
    pub worst: f64,
    /// The case's `max_rel_l2`.
    pub tolerance: f64,
}

impl CaseOutcome {
    /// Every expected tensor within tolerance.
    pub fn pass(&self) -> bool {
        self.worst <= self.tolerance
    }
}

/// The largest relative L2 error an f16 run of a kind may have against the f32 reference.
/// Measured on lavapipe over the committed cases (worst of each kind: attention 4.4e-4, phase
/// exchange 5.5e-4, CLIP 1.1e-3, VAE and LQ encoder 1.2e-2, UNets 1.1e-2; docs/PERFORMANCE.md)
/// with about 2× headroom: f16 keeps 11 significant bits (≈ 5e-4 per rounding), and the error
/// grows with depth and with the random fixtures' badly scaled activations.
pub fn f16_tolerance(kind: &str) -> f64 {
    match kind {
        "euler_schedule" => 0.0,
        "attention" | "phase_exchange" => 2e-3,
        "clip_text" | "clip_text_with_projection" => 5e-3,
        _ => 2e-2,
    }
}

/// `‖out − expected‖₂ / ‖expected‖₂`, in f64 (for f32 or f64 values). NaN anywhere gives +∞.
pub fn rel_l2<T: Copy + Into<f64>>(out: &[T], expected: &[T]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&o, &e) in out.iter().zip(expected) {
        let (o, e): (f64, f64) = (o.into(), e.into());
        let d = o - e;
        num += d * d;
        den += e * e;
    }
    let r = if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    };
    if r.is_nan() { f64::INFINITY } else { r }
}

struct Checker<'a> {
    tensors: &'a WeightFile,
    errors: Vec<(String, f64)>,
}

impl Checker<'_> {
    fn compare(&mut self, name: &str, values: &[f32], shape: &[usize]) -> Result<()> {
        let (expected, eshape) = self.tensors.f32_data(name)?;
        if eshape != shape {
            return Err(Error::input(format!(
                "`{name}`: output shape {shape:?}, expected {eshape:?}"
            )));
        }
        self.errors
            .push((name.to_string(), rel_l2(values, &expected)));
        Ok(())
    }

    async fn check<const D: usize>(&mut self, name: &str, out: Tensor<D>) -> Result<()> {
        let (values, shape) = read_back(out).await?;
        self.compare(name, &values, &shape)
    }
}

fn weights(files: &CaseFiles) -> Result<&WeightFile> {
    files
        .weights
        .as_ref()
        .ok_or_else(|| Error::input("this kind needs weights.safetensors"))
}

/// Runs one case on `device`, its networks (or its op's inputs) in `dtype`: f32, the
/// reference's precision, is judged by the case's own tolerance; f16 by
/// [`f16_tolerance`] of its kind where that is looser.
pub async fn run_case(
    files: &CaseFiles,
    device: &Device,
    dtype: FloatDType,
) -> Result<CaseOutcome> {
    let case: CaseJson = serde_json::from_str(&files.case_json)
        .map_err(|e| Error::input(format!("case.json: {e}")))?;
    let t = &files.tensors;
    let input = |name: &str| -> Result<Tensor<4>> { t.tensor::<4>(name, device) };
    // Inputs of the bare ops in the precision under test (networks cast their own inputs).
    let op_input = |name: &str| -> Result<Tensor<4>> { Ok(input(name)?.cast(dtype)) };
    let mut c = Checker {
        tensors: t,
        errors: Vec::new(),
    };
    match case.kind.as_str() {
        "unet" | "faithdiff_unet" => {
            let cfg = UNet2DConditionConfig::from_json(&case.config)?;
            let cond = UNetConditioning {
                timestep: t.tensor::<1>("timestep", device)?,
                encoder_hidden_states: t.tensor::<3>("encoder_hidden_states", device)?,
                // Only `text_time` UNets need these; the UNet says so if they are missing.
                text_embeds: t.tensor::<2>("text_embeds", device).ok(),
                time_ids: t.tensor::<2>("time_ids", device).ok(),
            };
            let out = if case.kind == "unet" {
                let m = load_checked(weights(files)?, device, dtype, |vb| {
                    UNet2DConditionModel::new(&vb, &cfg)
                })?;
                m.forward(input("sample")?, &cond)?
            } else {
                let fd = case.faithdiff.clone().unwrap_or_default();
                let m = load_checked(weights(files)?, device, dtype, |vb| {
                    FaithDiffUNet::new(&vb, &cfg, &fd, case.peam.as_ref())
                })?;
                m.forward(input("sample")?, &cond, input("input_embedding")?)?
            };
            c.check("expected", out).await?;
        }
        "vae_encode" | "vae_decode" => {
            let cfg = AutoencoderKLConfig::from_json(&case.config)?;
            let mut m = load_checked(weights(files)?, device, dtype, |vb| {
                AutoencoderKL::new(&vb, &cfg)
            })?;
            m.set_tiling(case.tiling);
            let out = if case.kind == "vae_encode" {
                m.encode_mean(input("image")?)?
            } else {
                m.decode(input("latents")?)?
            };
            c.check("expected", out).await?;
        }
        "denoise_encoder" => {
            let cfg = AutoencoderKLConfig::from_json(&case.config)?;
            let mut m = load_checked(weights(files)?, device, dtype, |vb| {
                DenoiseEncoder::new(&vb.pp("denoise_encoder"), &cfg)
            })?;
            m.set_tiling(case.tiling);
            c.check("expected", m.forward(input("image")?)?).await?;
        }
        "clip_text" | "clip_text_with_projection" => {
            let cfg = ClipTextConfig::from_json(&case.config)?;
            let projection = case.kind == "clip_text_with_projection";
            let file = weights(files)?;
            let prefix = ClipTextModel::has_prefix(file);
            let m = load_checked(file, device, dtype, |vb| {
                ClipTextModel::new(&vb, &cfg, projection, prefix)
            })?;
            let (ids, shape) = t.i64_data("input_ids")?;
            if shape.len() != 2 {
                return Err(Error::input(format!(
                    "input_ids has shape {shape:?}, expected [B, S]"
                )));
            }
            let rows: Vec<Vec<i64>> = ids.chunks(shape[1]).map(<[i64]>::to_vec).collect();
            let out = m.forward(&rows)?;
            c.check("expected_penultimate", out.penultimate).await?;
            c.check("expected_pooled", out.pooled).await?;
            // SD 2.x cases also give the conditioning SD 2.x uses.
            if t.shape("expected_last_hidden_state").is_some() {
                c.check("expected_last_hidden_state", out.last_hidden_state)
                    .await?;
            }
        }
        "euler_schedule" => {
            let cfg = EulerConfig::from_json(&case.config)?;
            let steps = case
                .num_inference_steps
                .ok_or_else(|| Error::input("case.json lacks num_inference_steps"))?;
            let s = schedule(&cfg, steps)?;
            let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            c.compare("expected_timesteps", &f(&s.timesteps), &[s.timesteps.len()])?;
            c.compare("expected_sigmas", &f(&s.sigmas), &[s.sigmas.len()])?;
            c.compare(
                "expected_init_noise_sigma",
                &[s.init_noise_sigma as f32],
                &[1],
            )?;
        }
        "phase_exchange" => {
            c.check(
                "expected",
                phase_exchange(op_input("lq")?, op_input("unet")?)?,
            )
            .await?;
        }
        "attention" => {
            let (q, k, v) = (op_input("q")?, op_input("k")?, op_input("v")?);
            let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
            if qd[0] != kd[0] || qd[1] != kd[1] || qd[3] != kd[3] || kd[..3] != vd[..3] {
                return Err(Error::input(format!(
                    "attention shapes q {qd:?}, k {kd:?}, v {vd:?} do not fit"
                )));
            }
            c.check("expected", attention(q, k, v, false)).await?;
        }
        "ppa_measures" => {
            // Two calls of a plain UNet (two samples and timesteps, one conditioning) as two
            // adjacent steps: coarse measures between them, fine measures of each (ppa.rs).
            let cfg = UNet2DConditionConfig::from_json(&case.config)?;
            let m = load_checked(weights(files)?, device, dtype, |vb| {
                UNet2DConditionModel::new(&vb, &cfg)
            })?;
            let mut analysis = Analysis::new();
            for (step, name) in ["a", "b"].into_iter().enumerate() {
                let cond = UNetConditioning {
                    timestep: t.tensor::<1>(&format!("timestep_{name}"), device)?,
                    encoder_hidden_states: t.tensor::<3>("encoder_hidden_states", device)?,
                    text_embeds: t.tensor::<2>("text_embeds", device).ok(),
                    time_ids: t.tensor::<2>("time_ids", device).ok(),
                };
                analysis.begin(CallInfo {
                    step,
                    steps: 2,
                    tile: 0,
                    branch: 0,
                });
                let sample = input(&format!("sample_{name}"))?;
                let probe: &mut dyn Probe = &mut analysis;
                m.forward_probed(sample, &cond, |_, x| Ok(x), Some(probe))?;
            }
            let measured = analysis.finish_image().await?;
            let flat = |v: Vec<&Vec<f64>>| -> (Vec<f32>, Vec<usize>) {
                let shape = vec![v.len(), v.first().map_or(0, |x| x.len())];
                (v.into_iter().flatten().map(|&x| x as f32).collect(), shape)
            };
            for (name, list) in [("coarse", &measured.coarse), ("fine", &measured.fine)] {
                let (phi, shape) = flat(list.iter().map(|e| &e.phi_cos).collect());
                c.compare(&format!("expected_{name}_phi_cos"), &phi, &shape)?;
                let (kl, shape) = flat(list.iter().map(|e| &e.psi_kl).collect());
                c.compare(&format!("expected_{name}_psi_kl"), &kl, &shape)?;
            }
        }
        other => {
            return Err(Error::input(format!(
                "unknown kind `{other}` (known: {})",
                KINDS.join(", ")
            )));
        }
    }
    if c.errors.is_empty() {
        return Err(Error::input("the case has no expected tensors"));
    }
    let worst = c.errors.iter().map(|e| e.1).fold(0.0, f64::max);
    let tolerance = match dtype {
        FloatDType::F32 => case.tolerance.max_rel_l2,
        _ => case.tolerance.max_rel_l2.max(f16_tolerance(&case.kind)),
    };
    Ok(CaseOutcome {
        kind: case.kind,
        errors: c.errors,
        worst,
        tolerance,
    })
}
