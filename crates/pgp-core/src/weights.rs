//! Weights: safetensors files parsed from bytes, and a [`VarBuilder`] that hands modules their
//! tensors by the same dotted paths diffusers and transformers use.
//!
//! Loading is two passes. The first builds the module in *shape-only* mode: every tensor the
//! module asks for is recorded with its expected shape and answered with a 1-element
//! placeholder. The record is then compared with the file's header, so a file with missing,
//! unexpected or mis-shaped tensors is rejected with one error that lists them all before any
//! real tensor is uploaded. The second pass builds the module for real.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result, WeightsMismatch};

/// Element types a weights file may store floats in; all are computed in f32.
fn float_bytes(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        Dtype::F64 => Some(8),
        _ => None,
    }
}

/// Little-endian tensor bytes as f32: floats (f32, f16, bf16, f64) and integers (i64, i32);
/// `None` for other dtypes.
pub fn decode_f32(dtype: Dtype, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::I64 => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::I32 => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// The index of the first non-finite value (NaN or ±∞) in little-endian float bytes, by bit
/// tests (no conversion, so it is cheap enough to run on every tensor as it passes); `None`
/// when all are finite or the dtype is not a float. A value is non-finite when its exponent
/// bits are all ones; eight bytes are tested at a time (SWAR), the hit located lane by lane.
pub fn first_non_finite(dtype: Dtype, raw: &[u8]) -> Option<usize> {
    // (exponent mask of one lane, lane width in bytes)
    let (mask, width): (u64, usize) = match dtype {
        Dtype::F16 => (0x7c00, 2),
        Dtype::BF16 => (0x7f80, 2),
        Dtype::F32 => (0x7f80_0000, 4),
        Dtype::F64 => (0x7ff0_0000_0000_0000, 8),
        _ => return None,
    };
    let bits = 8 * width as u32;
    let lanes = 8 / width;
    let repeat = |v: u64| (0..lanes).fold(0u64, |acc, i| acc | (v << (bits * i as u32)));
    let (masks, low, high) = (repeat(mask), repeat(1), repeat(1 << (bits - 1)));
    let lane_hit = |lane: &[u8]| {
        let mut v = 0u64;
        for (i, &b) in lane.iter().enumerate() {
            v |= u64::from(b) << (8 * i);
        }
        v & mask == mask
    };
    // Lanes before the first 8-byte-aligned word, the aligned words, the lanes after.
    let (head, words, tail) = bytemuck::pod_align_to::<u8, u64>(raw);
    if head.len() % width != 0 {
        // Lanes straddle the words (a misaligned tensor): lane by lane.
        return raw.chunks_exact(width).position(lane_hit);
    }
    if let Some(i) = head.chunks_exact(width).position(lane_hit) {
        return Some(i);
    }
    let before = head.len() / width;
    for (w, &v) in words.iter().enumerate() {
        // A lane whose exponent bits are all set is a zero lane of `(v & mask) ^ mask`.
        let x = (v.to_le() & masks) ^ masks;
        if x.wrapping_sub(low) & !x & high != 0 {
            let start = head.len() + 8 * w;
            let lane = raw[start..start + 8]
                .chunks_exact(width)
                .position(lane_hit)
                .expect("a lane hit");
            return Some(before + w * lanes + lane);
        }
    }
    let done = (raw.len() - tail.len()) / width;
    tail.chunks_exact(width)
        .position(lane_hit)
        .map(|i| done + i)
}

/// A safetensors file held in memory, with its header parsed and checked.
pub struct WeightFile {
    name: String,
    bytes: Vec<u8>,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

impl WeightFile {
    /// Parses a safetensors file; `name` (usually its path) is used in every error.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::BadSafetensors {
                source_name: name.clone(),
                reason: format!("{e:?}"),
            })?;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(k, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: info.data_offsets.0,
                    end: info.data_offsets.1,
                };
                (k, entry)
            })
            .collect();
        Ok(Self {
            name,
            bytes,
            data_start: 8 + header_len,
            entries,
        })
    }

    /// The name given at parse time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every tensor name in the file, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Shape of one tensor, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// Fails, naming the tensor, when a float tensor holds NaN or ±∞ (damaged weights would
    /// otherwise give a one-colour image).
    pub fn check_finite(&self) -> Result<()> {
        for (key, e) in &self.entries {
            let raw = &self.bytes[self.data_start + e.start..self.data_start + e.end];
            if let Some(i) = first_non_finite(e.dtype, raw) {
                return Err(Error::BadSafetensors {
                    source_name: self.name.clone(),
                    reason: format!(
                        "tensor `{key}` holds a non-finite value (NaN or infinity) at index {i}: \
                         the weights are damaged"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Byte range `[start, end)` of one tensor's data in the file.
    pub fn byte_range(&self, key: &str) -> Option<[u64; 2]> {
        self.entries.get(key).map(|e| {
            [
                (self.data_start + e.start) as u64,
                (self.data_start + e.end) as u64,
            ]
        })
    }

    /// One tensor's stored bytes (little-endian, its own dtype).
    pub fn raw(&self, key: &str) -> Result<&[u8]> {
        let e = self
            .entries
            .get(key)
            .ok_or_else(|| Error::input(format!("{}: no tensor named `{key}`", self.name)))?;
        Ok(&self.bytes[self.data_start + e.start..self.data_start + e.end])
    }

    /// One float tensor converted to f32 on the host.
    pub fn f32_data(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self
            .entries
            .get(key)
            .ok_or_else(|| Error::input(format!("{}: no tensor named `{key}`", self.name)))?;
        let raw = &self.bytes[self.data_start + e.start..self.data_start + e.end];
        let values = decode_f32(e.dtype, raw).ok_or_else(|| {
            Error::input(format!(
                "{}: tensor `{key}` has unsupported dtype {:?}",
                self.name, e.dtype
            ))
        })?;
        Ok((values, e.shape.clone()))
    }

    /// One integer tensor (i64, i32, u8, ...) as i64 on the host.
    pub fn i64_data(&self, key: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let e = self
            .entries
            .get(key)
            .ok_or_else(|| Error::input(format!("{}: no tensor named `{key}`", self.name)))?;
        let raw = &self.bytes[self.data_start + e.start..self.data_start + e.end];
        let values: Vec<i64> = match e.dtype {
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            Dtype::U8 => raw.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(Error::input(format!(
                    "{}: tensor `{key}` is {other:?}, expected integers",
                    self.name
                )));
            }
        };
        Ok((values, e.shape.clone()))
    }

    /// One float tensor uploaded to `device` as f32 with rank `D`.
    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Result<Tensor<D>> {
        to_tensor(self, key, device)
    }
}

/// Anything tensors can be loaded from by name: one safetensors file, or a bundle's shards.
pub trait TensorSource {
    /// Name used in errors (a path).
    fn source_name(&self) -> &str;
    /// Every key, sorted.
    fn all_keys(&self) -> Vec<&str>;
    /// Element type and shape of one tensor.
    fn info(&self, key: &str) -> Option<(Dtype, &[usize])>;
    /// One float tensor as f32 on the host.
    fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)>;
    /// The tensor already on the device (flat, f32), for sources that upload as they read.
    fn uploaded(&self, _key: &str) -> Option<Tensor<1>> {
        None
    }
    /// The tensor's stored bytes, for sources that keep them on the host (copying weights
    /// unchanged, as `pgp-wgpu prune` does).
    fn raw_bytes(&self, _key: &str) -> Option<&[u8]> {
        None
    }
}

impl TensorSource for WeightFile {
    fn source_name(&self) -> &str {
        &self.name
    }
    fn all_keys(&self) -> Vec<&str> {
        self.keys().collect()
    }
    fn info(&self, key: &str) -> Option<(Dtype, &[usize])> {
        self.entries.get(key).map(|e| (e.dtype, e.shape.as_slice()))
    }
    fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.f32_data(key)
    }
    fn raw_bytes(&self, key: &str) -> Option<&[u8]> {
        self.raw(key).ok()
    }
}

/// Several safetensors files seen as one key space (a bundle's shards).
pub struct WeightStore {
    name: String,
    files: Vec<WeightFile>,
    index: BTreeMap<String, usize>,
}

impl WeightStore {
    /// Merges shards; a key present in two shards is an error.
    pub fn new(name: impl Into<String>, files: Vec<WeightFile>) -> Result<Self> {
        let name = name.into();
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for k in f.keys() {
                if index.insert(k.to_string(), i).is_some() {
                    return Err(Error::BadSafetensors {
                        source_name: name.clone(),
                        reason: format!("tensor `{k}` is in more than one shard"),
                    });
                }
            }
        }
        Ok(Self { name, files, index })
    }

    /// One tensor uploaded to `device` as f32 with rank `D`.
    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Result<Tensor<D>> {
        to_tensor(self, key, device)
    }
}

impl TensorSource for WeightStore {
    fn source_name(&self) -> &str {
        &self.name
    }
    fn all_keys(&self) -> Vec<&str> {
        self.index.keys().map(String::as_str).collect()
    }
    fn info(&self, key: &str) -> Option<(Dtype, &[usize])> {
        self.index.get(key).and_then(|&i| self.files[i].info(key))
    }
    fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        match self.index.get(key) {
            Some(&i) => self.files[i].f32_data(key),
            None => Err(Error::input(format!(
                "{}: no tensor named `{key}`",
                self.name
            ))),
        }
    }
    fn raw_bytes(&self, key: &str) -> Option<&[u8]> {
        self.index
            .get(key)
            .and_then(|&i| self.files[i].raw(key).ok())
    }
}

