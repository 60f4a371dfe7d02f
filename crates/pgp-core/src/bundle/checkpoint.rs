//! The checkpoints users download, read without running code: a `torch.save` file (through
//! [`crate::torch_pickle`]) or a safetensors file, tensor by tensor, and their names and shapes
//! alone ([`Shapes`]) so every shape check runs before any data is read.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::torch_pickle::TorchCheckpoint;
use crate::weights::{TensorSource, WeightFile};

/// Names and shapes only: lets the shape checks run over a checkpoint before reading data.
pub struct Shapes {
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
    fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        Err(Error::input(format!(
            "{}: `{key}` is not loaded",
            self.name
        )))
    }
}

/// A checkpoint: a torch.save file or a safetensors file.
pub enum Checkpoint<R: Read + Seek> {
    /// A `torch.save` archive.
    Pickle(TorchCheckpoint<R>),
    /// A safetensors file.
    Safetensors(WeightFile),
}

impl<R: Read + Seek> Checkpoint<R> {
    /// A `torch.save` archive read from `reader` (`name` is used in errors).
    pub fn pickle(name: impl Into<String>, reader: R) -> Result<Self> {
        Ok(Self::Pickle(TorchCheckpoint::open(name, reader)?))
    }

    /// Its name, for messages.
    pub fn name(&self) -> &str {
        match self {
            Self::Pickle(c) => c.name(),
            Self::Safetensors(f) => f.source_name(),
        }
    }

    /// `(name, dtype, shape)` of every tensor.
    pub fn tensors(&self) -> Vec<(String, Dtype, Vec<usize>)> {
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

    /// The names and shapes of the tensors `keep` selects, as a source for the shape checks.
    pub fn shapes(&self, keep: impl Fn(&str) -> bool) -> Shapes {
        Shapes {
            name: self.name().to_string(),
            map: self
                .tensors()
                .into_iter()
                .filter(|(name, ..)| keep(name))
                .map(|(name, dtype, shape)| (name, (dtype, shape)))
                .collect(),
        }
    }

    /// One tensor: dtype, shape and raw little-endian bytes.
    pub fn read(&mut self, name: &str) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
        match self {
            Self::Pickle(c) => c.read(name),
            Self::Safetensors(f) => {
                let (d, s) = f.info(name).ok_or_else(|| {
                    Error::input(format!("{}: no tensor `{name}`", f.source_name()))
                })?;
                Ok((d, s.to_vec(), f.raw(name)?.to_vec()))
            }
        }
    }
}
