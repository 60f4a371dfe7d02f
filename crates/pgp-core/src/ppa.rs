//! The progressive pruning analysis (PPA; the paper's §3.1 and Fig. 3, pgp-model.md §3): the
//! two feature measures, an [`Analysis`] that accumulates them on the device over real sampling
//! trajectories (a [`Probe`] on the UNet), the [`Report`] over images, and the pruning [`Plan`]
//! (which transformer blocks stay, how checkpoint keys and the UNet config change).
//!
//! Measures (our reading where the paper is silent; the report states it):
//! - `Φcos(X, Y) = 1 − <X, Y>/(‖X‖‖Y‖)` per sample, over the sample's flattened feature;
//! - `ΨKL(X, Y) = KL(softmax(X) ‖ softmax(Y))` with the softmax over the channel axis at each
//!   position, averaged over positions;
//!
//! both averaged over samples (tiles, and the two branches under classifier-free guidance).
//! Coarse: every level's output between adjacent timesteps, `(X, Y)` = (step `s`, step `s + 1`).
//! Fine: every decoder transformer block's (input, output) at the same timestep.

use std::collections::HashMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::device::read_back;
use crate::error::{Error, Result};
use crate::models::probe::{CallInfo, Probe};
use crate::models::unet_2d::UNetLayout;

/// How the report states the measures.
pub const DEFINITIONS: [&str; 4] = [
    "phi_cos(X, Y) = 1 - <X, Y> / (|X| |Y|) per sample over the flattened feature",
    "psi_kl(X, Y) = KL(softmax(X) || softmax(Y)), softmax over channels at each position, \
     averaged over positions",
    "coarse: level outputs at adjacent sampling steps, X = step s, Y = step s + 1",
    "fine: a decoder transformer block's input X and output Y at the same step",
];

/// `Φcos` of each sample `[B]`: `1 − <x, y>/(‖x‖‖y‖)` over the sample's flattened values (f32).
pub fn phi_cos<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<1> {
    let b = x.dims()[0];
    let flat = |t: Tensor<D>| {
        let n = t.shape().num_elements() / b.max(1);
        t.cast(FloatDType::F32).reshape([b, n])
    };
    let (x, y) = (flat(x), flat(y));
    let dot = (x.clone() * y.clone()).sum_dim(1);
    let nx = (x.clone() * x).sum_dim(1).sqrt();
    let ny = (y.clone() * y).sum_dim(1).sqrt();
    (dot / (nx * ny).clamp_min(f32::MIN_POSITIVE))
        .neg()
        .add_scalar(1.0)
        .reshape([b])
}

/// `ΨKL` of each sample `[B]`: `KL(softmax(x) ‖ softmax(y))` over axis `channels` at every
/// position, averaged over the positions (f32).
pub fn psi_kl<const D: usize>(x: Tensor<D>, y: Tensor<D>, channels: usize) -> Tensor<1> {
    let b = x.dims()[0];
    let lp = log_softmax(x.cast(FloatDType::F32), channels);
    let lq = log_softmax(y.cast(FloatDType::F32), channels);
    let kl = (lp.clone().exp() * (lp - lq)).sum_dim(channels);
    let n = kl.shape().num_elements() / b.max(1);
    kl.reshape([b, n]).mean_dim(1).reshape([b])
}

/// Per-step sums of one module's two measures, on the device until read back.
#[derive(Default)]
struct Series {
    phi: Vec<Option<Tensor<1>>>,
    kl: Vec<Option<Tensor<1>>>,
    count: Vec<usize>,
}

impl Series {
    fn add(&mut self, at: usize, phi: Tensor<1>, kl: Tensor<1>) {
        if self.count.len() <= at {
            self.phi.resize(at + 1, None);
            self.kl.resize(at + 1, None);
            self.count.resize(at + 1, 0);
        }
        let n = phi.dims()[0];
        let sum = |acc: &mut Option<Tensor<1>>, v: Tensor<1>| {
            *acc = Some(match acc.take() {
                Some(a) => a + v.sum(),
                None => v.sum(),
            });
        };
        sum(&mut self.phi[at], phi);
        sum(&mut self.kl[at], kl);
        self.count[at] += n;
    }
}

