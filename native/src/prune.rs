//! `pgp-wgpu prune`: applies the PPA decision (pgp-model.md §3; [`pgp_core::ppa::Plan`]) to a
//! bundle's UNet and writes a checkpoint in FaithDiff's own key layout, the kept transformer
//! blocks renumbered, with the diffusers UNet config of the new depths — the starting point
//! for fine-tuning, and a model `convert` turns into a bundle. The folder is assembled beside
//! the output and published only when complete.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pgp_core::Gpu;
use pgp_core::bundle::{convert_dtype, storage_dtype};
use pgp_core::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use pgp_core::models::peam::PeamConfig;
use pgp_core::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel};
use pgp_core::ppa::{Plan, Report, Rule};
use pgp_core::rng::SplitMix64;
use pgp_core::safetensors::Dtype;
use pgp_core::safetensors::tensor::TensorView;
use pgp_core::weights::{VarBuilder, count_params};
use pgp_wgpu_cli::output;
use serde_json::{Value, json};

use crate::analyze::{describe_model, read_manifest};
use crate::convert::load_bundle;

/// What to do when the bundle has no PEAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeamInit {
    /// Add one at the default placement, initialised as PyTorch initialises a `Conv2d`
    /// (uniform in ±1/√fan_in, seeded): the module PGP-DiffSR trains during fine-tuning.
    Init(u64),
    /// Add none: the checkpoint converts as `--arch pgp-coarse` (pruned, FaithDiff's fusion only).
    None,
}

/// What `prune` was asked to do.
pub struct PruneArgs {
    pub model: PathBuf,
    pub report: PathBuf,
    pub output: PathBuf,
    pub rule: Rule,
    pub coarse_depth: usize,
    pub peam: PeamInit,
    pub quiet: bool,
}

/// A tensor's bytes: the bundle's own, or new ones.
enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

/// A new tensor: key, shape, bytes.
type NewTensor = (String, Vec<usize>, Vec<u8>);

