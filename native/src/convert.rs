//! `pgp-wgpu convert`: the files users download → a model bundle (see `pgp_core::bundle`).
//! Everything is checked before anything is written; the bundle is assembled in a temporary
//! folder beside the output (removed on failure or Ctrl-C, [`output::Partial`]), every file
//! flushed to the disk, and published under its name only when complete and re-checked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pgp_core::bundle::{
    Bundle, Component, FORMAT, MANIFEST, Manifest, ShardInfo, ShardPacker, VERSION, WeightEntry,
    convert_dtype, sha256_hex, storage_dtype,
};
use pgp_core::burn::tensor::FloatDType;
use pgp_core::device::read_back;
use pgp_core::models::clip::{ClipTextConfig, ClipTextModel};
use pgp_core::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use pgp_core::models::peam::PeamConfig;
use pgp_core::models::unet_2d::UNet2DConditionConfig;
use pgp_core::models::vae::{AutoencoderKL, AutoencoderKLConfig, DenoiseEncoder};
use pgp_core::pipeline::run::TextEncoders;
use pgp_core::presets::Arch;
use pgp_core::safetensors::Dtype;
use pgp_core::schedulers::euler::EulerConfig;
use pgp_core::tokenizer::ClipTokenizer;
use pgp_core::torch_pickle::TorchCheckpoint;
use pgp_core::weights::{
    TensorSource, WeightFile, check, decode_f32, first_non_finite, load_checked,
};
use pgp_core::{DirSource, Gpu};
use pgp_wgpu_cli::output;

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

/// Names and shapes only: lets the shape checks run over a checkpoint before reading data.
struct Shapes {
    name: String,
    map: BTreeMap<String, (Dtype, Vec<usize>)>,
}

impl TensorSource for Shapes {
    fn source_name(&self) -> &str {
        &self.name
    }
    fn all_keys(&self) -> Vec<&str> {
        self.map.keys().map(String::as_str).collect()
    }
    fn info(&self, key: &str) -> Option<(Dtype, &[usize])> {
        self.map.get(key).map(|(d, s)| (*d, s.as_slice()))
    }
    fn read_f32(&self, key: &str) -> pgp_core::Result<(Vec<f32>, Vec<usize>)> {
        Err(pgp_core::Error::Input(format!(
            "{}: `{key}` is not loaded",
            self.name
        )))
    }
}

/// The FaithDiff-layout checkpoint: a torch.save file or a safetensors file.
enum Checkpoint {
    Pickle(TorchCheckpoint<BufReader<File>>),
    Safetensors(WeightFile),
}

impl Checkpoint {
    fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            return Ok(Self::Safetensors(read_weights(path)?));
        }
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self::Pickle(TorchCheckpoint::open(
            path.display().to_string(),
            BufReader::new(file),
        )?))
    }

    /// `(name, dtype, shape)` of every tensor.
    fn tensors(&self) -> Vec<(String, Dtype, Vec<usize>)> {
        match self {
            Self::Pickle(c) => c
                .tensors()
                .into_iter()
                .map(|t| (t.name, t.dtype, t.shape))
                .collect(),
            Self::Safetensors(f) => f
                .keys()
                .map(|k| {
                    let (d, s) = f.info(k).expect("listed key");
                    (k.to_string(), d, s.to_vec())
                })
                .collect(),
        }
    }

    fn read(&mut self, name: &str) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
        Ok(match self {
            Self::Pickle(c) => c.read(name)?,
            Self::Safetensors(f) => {
                let (d, s) = f.info(name).expect("listed key");
                (d, s.to_vec(), f.raw(name)?.to_vec())
            }
        })
    }
}

/// Writes shards component by component (version 2: each component its own shards, named
/// `{component}-{n}.safetensors`), recording checksums and the `weight_map`.
pub(crate) struct Writer {
    dir: PathBuf,
    packer: ShardPacker,
    pub(crate) shards: Vec<ShardInfo>,
    pub(crate) weight_map: BTreeMap<String, WeightEntry>,
    component: Component,
    pub(crate) dtype: Dtype,
}

impl Writer {
    /// A writer of shards of at most `max_shard_bytes` into `dir`, floats stored as `dtype`.
    pub(crate) fn new(dir: &Path, max_shard_bytes: usize, dtype: Dtype) -> Self {
        Self {
            dir: dir.to_path_buf(),
            packer: ShardPacker::new(max_shard_bytes),
            shards: Vec::new(),
            weight_map: BTreeMap::new(),
            component: Component::Unet,
            dtype,
        }
    }