/// One tensor of any source on `device` (uploaded now, or already), checking its rank.
pub(crate) fn to_tensor<const D: usize>(
    src: &dyn TensorSource,
    key: &str,
    device: &Device,
) -> Result<Tensor<D>> {
    let rank_error = |shape: &[usize]| {
        Error::input(format!(
            "{}: tensor `{key}` has shape {shape:?}, expected rank {D}",
            src.source_name()
        ))
    };
    if let (Some(flat), Some((_, shape))) = (src.uploaded(key), src.info(key)) {
        let shape: [usize; D] = shape.try_into().map_err(|_| rank_error(shape))?;
        return Ok(flat.reshape(shape));
    }
    let (values, shape) = src.read_f32(key)?;
    if shape.len() != D {
        return Err(rank_error(&shape));
    }
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Tensors uploaded to a device as their files arrive, so that only one file is ever on the
/// host: a bundle streamed shard by shard. Every float tensor is kept at one dtype on the
/// device; f16 data goes up as f16 (no f32 copy on the host) where the device has f16, and is
/// cast there. Keeps each tensor's stored dtype and shape for the checked loader.
pub struct DeviceStore {
    name: String,
    device: Device,
    dtype: FloatDType,
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Option<Tensor<1>>)>,
}

impl DeviceStore {
    /// An empty store on `device` keeping float tensors as `dtype`.
    pub fn new(name: impl Into<String>, device: &Device, dtype: FloatDType) -> Self {
        Self {
            name: name.into(),
            device: device.clone(),
            dtype,
            tensors: BTreeMap::new(),
        }
    }