/// Accumulates the measures of one image's sampling run; a [`Probe`] for
/// [`crate::Job::next_probed`]. Keeps only the previous step's level outputs (per tile and
/// branch) and one running sum per module, step and measure.
#[derive(Default)]
pub struct Analysis {
    call: Option<CallInfo>,
    coarse: Vec<(String, Vec<usize>, Series)>,
    fine: Vec<(String, Series)>,
    prev: HashMap<(String, usize, usize), (usize, Tensor<4>)>,
}

impl Analysis {
    /// An empty analysis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the sums back (once, as one tensor) and starts over for the next image.
    pub async fn finish_image(&mut self) -> Result<ImageMeasures> {
        let coarse = std::mem::take(&mut self.coarse);
        let fine = std::mem::take(&mut self.fine);
        self.prev.clear();
        self.call = None;
        let mut sums = Vec::new();
        let mut collect = |s: &Series, what: &str| -> Result<()> {
            for (i, (p, k)) in s.phi.iter().zip(&s.kl).enumerate() {
                match (p, k) {
                    (Some(p), Some(k)) => sums.extend([p.clone(), k.clone()]),
                    _ => {
                        return Err(Error::input(format!(
                            "{what}: no measure at step {i} (the run stopped early?)"
                        )));
                    }
                }
            }
            Ok(())
        };
        for (name, _, s) in &coarse {
            collect(s, name)?;
        }
        for (name, s) in &fine {
            collect(s, name)?;
        }
        let values = if sums.is_empty() {
            Vec::new()
        } else {
            read_back(Tensor::cat(sums, 0)).await?.0
        };
        let mut at = values.iter().map(|&v| f64::from(v));
        let mut means = |s: &Series| {
            let mut phi = Vec::with_capacity(s.count.len());
            let mut kl = Vec::with_capacity(s.count.len());
            for &n in &s.count {
                let n = n.max(1) as f64;
                phi.push(at.next().expect("one value per sum") / n);
                kl.push(at.next().expect("one value per sum") / n);
            }
            (phi, kl)
        };
        let coarse = coarse
            .iter()
            .map(|(name, shape, s)| {
                let (phi_cos, psi_kl) = means(s);
                Measured {
                    name: name.clone(),
                    shape: shape.clone(),
                    phi_cos,
                    psi_kl,
                }
            })
            .collect();
        let fine = fine
            .iter()
            .map(|(name, s)| {
                let (phi_cos, psi_kl) = means(s);
                Measured {
                    name: name.clone(),
                    shape: Vec::new(),
                    phi_cos,
                    psi_kl,
                }
            })
            .collect();
        Ok(ImageMeasures { coarse, fine })
    }
}

impl Probe for Analysis {
    fn begin(&mut self, call: CallInfo) {
        self.call = Some(call);
    }

    fn level(&mut self, name: &str, features: &Tensor<4>) {
        let Some(call) = self.call else {
            return;
        };
        let key = (name.to_string(), call.tile, call.branch);
        let previous = self.prev.insert(key, (call.step, features.clone()));
        let i = match self.coarse.iter().position(|(n, ..)| n == name) {
            Some(i) => i,
            None => {
                let [_, c, h, w] = features.dims();
                self.coarse
                    .push((name.to_string(), vec![c, h, w], Series::default()));
                self.coarse.len() - 1
            }
        };
        if let Some((step, x)) = previous
            && step + 1 == call.step
            && x.dims() == features.dims()
        {
            let phi = phi_cos(x.clone(), features.clone());
            let kl = psi_kl(x, features.clone(), 1);
            self.coarse[i].2.add(step, phi, kl);
        }
    }

    fn block(&mut self, name: &str, input: &Tensor<3>, output: &Tensor<3>) {
        let Some(call) = self.call else {
            return;
        };
        let i = match self.fine.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.fine.push((name.to_string(), Series::default()));
                self.fine.len() - 1
            }
        };
        let phi = phi_cos(input.clone(), output.clone());
        let kl = psi_kl(input.clone(), output.clone(), 2);
        self.fine[i].1.add(call.step, phi, kl);
    }
}

/// One module's measures per step (coarse: per pair of adjacent steps).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// diffusers' module path.
    pub name: String,
    /// `[C, h, w]` of the feature (coarse; the first tile's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shape: Vec<usize>,
    /// Mean Φcos per step.
    pub phi_cos: Vec<f64>,
    /// Mean ΨKL per step.
    pub psi_kl: Vec<f64>,
}

