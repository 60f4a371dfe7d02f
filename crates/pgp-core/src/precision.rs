//! The precision networks compute in. Weights go to the device in it (f16 shards as f16, with
//! no f32 copy on the host); inside a network, layers compute in their weights' dtype, and the
//! parts that need f32 upcast themselves: GroupNorm and LayerNorm statistics, the softmax (the
//! flash kernel accumulates in f32; the plain attention runs in f32), timestep embeddings,
//! PEAM's phase exchange. Every network takes and returns f32, so the pipeline around them —
//! the Euler latent and its arithmetic, tile blending, the colour fix — stays f32.

use burn::tensor::{DType, Device, FloatDType};

use crate::error::{Error, Result};

/// What the caller asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f16 where the device has f16 shaders (`shader-f16`) on burn's wgpu runtime, else f32
    /// (the browser's SwiftShader, the CPU backend).
    #[default]
    Auto,
    /// Half precision; an error where the device cannot run f16.
    F16,
    /// Single precision everywhere (the reference).
    F32,
}

impl Precision {
    /// Parses `auto`, `f16` or `f32`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Self::Auto),
            "f16" | "fp16" | "half" => Ok(Self::F16),
            "f32" | "fp32" | "float" => Ok(Self::F32),
            other => Err(Error::input(format!(
                "unknown precision `{other}` (known: auto, f16, f32)"
            ))),
        }
    }

    /// The dtype this precision means on `device`.
    pub fn resolve(self, device: &Device) -> Result<FloatDType> {
        let f16 = device.supports_dtype(DType::F16);
        match self {
            Self::F32 => Ok(FloatDType::F32),
            Self::F16 if f16 => Ok(FloatDType::F16),
            Self::F16 => Err(Error::device(
                "this device cannot compute in f16 (the adapter lacks `shader-f16`); use \
                 precision f32 or auto",
            )),
            Self::Auto if f16 && crate::kernels::is_wgpu(device) => Ok(FloatDType::F16),
            Self::Auto => Ok(FloatDType::F32),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F16 => "f16",
            Self::F32 => "f32",
        })
    }
}

/// `f16` or `f32`, as messages and reports name a dtype.
pub fn dtype_name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::F16 => "f16",
        FloatDType::F32 => "f32",
        FloatDType::F64 => "f64",
        _ => "other",
    }
}
