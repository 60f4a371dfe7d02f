//! One error type for the core library: every failure a user can cause (a bad file, a bad
//! config, mismatched weights) is reported here with enough context to fix it.

use std::fmt;

/// Core library result.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in the core library. New variants may be added: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file is not a readable safetensors file (truncated, bad header, not safetensors).
    #[error("{source_name}: not a valid safetensors file: {reason}")]
    BadSafetensors { source_name: String, reason: String },

    /// A `torch.save` checkpoint that is malformed or asks to run code.
    #[error("{source_name}: {reason}")]
    BadCheckpoint { source_name: String, reason: String },

    /// A weights file does not match the architecture its config describes.
    #[error("{0}")]
    Weights(WeightsMismatch),

    /// A config dict is missing a field, has a bad value, or names something unsupported.
    #[error("config: {0}")]
    Config(String),

    /// An input (an image, a tensor, an option) is missing, malformed or out of range.
    #[error("input: {0}")]
    Input(String),

    /// The device failed: a read-back, an adapter or device request, a lost device.
    #[error("device: {0}")]
    Device(String),

    /// The device could not allocate or run a unit of work (out of memory, or a buffer larger
    /// than it allows) but is otherwise fine: smaller work may fit. A UNet tile that fails so
    /// is retried at half the size ([`crate::Unit::Retry`]).
    #[error("device memory: {0}")]
    DeviceMemory(String),

    /// A run was cancelled (a `CancelToken` was tripped or a progress callback asked to stop).
    #[error("cancelled")]
    Cancelled,

    /// A file the caller's source could not provide (missing, unreadable).
    #[error("{file}: {reason}")]
    Source { file: String, reason: String },
}

impl Error {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
    pub(crate) fn device(msg: impl Into<String>) -> Self {
        Error::Device(msg.into())
    }
}

/// The message of a caught panic (`catch_unwind`'s payload), for shells that turn panics into
/// errors (the conformance runner, the C ABI).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

/// Every way a weights file disagrees with the module that loads it, listed in full.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WeightsMismatch {
    /// Name of the weights file (or bundle) that was checked.
    pub source_name: String,
    /// Keys the module needs that the file lacks.
    pub missing: Vec<String>,
    /// Keys in the file that the module does not use.
    pub unexpected: Vec<String>,
    /// Keys whose shape or dtype differs: (key, expected, found).
    pub mismatched: Vec<(String, String, String)>,
}

impl WeightsMismatch {
    /// True when the file matches the module exactly.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for WeightsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 20;
        write!(
            f,
            "{}: weights do not match the config ({} missing, {} unexpected, {} mis-shaped)",
            self.source_name,
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )?;
        let mut list = |title: &str, items: Vec<String>| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            write!(f, "\n  {title}:")?;
            for item in items.iter().take(SHOW) {
                write!(f, "\n    {item}")?;
            }
            if items.len() > SHOW {
                write!(f, "\n    ... and {} more", items.len() - SHOW)?;
            }
            Ok(())
        };
        list("missing", self.missing.clone())?;
        list("unexpected", self.unexpected.clone())?;
        list(
            "mis-shaped (expected, found)",
            self.mismatched
                .iter()
                .map(|(k, e, g)| format!("{k}: {e} vs {g}"))
                .collect(),
        )
    }
}
