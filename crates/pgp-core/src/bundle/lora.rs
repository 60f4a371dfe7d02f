//! A UNet LoRA merged into the weights as they are written (`convert --lora`), the S1
//! recipe of `shared/spec/pgp-model.md` §4: `W += scale · (alpha / r) · B·A` per module, for
//! linear layers (`A` `[r, in]`, `B` `[out, r]`) and convolutions (`A` `[r, in, kh, kw]`,
//! `B` `[out, r, 1, 1]`: `ΔW = (B·A)` reshaped to the kernel), computed in f32.
//!
//! Layouts read (safetensors): PEFT / diffusers (`M.lora_A.weight`, `M.lora_B.weight`,
//! optionally prefixed `unet.` or `base_model.model.`) and diffusers' older
//! `M.lora.down.weight` / `M.lora.up.weight`. `alpha` is the caller's where given (files saved
//! without it, e.g. with PEFT's default 8, cannot say), else the module's `M.alpha` scalar, else
//! `lora_alpha` of PEFT's `adapter_config.json` ([`adapter_config_alpha`]), else `r` (a factor
//! of 1). Text-encoder LoRAs, DoRA and kohya's
//! `lora_unet_*` names are refused with the reason.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::weights::{TensorSource, WeightFile};

/// Fails with an input error formatted like `format!`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err(Error::input(format!($($t)*)))
    };
}

/// Values and shape of one tensor.
type Tensor = (Vec<f32>, Vec<usize>);

/// One adapted module.
struct Module {
    /// `[r, in·kh·kw]`, row-major.
    a: Vec<f32>,
    /// `[out, r]`, row-major.
    b: Vec<f32>,
    rank: usize,
    out: usize,
    inner: usize,
    alpha: Option<f32>,
}

/// A LoRA ready to merge.
pub struct Lora {
    name: String,
    modules: BTreeMap<String, Module>,
    scale: f32,
    merged: BTreeSet<String>,
}

/// The module path and the part (`A`, `B`, `alpha`) of a LoRA key, or why it cannot be used.
fn split_key(key: &str) -> std::result::Result<Option<(String, &'static str)>, String> {
    if key.starts_with("lora_unet_") || key.starts_with("lora_te") {
        return Err(format!(
            "`{key}`: kohya's layout is not read; save the LoRA in diffusers / PEFT layout \
             (diffusers' `convert_unet_state_dict_to_peft`, or `save_lora_weights`)"
        ));
    }
    if key.contains("lora_magnitude_vector") || key.contains("dora_scale") {
        return Err(format!("`{key}`: DoRA adapters cannot be merged as a plain LoRA"));
    }
    let mut k = key;
    for prefix in ["base_model.model.", "unet."] {
        k = k.strip_prefix(prefix).unwrap_or(k);
    }
    if k.starts_with("text_encoder") || k.starts_with("te_") {
        return Err(format!("`{key}`: text-encoder LoRAs are not supported (S1 adapts the UNet only)"));
    }
    for (suffix, part) in [
        (".lora_A.weight", "A"),
        (".lora_B.weight", "B"),
        (".lora.down.weight", "A"),
        (".lora.up.weight", "B"),
        (".alpha", "alpha"),
    ] {
        if let Some(module) = k.strip_suffix(suffix) {
            return Ok(Some((module.to_string(), part)));
        }
    }
    if k.ends_with(".lora_A.bias") || k.ends_with(".lora_B.bias") {
        return Err(format!("`{key}`: LoRA biases are not supported"));
    }
    Ok(None)
}