/// New PEAM weights (`peam.*`) for `cfg`, placed as `FaithDiffUNet` places them, initialised
/// as PyTorch initialises a `Conv2d`, stored as `dtype`.
fn init_peam(
    unet: &UNet2DConditionConfig,
    fd: &FaithDiffConfig,
    cfg: &PeamConfig,
    seed: u64,
    dtype: Dtype,
) -> Result<Vec<NewTensor>> {
    let device = Gpu::cpu().device().clone();
    let shapes = VarBuilder::shapes_only(&device);
    FaithDiffUNet::new(&shapes, unet, fd, Some(cfg))?;
    let wanted: BTreeMap<String, Vec<usize>> = shapes
        .wanted()
        .into_iter()
        .filter(|(k, _)| k.starts_with("peam."))
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for (key, shape) in &wanted {
        // A bias takes its weight's fan-in, as in PyTorch's Conv2d.reset_parameters.
        let weight_shape = match key.strip_suffix(".bias") {
            Some(stem) => wanted
                .get(&format!("{stem}.weight"))
                .with_context(|| format!("`{key}` has no weight"))?,
            None => shape,
        };
        let fan_in: usize = weight_shape[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let n: usize = shape.iter().product();
        let values: Vec<u8> = (0..n)
            .flat_map(|_| (((rng.next_f64() * 2.0 - 1.0) * bound) as f32).to_le_bytes())
            .collect();
        out.push((
            key.clone(),
            shape.clone(),
            convert_dtype(key, Dtype::F32, &values, dtype)?,
        ));
    }
    Ok(out)
}

/// Runs the pruning.
pub fn run(a: &PruneArgs) -> Result<()> {
    output::check_new_dir(&a.output)?;
    let text = std::fs::read_to_string(&a.report)
        .with_context(|| format!("reading {}", a.report.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an analyze report", a.report.display()))?;
    let bundle = load_bundle(&a.model)?;
    let manifest = &bundle.manifest;
    let (_, manifest_sha) = read_manifest(&a.model)?;
    let same_model = report.settings["manifest_sha256"] == manifest_sha.as_str();
    if !same_model && !a.quiet {
        eprintln!(
            "warning: {} was made with another bundle than {} (the same architecture, so its \
             measures are applied as they are)",
            a.report.display(),
            a.model.display()
        );
    }
    let cfg = UNet2DConditionConfig::from_json(&manifest.unet)?;
    let layout = cfg.layout()?;
    let plan = Plan::new(&layout, &report.fine, a.rule, a.coarse_depth)?;
    let new_json = plan.apply_to_config(&manifest.unet, &layout)?;
    let new_cfg = UNet2DConditionConfig::from_json(&new_json)
        .context("the pruned UNet config is not valid")?;
    let dtype = storage_dtype(&manifest.dtype)
        .with_context(|| format!("the bundle's dtype `{}` is unknown", manifest.dtype))?;

    // The checkpoint: FaithDiff.bin's layout (UNet keys without prefix, `denoise_encoder.*`).
    let src = bundle.source();
    let mut entries: BTreeMap<String, (Dtype, Vec<usize>, Bytes<'_>)> = BTreeMap::new();
    let (mut before, mut after) = (0u64, 0u64);
    for key in src.all_keys() {
        let stripped = match key.strip_prefix("unet.") {
            Some(k) => k,
            None if key.starts_with("denoise_encoder.") => key,
            None => continue,
        };
        let (d, shape) = src.info(key).expect("listed key");
        let n = shape.iter().product::<usize>() as u64;
        before += n;
        let Some(new_key) = plan.rename(stripped, "") else {
            continue;
        };
        after += n;
        let bytes = src
            .raw_bytes(key)
            .with_context(|| format!("`{key}`: the bundle's bytes are not on the host"))?;
        entries.insert(new_key, (d, shape.to_vec(), Bytes::Borrowed(bytes)));
    }
    let (peam_cfg, peam_note) = match (&manifest.peam, a.peam) {
        (Some(p), _) if p.is_active() => (Some(p.clone()), "copied from the bundle".to_string()),
        (_, PeamInit::Init(seed)) => {
            let p = PeamConfig::default();
            for (key, shape, bytes) in init_peam(&new_cfg, &manifest.faithdiff, &p, seed, dtype)? {
                after += shape.iter().product::<usize>() as u64;
                entries.insert(key, (dtype, shape, Bytes::Owned(bytes)));
            }
            (
                Some(p),
                format!(
                    "new, initialised as PyTorch initialises a Conv2d (seed {seed}): train it \
                     during fine-tuning"
                ),
            )
        }
        (_, PeamInit::None) => (None, "none".to_string()),
    };

    let device = Gpu::cpu().device().clone();
    let unet_params =
        |c: &UNet2DConditionConfig| count_params(&device, |vb| UNet2DConditionModel::new(&vb, c));
    let arch = if peam_cfg.is_some() {
        "pgp"
    } else {
        "pgp-coarse"
    };
    let file = |name: &str| a.output.join(name).display().to_string();
    let mut convert = format!(
        "pgp-wgpu convert --sdxl SDXL_DIR --vae VAE_DIR --arch {arch} --unet-config {} \
         --faithdiff {}",
        file("unet_config.json"),
        file("unet.safetensors")
    );
    if peam_cfg
        .as_ref()
        .is_some_and(|p| *p != PeamConfig::default())
    {
        convert.push_str(&format!(" --peam-config {}", file("peam_config.json")));
    }
    convert.push_str(" -o BUNDLE");
    let summary = json!({
        "source": a.model.display().to_string(),
        "report": a.report.display().to_string(),
        "report_images": report.images,
        "report_steps": report.steps,
        "report_made_with_this_bundle": same_model,
        "rule": a.rule,
        "coarse_depth": a.coarse_depth,
        "modules": plan.modules,
        "pruned": plan.pruned(),
        "peam": peam_note,
        "before": {
            "model": describe_model(&manifest.unet, &manifest.arch)?,
            "unet_params": unet_params(&cfg)?,
            "checkpoint_params": before,
        },
        "after": {
            "model": describe_model(&new_json, arch)?,
            "unet_params": unet_params(&new_cfg)?,
            "checkpoint_params": after,
        },
        "convert": convert,
    });

    let partial = output::Partial::beside(&a.output);
    let tmp = partial.path().to_path_buf();
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let views = entries
        .iter()
        .map(|(k, (d, shape, bytes))| {
            let data = match bytes {
                Bytes::Borrowed(b) => *b,
                Bytes::Owned(v) => v.as_slice(),
            };
            Ok((k.clone(), TensorView::new(*d, shape.clone(), data)?))
        })
        .collect::<std::result::Result<Vec<_>, pgp_core::safetensors::SafeTensorError>>()?;
    let meta = [("format".to_string(), "pt".to_string())].into();
    pgp_core::safetensors::serialize_to_file(views, Some(meta), &tmp.join("unet.safetensors"))
        .context("writing unet.safetensors")?;
    let write_json = |name: &str, v: &Value| {
        output::write_new(&tmp.join(name), serde_json::to_string_pretty(v)?.as_bytes())
    };
    write_json("unet_config.json", &new_json)?;
    if let Some(p) = &peam_cfg {
        write_json("peam_config.json", &serde_json::to_value(p)?)?;
    }
    write_json("prune.json", &summary)?;
    output::publish_dir(partial, &a.output)?;
    if !a.quiet {
        eprintln!(
            "pruned {} of {} transformer blocks ({} → {} UNet parameters); wrote {}",
            plan.pruned().len(),
            plan.modules.iter().map(|m| m.depth).sum::<usize>(),
            summary["before"]["unet_params"],
            summary["after"]["unet_params"],
            a.output.display()
        );
        eprintln!("next: {convert}");
    }
    Ok(())
}

/// Parses `--threshold PHI,KL`.
pub fn parse_threshold(s: &str) -> Result<Rule> {
    let parse = |v: &str| -> Result<f64> {
        let x: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("--threshold: `{v}` is not a number"))?;
        if !x.is_finite() || x < 0.0 {
            bail!("--threshold: {x} must be a finite number ≥ 0");
        }
        Ok(x)
    };
    match s.split_once(',') {
        Some((phi, kl)) => Ok(Rule::Threshold {
            phi_cos: parse(phi)?,
            psi_kl: parse(kl)?,
        }),
        None => bail!("--threshold takes PHI,KL (the paper's: 0.2,1.0), not `{s}`"),
    }
}