    /// Writes the last shard.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let last = self.packer.flush()?;
        self.emit(last)
    }

    /// Ends the current component's last shard; what is added next belongs to `component`.
    pub(crate) fn begin(&mut self, component: Component) -> Result<()> {
        let last = self.packer.flush()?;
        self.emit(last)?;
        self.component = component;
        Ok(())
    }

    fn emit(&mut self, shard: Option<(Vec<u8>, usize)>) -> Result<()> {
        let Some((bytes, tensors)) = shard else {
            return Ok(());
        };
        let c = self.component;
        let n = self
            .shards
            .iter()
            .filter(|s| s.component == Some(c))
            .count();
        let file = format!("{}-{:05}.safetensors", c.name(), n + 1);
        let path = self.dir.join(&file);
        output::write_new(&path, &bytes)?;
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let parsed = WeightFile::from_bytes(file.clone(), bytes)?;
        for key in parsed.keys() {
            let (dtype, shape) = parsed.info(key).expect("listed key");
            self.weight_map.insert(
                key.to_string(),
                WeightEntry {
                    shard: file.clone(),
                    offsets: parsed.byte_range(key).expect("listed key"),
                    dtype,
                    shape: shape.to_vec(),
                },
            );
        }
        self.shards.push(ShardInfo {
            file,
            bytes: size,
            tensors,
            component: Some(c),
            sha256: Some(sha256),
        });
        Ok(())
    }

    /// Adds one float tensor, converted to the bundle's dtype.
    pub(crate) fn add(
        &mut self,
        key: String,
        from: Dtype,
        shape: Vec<usize>,
        data: &[u8],
    ) -> Result<()> {
        if let Some(i) = first_non_finite(from, data) {
            bail!(
                "`{key}` holds a non-finite value (NaN or infinity) at index {i}: the weights are damaged"
            );
        }
        let data = convert_dtype(&key, from, data, self.dtype)?;
        let full = self.packer.push(key, self.dtype, shape, data)?;
        self.emit(full)
    }

    /// Adds every float tensor of a safetensors file under `prefix` (with `rename`).
    fn add_file(
        &mut self,
        file: &WeightFile,
        prefix: &str,
        rename: impl Fn(&str) -> String,
    ) -> Result<()> {
        for key in file.keys().filter(|k| !k.ends_with("position_ids")) {
            let (dtype, shape) = file.info(key).expect("listed key");
            let shape = shape.to_vec();
            let data = file.raw(key)?;
            self.add(format!("{prefix}{}", rename(key)), dtype, shape, data)?;
        }
        Ok(())
    }
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

    // Configs.
    let unet_json = match &a.unet_config {
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
    let unet_cfg = UNet2DConditionConfig::from_json(&unet_json)?;
    let te_json = [
        read_json(&a.sdxl.join("text_encoder/config.json"))?,
        read_json(&a.sdxl.join("text_encoder_2/config.json"))?,
    ];
    let te_cfg = [
        ClipTextConfig::from_json(&te_json[0])?,
        ClipTextConfig::from_json(&te_json[1])?,
    ];
    let sched_json = read_json(&a.sdxl.join("scheduler/scheduler_config.json"))?;
    EulerConfig::from_json(&sched_json)?;
    let vae_json = read_json(&a.vae.join("config.json"))?;
    let vae_cfg = AutoencoderKLConfig::from_json(&vae_json)?;
    let pads = [
        pad_token(&a.sdxl.join("tokenizer"), "<|endoftext|>")?,
        pad_token(&a.sdxl.join("tokenizer_2"), "!")?,
    ];
    let fd_cfg = FaithDiffConfig {
        lq_channels: *vae_cfg.block_out_channels.last().expect("validated"),
        ..FaithDiffConfig::default()
    };

    // Weights, checked against the configs before anything is written.
    let device = Gpu::cpu().device().clone();
    let mut lora = match &a.lora {
        Some((path, scale, alpha)) => Some(crate::lora::Lora::read(path, *scale, *alpha)?),
        None => None,
    };
    say(a.quiet, &format!("reading {}", a.faithdiff.display()));
    let mut ckpt = Checkpoint::open(&a.faithdiff)?;
    let infos = ckpt.tensors();
    let split = |denoise: bool| Shapes {
        name: a.faithdiff.display().to_string(),
        map: infos
            .iter()
            .filter(|(name, ..)| name.starts_with("denoise_encoder.") == denoise)
            .map(|(name, dtype, shape)| (name.clone(), (*dtype, shape.clone())))
            .collect(),
    };
    check(&split(false), "", &device, |vb| {
        FaithDiffUNet::new(&vb, &unet_cfg, &fd_cfg, peam.as_ref())
    })
    .with_context(|| {
        format!(
            "{} does not fit the `{}` architecture (see --arch, --unet-config, --peam-config)",
            a.faithdiff.display(),
            a.arch.name()
        )
    })?;
    check(&split(true), "", &device, |vb| {
        DenoiseEncoder::new(&vb.pp("denoise_encoder"), &vae_cfg)
    })?;
    let te_files = [
        read_component(&a.sdxl.join("text_encoder"), "model")?,
        read_component(&a.sdxl.join("text_encoder_2"), "model")?,
    ];
    let te_prefixed = [
        ClipTextModel::has_prefix(&te_files[0]),
        ClipTextModel::has_prefix(&te_files[1]),
    ];
    for i in 0..2 {
        check(&te_files[i], "", &device, |vb| {
            ClipTextModel::new(&vb, &te_cfg[i], i == 1, te_prefixed[i])
        })?;
    }
    let vae_file = read_component(&a.vae, "diffusion_pytorch_model")?;
    check(&vae_file, "", &device, |vb| {
        AutoencoderKL::new(&vb, &vae_cfg)
    })?;

    // The empty prompt through both text encoders, once.
    say(a.quiet, "encoding the empty prompt");
    let text_encoder = |i: usize| -> Result<(ClipTextModel, ClipTokenizer)> {
        let m = load_checked(&te_files[i], &device, FloatDType::F32, |vb| {
            ClipTextModel::new(&vb, &te_cfg[i], i == 1, te_prefixed[i])
        })?;
        Ok((m, ClipTokenizer::new(&pads[i])?))
    };
    let encoders = TextEncoders {
        first: text_encoder(0)?,
        second: text_encoder(1)?,
    };
    let (prompt, pooled) = encoders.encode("")?;
    let (prompt, prompt_shape) = pollster::block_on(read_back(prompt))?;
    let (pooled, pooled_shape) = pollster::block_on(read_back(pooled))?;

    // Write.
    let partial = output::Partial::beside(&a.output);
    let tmp = partial.path().to_path_buf();
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = Writer::new(&tmp, a.max_shard_bytes, target);
    say(a.quiet, "writing the UNet and the LQ encoder");
    for denoise in [false, true] {
        w.begin(if denoise {
            Component::DenoiseEncoder
        } else {
            Component::Unet
        })?;
        for (name, ..) in infos
            .iter()
            .filter(|(n, ..)| n.starts_with("denoise_encoder.") == denoise)
        {
            let (dtype, shape, data) = ckpt.read(name)?;
            let key = if denoise {
                name.clone()
            } else {
                format!("unet.{name}")
            };
            if let (Some(l), false) = (lora.as_mut(), denoise) {
                let mut values = decode_f32(dtype, &data)
                    .with_context(|| format!("`{name}`: {dtype:?} is not a float dtype"))?;
                if l.merge(name, &shape, &mut values)? {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    w.add(key, Dtype::F32, shape, &bytes)?;
                    continue;
                }
            }
            w.add(key, dtype, shape, &data)?;
        }
    }
    if let Some(l) = &lora {
        l.check_all_merged()?;
        say(
            a.quiet,
            &format!("merged the LoRA's {} modules into the UNet", l.modules()),
        );
    }
    say(a.quiet, "writing the VAE and the text encoders");
    w.begin(Component::Vae)?;
    w.add_file(&vae_file, "vae.", str::to_string)?;
    for i in 0..2 {
        let (prefix, component) = if i == 0 {
            ("text_encoder.", Component::TextEncoder)
        } else {
            ("text_encoder_2.", Component::TextEncoder2)
        };
        w.begin(component)?;
        let prefixed = te_prefixed[i];
        w.add_file(&te_files[i], prefix, |k| {
            if prefixed || k.starts_with("text_projection") {
                k.to_string()
            } else {
                format!("text_model.{k}")
            }
        })?;
    }
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // Cached embeddings stay f32 whatever the weights' dtype.
    let keep = w.dtype;
    w.begin(Component::EmptyPrompt)?;
    w.dtype = Dtype::F32;
    w.add(
        "empty_prompt.prompt_embeds".into(),
        Dtype::F32,
        prompt_shape,
        &f32_bytes(&prompt),
    )?;
    w.add(
        "empty_prompt.pooled_prompt_embeds".into(),
        Dtype::F32,
        pooled_shape,
        &f32_bytes(&pooled),
    )?;
    w.dtype = keep;
    w.finish()?;

    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        dtype: a.dtype.clone(),
        arch: a.arch.name().into(),
        unet: unet_json,
        faithdiff: fd_cfg,
        peam,
        vae: vae_json,
        text_encoder: te_json[0].clone(),
        text_encoder_2: te_json[1].clone(),
        pad_tokens: pads,
        scheduler: sched_json,
        shards: w.shards.clone(),
        weight_map: std::mem::take(&mut w.weight_map),
        sources: [
            ("sdxl", &a.sdxl),
            ("vae", &a.vae),
            ("faithdiff", &a.faithdiff),
        ]
        .into_iter()
        .chain(a.lora.iter().map(|(p, ..)| ("lora", p)))
        .map(|(k, p)| (k.to_string(), p.display().to_string()))
        .collect(),
        one_step: a.one_step || a.lora.is_some(),
    };
    output::write_new(
        &tmp.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
    .context("writing the manifest")?;
    // Read the result back and check every component before publishing it.
    load_bundle(&tmp)?.check(&device)?;
    output::publish_dir(partial, &a.output)?;
    let total: u64 = w.shards.iter().map(|s| s.bytes).sum();
    say(
        a.quiet,
        &format!(
            "wrote {} ({} shards, {:.1} MiB, {})",
            a.output.display(),
            w.shards.len(),
            total as f64 / (1 << 20) as f64,
            a.dtype
        ),
    );
    Ok(())
}

/// Reads a bundle folder.
pub fn load_bundle(dir: &Path) -> Result<Bundle> {
    Ok(pollster::block_on(Bundle::read(
        &DirSource::new(dir),
        &mut |_| {},
    ))?)
}
