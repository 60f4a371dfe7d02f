//! The model bundle both the native binary and the browser load: `manifest.json` (every
//! component's config dict, the dtype, the shard list) plus safetensors shards of at most
//! 256 MiB (WebGPU's `maxBufferSize`), with one key space:
//!
//! | prefix | what | from |
//! |---|---|---|
//! | `unet.` | FaithDiff's UNet and fusion modules | `FaithDiff.bin` |
//! | `denoise_encoder.` | FaithDiff's LQ encoder | `FaithDiff.bin` |
//! | `vae.` | `AutoencoderKL` | the VAE folder |
//! | `text_encoder.`, `text_encoder_2.` | the CLIP text encoders (`text_model.*`) | the SDXL folder |
//! | `empty_prompt.` | `prompt_embeds` [1, 77, D], `pooled_prompt_embeds` [1, P] of `""` | computed once |
//!
//! The empty prompt's embeddings are cached so that the text encoders need not be loaded at all
//! for the default (empty) prompt. File access stays with the caller: this module takes the
//! manifest's text and the shards' bytes, and produces shard bytes for a writer.
//!
//! Version 2 (what `convert` writes) gives every component its own shards, a SHA-256 per shard
//! and a `weight_map` (tensor → shard, byte range, dtype, shape), so a loader reads only the
//! components it needs, one shard at a time, and can check every header against the manifest.
//! Version 1 bundles (one shard list, components mixed) still load: every shard is read and
//! the tensors are picked by key.
//!
//! This module is the reader; beside it: [`components`](Component) (the one table of
//! components: network, key prefix, config, builder), [`Writer`] (shards and the manifest, into
//! a caller's [`ShardSink`]), [`Checkpoint`] (torch.save and safetensors downloads read without
//! running code), [`lora`] (merging a LoRA while writing) and [`convert`] (downloads → bundle).

mod checkpoint;
mod components;
pub mod convert;
pub mod lora;
mod writer;

use std::collections::BTreeMap;

use burn::tensor::{Device, FloatDType, Tensor};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use checkpoint::{Checkpoint, Shapes};
pub use components::{Component, Configs};
pub use writer::{Contents, MemorySink, ShardPacker, ShardSink, Writer, convert_dtype};

use crate::error::{Error, Result};
use crate::families::Family;
use crate::models::clip::ClipTextModel;
use crate::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use crate::models::peam::PeamConfig;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::{AutoencoderKL, DenoiseEncoder};
use crate::pipeline::one_step::OneStep;
use crate::schedulers::euler::EulerConfig;
use crate::source::ShardSource;
use crate::weights::{
    DeviceStore, TensorSource, WeightFile, WeightStore, load_prefixed, to_tensor,
};

/// `format` of every manifest.
pub const FORMAT: &str = "pgp-wgpu-bundle";
/// The manifest version this library writes (it reads 1 and 2).
pub const VERSION: u32 = 2;
/// Largest shard the converter writes (WebGPU's default `maxBufferSize`).
pub const MAX_SHARD_BYTES: usize = 256 << 20;
/// The manifest's file name inside a bundle folder.
pub const MANIFEST: &str = "manifest.json";