/// What one image's run measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageMeasures {
    /// Level outputs between adjacent steps.
    pub coarse: Vec<Measured>,
    /// Decoder transformer blocks, input against output, per step.
    pub fine: Vec<Measured>,
}

/// A coarse module in the report: per adjacent-step pair, the mean over images.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CoarseEntry {
    /// `down_blocks.{i}`, `mid_block`, `up_blocks.{i}`.
    pub module: String,
    /// `[C, h, w]` of the feature.
    pub shape: Vec<usize>,
    /// Φcos per adjacent-step pair.
    pub phi_cos: Vec<f64>,
    /// ΨKL per adjacent-step pair.
    pub psi_kl: Vec<f64>,
}

/// A decoder block in the report: means over steps and images, and per step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FineEntry {
    /// `up_blocks.{i}.attentions.{j}.transformer_blocks.{k}`.
    pub name: String,
    /// Mean Φcos.
    pub phi_cos: f64,
    /// Mean ΨKL.
    pub psi_kl: f64,
    /// Φcos per step (mean over images).
    pub phi_cos_per_step: Vec<f64>,
    /// ΨKL per step (mean over images).
    pub psi_kl_per_step: Vec<f64>,
}

/// Which decoder blocks the fine stage keeps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// In every decoder attention module deeper than `k`, keep the `k` blocks that change
    /// their features most (highest Φcos; ΨKL breaks ties). The paper keeps 4 at the
    /// smallest decoder scale.
    KeepTopK(usize),
    /// The paper's rule as printed: prune a block when `Φcos ≥ phi_cos` and `ΨKL ≥ psi_kl`
    /// (0.2 and 1.0 in the paper). A module keeps at least one block (the one this rule would
    /// prune last: the lowest Φcos).
    Threshold {
        /// Φcos bound.
        phi_cos: f64,
        /// ΨKL bound.
        psi_kl: f64,
    },
}

impl Rule {
    /// The rule's defaults as the paper gives them.
    pub const PAPER_TOP_K: Rule = Rule::KeepTopK(4);
    /// The literal threshold of the paper.
    pub const PAPER_THRESHOLD: Rule = Rule::Threshold {
        phi_cos: 0.2,
        psi_kl: 1.0,
    };
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::KeepTopK(k) => write!(f, "keep the top {k} of each decoder transformer"),
            Rule::Threshold { phi_cos, psi_kl } => {
                write!(f, "threshold Φcos ≥ {phi_cos} and ΨKL ≥ {psi_kl}")
            }
        }
    }
}

/// One attention module's fate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModulePlan {
    /// `down_blocks.{i}.attentions.{j}`, `mid_block.attentions.0`, `up_blocks.{i}.attentions.{j}`.
    pub module: String,
    /// `coarse` (encoder and bottleneck) or `fine` (decoder).
    pub stage: String,
    /// Transformer blocks before pruning.
    pub depth: usize,
    /// The old indices of the kept blocks, ascending; they become `0..keep.len()`.
    pub keep: Vec<usize>,
}

/// Which blocks of every attention module stay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// The coarse stage's depth for encoder and bottleneck modules.
    pub coarse_depth: usize,
    /// The fine rule.
    pub rule: Rule,
    /// Every attention module of the UNet, in forward order.
    pub modules: Vec<ModulePlan>,
}

/// The attention modules of a UNet layout (`down_blocks.1.attentions.0`, …), whether each is
/// in the decoder, and their depths, in forward order.
pub fn attention_modules(layout: &UNetLayout) -> Vec<(String, bool, usize)> {
    let n = layout.channels.len();
    let mut out = Vec::new();
    for i in 0..n {
        if layout.down_attn[i] {
            for j in 0..layout.layers[i] {
                out.push((
                    format!("down_blocks.{i}.attentions.{j}"),
                    false,
                    layout.down_depth[i],
                ));
            }
        }
    }
    out.push(("mid_block.attentions.0".into(), false, layout.mid_depth));
    for i in 0..n {
        if layout.up_attn[i] {
            for (j, &d) in layout.up_depth[i].iter().enumerate() {
                out.push((format!("up_blocks.{i}.attentions.{j}"), true, d));
            }
        }
    }
    out
}