    /// Uploads the tensors of `file` whose keys `keep` accepts; the file can be dropped
    /// afterwards. A key already in the store is an error.
    pub fn add(&mut self, file: &WeightFile, keep: impl Fn(&str) -> bool) -> Result<()> {
        let device_f16 = self.device.supports_dtype(DType::F16);
        for key in file.keys().filter(|k| keep(k)) {
            if self.tensors.contains_key(key) {
                return Err(Error::BadSafetensors {
                    source_name: self.name.clone(),
                    reason: format!("tensor `{key}` is in more than one shard"),
                });
            }
            let (dtype, shape) = file.info(key).expect("listed key");
            let n = shape.iter().product::<usize>();
            let flat = if dtype == Dtype::F16 && device_f16 {
                let raw = file.raw(key)?;
                let halves: Vec<half::f16> = raw
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                let t: Tensor<1> =
                    Tensor::from_data(TensorData::new(halves, [n]), (&self.device, DType::F16));
                Some(t.cast(self.dtype))
            } else {
                // Non-float tensors keep their header (the checked loader reports them) only.
                file.f32_data(key).ok().map(|(values, _)| {
                    Tensor::<1>::from_data(TensorData::new(values, [n]), &self.device)
                        .cast(self.dtype)
                })
            };
            self.tensors
                .insert(key.to_string(), (dtype, shape.to_vec(), flat));
        }
        Ok(())
    }
}

