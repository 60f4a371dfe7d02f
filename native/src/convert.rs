//! `pgp-wgpu convert`: the files users download → a model bundle (see `pgp_core::bundle`).
//! Everything is checked before anything is written; the bundle is assembled in a temporary
//! folder beside the output (removed on failure or Ctrl-C, [`output::Partial`]), every file
//! flushed to the disk, and published under its name only when complete and re-checked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::output;
use anyhow::{Context, Result, bail};
use pgp_core::bundle::convert::FaithDiffInputs;
use pgp_core::bundle::lora::{Lora, adapter_config_alpha};
use pgp_core::bundle::{Bundle, Checkpoint, ShardSink, Writer, storage_dtype};
use pgp_core::models::peam::PeamConfig;
use pgp_core::presets::Arch;
use pgp_core::weights::{TensorSource, WeightFile};
use pgp_core::{DirSource, Gpu};

/// What `convert` was asked to do.
pub struct ConvertArgs {
    pub sdxl: PathBuf,
    pub vae: PathBuf,
    pub faithdiff: PathBuf,
    pub arch: Arch,
    pub unet_config: Option<PathBuf>,
    pub peam_config: Option<PathBuf>,
    pub dtype: String,
    pub output: PathBuf,
    pub max_shard_bytes: usize,
    pub quiet: bool,
    /// Marks the bundle as a one-step (S1) model: callers' default options run one step.
    pub one_step: bool,
    /// A UNet LoRA to merge (file, scale, alpha override); the bundle is then one-step.
    pub lora: Option<(PathBuf, f32, Option<f32>)>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// The first of `names` that exists in `dir`.
fn first_existing(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .with_context(|| format!("{}: none of {} found", dir.display(), names.join(", ")))
}

/// A component's weights in a diffusers / transformers folder: `{stem}.fp16.safetensors`,
/// `{stem}.safetensors`, or the same split into shards listed by a `….safetensors.index.json`
/// (its `weight_map`), joined into one file in memory.
fn read_component(dir: &Path, stem: &str) -> Result<WeightFile> {
    let names = [
        format!("{stem}.fp16.safetensors"),
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors.index.json"),
        format!("{stem}.safetensors.index.json"),
    ];
    let path = first_existing(dir, &names.iter().map(String::as_str).collect::<Vec<_>>())?;
    if !path.to_string_lossy().ends_with(".index.json") {
        return read_weights(&path);
    }
    let index = read_json(&path)?;
    let map = index["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no `weight_map`", path.display()))?;
    let mut shards: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .with_context(|| format!("{}: `{key}` maps to a non-string", path.display()))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            bail!("{}: shard name `{file}` leaves the folder", path.display());
        }
        shards.entry(file.to_string()).or_default().push(key);
    }
    let mut tensors = Vec::new();
    let files = shards
        .keys()
        .map(|f| read_weights(&dir.join(f)))
        .collect::<Result<Vec<_>>>()?;
    for ((file, keys), weights) in shards.iter().zip(&files) {
        for key in keys {
            let (dtype, shape) = weights.info(key).with_context(|| {
                format!(
                    "{}: the index lists `{key}` but the shard lacks it",
                    dir.join(file).display()
                )
            })?;
            tensors.push((key.to_string(), dtype, shape.to_vec(), weights.raw(key)?));
        }
    }
    let views = tensors
        .iter()
        .map(|(k, d, s, b)| {
            Ok((
                k.clone(),
                pgp_core::safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, pgp_core::safetensors::SafeTensorError>>()
        .with_context(|| format!("joining the shards of {}", path.display()))?;
    let bytes = pgp_core::safetensors::serialize(views, None)
        .with_context(|| format!("joining the shards of {}", path.display()))?;
    Ok(WeightFile::from_bytes(path.display().to_string(), bytes)?)
}

fn read_weights(path: &Path) -> Result<WeightFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(WeightFile::from_bytes(path.display().to_string(), bytes)?)
}

/// `pad_token` of a tokenizer folder's `special_tokens_map.json` (a string or `{content}`).
fn pad_token(dir: &Path, default: &str) -> Result<String> {
    let path = dir.join("special_tokens_map.json");
    if !path.is_file() {
        return Ok(default.to_string());
    }
    let v = read_json(&path)?;
    Ok(match &v["pad_token"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    })
}

/// A bundle folder being written: each file flushed and published whole
/// ([`output::write_new`]).
pub struct FolderSink(pub PathBuf);

impl ShardSink for FolderSink {
    fn write(&mut self, name: &str, bytes: &[u8]) -> pgp_core::Result<()> {
        output::write_new(&self.0.join(name), bytes).map_err(|e| pgp_core::Error::Source {
            file: self.0.join(name).display().to_string(),
            reason: format!("{e:#}"),
        })
    }
}

/// FaithDiff's checkpoint: a torch.save file, or a safetensors file.
fn open_checkpoint(path: &Path) -> Result<Checkpoint<BufReader<File>>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(Checkpoint::Safetensors(read_weights(path)?));
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Checkpoint::pickle(
        path.display().to_string(),
        BufReader::new(file),
    )?)
}