impl Plan {
    /// Decides every module: encoder and bottleneck modules keep their first `coarse_depth`
    /// blocks (the paper prunes them to one; which one is not said: the first); decoder
    /// modules keep what `rule` says, from the `fine` measures.
    pub fn new(
        layout: &UNetLayout,
        fine: &[FineEntry],
        rule: Rule,
        coarse_depth: usize,
    ) -> Result<Self> {
        if coarse_depth == 0 {
            return Err(Error::input(
                "the coarse depth must be at least 1 (a transformer without blocks)",
            ));
        }
        if let Rule::KeepTopK(0) = rule {
            return Err(Error::input("--keep-top-k must be at least 1"));
        }
        let mut modules = Vec::new();
        for (module, decoder, depth) in attention_modules(layout) {
            let keep = if !decoder {
                (0..depth.min(coarse_depth)).collect()
            } else {
                let measured = (0..depth)
                    .map(|k| {
                        let name = format!("{module}.transformer_blocks.{k}");
                        fine.iter().find(|e| e.name == name).ok_or_else(|| {
                            Error::input(format!(
                                "the report has no measure for `{name}`: it was made with \
                                 another model"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                keep_blocks(&measured, rule)
            };
            modules.push(ModulePlan {
                module,
                stage: if decoder { "fine" } else { "coarse" }.into(),
                depth,
                keep,
            });
        }
        let known: Vec<String> = modules
            .iter()
            .filter(|m| m.stage == "fine")
            .flat_map(|m| (0..m.depth).map(|k| format!("{}.transformer_blocks.{k}", m.module)))
            .collect();
        if let Some(e) = fine.iter().find(|e| !known.contains(&e.name)) {
            return Err(Error::input(format!(
                "the report measures `{}`, which this model does not have: it was made with \
                 another model",
                e.name
            )));
        }
        Ok(Self {
            coarse_depth,
            rule,
            modules,
        })
    }

    /// The full names of the blocks pruned.
    pub fn pruned(&self) -> Vec<String> {
        self.modules
            .iter()
            .flat_map(|m| {
                (0..m.depth)
                    .filter(|k| !m.keep.contains(k))
                    .map(move |k| format!("{}.transformer_blocks.{k}", m.module))
            })
            .collect()
    }

    /// A checkpoint key after pruning (`prefix` is stripped first and put back): `None` for
    /// a key of a pruned block, the renumbered key for a kept block, the key itself otherwise.
    pub fn rename(&self, key: &str, prefix: &str) -> Option<String> {
        let Some(rest) = key.strip_prefix(prefix) else {
            return Some(key.to_string());
        };
        let Some((module, tail)) = rest.split_once(".transformer_blocks.") else {
            return Some(key.to_string());
        };
        let Some(m) = self.modules.iter().find(|m| m.module == module) else {
            return Some(key.to_string());
        };
        let (index, after) = tail.split_once('.').unwrap_or((tail, ""));
        let Ok(k) = index.parse::<usize>() else {
            return Some(key.to_string());
        };
        let new = m.keep.iter().position(|&x| x == k)?;
        let sep = if after.is_empty() { "" } else { "." };
        Some(format!(
            "{prefix}{module}.transformer_blocks.{new}{sep}{after}"
        ))
    }

    /// The UNet `config.json` with the pruned depths: `transformer_layers_per_block` per down
    /// level, `mid_transformer_layers_per_block`, and `reverse_transformer_layers_per_block`
    /// per up block and layer (levels without attention keep their values), none of them left
    /// on `_use_default_values`. diffusers builds the mid block with the last down depth
    /// (`mid_transformer_layers_per_block` is this project's key); the coarse stage gives both
    /// the same depth.
    pub fn apply_to_config(&self, config: &Value, layout: &UNetLayout) -> Result<Value> {
        let kept = |module: &str| {
            self.modules
                .iter()
                .find(|m| m.module == module)
                .map(|m| m.keep.len())
        };
        let n = layout.channels.len();
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let depths: Vec<usize> = (0..layout.layers[i])
                .filter_map(|j| kept(&format!("down_blocks.{i}.attentions.{j}")))
                .collect();
            match depths.first() {
                Some(&d) if depths.iter().all(|&x| x == d) => down.push(d),
                Some(_) => {
                    return Err(Error::input(format!(
                        "down block {i}: its attention modules would get different depths \
                         {depths:?}; diffusers' config has one depth per down level"
                    )));
                }
                None => down.push(layout.down_depth[i]),
            }
        }
        let reverse: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                layout.up_depth[i]
                    .iter()
                    .enumerate()
                    .map(|(j, &d)| kept(&format!("up_blocks.{i}.attentions.{j}")).unwrap_or(d))
                    .collect()
            })
            .collect();
        let mid = kept("mid_block.attentions.0").unwrap_or(layout.mid_depth);
        let mut out = config.clone();
        crate::config::set_fields(
            &mut out,
            vec![
                ("transformer_layers_per_block", json!(down)),
                ("mid_transformer_layers_per_block", json!(mid)),
                ("reverse_transformer_layers_per_block", json!(reverse)),
            ],
        )?;
        Ok(out)
    }
}

/// The kept old indices of one decoder module's blocks under `rule`, ascending.
fn keep_blocks(measured: &[&FineEntry], rule: Rule) -> Vec<usize> {
    let depth = measured.len();
    // Most-changing first.
    let mut order: Vec<usize> = (0..depth).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (measured[a], measured[b]);
        y.phi_cos
            .total_cmp(&x.phi_cos)
            .then(y.psi_kl.total_cmp(&x.psi_kl))
            .then(a.cmp(&b))
    });
    let mut keep: Vec<usize> = match rule {
        Rule::KeepTopK(k) => order.into_iter().take(k).collect(),
        Rule::Threshold { phi_cos, psi_kl } => {
            let kept: Vec<usize> = (0..depth)
                .filter(|&k| !(measured[k].phi_cos >= phi_cos && measured[k].psi_kl >= psi_kl))
                .collect();
            if kept.is_empty() && depth > 0 {
                vec![*order.last().expect("depth > 0")]
            } else {
                kept
            }
        }
    };
    keep.sort_unstable();
    keep
}

/// What a rule would prune, as the report lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// The rule.
    pub rule: Rule,
    /// The coarse depth applied with it.
    pub coarse_depth: usize,
    /// Blocks pruned (coarse and fine).
    pub prune: Vec<String>,
    /// Transformer blocks left.
    pub blocks_left: usize,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Images analysed.
    pub images: usize,
    /// Their file names.
    pub image_names: Vec<String>,
    /// Sampling steps per image.
    pub steps: usize,
    /// The model (architecture, parameters, depths; as the caller describes it).
    pub model: Value,
    /// The run's settings (tile, guidance, prompt, ...; as the caller describes them).
    pub settings: Value,
    /// How the measures are defined.
    pub definitions: Vec<String>,
    /// Level outputs between adjacent steps (the paper's Fig. 3 b/c).
    pub coarse: Vec<CoarseEntry>,
    /// Decoder blocks, input against output (the fine stage).
    pub fine: Vec<FineEntry>,
    /// What the paper's two fine rules (and the coarse stage at depth 1) would prune.
    pub decisions: Vec<Decision>,
}

