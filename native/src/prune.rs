//! `pgp-wgpu prune`: applies the PPA decision (pgp-model.md §3; [`pgp_core::ppa::Plan`]) to a
//! bundle's UNet and writes a checkpoint in FaithDiff's own key layout, the kept transformer
//! blocks renumbered, with the diffusers UNet config of the new depths — the starting point
//! for fine-tuning, and a model `convert` turns into a bundle. The folder is assembled beside
//! the output and published only when complete.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pgp_core::models::peam::PeamConfig;
use pgp_core::ppa::{Report, Rule};
pub use pgp_core::prune::PeamInit;
use pgp_wgpu_cli::output;
use serde_json::{Value, json};

use crate::analyze::{describe_model, read_manifest};
use pgp_wgpu_cli::convert::load_bundle;

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
    let device = pgp_core::Gpu::cpu().device().clone();
    let pruned = pgp_core::prune::prune(&bundle, &report, a.rule, a.coarse_depth, a.peam, &device)?;
    let (plan, peam_cfg, arch) = (&pruned.plan, &pruned.peam, pruned.arch);
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
        "peam": pruned.peam_note,
        "before": {
            "model": describe_model(&manifest.unet, &manifest.arch)?,
            "unet_params": pruned.unet_params[0],
            "checkpoint_params": pruned.checkpoint_params[0],
        },
        "after": {
            "model": describe_model(&pruned.unet_config, arch)?,
            "unet_params": pruned.unet_params[1],
            "checkpoint_params": pruned.checkpoint_params[1],
        },
        "convert": convert,
    });

    let partial = output::Partial::beside(&a.output);
    let tmp = partial.path().to_path_buf();
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let path = tmp.join("unet.safetensors");
    let file =
        std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    pruned.write(&mut out)?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    let write_json = |name: &str, v: &Value| {
        output::write_new(&tmp.join(name), serde_json::to_string_pretty(v)?.as_bytes())
    };
    write_json("unet_config.json", &pruned.unet_config)?;
    if let Some(p) = peam_cfg {
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