impl TensorSource for DeviceStore {
    fn source_name(&self) -> &str {
        &self.name
    }
    fn all_keys(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }
    fn info(&self, key: &str) -> Option<(Dtype, &[usize])> {
        self.tensors.get(key).map(|(d, s, _)| (*d, s.as_slice()))
    }
    fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        Err(Error::input(format!(
            "{}: `{key}` is on the device; it cannot be read on the host",
            self.name
        )))
    }
    fn uploaded(&self, key: &str) -> Option<Tensor<1>> {
        self.tensors.get(key).and_then(|(_, _, t)| t.clone())
    }
}

/// What the shape-only pass recorded: every key a module asked for, with its expected shape.
#[derive(Default)]
struct Record {
    wanted: BTreeMap<String, Vec<usize>>,
}

enum Mode<'a> {
    /// Record keys and shapes; answer with placeholders.
    Shapes,
    /// Read the tensors from this source.
    Load(&'a dyn TensorSource),
    /// Make them up on the device (benchmarks): `U(±1/sqrt(fan_in))` for matrices and kernels,
    /// ones for 1-D `weight`s (norms), zeros for biases.
    Random,
}

/// Hands out a module's tensors by dotted path (`down_blocks.1.attentions.0.proj_in.weight`).
#[derive(Clone)]
pub struct VarBuilder<'a> {
    mode: Rc<Mode<'a>>,
    record: Rc<RefCell<Record>>,
    prefix: String,
    device: Device,
    dtype: FloatDType,
}

impl<'a> VarBuilder<'a> {
    fn new(mode: Mode<'a>, device: &Device) -> Self {
        Self {
            mode: Rc::new(mode),
            record: Rc::default(),
            prefix: String::new(),
            device: device.clone(),
            dtype: FloatDType::F32,
        }
    }

    /// The same builder handing out tensors as `dtype` (f32 by default): the precision the
    /// module computes in ([`crate::Precision`]).
    pub fn with_dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The dtype tensors are handed out as.
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// A builder that records expected keys and shapes, returning placeholders.
    pub fn shapes_only(device: &Device) -> Self {
        Self::new(Mode::Shapes, device)
    }

