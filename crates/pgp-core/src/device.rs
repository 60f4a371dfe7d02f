//! Devices: burn's wgpu runtime (WGSL path; lavapipe where there is no GPU) and, natively,
//! burn's CPU backend as the reference.

use burn::tensor::{Device, DeviceKind};

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The default wgpu adapter.
    Wgpu,
    /// burn's CPU backend (flex).
    #[cfg(feature = "cpu")]
    Cpu,
}

impl Backend {
    /// Parses `wgpu` (alias `gpu`) or `cpu`.
    pub fn parse(name: &str) -> crate::Result<Self> {
        match name {
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            #[cfg(feature = "cpu")]
            "cpu" => Ok(Self::Cpu),
            other => Err(crate::Error::config(format!(
                "unknown device `{other}` (known: wgpu, cpu)"
            ))),
        }
    }

    /// The burn device. wgpu is created lazily on first use; every call returns the same
    /// runtime, so a process may call this any number of times.
    pub fn device(self) -> Device {
        match self {
            Self::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
            #[cfg(feature = "cpu")]
            Self::Cpu => Device::flex(),
        }
    }
}
