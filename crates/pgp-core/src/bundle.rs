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

use burn::tensor::{Device, FloatDType, Tensor};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use crate::models::peam::PeamConfig;
use crate::models::unet_2d::UNet2DConditionConfig;
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig, DenoiseEncoder};
use crate::schedulers::euler::EulerConfig;
use crate::source::ShardSource;
use crate::weights::{
    DeviceStore, TensorSource, WeightFile, WeightStore, check, decode_f32, load_prefixed, to_tensor,
};

/// `format` of every manifest.
pub const FORMAT: &str = "pgp-wgpu-bundle";
/// The manifest version this library reads and writes.
pub const VERSION: u32 = 1;
/// Largest shard the converter writes (WebGPU's default `maxBufferSize`).
pub const MAX_SHARD_BYTES: usize = 256 << 20;
/// The manifest's file name inside a bundle folder.
pub const MANIFEST: &str = "manifest.json";

/// One shard file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    /// File name inside the bundle folder.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many tensors it holds.
    pub tensors: usize,
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
    /// The UNet architecture preset it was converted as (`faithdiff`, `pgp-coarse`, `pgp`); the
    /// configs below are what is used.
    pub arch: String,
    /// diffusers `UNet2DConditionModel` config.
    pub unet: serde_json::Value,
    /// FaithDiff's extra hyper-parameters.
    pub faithdiff: FaithDiffConfig,
    /// PGP-DiffSR's PEAM (`pgp` models; keys `unet.peam.{level}.*`), absent for FaithDiff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peam: Option<PeamConfig>,
    /// diffusers `AutoencoderKL` config (also the `denoise_encoder`'s layout).
    pub vae: serde_json::Value,
    /// transformers `CLIPTextConfig` of `text_encoder`.
    pub text_encoder: serde_json::Value,
    /// transformers `CLIPTextConfig` of `text_encoder_2`.
    pub text_encoder_2: serde_json::Value,
    /// Pad tokens of `tokenizer` and `tokenizer_2`.
    pub pad_tokens: [String; 2],
    /// diffusers scheduler config.
    pub scheduler: serde_json::Value,
    /// The shards, in order.
    pub shards: Vec<ShardInfo>,
    /// Where each part came from (paths given to `convert`), for the record.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, String>,
    /// A one-step (S1) model: callers' default options run the one-step recipe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_step: bool,
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
        if m.format != FORMAT || m.version != VERSION {
            return Err(Error::config(format!(
                "{name}: bundle format `{}` version {}, this build reads `{FORMAT}` version {VERSION}",
                m.format, m.version
            )));
        }
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

    /// Reads a bundle through `source`: the manifest, then each shard it lists, all kept on the
    /// host (for inspecting and checking a bundle).
    pub async fn read(
        source: &impl ShardSource,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let mut shards = Vec::new();
        let (name, manifest) = Self::walk(source, on_progress, &mut |file| {
            shards.push(file);
            Ok(())
        })
        .await?;
        Self::new(&name, manifest, shards)
    }

    /// Reads a bundle through `source` shard by shard, uploading each shard's tensors whose keys
    /// `keep` accepts to `device` as `dtype` before the next is read: only one shard is ever on
    /// the host (the browser has 4 GiB at most). Its networks compute in `dtype`.
    pub async fn stream(
        source: &impl ShardSource,
        device: &Device,
        dtype: FloatDType,
        keep: &dyn Fn(&str) -> bool,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let mut store = DeviceStore::new(source.describe(), device, dtype);
        let (_, manifest) =
            Self::walk(source, on_progress, &mut |file| store.add(&file, keep)).await?;
        Ok(Self {
            manifest,
            store: Box::new(store),
            dtype,
        })
    }

    /// The manifest, then each shard (its size checked against the manifest) handed to `take`.
    async fn walk(
        source: &impl ShardSource,
        on_progress: &mut dyn FnMut(LoadProgress),
        take: &mut dyn FnMut(WeightFile) -> Result<()>,
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
        let total = manifest.shards.len() + 1;
        let mut bytes = text.len() as u64;
        let total_bytes = bytes + manifest.shards.iter().map(|s| s.bytes).sum::<u64>();
        on_progress(LoadProgress {
            file: MANIFEST.into(),
            done: 1,
            total,
            bytes,
            total_bytes,
        });
        for (i, s) in manifest.shards.iter().enumerate() {
            let data = source.read(&s.file).await?;
            if data.len() as u64 != s.bytes {
                return Err(Error::Source {
                    file: format!("{name}/{}", s.file),
                    reason: format!(
                        "{} bytes, the manifest says {} (a partial download or another bundle's \
                         shard)",
                        data.len(),
                        s.bytes
                    ),
                });
            }
            bytes += data.len() as u64;
            take(WeightFile::from_bytes(format!("{name}/{}", s.file), data)?)?;
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

    /// The tensors, for inspection.
    pub fn source(&self) -> &dyn TensorSource {
        self.store.as_ref()
    }

    fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        UNet2DConditionConfig::from_json(&self.manifest.unet)
    }
    fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        AutoencoderKLConfig::from_json(&self.manifest.vae)
    }
    fn clip_config(&self, second: bool) -> Result<ClipTextConfig> {
        let v = if second {
            &self.manifest.text_encoder_2
        } else {
            &self.manifest.text_encoder
        };
        ClipTextConfig::from_json(v)
    }

    /// FaithDiff's UNet with its fusion modules.
    pub fn unet(&self, device: &Device) -> Result<FaithDiffUNet> {
        let (cfg, fd) = (self.unet_config()?, &self.manifest.faithdiff);
        load_prefixed(self.store.as_ref(), "unet.", device, self.dtype, |vb| {
            FaithDiffUNet::new(&vb.pp("unet"), &cfg, fd, self.manifest.peam.as_ref())
        })
    }

    /// FaithDiff's LQ encoder, with its tiling on (as FaithDiff's scripts run it).
    pub fn denoise_encoder(&self, device: &Device) -> Result<DenoiseEncoder> {
        let cfg = self.vae_config()?;
        let mut m = load_prefixed(
            self.store.as_ref(),
            "denoise_encoder.",
            device,
            self.dtype,
            |vb| DenoiseEncoder::new(&vb.pp("denoise_encoder"), &cfg),
        )?;
        m.set_tiling(true);
        Ok(m)
    }

    /// The VAE, with diffusers' tiling on (as FaithDiff's scripts run it), so memory stays
    /// bounded whatever the image size.
    pub fn vae(&self, device: &Device) -> Result<AutoencoderKL> {
        let cfg = self.vae_config()?;
        let mut m = load_prefixed(self.store.as_ref(), "vae.", device, self.dtype, |vb| {
            AutoencoderKL::new(&vb.pp("vae"), &cfg)
        })?;
        m.set_tiling(true);
        Ok(m)
    }

    /// One text encoder (`second`: the one with projection).
    pub fn text_encoder(&self, device: &Device, second: bool) -> Result<ClipTextModel> {
        let cfg = self.clip_config(second)?;
        let prefix = if second {
            "text_encoder_2"
        } else {
            "text_encoder"
        };
        let prefix_dot = format!("{prefix}.");
        load_prefixed(self.store.as_ref(), &prefix_dot, device, self.dtype, |vb| {
            ClipTextModel::new(&vb.pp(prefix), &cfg, second, true)
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

    /// The scheduler config.
    pub fn scheduler(&self) -> Result<EulerConfig> {
        EulerConfig::from_json(&self.manifest.scheduler)
    }

    /// Checks every component's tensors against its config without loading anything.
    pub fn check(&self, device: &Device) -> Result<()> {
        let (unet, vae, fd) = (
            self.unet_config()?,
            self.vae_config()?,
            &self.manifest.faithdiff,
        );
        check(self.store.as_ref(), "unet.", device, |vb| {
            FaithDiffUNet::new(&vb.pp("unet"), &unet, fd, self.manifest.peam.as_ref())
        })?;
        check(self.store.as_ref(), "denoise_encoder.", device, |vb| {
            DenoiseEncoder::new(&vb.pp("denoise_encoder"), &vae)
        })?;
        check(self.store.as_ref(), "vae.", device, |vb| {
            AutoencoderKL::new(&vb.pp("vae"), &vae)
        })?;
        for (second, prefix) in [(false, "text_encoder"), (true, "text_encoder_2")] {
            let cfg = self.clip_config(second)?;
            check(self.store.as_ref(), &format!("{prefix}."), device, |vb| {
                ClipTextModel::new(&vb.pp(prefix), &cfg, second, true)
            })?;
        }
        for key in [
            "empty_prompt.prompt_embeds",
            "empty_prompt.pooled_prompt_embeds",
        ] {
            if self.store.info(key).is_none() {
                return Err(Error::config(format!("the bundle lacks `{key}`")));
            }
        }
        Ok(())
    }
}

/// Converts raw little-endian tensor bytes between float dtypes (f32, f16, bf16, f64 in;
/// f32 or f16 out). f16 overflow is an error naming the tensor.
pub fn convert_dtype(name: &str, from: Dtype, bytes: &[u8], to: Dtype) -> Result<Vec<u8>> {
    if from == to {
        return Ok(bytes.to_vec());
    }
    let values = match from {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => {
            decode_f32(from, bytes).expect("a float dtype")
        }
        other => {
            return Err(Error::input(format!(
                "`{name}`: cannot convert {other:?} weights"
            )));
        }
    };
    match to {
        Dtype::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        Dtype::F16 => {
            if let Some(v) = values.iter().find(|v| v.is_finite() && v.abs() > 65504.0) {
                return Err(Error::input(format!(
                    "`{name}`: value {v} does not fit in f16; store the weights as f32"
                )));
            }
            Ok(values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect())
        }
        other => Err(Error::input(format!("cannot store weights as {other:?}"))),
    }
}

/// Packs tensors into safetensors shards of at most `limit` bytes of data (a tensor larger
/// than the limit gets a shard of its own).
pub struct ShardPacker {
    limit: usize,
    pending: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    size: usize,
}

impl ShardPacker {
    /// A packer with the given per-shard data limit.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            pending: Vec::new(),
            size: 0,
        }
    }

    /// Adds a tensor; returns a finished shard (bytes, tensor count) when this one would not
    /// fit in the current shard.
    pub fn push(
        &mut self,
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Option<(Vec<u8>, usize)>> {
        let full = if !self.pending.is_empty() && self.size + data.len() > self.limit {
            self.flush()?
        } else {
            None
        };
        self.size += data.len();
        self.pending.push((name, dtype, shape, data));
        Ok(full)
    }

    /// The last shard, if anything is pending.
    pub fn flush(&mut self) -> Result<Option<(Vec<u8>, usize)>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let pending = std::mem::take(&mut self.pending);
        self.size = 0;
        let views = pending
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::input(format!("`{n}`: {e:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| Error::input(format!("writing a shard: {e:?}")))?;
        Ok(Some((bytes, pending.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packer_respects_the_limit() {
        let mut p = ShardPacker::new(10);
        let t = |n: usize| vec![0u8; n];
        assert!(
            p.push("a".into(), Dtype::U8, vec![6], t(6))
                .unwrap()
                .is_none()
        );
        let (bytes, n) = p
            .push("b".into(), Dtype::U8, vec![6], t(6))
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
        assert!(
            WeightFile::from_bytes("s", bytes)
                .unwrap()
                .shape("a")
                .is_some()
        );
        assert!(
            p.push("c".into(), Dtype::U8, vec![3], t(3))
                .unwrap()
                .is_none()
        );
        assert!(
            p.push("big".into(), Dtype::U8, vec![30], t(30))
                .unwrap()
                .is_some()
        );
        let (_, n) = p.flush().unwrap().unwrap();
        assert_eq!(n, 1);
        assert!(p.flush().unwrap().is_none());
    }

    #[test]
    fn dtype_conversion_round_trips_and_refuses_overflow() {
        let v: Vec<u8> = [1.5f32, -2.25, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let h = convert_dtype("x", Dtype::F32, &v, Dtype::F16).unwrap();
        assert_eq!(h.len(), 6);
        assert_eq!(convert_dtype("x", Dtype::F16, &h, Dtype::F32).unwrap(), v);
        let big = 1e6f32.to_le_bytes();
        let err = convert_dtype("w", Dtype::F32, &big, Dtype::F16).unwrap_err();
        assert!(
            err.to_string()
                .contains("`w`: value 1000000 does not fit in f16")
        );
    }
}
