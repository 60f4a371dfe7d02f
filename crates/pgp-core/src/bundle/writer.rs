//! The writing half of the bundle: tensors packed into shards component by component (each
//! component its own shards, `{component}-0000n.safetensors`), each shard's SHA-256 and every
//! tensor's place recorded, and the one manifest builder ([`Writer::finish`]) that `convert`,
//! `bench bundle` and any other writer share. Where the files go is the caller's
//! ([`ShardSink`]): a folder natively, memory in the browser or in tests.

use std::collections::BTreeMap;

use safetensors::Dtype;

use super::{Component, FORMAT, MANIFEST, Manifest, ShardInfo, VERSION, WeightEntry, sha256_hex};
use crate::error::{Error, Result};
use crate::families::Family;
use crate::models::faithdiff::FaithDiffConfig;
use crate::models::peam::PeamConfig;
use crate::weights::{TensorSource, WeightFile, decode_f32, first_non_finite};

/// Where a bundle's files go, each whole and once: the shards as they fill, the manifest last.
pub trait ShardSink {
    /// Stores the file `name` (relative to the bundle) with `bytes`; an error stops the writer.
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
}

/// A bundle in memory: file name → bytes.
#[derive(Default)]
pub struct MemorySink {
    /// The files written so far.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl ShardSink for MemorySink {
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self
            .files
            .insert(name.to_string(), bytes.to_vec())
            .is_some()
        {
            return Err(Error::input(format!("bundle file `{name}` written twice")));
        }
        Ok(())
    }
}

impl MemorySink {
    /// The bundle as a [`crate::BytesSource`], to load what was written.
    pub fn into_source(self, name: impl Into<String>) -> crate::BytesSource {
        let mut s = crate::BytesSource::new(name);
        for (file, bytes) in self.files {
            s.insert(file, bytes);
        }
        s
    }
}

/// What a manifest says besides the shards: the model's configs and where it came from.
#[derive(Clone, Debug)]
pub struct Contents {
    /// The model family.
    pub family: Family,
    /// The architecture (`faithdiff`, `pgp-coarse`, `pgp`, `osediff`, …).
    pub arch: String,
    /// diffusers `UNet2DConditionModel` config.
    pub unet: serde_json::Value,
    /// FaithDiff's extra hyper-parameters (the FaithDiff family).
    pub faithdiff: Option<FaithDiffConfig>,
    /// PGP-DiffSR's PEAM, if any.
    pub peam: Option<PeamConfig>,
    /// diffusers `AutoencoderKL` config.
    pub vae: serde_json::Value,
    /// transformers `CLIPTextConfig`s, one per text encoder of the family.
    pub text_encoders: Vec<serde_json::Value>,
    /// Pad tokens of the tokenizers, one per text encoder.
    pub pad_tokens: Vec<String>,
    /// diffusers scheduler config.
    pub scheduler: serde_json::Value,
    /// Where each part came from, for the record.
    pub sources: BTreeMap<String, String>,
    /// A one-step model.
    pub one_step: bool,
    /// Its recipe, where it is not the standard one.
    pub recipe: Option<crate::pipeline::one_step::OneStep>,
}

/// Writes a bundle's shards component by component, then its manifest.
pub struct Writer<S: ShardSink> {
    sink: S,
    packer: ShardPacker,
    shards: Vec<ShardInfo>,
    weight_map: BTreeMap<String, WeightEntry>,
    component: Component,
    dtype: Dtype,
}

impl<S: ShardSink> Writer<S> {
    /// A writer of shards of at most `max_shard_bytes` into `sink`, floats stored as `dtype`
    /// (`f16` or `f32`; the cached prompt stays f32 whatever it is).
    pub fn new(sink: S, max_shard_bytes: usize, dtype: Dtype) -> Result<Self> {
        if !matches!(dtype, Dtype::F16 | Dtype::F32) {
            return Err(Error::input(format!(
                "bundles store weights as f16 or f32, not {dtype:?}"
            )));
        }
        Ok(Self {
            sink,
            packer: ShardPacker::new(max_shard_bytes),
            shards: Vec::new(),
            weight_map: BTreeMap::new(),
            component: Component::Unet,
            dtype,
        })
    }

    /// Ends the current component's last shard; what is added next belongs to `component`.
    pub fn begin(&mut self, component: Component) -> Result<()> {
        let last = self.packer.flush()?;
        self.emit(last)?;
        self.component = component;
        Ok(())
    }

    /// The shards written so far.
    pub fn shards(&self) -> &[ShardInfo] {
        &self.shards
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
        self.sink.write(&file, &bytes)?;
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

    /// Adds one float tensor of the current component (its key with the component's prefix),
    /// converted to the bundle's dtype. Non-finite values are refused.
    pub fn add(&mut self, key: String, from: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<()> {
        if Component::of_key(&key) != Some(self.component) {
            return Err(Error::input(format!(
                "`{key}` does not belong to the component being written ({})",
                self.component.name()
            )));
        }
        if let Some(i) = first_non_finite(from, data) {
            return Err(Error::input(format!(
                "`{key}` holds a non-finite value (NaN or infinity) at index {i}: the weights \
                 are damaged"
            )));
        }
        let to = if self.component == Component::EmptyPrompt {
            Dtype::F32
        } else {
            self.dtype
        };
        let data = convert_dtype(&key, from, data, to)?;
        let full = self.packer.push(key, to, shape, data)?;
        self.emit(full)
    }

    /// Adds f32 values.
    pub fn add_f32(&mut self, key: String, shape: Vec<usize>, values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add(key, Dtype::F32, shape, &bytes)
    }

    /// Adds every float tensor of a safetensors file under `prefix` (with `rename`), skipping
    /// transformers' `position_ids` buffers.
    pub fn add_file(
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

    /// Writes the last shard and then the manifest of `contents` and the shards; returns the
    /// manifest and the sink.
    pub fn finish(mut self, contents: Contents) -> Result<(Manifest, S)> {
        let last = self.packer.flush()?;
        self.emit(last)?;
        let dtype = match self.dtype {
            Dtype::F16 => "f16",
            _ => "f32",
        };
        let mut text = contents.text_encoders.into_iter();
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            dtype: dtype.into(),
            family: contents.family,
            arch: contents.arch,
            unet: contents.unet,
            faithdiff: contents.faithdiff,
            peam: contents.peam,
            vae: contents.vae,
            text_encoder: text.next().unwrap_or_default(),
            text_encoder_2: text.next(),
            pad_tokens: contents.pad_tokens,
            scheduler: contents.scheduler,
            shards: self.shards,
            weight_map: self.weight_map,
            sources: contents.sources,
            one_step: contents.one_step,
            recipe: contents.recipe,
        };
        // What a reader would refuse is never written.
        manifest
            .validate()
            .map_err(|reason| Error::config(format!("the manifest to write: {reason}")))?;
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::input(format!("writing the manifest: {e}")))?;
        self.sink.write(MANIFEST, json.as_bytes())?;
        Ok((manifest, self.sink))
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
        Ok(Some((serialize(&pending)?, pending.len())))
    }
}

/// One safetensors file of `tensors` (name, dtype, shape, little-endian bytes).
pub(super) fn serialize(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::input(format!("`{n}`: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None)
        .map_err(|e| Error::input(format!("writing a safetensors file: {e:?}")))
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