    /// A builder that makes every tensor up on the device, for benchmarks of full-size
    /// networks without their weights.
    pub fn random(device: &Device) -> VarBuilder<'static> {
        VarBuilder::new(Mode::Random, device)
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A builder for the sub-module `name` (`vb.pp("down_blocks").pp(1)`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut child = self.clone();
        child.prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        child
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The tensor `name` under this prefix, of the given shape.
    pub fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<D> {
        let path = self.path(name);
        self.record
            .borrow_mut()
            .wanted
            .insert(path.clone(), shape.to_vec());
        match &*self.mode {
            Mode::Shapes => Tensor::zeros([1; D], &self.device),
            Mode::Load(src) => to_tensor::<D>(*src, &path, &self.device)
                .expect("checked by the shape pass")
                .cast(self.dtype),
            Mode::Random if D == 1 && name == "weight" => {
                Tensor::ones(shape, (&self.device, self.dtype.into()))
            }
            Mode::Random if D == 1 => Tensor::zeros(shape, (&self.device, self.dtype.into())),
            Mode::Random => {
                let a = 1.0 / (shape[1..].iter().product::<usize>().max(1) as f64).sqrt();
                Tensor::random(
                    shape,
                    Distribution::Uniform(-a, a),
                    (&self.device, self.dtype.into()),
                )
            }
        }
    }

    /// Rows `rows` of the 2-D tensor `name` of shape `shape` (e.g. V of a stacked q‖k‖v).
    pub fn get_rows(
        &self,
        name: &str,
        shape: [usize; 2],
        rows: std::ops::Range<usize>,
    ) -> Tensor<2> {
        let full = self.get(name, shape);
        match &*self.mode {
            Mode::Shapes => full,
            Mode::Load(_) | Mode::Random => full.slice([rows, 0..shape[1]]),
        }
    }

    /// Rows `rows` of the 1-D tensor `name` of length `len`.
    pub fn get_range(&self, name: &str, len: usize, rows: std::ops::Range<usize>) -> Tensor<1> {
        let full = self.get(name, [len]);
        match &*self.mode {
            Mode::Shapes => full,
            Mode::Load(_) | Mode::Random => full.slice([rows]),
        }
    }

    /// Every key requested so far, with its expected shape.
    pub fn wanted(&self) -> BTreeMap<String, Vec<usize>> {
        self.record.borrow().wanted.clone()
    }
}

/// Keys that checkpoints carry but no module reads (buffers saved by older library versions).
fn ignorable(key: &str) -> bool {
    key.ends_with("position_ids")
}

/// Compares what a module wants with what a source has under `prefix` (keys outside the
/// prefix belong to other modules and are not "unexpected").
pub fn compare(
    wanted: &BTreeMap<String, Vec<usize>>,
    src: &dyn TensorSource,
    prefix: &str,
) -> WeightsMismatch {
    let mut m = WeightsMismatch {
        source_name: src.source_name().to_string(),
        ..Default::default()
    };
    for (key, shape) in wanted {
        match src.info(key) {
            None => m.missing.push(format!("{key} {shape:?}")),
            Some((_, found)) if found != shape.as_slice() => {
                m.mismatched
                    .push((key.clone(), format!("{shape:?}"), format!("{found:?}")))
            }
            Some((dtype, _)) if float_bytes(dtype).is_none() => {
                m.mismatched
                    .push((key.clone(), "a float dtype".into(), format!("{dtype:?}")))
            }
            Some(_) => {}
        }
    }
    m.unexpected = src
        .all_keys()
        .into_iter()
        .filter(|k| k.starts_with(prefix) && !wanted.contains_key(*k) && !ignorable(k))
        .map(str::to_string)
        .collect();
    m
}

/// The keys and shapes the module built by `build` asks for (no tensor is read).
pub fn wanted_shapes<M>(
    device: &Device,
    build: impl Fn(VarBuilder<'_>) -> Result<M>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let shapes = VarBuilder::shapes_only(device);
    build(shapes.clone())?;
    Ok(shapes.wanted())
}

/// Checks a source against a module without loading anything: every missing, unexpected (under
/// `prefix`) or mis-shaped tensor in one error.
pub fn check<M>(
    src: &dyn TensorSource,
    prefix: &str,
    device: &Device,
    build: impl Fn(VarBuilder<'_>) -> Result<M>,
) -> Result<()> {
    let mismatch = compare(&wanted_shapes(device, build)?, src, prefix);
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(Error::Weights(mismatch))
    }
}

/// Builds a module from a source in two passes: check every key and shape, then load.
/// `build` receives a builder at the root; `prefix` limits which unused keys count as
/// unexpected (`""`: the whole source belongs to this module). Tensors are handed out as
/// `dtype`, the precision the module computes in.
pub fn load_prefixed<M>(
    src: &dyn TensorSource,
    prefix: &str,
    device: &Device,
    dtype: FloatDType,
    build: impl Fn(VarBuilder<'_>) -> Result<M>,
) -> Result<M> {
    check(src, prefix, device, &build)?;
    build(VarBuilder::new(Mode::Load(src), device).with_dtype(dtype))
}

/// [`load_prefixed`] for a source that holds exactly one module.
pub fn load_checked<M>(
    src: &dyn TensorSource,
    device: &Device,
    dtype: FloatDType,
    build: impl Fn(VarBuilder<'_>) -> Result<M>,
) -> Result<M> {
    load_prefixed(src, "", device, dtype, build)
}

/// Number of parameters a module built by `build` has, counted from the shapes it asks for.
pub fn count_params<M>(
    device: &Device,
    build: impl Fn(VarBuilder<'_>) -> Result<M>,
) -> Result<u64> {
    let shapes = VarBuilder::shapes_only(device);
    build(shapes.clone())?;
    Ok(shapes
        .wanted()
        .values()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum())
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Vec<usize>)]) -> WeightFile {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(k, s)| {
                (
                    k.to_string(),
                    s.clone(),
                    vec![0u8; 4 * s.iter().product::<usize>()],
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        WeightFile::from_bytes("test.safetensors", bytes).unwrap()
    }

    fn build(vb: VarBuilder<'_>) -> Result<(Tensor<2>, Tensor<1>)> {
        let l = vb.pp("layer");
        Ok((l.get("weight", [3, 2]), l.get("bias", [3])))
    }

    #[test]
    fn a_matching_file_loads() {
        let f = file(&[
            ("layer.weight", vec![3, 2]),
            ("layer.bias", vec![3]),
            ("x.position_ids", vec![1]),
        ]);
        let (w, b) = load_checked(&f, &Device::flex(), FloatDType::F32, build).unwrap();
        assert_eq!(w.dims(), [3, 2]);
        assert_eq!(b.dims(), [3]);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let f = file(&[("layer.weight", vec![2, 3]), ("extra", vec![1])]);
        let Err(Error::Weights(m)) = load_checked(&f, &Device::flex(), FloatDType::F32, build)
        else {
            panic!("expected a weights error");
        };
        assert_eq!(m.missing, vec!["layer.bias [3]".to_string()]);
        assert_eq!(m.unexpected, vec!["extra".to_string()]);
        assert_eq!(
            m.mismatched,
            vec![("layer.weight".into(), "[3, 2]".into(), "[2, 3]".into())]
        );
        let text = Error::Weights(m).to_string();
        assert!(text.starts_with("test.safetensors: weights do not match"));
    }

    #[test]
    fn truncated_bytes_are_rejected_with_the_name() {
        let f = file(&[("a", vec![4])]);
        let mut bytes = f.bytes.clone();
        bytes.truncate(bytes.len() - 3);
        let err = WeightFile::from_bytes("m.safetensors", bytes)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("m.safetensors: not a valid safetensors file")
        );
        assert!(WeightFile::from_bytes("z", b"not a file".to_vec()).is_err());
    }

    #[test]
    fn non_finite_values_are_found_by_their_bits() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let f16s = |v: &[f32]| {
            v.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let bf16s = |v: &[f32]| {
            v.iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let fine = [0.0, -1.5, 65504.0, 1e-7];
        for (dtype, enc) in [
            (Dtype::F32, &f32s as &dyn Fn(&[f32]) -> Vec<u8>),
            (Dtype::F16, &f16s),
            (Dtype::BF16, &bf16s),
        ] {
            assert_eq!(first_non_finite(dtype, &enc(&fine)), None, "{dtype:?}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let v = [1.0, 2.0, bad, 3.0];
                assert_eq!(
                    first_non_finite(dtype, &enc(&v)),
                    Some(2),
                    "{dtype:?} {bad}"
                );
            }
        }
        // Every position of words and tails, among finite values at the edges of each format
        // (−0, the largest finite, subnormals).
        let edge = [
            -0.0, 65504.0, -65504.0, 6e-8, 3.0e38, -1.0e-40, 1.0, 0.5, 2.0,
        ];
        for len in 1..=9 {
            for pos in 0..len {
                for (dtype, enc) in [
                    (Dtype::F32, &f32s as &dyn Fn(&[f32]) -> Vec<u8>),
                    (Dtype::F16, &f16s),
                    (Dtype::BF16, &bf16s),
                ] {
                    let clean: Vec<f32> = edge[..len]
                        .iter()
                        .map(|&v: &f32| {
                            if dtype == Dtype::F16 {
                                v.clamp(-65504.0, 65504.0)
                            } else {
                                v
                            }
                        })
                        .collect();
                    assert_eq!(
                        first_non_finite(dtype, &enc(&clean)),
                        None,
                        "{dtype:?} {clean:?}"
                    );
                    let mut bad = clean.clone();
                    bad[pos] = f32::NAN;
                    assert_eq!(
                        first_non_finite(dtype, &enc(&bad)),
                        Some(pos),
                        "{dtype:?} {pos}"
                    );
                    // The same bytes at every misalignment.
                    for shift in 1..8 {
                        let mut bytes = vec![0u8; shift];
                        bytes.extend(enc(&bad));
                        let found = first_non_finite(dtype, &bytes[shift..]);
                        assert_eq!(found, Some(pos), "{dtype:?} {pos} +{shift}");
                    }
                }
            }
        }
        let f64s: Vec<u8> = [1.0f64, f64::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(Dtype::F64, &f64s), Some(1));
        assert_eq!(first_non_finite(Dtype::I64, &[0xff; 16]), None);
    }

    #[test]
    fn counting_uses_the_requested_shapes() {
        assert_eq!(count_params(&Device::flex(), build).unwrap(), 9);
    }
}