/// A LoRA file, with PEFT's `adapter_config.json` beside it read for its alpha.
fn read_lora(path: &Path, scale: f32, alpha: Option<f32>) -> Result<Lora> {
    if !scale.is_finite() {
        bail!("--lora-scale must be a finite number");
    }
    if alpha.is_some_and(|a| !a.is_finite() || a <= 0.0) {
        bail!("--lora-alpha must be a positive number");
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let config = path
        .parent()
        .map(|d| d.join("adapter_config.json"))
        .filter(|p| p.is_file());
    let config_alpha = match config {
        Some(p) => {
            let json = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            adapter_config_alpha(&p.display().to_string(), &json)?
        }
        None => None,
    };
    Ok(Lora::read(
        &path.display().to_string(),
        bytes,
        scale,
        alpha,
        config_alpha,
    )?)
}

fn say(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// Runs the conversion.
pub fn run(a: &ConvertArgs) -> Result<()> {
    let Some(target) = storage_dtype(&a.dtype) else {
        bail!("--dtype must be f16 or f32, not `{}`", a.dtype);
    };
    output::check_new_dir(&a.output)?;
    for (what, dir) in [("--sdxl", &a.sdxl), ("--vae", &a.vae)] {
        if !dir.is_dir() {
            bail!("{what} {}: not a folder", dir.display());
        }
    }

    // Configs and weights, read here; checked and written by the core.
    let unet = match &a.unet_config {
        Some(path) => read_json(path)?,
        None => {
            let mut json = read_json(&a.sdxl.join("unet/config.json"))?;
            a.arch.apply_depths(&mut json)?;
            json
        }
    };
    let peam = match (&a.peam_config, a.arch.peam_config()) {
        (Some(path), _) => Some(
            serde_json::from_value::<PeamConfig>(read_json(path)?)
                .with_context(|| format!("{}: not a PEAM config", path.display()))?,
        ),
        (None, preset) => preset,
    };
    let lora = match &a.lora {
        Some((path, scale, alpha)) => Some(read_lora(path, *scale, *alpha)?),
        None => None,
    };
    say(a.quiet, &format!("reading {}", a.faithdiff.display()));
    let inputs = FaithDiffInputs {
        arch: a.arch.name().into(),
        unet,
        peam,
        text_encoder_configs: [
            read_json(&a.sdxl.join("text_encoder/config.json"))?,
            read_json(&a.sdxl.join("text_encoder_2/config.json"))?,
        ],
        scheduler: read_json(&a.sdxl.join("scheduler/scheduler_config.json"))?,
        vae_config: read_json(&a.vae.join("config.json"))?,
        pad_tokens: [
            pad_token(&a.sdxl.join("tokenizer"), "<|endoftext|>")?,
            pad_token(&a.sdxl.join("tokenizer_2"), "!")?,
        ],
        checkpoint: open_checkpoint(&a.faithdiff)?,
        text_encoders: [
            read_component(&a.sdxl.join("text_encoder"), "model")?,
            read_component(&a.sdxl.join("text_encoder_2"), "model")?,
        ],
        vae: read_component(&a.vae, "diffusion_pytorch_model")?,
        lora,
        sources: [
            ("sdxl", &a.sdxl),
            ("vae", &a.vae),
            ("faithdiff", &a.faithdiff),
        ]
        .into_iter()
        .chain(a.lora.iter().map(|(p, ..)| ("lora", p)))
        .map(|(k, p)| (k.to_string(), p.display().to_string()))
        .collect(),
        one_step: a.one_step,
    };

    write_bundle(
        &a.output,
        a.max_shard_bytes,
        (&a.dtype, target),
        a.quiet,
        |writer, device| {
            pollster::block_on(pgp_core::bundle::convert::faithdiff(
                inputs,
                writer,
                device,
                &mut |msg| say(a.quiet, msg),
            ))
        },
    )
}

/// Writes a bundle into a temporary folder beside `output` (removed on failure or Ctrl-C)
/// with `convert`, reads it back and checks every component, then publishes it.
fn write_bundle(
    output: &Path,
    max_shard_bytes: usize,
    (dtype, target): (&str, pgp_core::safetensors::Dtype),
    quiet: bool,
    convert: impl FnOnce(
        Writer<FolderSink>,
        &pgp_core::burn::tensor::Device,
    ) -> pgp_core::Result<(pgp_core::bundle::Manifest, FolderSink)>,
) -> Result<()> {
    let partial = output::Partial::beside(output);
    let tmp = partial.path().to_path_buf();
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let device = Gpu::cpu().device().clone();
    let writer = Writer::new(FolderSink(tmp.clone()), max_shard_bytes, target)?;
    let (manifest, _) = convert(writer, &device)?;
    load_bundle(&tmp)?.check(&device)?;
    output::publish_dir(partial, output)?;
    let total: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    let kind = if manifest.one_step { ", one-step" } else { "" };
    say(
        quiet,
        &format!(
            "wrote {} ({} shards, {:.1} MiB, {dtype}{kind})",
            output.display(),
            manifest.shards.len(),
            total as f64 / (1 << 20) as f64,
        ),
    );
    Ok(())
}

/// The one-step model `convert --sd21` merges.
pub enum Sd21Model {
    /// `--osediff osediff.pkl`.
    OseDiff(PathBuf),
    /// `--pisa pisa_sr.pkl`.
    Pisa(PathBuf),
}

/// `--pisa-weights PIX,SEM`: only PiSA-SR's default mode (1,1) is a merge.
pub fn check_pisa_weights(s: &str) -> Result<()> {
    let parsed: Vec<f32> = s
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--pisa-weights takes PIX,SEM (two numbers), not `{s}`"))?;
    match parsed.as_slice() {
        [pix, sem] if *pix == 1.0 && *sem == 1.0 => Ok(()),
        [_, _] => bail!(
            "--pisa-weights {s}: PiSA-SR's adjustable mode (weights other than 1,1) takes two UNet \
             calls per tile, which pgp-wgpu does not run; its default mode, 1,1, is a merge"
        ),
        _ => bail!("--pisa-weights takes PIX,SEM (two numbers), not `{s}`"),
    }
}

/// What `convert --sd21 DIR --osediff FILE` (or `--pisa FILE`) was asked to do.
pub struct Sd21Args {
    pub sd21: PathBuf,
    pub model: Sd21Model,
    pub dtype: String,
    pub output: PathBuf,
    pub max_shard_bytes: usize,
    pub quiet: bool,
}

/// Converts SD2.1-base and a one-step model's adapters (OSEDiff, PiSA-SR) into a bundle.
pub fn run_sd21(a: &Sd21Args) -> Result<()> {
    let Some(target) = storage_dtype(&a.dtype) else {
        bail!("--dtype must be f16 or f32, not `{}`", a.dtype);
    };
    output::check_new_dir(&a.output)?;
    if !a.sd21.is_dir() {
        bail!("--sd21 {}: not a folder", a.sd21.display());
    }
    for part in ["unet", "vae", "text_encoder", "scheduler"] {
        if !a.sd21.join(part).is_dir() {
            bail!(
                "--sd21 {}: no {part}/ folder (a diffusers Stable Diffusion 2.1-base folder has \
                 unet/, vae/, text_encoder/, tokenizer/ and scheduler/)",
                a.sd21.display()
            );
        }
    }
    let adapters = match &a.model {
        Sd21Model::OseDiff(path) => {
            say(a.quiet, &format!("reading {}", path.display()));
            pgp_core::bundle::convert::osediff(&mut open_checkpoint(path)?)?
        }
        Sd21Model::Pisa(path) => {
            say(a.quiet, &format!("reading {}", path.display()));
            pgp_core::bundle::convert::pisa(&mut open_checkpoint(path)?)?
        }
    };
    let inputs = pgp_core::bundle::convert::Sd21Inputs {
        unet_config: read_json(&a.sd21.join("unet/config.json"))?,
        vae_config: read_json(&a.sd21.join("vae/config.json"))?,
        text_encoder_config: read_json(&a.sd21.join("text_encoder/config.json"))?,
        scheduler: read_json(&a.sd21.join("scheduler/scheduler_config.json"))?,
        pad_token: pad_token(&a.sd21.join("tokenizer"), "!")?,
        unet: read_component(&a.sd21.join("unet"), "diffusion_pytorch_model")?,
        vae: read_component(&a.sd21.join("vae"), "diffusion_pytorch_model")?,
        text_encoder: read_component(&a.sd21.join("text_encoder"), "model")?,
        sources: [("sd21".to_string(), a.sd21.display().to_string())].into(),
    };
    write_bundle(
        &a.output,
        a.max_shard_bytes,
        (&a.dtype, target),
        a.quiet,
        |writer, device| {
            pollster::block_on(pgp_core::bundle::convert::sd21(
                inputs,
                adapters,
                writer,
                device,
                &mut |msg| say(a.quiet, msg),
            ))
        },
    )
}

/// Reads a bundle folder.
pub fn load_bundle(dir: &Path) -> Result<Bundle> {
    Ok(pollster::block_on(Bundle::read(
        &DirSource::new(dir),
        &mut |_| {},
    ))?)
}