/// One shard file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    /// File name inside the bundle folder (relative: no absolute paths, no `..`).
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many tensors it holds.
    pub tensors: usize,
    /// The component all its tensors belong to (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<Component>,
    /// SHA-256 of the file, lowercase hex (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Where one tensor is (version 2's `weight_map`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WeightEntry {
    /// The shard file.
    pub shard: String,
    /// Byte range `[start, end)` of its data in the shard file (absolute, so a reader can fetch
    /// one tensor with a range request).
    pub offsets: [u64; 2],
    /// Stored element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Storage dtype of the weights (`f16` or `f32`); computation is f32 either way.
    pub dtype: String,
    /// The model family (absent in older bundles: FaithDiff).
    #[serde(default)]
    pub family: Family,
    /// The architecture it was converted as (`faithdiff`, `pgp-coarse`, `pgp`, `osediff`, …);
    /// the configs below are what is used.
    pub arch: String,
    /// diffusers `UNet2DConditionModel` config.
    pub unet: serde_json::Value,
    /// FaithDiff's extra hyper-parameters (the FaithDiff family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faithdiff: Option<FaithDiffConfig>,
    /// PGP-DiffSR's PEAM (`pgp` models; keys `unet.peam.{level}.*`), absent for FaithDiff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peam: Option<PeamConfig>,
    /// diffusers `AutoencoderKL` config (also the `denoise_encoder`'s layout).
    pub vae: serde_json::Value,
    /// transformers `CLIPTextConfig` of `text_encoder`.
    pub text_encoder: serde_json::Value,
    /// transformers `CLIPTextConfig` of `text_encoder_2` (the FaithDiff family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder_2: Option<serde_json::Value>,
    /// Pad tokens of `tokenizer` (and `tokenizer_2`): one per text encoder.
    pub pad_tokens: Vec<String>,
    /// diffusers scheduler config.
    pub scheduler: serde_json::Value,
    /// The shards, in order (grouped by component in version 2).
    pub shards: Vec<ShardInfo>,
    /// Every tensor's shard, byte range, dtype and shape (version 2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weight_map: BTreeMap<String, WeightEntry>,
    /// Where each part came from (paths given to `convert`), for the record.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, String>,
    /// A one-step (S1) model: callers' default options run the one-step recipe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_step: bool,
    /// The one-step recipe (timestep, how x0 is formed); absent: the standard one
    /// ([`OneStep::standard`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<OneStep>,
}

