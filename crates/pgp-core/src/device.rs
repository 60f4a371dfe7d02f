//! Devices: burn's wgpu runtime (WGSL path; lavapipe where there is no GPU) and, natively,
//! burn's CPU backend as the reference.

use burn::tensor::{Device, DeviceKind, Tensor};

use crate::error::{Error, Result};

/// One adapter the wgpu runtime can use.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    /// Position in the list, as `-g` takes it.
    pub index: usize,
    /// The adapter's name.
    pub name: String,
    /// Graphics API.
    pub backend: String,
    /// Discrete, integrated, virtual or CPU.
    pub kind: String,
    /// Driver and version.
    pub driver: String,
    /// Whether it can run f16 shaders.
    pub shader_f16: bool,
    /// The largest buffer a kernel can bind: `min(max_buffer_size,
    /// max_storage_buffer_binding_size)` (burn requests the adapter's own limits).
    pub max_buffer_bytes: u64,
    device_kind: DeviceKind,
}

impl AdapterInfo {
    /// The burn device for this adapter.
    pub fn device(&self) -> Device {
        Device::wgpu(self.device_kind.clone())
    }
}

/// The adapters of the primary APIs (Vulkan, Metal, DX12, WebGPU), in wgpu's order; the
/// first is the one burn's default device takes.
pub async fn adapters() -> Vec<AdapterInfo> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::default();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    instance
        .enumerate_adapters(wgpu::Backends::PRIMARY)
        .await
        .into_iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            let kind = format!("{:?}", info.device_type);
            let n = seen.entry(kind.clone()).or_default();
            let device_kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(*n),
                wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(*n),
                wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(*n),
                wgpu::DeviceType::Cpu => DeviceKind::Cpu,
                wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
            };
            *n += 1;
            AdapterInfo {
                index,
                name: info.name,
                backend: format!("{:?}", info.backend),
                kind,
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                max_buffer_bytes: {
                    let l = a.limits();
                    l.max_buffer_size.min(l.max_storage_buffer_binding_size)
                },
                device_kind,
            }
        })
        .collect()
}

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

/// Reads a tensor back to the host as f32 values and its shape (awaits the device, so it also
/// works in the browser).
pub async fn read_back<const D: usize>(t: Tensor<D>) -> Result<(Vec<f32>, Vec<usize>)> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::input(format!("reading a result back failed: {e:?}")))?;
    let values = data
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::input(format!("reading a result back failed: {e:?}")))?;
    Ok((values, shape))
}
