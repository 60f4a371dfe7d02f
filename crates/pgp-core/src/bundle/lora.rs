//! A LoRA merged into the weights as they are written (`convert --lora`; OSEDiff's and
//! PiSA-SR's adapters), the S1 recipe of `shared/spec/pgp-model.md` §4: `W += scale · (alpha / r) · B·A` per module, for
//! linear layers (`A` `[r, in]`, `B` `[out, r]`) and convolutions (`A` `[r, in, kh, kw]`,
//! `B` `[out, r, 1, 1]`: `ΔW = (B·A)` reshaped to the kernel), computed in f32.
//!
//! Layouts read (safetensors): PEFT / diffusers (`M.lora_A.weight`, `M.lora_B.weight`,
//! optionally prefixed `unet.` or `base_model.model.`) and diffusers' older
//! `M.lora.down.weight` / `M.lora.up.weight`, and PEFT's named adapters
//! (`M.lora_A.<adapter>.weight`). UNet modules are named as in the UNet (`unet.` stripped);
//! text-encoder modules keep their component (`text_encoder.text_model.…`,
//! `text_encoder_2.…`), the VAE's are named as in the VAE. `alpha` is the caller's where given (files saved
//! without it, e.g. with PEFT's default 8, cannot say), else the module's `M.alpha` scalar, else
//! `lora_alpha` of PEFT's `adapter_config.json` ([`adapter_config_alpha`]), else `r` (a factor
//! of 1). DoRA and kohya's `lora_unet_*` / `lora_te*` names are refused with the reason.

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

/// The largest rank taken (published LoRAs use 4 to 128).
pub const MAX_RANK: usize = 4096;

/// A module key for messages, inside backticks: `M`, or `M` of adapter `name`.
fn shown(module: &str) -> String {
    match module.split_once('\0') {
        Some((m, adapter)) => format!("{m}` of adapter `{adapter}"),
        None => module.to_string(),
    }
}

/// A LoRA ready to merge.
pub struct Lora {
    name: String,
    /// By module path: one pair per adapter.
    modules: BTreeMap<String, Vec<Module>>,
    scale: f32,
    merged: BTreeSet<String>,
}

