//! `pgp-wgpu download faithdiff`: exactly the files FaithDiff needs, from the Hugging Face Hub
//! (its sync client: `HF_ENDPOINT`, `HF_HOME` and the token file honoured, `HF_TOKEN` too;
//! unfinished files resume from their `.part`), converted into a bundle where `upscale` finds
//! it without `--model`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use pgp_core::presets::Arch;

use crate::convert::{self, ConvertArgs};
use crate::upscale::bundle_dir;

/// One file of a repository; `required: false` files are used when the repository has them.
struct HubFile {
    repo: &'static str,
    path: &'static str,
    required: bool,
}

const fn file(repo: &'static str, path: &'static str, required: bool) -> HubFile {
    HubFile {
        repo,
        path,
        required,
    }
}

const SDXL: &str = "SG161222/RealVisXL_V4.0";
const VAE: &str = "madebyollin/sdxl-vae-fp16-fix";
const FAITHDIFF: &str = "jychen9811/FaithDiff";

/// What `convert` reads, no more: RealVisXL's configs, f16 text encoders and tokenizer pads
/// (its UNet weights are not needed: FaithDiff.bin holds the whole fine-tuned UNet), the
/// fp16-fix VAE, FaithDiff's checkpoint.
const FAITHDIFF_FILES: &[HubFile] = &[
    file(SDXL, "unet/config.json", true),
    file(SDXL, "text_encoder/config.json", true),
    file(SDXL, "text_encoder/model.fp16.safetensors", true),
    file(SDXL, "text_encoder_2/config.json", true),
    file(SDXL, "text_encoder_2/model.fp16.safetensors", true),
    file(SDXL, "scheduler/scheduler_config.json", true),
    file(SDXL, "tokenizer/special_tokens_map.json", false),
    file(SDXL, "tokenizer_2/special_tokens_map.json", false),
    file(VAE, "config.json", true),
    file(VAE, "diffusion_pytorch_model.safetensors", true),
    file(FAITHDIFF, "FaithDiff.bin", true),
];

/// The models `download` knows.
pub const MODELS: &[&str] = &["faithdiff"];

fn bar_for(quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template"),
    );
    bar
}

/// Why a download failed, in words a user can act on.
fn explain(f: &HubFile, e: &ApiError) -> String {
    let text = e.to_string();
    let hint = if text.contains("status code 401") || text.contains("status code 403") {
        " (the repository wants a token: set HF_TOKEN or run `huggingface-cli login`)"
    } else if text.contains("status code 404") {
        " (not on the Hub at this path)"
    } else {
        " (rerun to resume; finished files are kept)"
    };
    format!("{}/{}: {text}{hint}", f.repo, f.path)
}

/// Downloads what `model` needs into the Hub cache (files already there are not fetched
/// again) and converts them into the bundle `out` (default: [`bundle_dir`]).
pub fn run(model: &str, out: Option<PathBuf>, quiet: bool) -> Result<PathBuf> {
    if !MODELS.contains(&model) {
        bail!("unknown model `{model}` (known: {})", MODELS.join(", "));
    }
    let out = match out {
        Some(dir) => dir,
        None => bundle_dir(model)?,
    };
    if out.join(pgp_core::bundle::MANIFEST).is_file() {
        if !quiet {
            eprintln!("{} is already there", out.display());
        }
        return Ok(out);
    }
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().context("setting up the Hub client")?;
    let cache = Cache::from_env();
    let mut paths = std::collections::HashMap::new();
    for f in FAITHDIFF_FILES {
        let repo = Repo::with_revision(f.repo.into(), RepoType::Model, "main".into());
        let path = match cache.repo(repo.clone()).get(f.path) {
            Some(p) => p,
            None => {
                let bar = bar_for(quiet);
                bar.set_message(format!("{}/{}", f.repo, f.path));
                match api.repo(repo).download_with_progress(f.path, bar.clone()) {
                    Ok(p) => {
                        bar.finish_and_clear();
                        p
                    }
                    Err(e) if !f.required && e.to_string().contains("status code 404") => {
                        bar.finish_and_clear();
                        continue;
                    }
                    Err(e) => {
                        bar.abandon();
                        bail!("downloading {}", explain(f, &e));
                    }
                }
            }
        };
        paths.insert((f.repo, f.path), path);
    }
    // Every file of a repository is in one snapshot folder: the converter's input folders.
    let snapshot = |repo: &str, path: &str, depth: usize| -> Result<PathBuf> {
        let p = &paths[&(repo, path)];
        let mut dir = p.as_path();
        for _ in 0..depth {
            dir = dir.parent().context("a cached file outside its snapshot")?;
        }
        Ok(dir.to_path_buf())
    };
    let sdxl = snapshot(SDXL, "unet/config.json", 2)?;
    let vae = snapshot(VAE, "config.json", 1)?;
    let faithdiff = paths[&(FAITHDIFF, "FaithDiff.bin")].clone();
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    convert::run(&ConvertArgs {
        sdxl,
        vae,
        faithdiff,
        arch: Arch::FaithDiff,
        unet_config: None,
        peam_config: None,
        dtype: "f16".into(),
        output: out.clone(),
        max_shard_bytes: pgp_core::bundle::MAX_SHARD_BYTES,
        quiet,
        one_step: false,
        lora: None,
    })?;
    Ok(out)
}