/// The element type a manifest's `dtype` (and `convert --dtype`) names: `f16` or `f32`.
pub fn storage_dtype(name: &str) -> Option<Dtype> {
    match name {
        "f16" => Some(Dtype::F16),
        "f32" => Some(Dtype::F32),
        _ => None,
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A shard's file name is a relative path inside the bundle folder: not empty, not absolute,
/// no `..`, `.` or empty segments, no backslashes or drive letters.
fn safe_relative_path(file: &str) -> bool {
    !file.is_empty()
        && !file.starts_with('/')
        && !file.contains('\\')
        && !file.contains(':')
        && file
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

impl Manifest {
    /// The manifest's own consistency: safe shard paths, and for version 2 a component and a
    /// checksum per shard and a `weight_map` that agrees with the shards.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let encoders = self.family.text_components().len();
        let has = |v: bool, what: &str| {
            if v == (self.family == Family::FaithDiff) {
                Ok(())
            } else if v {
                Err(format!("a {} bundle has no `{what}`", self.family.name()))
            } else {
                Err(format!("a {} bundle needs `{what}`", self.family.name()))
            }
        };
        has(self.faithdiff.is_some(), "faithdiff")?;
        has(self.text_encoder_2.is_some(), "text_encoder_2")?;
        if self.pad_tokens.len() != encoders {
            return Err(format!(
                "{} pad tokens, a {} bundle has {encoders} text encoders",
                self.pad_tokens.len(),
                self.family.name()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.shards {
            if !safe_relative_path(&s.file) {
                return Err(format!(
                    "shard `{}`: shard paths must be relative to the bundle folder (no absolute \
                     paths, no `..`)",
                    s.file
                ));
            }
            if !seen.insert(s.file.as_str()) {
                return Err(format!("shard `{}` is listed twice", s.file));
            }
        }
        if self.version < 2 {
            return Ok(());
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.shards {
            if s.component.is_none() {
                return Err(format!("shard `{}` has no component", s.file));
            }
            let hex = s.sha256.as_deref().unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!("shard `{}` has no valid sha256", s.file));
            }
            counts.insert(&s.file, 0);
        }
        for (key, e) in &self.weight_map {
            let shard = self
                .shards
                .iter()
                .find(|s| s.file == e.shard)
                .ok_or_else(|| {
                    format!(
                        "weight_map: `{key}` is in shard `{}`, which is not listed",
                        e.shard
                    )
                })?;
            if Component::of_key(key) != shard.component {
                return Err(format!(
                    "weight_map: `{key}` is in shard `{}` of another component",
                    e.shard
                ));
            }
            if e.offsets[0] > e.offsets[1] || e.offsets[1] > shard.bytes {
                return Err(format!(
                    "weight_map: `{key}` has byte range {:?} outside its shard",
                    e.offsets
                ));
            }
            *counts.get_mut(e.shard.as_str()).expect("listed") += 1;
        }
        for s in &self.shards {
            if counts[s.file.as_str()] != s.tensors {
                return Err(format!(
                    "shard `{}` holds {} tensors, the weight_map places {} in it",
                    s.file,
                    s.tensors,
                    counts[s.file.as_str()]
                ));
            }
        }
        Ok(())
    }

    /// A version 2 shard's header against the `weight_map`: the same tensors, dtypes, shapes
    /// and byte ranges; every float in the bundle's dtype (the cached prompt: f32).
    fn check_header(
        &self,
        shard: &ShardInfo,
        file: &WeightFile,
    ) -> std::result::Result<(), String> {
        let stored = storage_dtype(&self.dtype)
            .ok_or_else(|| format!("the manifest's dtype `{}` is not f16 or f32", self.dtype))?;
        let mut n = 0;
        for key in file.keys() {
            n += 1;
            let e = self
                .weight_map
                .get(key)
                .filter(|e| e.shard == shard.file)
                .ok_or_else(|| format!("`{key}` is not in the weight_map for this shard"))?;
            let (dtype, shape) = file.info(key).expect("listed key");
            let range = file.byte_range(key).expect("listed key");
            if dtype != e.dtype || shape != e.shape.as_slice() || range != e.offsets {
                return Err(format!(
                    "`{key}` is {dtype:?} {shape:?} at {range:?}; the weight_map says {:?} {:?} \
                     at {:?}",
                    e.dtype, e.shape, e.offsets
                ));
            }
            let expected = if shard.component == Some(Component::EmptyPrompt) {
                Dtype::F32
            } else {
                stored
            };
            if dtype != expected {
                return Err(format!(
                    "`{key}` is {dtype:?}; this is a {} bundle",
                    self.dtype
                ));
            }
        }
        if n != shard.tensors {
            return Err(format!("{n} tensors, the manifest says {}", shard.tensors));
        }
        Ok(())
    }
}

/// Progress of reading a bundle: after the manifest and after each shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadProgress {
    /// The file just read.
    pub file: String,
    /// Files read so far (the manifest included).
    pub done: usize,
    /// Files in all (the manifest and every shard).
    pub total: usize,
    /// Bytes read so far.
    pub bytes: u64,
    /// Bytes in all (the manifest and the shard sizes it lists).
    pub total_bytes: u64,
}

/// Which of a bundle's components to read (the family, in the manifest, says which they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    /// Every component.
    All,
    /// What an upscaler needs for the empty prompt.
    Image,
    /// The text encoders.
    Text,
}

impl Parts {
    /// The components these are in a bundle of `family`.
    pub fn of(self, family: Family) -> &'static [Component] {
        match self {
            Self::All => family.components(),
            Self::Image => family.image_components(),
            Self::Text => family.text_components(),
        }
    }
}

/// A loaded bundle: its manifest and its shards as one key space.
pub struct Bundle {
    /// The parsed manifest.
    pub manifest: Manifest,
    store: Box<dyn TensorSource>,
    /// The precision its networks are built in.
    dtype: FloatDType,
}

impl Bundle {
    /// Parses a manifest and checks its format; `name` is used in errors.
    pub fn parse_manifest(name: &str, json: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(json)
            .map_err(|e| Error::config(format!("{name}: not a pgp-wgpu bundle manifest: {e}")))?;
        if m.format != FORMAT || !(1..=VERSION).contains(&m.version) {
            return Err(Error::config(format!(
                "{name}: bundle format `{}` version {}, this build reads `{FORMAT}` versions 1 \
                 to {VERSION}",
                m.format, m.version
            )));
        }
        m.validate()
            .map_err(|reason| Error::config(format!("{name}: {reason}")))?;
        Ok(m)
    }

    /// A bundle from its manifest and its shards (in manifest order).
    pub fn new(name: &str, manifest: Manifest, shards: Vec<WeightFile>) -> Result<Self> {
        if shards.len() != manifest.shards.len() {
            return Err(Error::config(format!(
                "{name}: the manifest lists {} shards, {} were given",
                manifest.shards.len(),
                shards.len()
            )));
        }
        Ok(Self {
            store: Box::new(WeightStore::new(name, shards)?),
            manifest,
            dtype: FloatDType::F32,
        })
    }

    /// Reads a whole bundle through `source`, kept on the host, verifying every shard's SHA-256
    /// (version 2): for inspecting and checking a bundle.
    pub async fn read(
        source: &impl ShardSource,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let mut shards = Vec::new();
        let (name, manifest) = Self::walk(source, Parts::All, true, on_progress, &mut |f, _| {
            shards.push(f);
            Ok(())
        })
        .await?;
        Self::new(&name, manifest, shards)
    }

    /// Reads the `parts` of a bundle through `source` shard by shard, uploading each
    /// shard's tensors to `device` as `dtype` before the next is read: only one shard is ever on
    /// the host (the browser has 4 GiB at most). A version 2 bundle's other components are not
    /// read at all; each shard's size and header are checked against the manifest (the
    /// checksums only by [`Bundle::read`]). Its networks compute in `dtype`.
    pub async fn stream(
        source: &impl ShardSource,
        device: &Device,
        dtype: FloatDType,
        parts: Parts,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let mut store = DeviceStore::new(source.describe(), device, dtype);
        let (_, manifest) = Self::walk(source, parts, false, on_progress, &mut |file, wanted| {
            store.add(&file, |key: &str| {
                Component::of_key(key).is_some_and(|c| wanted.contains(&c))
            })
        })
        .await?;
        Ok(Self {
            manifest,
            store: Box::new(store),
            dtype,
        })
    }

    /// The manifest, then each shard holding `parts` (every shard of a version 1 bundle), its
    /// size, header and (with `verify`) checksum checked against the manifest, handed to `take`
    /// with the components wanted.
    async fn walk(
        source: &impl ShardSource,
        parts: Parts,
        verify: bool,
        on_progress: &mut dyn FnMut(LoadProgress),
        take: &mut dyn FnMut(WeightFile, &[Component]) -> Result<()>,
    ) -> Result<(String, Manifest)> {
        let name = source.describe();
        let text = source.read(MANIFEST).await.map_err(|e| match e {
            Error::Source { reason, .. } => Error::Source {
                file: name.clone(),
                reason: format!("not a model bundle (no readable {MANIFEST}: {reason})"),
            },
            e => e,
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::config(format!("{name}/{MANIFEST}: not UTF-8 text")))?;
        let manifest = Self::parse_manifest(&format!("{name}/{MANIFEST}"), &text)?;
        let components = parts.of(manifest.family);
        let wanted: Vec<&ShardInfo> = manifest
            .shards
            .iter()
            .filter(|s| s.component.is_none_or(|c| components.contains(&c)))
            .collect();
        let total = wanted.len() + 1;
        let mut bytes = text.len() as u64;
        let total_bytes = bytes + wanted.iter().map(|s| s.bytes).sum::<u64>();
        on_progress(LoadProgress {
            file: MANIFEST.into(),
            done: 1,
            total,
            bytes,
            total_bytes,
        });
        for (i, s) in wanted.into_iter().enumerate() {
            let data = source.read(&s.file).await?;
            let path = format!("{name}/{}", s.file);
            let bad = |reason: String| Error::Source {
                file: path.clone(),
                reason,
            };
            if data.len() as u64 != s.bytes {
                return Err(bad(format!(
                    "{} bytes, the manifest says {} (a partial download or another bundle's \
                     shard)",
                    data.len(),
                    s.bytes
                )));
            }
            if let (true, Some(expected)) = (verify, &s.sha256) {
                let got = sha256_hex(&data);
                if &got != expected {
                    return Err(bad(format!(
                        "SHA-256 {got}, the manifest says {expected} (the file is damaged or \
                         from another bundle)"
                    )));
                }
            }
            bytes += data.len() as u64;
            let file = WeightFile::from_bytes(path.clone(), data)?;
            if manifest.version >= 2 {
                manifest.check_header(s, &file).map_err(bad)?;
            }
            file.check_finite()?;
            take(file, components)?;
            on_progress(LoadProgress {
                file: s.file.clone(),
                done: i + 2,
                total,
                bytes,
                total_bytes,
            });
        }
        Ok((name, manifest))
    }

    /// How many values its (loaded) tensors hold.
    pub fn values(&self) -> u64 {
        let src = self.store.as_ref();
        src.all_keys()
            .into_iter()
            .filter_map(|k| src.info(k))
            .map(|(_, shape)| shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// The tensors, for inspection.
    pub fn source(&self) -> &dyn TensorSource {
        self.store.as_ref()
    }

    /// The parsed configs of every component's network.
    pub fn configs(&self) -> Result<Configs> {
        let m = &self.manifest;
        let text: Vec<&serde_json::Value> = std::iter::once(&m.text_encoder)
            .chain(&m.text_encoder_2)
            .collect();
        Configs::from_json(
            m.family,
            &m.unet,
            m.faithdiff.clone().unwrap_or_default(),
            m.peam.clone(),
            &m.vae,
            &text,
        )
    }

    /// FaithDiff's UNet with its fusion modules.
    pub fn unet(&self, device: &Device) -> Result<FaithDiffUNet> {
        let cfg = self.configs()?;
        load_prefixed(self.store.as_ref(), "unet.", device, self.dtype, |vb| {
            cfg.unet(&vb.pp("unet"))
        })
    }

    /// The plain diffusers UNet (the SD2.1 family).
    pub fn plain_unet(&self, device: &Device) -> Result<UNet2DConditionModel> {
        let cfg = self.configs()?;
        load_prefixed(self.store.as_ref(), "unet.", device, self.dtype, |vb| {
            cfg.plain_unet(&vb.pp("unet"))
        })
    }

    /// FaithDiff's LQ encoder, with its tiling on (as FaithDiff's scripts run it).
    pub fn denoise_encoder(&self, device: &Device) -> Result<DenoiseEncoder> {
        let cfg = self.configs()?;
        let mut m = load_prefixed(
            self.store.as_ref(),
            "denoise_encoder.",
            device,
            self.dtype,
            |vb| cfg.denoise_encoder(&vb),
        )?;
        m.set_tiling(true);
        Ok(m)
    }

    /// The VAE, with diffusers' tiling on (as FaithDiff's scripts run it), so memory stays
    /// bounded whatever the image size.
    pub fn vae(&self, device: &Device) -> Result<AutoencoderKL> {
        let cfg = self.configs()?;
        let mut m = load_prefixed(self.store.as_ref(), "vae.", device, self.dtype, |vb| {
            cfg.vae(&vb.pp("vae"))
        })?;
        m.set_tiling(true);
        Ok(m)
    }

    /// One text encoder (`second`: the one with projection).
    pub fn text_encoder(&self, device: &Device, second: bool) -> Result<ClipTextModel> {
        let cfg = self.configs()?;
        let c = if second {
            Component::TextEncoder2
        } else {
            Component::TextEncoder
        };
        load_prefixed(self.store.as_ref(), &c.prefix(), device, self.dtype, |vb| {
            cfg.text_encoder(&vb.pp(c.name()), usize::from(second), true)
        })
    }

    /// The cached embeddings of the empty prompt: `[1, 77, D]` and `[1, P]`, in f32 (as every
    /// network's output).
    pub fn empty_prompt(&self, device: &Device) -> Result<(Tensor<3>, Tensor<2>)> {
        let src = self.store.as_ref();
        let f32 = FloatDType::F32;
        Ok((
            to_tensor::<3>(src, "empty_prompt.prompt_embeds", device)?.cast(f32),
            to_tensor::<2>(src, "empty_prompt.pooled_prompt_embeds", device)?.cast(f32),
        ))
    }

    /// The cached `prompt_embeds` of the empty prompt alone, `[1, 77, D]` in f32 (the SD2.1
    /// family's conditioning).
    pub fn empty_prompt_embeds(&self, device: &Device) -> Result<Tensor<3>> {
        Ok(
            to_tensor::<3>(self.store.as_ref(), "empty_prompt.prompt_embeds", device)?
                .cast(FloatDType::F32),
        )
    }

    /// The scheduler config.
    pub fn scheduler(&self) -> Result<EulerConfig> {
        EulerConfig::from_json(&self.manifest.scheduler)
    }

    /// The one-step recipe: the manifest's, checked against the scheduler, or the standard.
    pub fn one_step_recipe(&self) -> Result<OneStep> {
        let scheduler = self.scheduler()?;
        match self.manifest.recipe {
            Some(r) => r.validate(&scheduler).map(|()| r),
            None => Ok(OneStep::standard(&scheduler)),
        }
    }

    /// Checks every component's tensors against its config without loading anything.
    pub fn check(&self, device: &Device) -> Result<()> {
        let cfg = self.configs()?;
        for &c in self.manifest.family.components() {
            c.check(self.store.as_ref(), &cfg, device)?;
        }
        Ok(())
    }
}