/// The module path (with its adapter's name after a NUL, for PEFT's named adapters) and the
/// part (`A`, `B`, `alpha`) of a LoRA key, or why it cannot be used.
fn split_key(key: &str) -> std::result::Result<Option<(String, &'static str)>, String> {
    if key.starts_with("lora_unet_") || key.starts_with("lora_te") {
        return Err(format!(
            "`{key}`: kohya's layout is not read; save the LoRA in diffusers / PEFT layout \
             (diffusers' `convert_unet_state_dict_to_peft`, or `save_lora_weights`)"
        ));
    }
    if key.contains("lora_magnitude_vector") || key.contains("dora_scale") {
        return Err(format!(
            "`{key}`: DoRA adapters cannot be merged as a plain LoRA"
        ));
    }
    let mut k = key;
    for prefix in ["base_model.model.", "unet."] {
        k = k.strip_prefix(prefix).unwrap_or(k);
    }
    // Text-encoder modules keep their component's prefix (`text_encoder.text_model.…`,
    // `text_encoder_2.…`): the bundle's own key space. kohya's `te_` names are not read.
    if k.starts_with("te_") || k.starts_with("te1_") || k.starts_with("te2_") {
        return Err(format!(
            "`{key}`: kohya's layout is not read; save the LoRA in diffusers / PEFT layout"
        ));
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
    // PEFT's named adapters: `M.lora_A.<adapter>.weight` (OSEDiff's `default_encoder`, …);
    // each adapter of a module is its own pair, keyed `M` + `\0` + adapter.
    if let Some(stem) = k.strip_suffix(".weight") {
        for (infix, part) in [(".lora_A.", "A"), (".lora_B.", "B")] {
            if let Some(i) = stem.rfind(infix) {
                let adapter = &stem[i + infix.len()..];
                if !adapter.is_empty() && !adapter.contains('.') {
                    return Ok(Some((format!("{}\0{adapter}", &stem[..i]), part)));
                }
            }
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
        let tensors = file
            .all_keys()
            .into_iter()
            .map(|key| {
                let (values, shape) = file.read_f32(key)?;
                Ok((key.to_string(), values, shape))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_tensors(&name, tensors, scale, alpha, config_alpha)
    }

    /// A LoRA from its tensors (`key`, values, shape), every one of them a LoRA tensor;
    /// `scale`, `alpha` and `config_alpha` as [`Lora::read`] takes them.
    pub fn from_tensors(
        name: &str,
        tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
        scale: f32,
        alpha: Option<f32>,
        config_alpha: Option<f32>,
    ) -> Result<Self> {
        let name = name.to_string();
        let mut parts: BTreeMap<String, BTreeMap<&str, Tensor>> = BTreeMap::new();
        let mut ignored = Vec::new();
        for (key, values, shape) in tensors {
            match split_key(&key).map_err(|e| Error::input(format!("{name}: {e}")))? {
                Some((module, part)) => {
                    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                        bail!("{name}: `{key}` holds a non-finite value at index {i}");
                    }
                    let slot = parts.entry(module.clone()).or_default();
                    if slot.insert(part, (values, shape)).is_some() {
                        bail!(
                            "{name}: module `{}` has two `{part}` tensors",
                            shown(&module)
                        );
                    }
                }
                None => ignored.push(key),
            }
        }
        if !ignored.is_empty() {
            bail!(
                "{name}: {} keys are not LoRA tensors (e.g. `{}`)",
                ignored.len(),
                ignored[0]
            );
        }
        let mut modules: BTreeMap<String, Vec<Module>> = BTreeMap::new();
        for (module, mut p) in parts {
            let module_name = shown(&module);
            let (Some((a, a_shape)), Some((b, b_shape))) = (p.remove("A"), p.remove("B")) else {
                bail!("{name}: module `{module_name}` lacks its A (down) or B (up) matrix");
            };
            let file_alpha = match p.remove("alpha") {
                Some((v, _)) if v.len() == 1 => Some(v[0]),
                Some(_) => bail!("{name}: `{module_name}.alpha` is not a scalar"),
                None => None,
            };
            let rank = a_shape[0];
            let inner: usize = a_shape[1..].iter().product();
            let b_ok =
                b_shape.len() >= 2 && b_shape[1] == rank && b_shape[2..].iter().all(|&d| d == 1);
            if a_shape.len() < 2 || !b_ok || rank == 0 {
                bail!(
                    "{name}: module `{module_name}`: A {a_shape:?} and B {b_shape:?} are not a \
                     LoRA pair (A [r, in, ...], B [out, r, 1, ...])"
                );
            }
            if rank > MAX_RANK {
                bail!(
                    "{name}: module `{module_name}` has rank {rank}; more than {MAX_RANK} is not a LoRA"
                );
            }
            let path = module.split('\0').next().unwrap_or_default().to_string();
            modules.entry(path).or_default().push(Module {
                a,
                b,
                rank,
                out: b_shape[0],
                inner,
                alpha: alpha.or(file_alpha).or(config_alpha),
            });
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
        let Some(adapters) = self.modules.get(module) else {
            return Ok(false);
        };
        let inner: usize = shape[1..].iter().product();
        for m in adapters {
            if shape.first() != Some(&m.out) || inner != m.inner {
                bail!(
                    "{}: module `{module}` changes a weight of shape {shape:?}, the LoRA's update \
                     is [{}, {}]",
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
            "{}: {} of its {} modules match no weight (first: `{}`): a LoRA for another \
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

    /// The paths of the modules it adapts.
    pub fn module_paths(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }
}

/// `lora_alpha` of PEFT's `adapter_config.json` (the file's bytes), if it names one.
pub fn adapter_config_alpha(name: &str, json: &[u8]) -> Result<Option<f32>> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| Error::input(format!("{name}: not JSON: {e}")))?;
    Ok(v["lora_alpha"].as_f64().map(|a| a as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        module: &str,
        adapter: &str,
        r: usize,
        inner: usize,
        out: usize,
    ) -> Vec<(String, Vec<f32>, Vec<usize>)> {
        let infix = |p: &str| {
            if adapter.is_empty() {
                format!("{module}.lora_{p}.weight")
            } else {
                format!("{module}.lora_{p}.{adapter}.weight")
            }
        };
        vec![
            (
                infix("A"),
                (0..r * inner).map(|i| i as f32 * 0.1).collect(),
                vec![r, inner],
            ),
            (
                infix("B"),
                (0..out * r).map(|i| 1.0 - i as f32 * 0.2).collect(),
                vec![out, r],
            ),
        ]
    }

    #[test]
    fn named_adapters_of_one_module_add_up() {
        // Two PEFT adapters on one linear layer: both updates, each scaled alpha / r.
        let mut t = pair("m", "first", 1, 2, 2);
        t.extend(pair("m", "second", 2, 2, 2));
        let mut l = Lora::from_tensors("x", t, 1.0, None, Some(8.0)).unwrap();
        let mut w = vec![0f32; 4];
        assert!(l.merge("m.weight", &[2, 2], &mut w).unwrap());
        // first: 8·B·A with A [[0, .1]], B [[1], [.8]]; second: 4·B·A with A [[0, .1], [.2, .3]],
        // B [[1, .8], [.6, .4]].
        let expected = [
            8.0 * 0.0 + 4.0 * (0.0 + 0.8 * 0.2),
            8.0 * 0.1 + 4.0 * (0.1 + 0.8 * 0.3),
            8.0 * 0.0 + 4.0 * (0.0 + 0.4 * 0.2),
            8.0 * 0.08 + 4.0 * (0.06 + 0.4 * 0.3),
        ];
        for (g, e) in w.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5, "{w:?} vs {expected:?}");
        }
        l.check_all_merged().unwrap();
    }

    #[test]
    fn hostile_adapters_are_refused() {
        let err = |t: Vec<(String, Vec<f32>, Vec<usize>)>| {
            Lora::from_tensors("bad", t, 1.0, None, None)
                .err()
                .unwrap()
                .to_string()
        };
        let mut nan = pair("m", "a", 1, 2, 2);
        nan[0].1[1] = f32::NAN;
        assert!(err(nan).contains("non-finite"));
        let mut rank0 = pair("m", "a", 1, 2, 2);
        rank0[0].2 = vec![0, 2];
        rank0[0].1.clear();
        assert!(err(rank0).contains("not a LoRA pair"));
        let big = vec![
            (
                "m.lora_A.weight".to_string(),
                vec![0.0; 5000],
                vec![5000, 1],
            ),
            (
                "m.lora_B.weight".to_string(),
                vec![0.0; 5000],
                vec![1, 5000],
            ),
        ];
        assert!(err(big).contains("rank 5000"));
        let mut lonely = pair("m", "a", 1, 2, 2);
        lonely.pop();
        assert!(err(lonely).contains("`m` of adapter `a` lacks"));
        // A module of another shape, and one the network does not have.
        let mut l = Lora::from_tensors("x", pair("m", "", 1, 2, 2), 1.0, None, None).unwrap();
        let e = l.merge("m.weight", &[3, 2], &mut [0.0; 6]).err().unwrap();
        assert!(e.to_string().contains("shape [3, 2]"), "{e}");
        assert!(l.check_all_merged().is_err());
    }
}