impl Report {
    /// Averages the images' measures (per step, over images) and decides with both rules.
    pub fn new(
        images: &[(String, ImageMeasures)],
        steps: usize,
        layout: &UNetLayout,
        model: Value,
        settings: Value,
    ) -> Result<Self> {
        let Some((_, first)) = images.first() else {
            return Err(Error::input("no image was analysed"));
        };
        let same = |a: &[Measured], b: &[Measured]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.name == y.name && x.phi_cos.len() == y.phi_cos.len())
        };
        for (name, m) in images {
            if !same(&m.coarse, &first.coarse) || !same(&m.fine, &first.fine) {
                return Err(Error::input(format!(
                    "{name}: its measures cover other modules or steps than {}'s (another \
                     model or step count?)",
                    images[0].0
                )));
            }
        }
        let n = images.len() as f64;
        let mean_over_images = |pick: &dyn Fn(&ImageMeasures) -> &Measured| {
            let len = pick(first).phi_cos.len();
            let mut phi = vec![0.0; len];
            let mut kl = vec![0.0; len];
            for (_, m) in images {
                let e = pick(m);
                for s in 0..len {
                    phi[s] += e.phi_cos[s] / n;
                    kl[s] += e.psi_kl[s] / n;
                }
            }
            (phi, kl)
        };
        let coarse = (0..first.coarse.len())
            .map(|i| {
                let (phi_cos, psi_kl) = mean_over_images(&|m| &m.coarse[i]);
                CoarseEntry {
                    module: first.coarse[i].name.clone(),
                    shape: first.coarse[i].shape.clone(),
                    phi_cos,
                    psi_kl,
                }
            })
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let fine: Vec<FineEntry> = (0..first.fine.len())
            .map(|i| {
                let (phi, kl) = mean_over_images(&|m| &m.fine[i]);
                FineEntry {
                    name: first.fine[i].name.clone(),
                    phi_cos: mean(&phi),
                    psi_kl: mean(&kl),
                    phi_cos_per_step: phi,
                    psi_kl_per_step: kl,
                }
            })
            .collect();
        let decisions = [Rule::PAPER_TOP_K, Rule::PAPER_THRESHOLD]
            .into_iter()
            .map(|rule| {
                let plan = Plan::new(layout, &fine, rule, 1)?;
                let left = plan.modules.iter().map(|m| m.keep.len()).sum();
                Ok(Decision {
                    rule,
                    coarse_depth: 1,
                    prune: plan.pruned(),
                    blocks_left: left,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            images: images.len(),
            image_names: images.iter().map(|(n, _)| n.clone()).collect(),
            steps,
            model,
            settings,
            definitions: DEFINITIONS.iter().map(|s| s.to_string()).collect(),
            coarse,
            fine,
            decisions,
        })
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::models::unet_2d::UNet2DConditionConfig;
    use crate::presets::Arch;

    fn t3(v: Vec<f32>, shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v, shape), &Device::flex())
    }

    fn host(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32")
    }

    #[test]
    fn measures_match_their_definitions() {
        // Two samples of 2 positions × 3 channels.
        let x = vec![1.0, 2.0, 3.0, -1.0, 0.5, 2.0, 0.0, 1.0, 0.0, 4.0, 4.0, 4.0];
        let y = vec![1.0, 2.0, 3.0, -1.0, 0.5, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0];
        let phi = host(phi_cos(t3(x.clone(), [2, 2, 3]), t3(y.clone(), [2, 2, 3])));
        let kl = host(psi_kl(
            t3(x.clone(), [2, 2, 3]),
            t3(y.clone(), [2, 2, 3]),
            2,
        ));
        // Reference in f64.
        for s in 0..2 {
            let (a, b) = (&x[s * 6..s * 6 + 6], &y[s * 6..s * 6 + 6]);
            let dot: f64 = a.iter().zip(b).map(|(p, q)| f64::from(p * q)).sum();
            let na = a.iter().map(|p| f64::from(p * p)).sum::<f64>().sqrt();
            let nb = b.iter().map(|p| f64::from(p * p)).sum::<f64>().sqrt();
            assert!((f64::from(phi[s]) - (1.0 - dot / (na * nb))).abs() < 1e-6);
            let softmax = |v: &[f32]| {
                let z: f64 = v.iter().map(|&e| f64::from(e).exp()).sum();
                v.iter()
                    .map(|&e| f64::from(e).exp() / z)
                    .collect::<Vec<_>>()
            };
            let mut want = 0.0;
            for pos in 0..2 {
                let (p, q) = (
                    softmax(&a[pos * 3..pos * 3 + 3]),
                    softmax(&b[pos * 3..pos * 3 + 3]),
                );
                want += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>() / 2.0;
            }
            assert!(
                (f64::from(kl[s]) - want).abs() < 1e-6,
                "{} vs {want}",
                kl[s]
            );
        }
        // The first sample is identical: both measures vanish.
        assert!(phi[0].abs() < 1e-6 && kl[0].abs() < 1e-6);
        assert!(phi[1] > 0.1 && kl[1] > 0.1);
    }

    fn fine_entry(name: &str, phi: f64, kl: f64) -> FineEntry {
        FineEntry {
            name: name.into(),
            phi_cos: phi,
            psi_kl: kl,
            phi_cos_per_step: vec![phi],
            psi_kl_per_step: vec![kl],
        }
    }

    /// Fine measures for every decoder block of `arch`: block k of a module measures k + 1
    /// (so the last blocks change features most), except the ones listed, which measure 0.
    fn fine_of(layout: &UNetLayout, zero: &[&str]) -> Vec<FineEntry> {
        attention_modules(layout)
            .into_iter()
            .filter(|(_, decoder, _)| *decoder)
            .flat_map(|(m, _, d)| {
                (0..d)
                    .map(move |k| format!("{m}.transformer_blocks.{k}"))
                    .collect::<Vec<_>>()
            })
            .map(|name| {
                let k: f64 = name.rsplit('.').next().unwrap().parse().unwrap();
                let v = if zero.contains(&name.as_str()) {
                    0.0
                } else {
                    k + 1.0
                };
                fine_entry(&name, v / 10.0, v)
            })
            .collect()
    }

    #[test]
    fn plans_follow_the_rules_and_rename_keys() {
        let layout = Arch::FaithDiff.unet_config().layout().unwrap();
        let zero = "up_blocks.0.attentions.1.transformer_blocks.9";
        let fine = fine_of(&layout, &[zero]);
        let plan = Plan::new(&layout, &fine, Rule::KeepTopK(4), 1).unwrap();
        // The paper's fine result: 23 blocks, 4 in each smallest-scale decoder module.
        let left: usize = plan.modules.iter().map(|m| m.keep.len()).sum();
        assert_eq!(left, 23);
        let m = |name: &str| plan.modules.iter().find(|m| m.module == name).unwrap();
        assert_eq!(m("up_blocks.0.attentions.0").keep, vec![6, 7, 8, 9]);
        // Block 9 measures 0 there: the least changing goes first.
        assert_eq!(m("up_blocks.0.attentions.1").keep, vec![5, 6, 7, 8]);
        assert_eq!(m("up_blocks.1.attentions.2").keep, vec![0, 1]);
        assert_eq!(m("down_blocks.2.attentions.1").keep, vec![0]);
        assert_eq!(m("mid_block.attentions.0").keep, vec![0]);
        assert!(plan.pruned().contains(&zero.to_string()));
        // Keys: renumbered, dropped, or untouched.
        let r = |k: &str| plan.rename(k, "unet.");
        assert_eq!(
            r("unet.up_blocks.0.attentions.0.transformer_blocks.7.attn1.to_q.weight").as_deref(),
            Some("unet.up_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q.weight")
        );
        assert_eq!(
            r("unet.up_blocks.0.attentions.0.transformer_blocks.2.ff.net.2.bias"),
            None
        );
        assert_eq!(
            r("unet.down_blocks.1.attentions.0.transformer_blocks.1.norm1.weight"),
            None
        );
        assert_eq!(
            r("unet.up_blocks.0.attentions.0.proj_in.weight").as_deref(),
            Some("unet.up_blocks.0.attentions.0.proj_in.weight")
        );
        assert_eq!(
            r("denoise_encoder.conv_in.weight").as_deref(),
            Some("denoise_encoder.conv_in.weight")
        );
        // The config is the `pgp` preset's.
        let cfg = plan
            .apply_to_config(&Arch::FaithDiff.unet_json(), &layout)
            .unwrap();
        let pgp = Arch::Pgp.unet_json();
        for key in [
            "transformer_layers_per_block",
            "mid_transformer_layers_per_block",
            "reverse_transformer_layers_per_block",
        ] {
            assert_eq!(cfg[key], pgp[key], "{key}");
        }
        // The literal threshold prunes the blocks that change most; a module keeps one.
        let plan = Plan::new(&layout, &fine, Rule::PAPER_THRESHOLD, 1).unwrap();
        let t = |name: &str| {
            plan.modules
                .iter()
                .find(|m| m.module == name)
                .unwrap()
                .keep
                .clone()
        };
        // Blocks 0..=8 measure ≤ 0.9 Φcos: block 1 (0.2, 2.0) onwards meet both bounds.
        assert_eq!(t("up_blocks.0.attentions.0"), vec![0]);
        assert_eq!(t("up_blocks.0.attentions.1"), vec![0, 9]);
        // A report for another model is refused.
        let other = Arch::Pgp.unet_config().layout().unwrap();
        assert!(Plan::new(&other, &fine, Rule::KeepTopK(4), 1).is_err());
        assert!(Plan::new(&layout, &fine[1..], Rule::KeepTopK(4), 1).is_err());
        assert!(Plan::new(&layout, &fine, Rule::KeepTopK(0), 1).is_err());
        assert!(Plan::new(&layout, &fine, Rule::KeepTopK(4), 0).is_err());
    }

    #[test]
    fn analysis_pairs_each_tile_and_branch_with_itself_at_the_next_step() {
        // Level features `[1, 2, 1, 1]` that differ by step, tile and branch.
        let v = |s: usize, t: usize, b: usize| {
            let (s, t, b) = (s as f64, t as f64, b as f64);
            [
                1.0 + t + 2.0 * b,
                (s + 1.0) * (1.0 + b) + t * s - 0.5 * b * s * s,
            ]
        };
        let device = Device::flex();
        let mut a = Analysis::new();
        for step in 0..3 {
            for tile in 0..2 {
                for branch in 0..2 {
                    a.begin(CallInfo {
                        step,
                        steps: 3,
                        tile,
                        branch,
                    });
                    let x = v(step, tile, branch).map(|e| e as f32).to_vec();
                    let x = Tensor::<4>::from_data(TensorData::new(x, [1, 2, 1, 1]), &device);
                    a.level("down_blocks.0", &x);
                }
            }
        }
        let m = pollster::block_on(a.finish_image()).unwrap();
        assert!(m.fine.is_empty());
        let c = &m.coarse[0];
        assert_eq!(
            (c.name.as_str(), c.shape.as_slice()),
            ("down_blocks.0", &[2, 1, 1][..])
        );
        assert_eq!(c.phi_cos.len(), 2, "one value per pair of adjacent steps");
        for s in 0..2 {
            let (mut phi, mut kl) = (0.0, 0.0);
            for t in 0..2 {
                for b in 0..2 {
                    let (x, y) = (v(s, t, b), v(s + 1, t, b));
                    let dot = x[0] * y[0] + x[1] * y[1];
                    let n = |z: [f64; 2]| (z[0] * z[0] + z[1] * z[1]).sqrt();
                    phi += (1.0 - dot / (n(x) * n(y))) / 4.0;
                    let p = |z: [f64; 2]| {
                        let e = [z[0].exp(), z[1].exp()];
                        [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])]
                    };
                    let (p, q) = (p(x), p(y));
                    kl += (p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln()) / 4.0;
                }
            }
            assert!(
                (c.phi_cos[s] - phi).abs() < 1e-6,
                "step {s}: {} vs {phi}",
                c.phi_cos[s]
            );
            assert!(
                (c.psi_kl[s] - kl).abs() < 1e-6,
                "step {s}: {} vs {kl}",
                c.psi_kl[s]
            );
        }
        // The analysis starts over: the next image pairs nothing with this one's last step.
        a.begin(CallInfo {
            step: 0,
            steps: 3,
            tile: 0,
            branch: 0,
        });
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2, 1, 1]), &device);
        a.level("down_blocks.0", &x);
        let m = pollster::block_on(a.finish_image()).unwrap();
        assert!(m.coarse[0].phi_cos.is_empty());
    }

    #[test]
    fn pruned_configs_are_not_overridden_by_diffusers_defaults() {
        // Configs saved by diffusers list the keys they left at their defaults, and diffusers
        // drops those keys when it loads: the new depths must not stay on that list.
        let mut config = Arch::FaithDiff.unet_json();
        config["_use_default_values"] =
            serde_json::json!(["reverse_transformer_layers_per_block", "upcast_attention"]);
        let layout = UNet2DConditionConfig::from_json(&config)
            .unwrap()
            .layout()
            .unwrap();
        // Decoder depths that differ within a block: Φcos ≥ 0.35 prunes blocks 3..=9 of each
        // deep module except the zero-measure block 9 of the last one.
        let fine = fine_of(&layout, &["up_blocks.0.attentions.2.transformer_blocks.9"]);
        let rule = Rule::Threshold {
            phi_cos: 0.35,
            psi_kl: 0.0,
        };
        let plan = Plan::new(&layout, &fine, rule, 1).unwrap();
        let out = plan.apply_to_config(&config, &layout).unwrap();
        assert_eq!(
            out["_use_default_values"],
            serde_json::json!(["upcast_attention"])
        );
        let depths = serde_json::json!([[3, 3, 4], [2, 2, 2], [1, 1, 1]]);
        assert_eq!(out["reverse_transformer_layers_per_block"], depths);
        let parsed = UNet2DConditionConfig::from_json(&out)
            .unwrap()
            .layout()
            .unwrap();
        assert_eq!(parsed.up_depth[0], vec![3, 3, 4]);
        assert_eq!(parsed.mid_depth, 1);
        // The presets' own depths are taken off the list too.
        let mut preset = config.clone();
        Arch::Pgp.apply_depths(&mut preset).unwrap();
        assert_eq!(
            preset["_use_default_values"],
            serde_json::json!(["upcast_attention"])
        );
    }
}