impl Lora {
    /// Reads a LoRA from a safetensors file's bytes (`name` is used in errors); `scale`
    /// multiplies every update, `alpha` replaces the file's, `config_alpha` (PEFT's
    /// `adapter_config.json`, [`adapter_config_alpha`]) is used where the file has none.
    pub fn read(
        name: &str,
        bytes: Vec<u8>,
        scale: f32,
        alpha: Option<f32>,
        config_alpha: Option<f32>,
    ) -> Result<Self> {
        let name = name.to_string();
        if !scale.is_finite() {
            bail!("the LoRA scale must be a finite number");
        }
        if alpha.is_some_and(|a| !a.is_finite() || a <= 0.0) {
            bail!("the LoRA alpha must be a positive number");
        }
        let file = WeightFile::from_bytes(name.clone(), bytes)?;
        let mut parts: BTreeMap<String, BTreeMap<&str, Tensor>> = BTreeMap::new();
        let mut ignored = Vec::new();
        for key in file.all_keys() {
            match split_key(key).map_err(|e| Error::input(format!("{name}: {e}")))? {
                Some((module, part)) => {
                    let (values, shape) = file.read_f32(key)?;
                    let slot = parts.entry(module.clone()).or_default();
                    if slot.insert(part, (values, shape)).is_some() {
                        bail!("{name}: module `{module}` has two `{part}` tensors");
                    }
                }
                None => ignored.push(key.to_string()),
            }
        }
        if !ignored.is_empty() {
            bail!(
                "{name}: {} keys are not LoRA tensors (e.g. `{}`)",
                ignored.len(),
                ignored[0]
            );
        }
        let mut modules = BTreeMap::new();
        for (module, mut p) in parts {
            let (Some((a, a_shape)), Some((b, b_shape))) = (p.remove("A"), p.remove("B")) else {
                bail!("{name}: module `{module}` lacks its A (down) or B (up) matrix");
            };
            let file_alpha = match p.remove("alpha") {
                Some((v, _)) if v.len() == 1 => Some(v[0]),
                Some(_) => bail!("{name}: `{module}.alpha` is not a scalar"),
                None => None,
            };
            let rank = a_shape[0];
            let inner: usize = a_shape[1..].iter().product();
            let b_ok =
                b_shape.len() >= 2 && b_shape[1] == rank && b_shape[2..].iter().all(|&d| d == 1);
            if a_shape.len() < 2 || !b_ok || rank == 0 {
                bail!(
                    "{name}: module `{module}`: A {a_shape:?} and B {b_shape:?} are not a LoRA \
                     pair (A [r, in, ...], B [out, r, 1, ...])"
                );
            }
            modules.insert(
                module,
                Module {
                    a,
                    b,
                    rank,
                    out: b_shape[0],
                    inner,
                    alpha: alpha.or(file_alpha).or(config_alpha),
                },
            );
        }
        if modules.is_empty() {
            bail!("{name}: holds no LoRA tensors");
        }
        Ok(Self {
            name,
            modules,
            scale,
            merged: BTreeSet::new(),
        })
    }

    /// Adds the update of the module owning `weight_key` (`M.weight`, diffusers' UNet name)
    /// to `values` of `shape`, if the LoRA adapts it.
    pub fn merge(&mut self, weight_key: &str, shape: &[usize], values: &mut [f32]) -> Result<bool> {
        let Some(module) = weight_key.strip_suffix(".weight") else {
            return Ok(false);
        };
        let Some(m) = self.modules.get(module) else {
            return Ok(false);
        };
        let inner: usize = shape[1..].iter().product();
        if shape.first() != Some(&m.out) || inner != m.inner {
            bail!(
                "{}: module `{module}` changes a weight of shape {shape:?}, the LoRA's update is \
                 [{}, {}]",
                self.name,
                m.out,
                m.inner
            );
        }
        let alpha = m.alpha.unwrap_or(m.rank as f32);
        let factor = self.scale * alpha / m.rank as f32;
        for o in 0..m.out {
            let b_row = &m.b[o * m.rank..(o + 1) * m.rank];
            let w_row = &mut values[o * inner..(o + 1) * inner];
            for (r, &b) in b_row.iter().enumerate() {
                let f = factor * b;
                let a_row = &m.a[r * inner..(r + 1) * inner];
                for (w, &a) in w_row.iter_mut().zip(a_row) {
                    *w += f * a;
                }
            }
        }
        self.merged.insert(module.to_string());
        Ok(true)
    }

    /// Fails when a module of the LoRA matched no weight (a LoRA for another network).
    pub fn check_all_merged(&self) -> Result<()> {
        let unused: Vec<&String> = self
            .modules
            .keys()
            .filter(|m| !self.merged.contains(*m))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        bail!(
            "{}: {} of its {} modules match no UNet weight (first: `{}`): a LoRA for another \
             network?",
            self.name,
            unused.len(),
            self.modules.len(),
            unused[0]
        )
    }

    /// How many modules it adapts.
    pub fn modules(&self) -> usize {
        self.modules.len()
    }
}

/// `lora_alpha` of PEFT's `adapter_config.json` (the file's bytes), if it names one.
pub fn adapter_config_alpha(name: &str, json: &[u8]) -> Result<Option<f32>> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::input(format!("{name}: not JSON: {e}")))?;
    Ok(v["lora_alpha"].as_f64().map(|a| a as f32))
}
