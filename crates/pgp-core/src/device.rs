//! Devices: [`Gpu`] — burn's wgpu runtime on an adapter (WGSL path; lavapipe where there is no
//! GPU), on a host application's own wgpu device, or, natively, burn's CPU backend (the
//! reference) — and the awaiting read-backs every front end uses.

pub use burn::tensor::wgpu::MemoryConfiguration;
use burn::tensor::wgpu::{WgpuSetup, wgpu};
use burn::tensor::{Device, DeviceKind, Tensor};

use crate::error::{Error, Result};

/// One adapter the wgpu runtime can use.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    /// Position in the list, as [`GpuOptions::adapter`] and `gpu:N` take it.
    pub index: usize,
    /// Driver and version.
    pub driver: String,
    /// Name, API, kind and limits (burn requests the adapter's own limits).
    pub info: GpuInfo,
    device_kind: DeviceKind,
}

/// The adapters of the primary APIs (Vulkan, Metal, DX12, WebGPU), in wgpu's order; the
/// first is the one burn's default device takes.
pub async fn adapters() -> Vec<AdapterInfo> {
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
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                info: GpuInfo::of(&info, a.features(), &a.limits()),
                device_kind,
            }
        })
        .collect()
}

/// What a [`Gpu`] is and allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// The adapter's name (`CPU` for burn's CPU backend).
    pub name: String,
    /// Graphics API (`Vulkan`, `Metal`, `Dx12`, `BrowserWebGpu`), or `burn-flex`.
    pub backend: String,
    /// Discrete, integrated, virtual or CPU.
    pub kind: String,
    /// Whether f16 shaders can run (`shader-f16`).
    pub shader_f16: bool,
    /// The largest buffer a kernel can bind (`min(max_buffer_size,
    /// max_storage_buffer_binding_size)`); `u64::MAX` on the CPU backend. Decides
    /// [`crate::TileSize::Auto`].
    pub max_buffer_bytes: u64,
    /// A software renderer on the CPU (llvmpipe / lavapipe, SwiftShader, WARP, a browser's
    /// fallback adapter) rather than a GPU: it works, one or two orders of magnitude slower.
    /// `false` for burn's CPU backend, which is not an adapter.
    pub software: bool,
}

/// Whether an adapter is a software renderer: the API says so (`reported_cpu`: wgpu's `Cpu`
/// type, from Vulkan's CPU type, DXGI's software flag or a browser's `isFallbackAdapter`), or
/// its name is one of the known ones (some report `Other`).
pub fn is_software(name: &str, reported_cpu: bool) -> bool {
    const NAMES: [&str; 5] = [
        "llvmpipe",
        "lavapipe",
        "swiftshader",
        "softpipe",
        "microsoft basic render", // WARP
    ];
    let name = name.to_ascii_lowercase();
    reported_cpu || NAMES.iter().any(|n| name.contains(n))
}

/// wgpu's preference among adapters for high performance (lower first), as
/// `Instance::request_adapter` sorts them.
fn preference(kind: &DeviceKind) -> u8 {
    match kind {
        DeviceKind::DiscreteGpu(_) => 1,
        DeviceKind::IntegratedGpu(_) => 2,
        DeviceKind::VirtualGpu(_) => 4,
        DeviceKind::Cpu => 5,
        _ => 3, // wgpu's `Other`, listed as the default device
    }
}

/// The adapter `auto` takes instead of the default one, when the default (wgpu's
/// high-performance pick) would be a software renderer while a hardware adapter exists; `None`
/// keeps the default.
fn auto_adapter(listed: &[AdapterInfo]) -> Option<usize> {
    let mut ranked: Vec<&AdapterInfo> = listed.iter().collect();
    ranked.sort_by_key(|a| preference(&a.device_kind));
    match ranked.first() {
        // burn selects by kind and index, so an adapter it can only reach as the default
        // (wgpu's `Other`) cannot be asked for.
        Some(first) if first.info.software => ranked
            .iter()
            .find(|a| !a.info.software && a.device_kind != DeviceKind::DefaultDevice)
            .map(|a| a.index),
        _ => None,
    }
}

impl GpuInfo {
    fn of(adapter: &wgpu::AdapterInfo, features: wgpu::Features, limits: &wgpu::Limits) -> Self {
        Self {
            name: adapter.name.clone(),
            backend: format!("{:?}", adapter.backend),
            kind: format!("{:?}", adapter.device_type),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            max_buffer_bytes: limits
                .max_buffer_size
                .min(limits.max_storage_buffer_binding_size),
            software: is_software(&adapter.name, adapter.device_type == wgpu::DeviceType::Cpu),
        }
    }
}

/// Which adapter [`Gpu::new`] takes, and how burn's runtime on it is set up.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// An index into [`adapters`] (what `pgp-wgpu devices` prints); `None`: the default
    /// adapter (a high-performance GPU where there is one; never a software renderer while a
    /// hardware adapter exists).
    pub adapter: Option<usize>,
    /// burn's memory pools: `ExclusivePages` (one page per allocation, the least memory
    /// held) or, natively, `Adaptive` (sliced pages, burn's default). `None`: burn's default.
    pub memory: Option<MemoryConfiguration>,
    /// Compute tasks batched into one GPU submission (burn's default: 32). Fewer keeps a
    /// browser or a renderer sharing the GPU more responsive.
    pub tasks_max: Option<usize>,
    /// Requests the device with every buffer capped at this many bytes (below the adapter's
    /// own limits): a smaller GPU simulated, for tests of the out-of-memory retry.
    pub max_buffer_bytes: Option<u64>,
}

impl GpuOptions {
    fn tunes_the_runtime(&self) -> bool {
        self.memory.is_some() || self.tasks_max.is_some()
    }
}

/// A device the engine runs on: burn's wgpu runtime on an adapter (or on a device the host
/// application owns), or burn's CPU backend. Cheap to clone; clones share the device.
#[derive(Clone, Debug)]
pub struct Gpu {
    device: Device,
    info: GpuInfo,
}

impl Gpu {
    /// Acquires a wgpu device (native and browser). The first `Gpu` on an adapter creates its
    /// runtime; later ones share it.
    pub async fn new(options: &GpuOptions) -> Result<Self> {
        if let Some(cap) = options.max_buffer_bytes {
            return Self::with_buffer_cap(options, cap).await;
        }
        let listed = adapters().await;
        // `auto` is wgpu's default adapter unless that is a software renderer beside a GPU.
        let chosen = options.adapter.or_else(|| auto_adapter(&listed));
        let (kind, listed_info) = match chosen {
            Some(i) => {
                let a = listed.get(i).ok_or_else(|| {
                    Error::device(format!("there is no adapter {i} ({} found)", listed.len()))
                })?;
                (a.device_kind.clone(), Some(a))
            }
            None => (DeviceKind::DefaultDevice, listed.first()),
        };
        let mut request = Device::wgpu_options();
        if chosen.is_some() {
            request = request.device_kind(kind.clone());
        }
        if let Some(memory) = options.memory.clone() {
            request = request.memory_config(memory);
        }
        if let Some(tasks) = options.tasks_max {
            request = request.tasks_max(tasks);
        }
        match request.init_with_setup_async().await {
            Ok((device, setup)) => Ok(Self {
                device,
                info: GpuInfo::of(
                    &setup.adapter.get_info(),
                    setup.device.features(),
                    &setup.device.limits(),
                ),
            }),
            // The runtime of this adapter exists already (an earlier `Gpu`, or a tensor made on
            // `Device::wgpu`): share it, unless it was asked to be set up differently.
            Err(burn::tensor::wgpu::WgpuInitError::Registration { message })
                if options.tunes_the_runtime() =>
            {
                Err(Error::device(format!(
                    "memory and task options apply to the first Gpu on an adapter, and this \
                     adapter's runtime is already running ({message})"
                )))
            }
            Err(burn::tensor::wgpu::WgpuInitError::Registration { .. }) => Ok(Self {
                device: Device::wgpu(kind),
                info: listed_info.map_or_else(
                    || GpuInfo {
                        name: "wgpu".into(),
                        backend: "unknown".into(),
                        kind: "unknown".into(),
                        shader_f16: false,
                        max_buffer_bytes: 256 << 20,
                        software: false,
                    },
                    |a| a.info.clone(),
                ),
            }),
            Err(e) => Err(Error::device(e.to_string())),
        }
    }

    /// A device of its own with every buffer capped at `cap` bytes.
    async fn with_buffer_cap(options: &GpuOptions, cap: u64) -> Result<Self> {
        let instance = wgpu::Instance::default();
        let adapter = match options.adapter {
            Some(i) => instance
                .enumerate_adapters(wgpu::Backends::PRIMARY)
                .await
                .into_iter()
                .nth(i)
                .ok_or_else(|| Error::device(format!("there is no adapter {i}")))?,
            None => instance
                .request_adapter(&Default::default())
                .await
                .map_err(|e| Error::device(e.to_string()))?,
        };
        let mut limits = adapter.limits();
        limits.max_buffer_size = limits.max_buffer_size.min(cap);
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("pgp-wgpu"),
                required_features: adapter
                    .features()
                    .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::MemoryUsage,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::device(e.to_string()))?;
        let backend = adapter.get_info().backend;
        Self::from_wgpu(WgpuSetup {
            instance,
            adapter,
            device,
            queue,
            backend,
        })
    }

    /// Runs on a wgpu device the host application already owns (the `wgpu` types are burn's
    /// re-export, [`burn::tensor::wgpu::wgpu`], so the versions match). The host should have
    /// requested the adapter's own features and limits. cubecl takes over the device's
    /// uncaptured-error and device-lost callbacks and submits to the given queue.
    pub fn from_wgpu(setup: WgpuSetup) -> Result<Self> {
        let info = GpuInfo::of(
            &setup.adapter.get_info(),
            setup.device.features(),
            &setup.device.limits(),
        );
        let device = Device::wgpu_options()
            .setup(setup)
            .init()
            .map_err(|e| Error::device(e.to_string()))?;
        Ok(Self { device, info })
    }

    /// burn's CPU backend (the reference device; native only).
    #[cfg(feature = "cpu")]
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            info: GpuInfo {
                name: "CPU".into(),
                backend: "burn-flex".into(),
                kind: "Cpu".into(),
                shader_f16: false,
                max_buffer_bytes: u64::MAX,
                software: false,
            },
        }
    }

    /// A device by name: `auto` (also `wgpu`, `gpu`: the default adapter), `gpu:N` (adapter
    /// `N` of [`adapters`]) or `cpu`.
    pub async fn from_name(name: &str) -> Result<Self> {
        match name {
            "auto" | "wgpu" | "gpu" => Self::new(&GpuOptions::default()).await,
            #[cfg(feature = "cpu")]
            "cpu" => Ok(Self::cpu()),
            other => match other.strip_prefix("gpu:").map(str::parse::<usize>) {
                Some(Ok(i)) => {
                    Self::new(&GpuOptions {
                        adapter: Some(i),
                        ..GpuOptions::default()
                    })
                    .await
                }
                _ => Err(Error::input(format!(
                    "unknown device `{other}` (known: auto, cpu, gpu:N)"
                ))),
            },
        }
    }

    /// The burn device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The adapter's facts.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }
}

/// Waits until the device has computed `t` (and so everything it depends on), without
/// blocking: a one-value read-back, which also works in the browser.
pub async fn settle<const D: usize>(t: &Tensor<D>) -> Result<()> {
    let n = t.shape().num_elements();
    if n == 0 {
        return Ok(());
    }
    t.clone()
        .reshape([n])
        .narrow(0, 0, 1)
        .into_data_async()
        .await
        .map(drop)
        .map_err(|e| execution_error("waiting for the device", e.is_device_poisoned(), &e))
}

/// A failed execution as an error: a poisoned (lost) device is [`Error::Device`]; anything
/// else — a buffer the device could not allocate, which leaves the device usable — is
/// [`Error::DeviceMemory`].
fn execution_error(what: &str, poisoned: bool, e: &dyn std::fmt::Display) -> Error {
    let reason = e.to_string().replace('\n', " ");
    if poisoned {
        Error::device(format!("{what} failed, the device is lost: {reason}"))
    } else {
        Error::DeviceMemory(format!("{what} failed: {reason}"))
    }
}

/// Reads a tensor back to the host as f32 values and its shape (awaits the device, so it also
/// works in the browser).
pub async fn read_back<const D: usize>(t: Tensor<D>) -> Result<(Vec<f32>, Vec<usize>)> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data_async()
        .await
        .map_err(|e| execution_error("reading a result back", e.is_device_poisoned(), &e))?;
    let values = data
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::device(format!("reading a result back failed: {e:?}")))?;
    Ok((values, shape))
}

/// Whether `device` is burn's CPU backend (flex): eager, synchronous, and fastest with the
/// weight-stationary layouts [`crate::nn`] picks for it.
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "cpu")]
    {
        matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = device;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(index: usize, name: &str, ty: wgpu::DeviceType, kind: DeviceKind) -> AdapterInfo {
        AdapterInfo {
            index,
            driver: String::new(),
            info: GpuInfo {
                name: name.into(),
                backend: "Vulkan".into(),
                kind: format!("{ty:?}"),
                shader_f16: true,
                max_buffer_bytes: 1 << 30,
                software: is_software(name, ty == wgpu::DeviceType::Cpu),
            },
            device_kind: kind,
        }
    }

    #[test]
    fn software_adapters_are_named_and_auto_passes_them_over() {
        use wgpu::DeviceType as T;
        assert!(is_software("llvmpipe (LLVM 15.0.6, 256 bits)", true));
        assert!(is_software("SwiftShader Device (Subzero)", false));
        assert!(is_software("Microsoft Basic Render Driver", false));
        assert!(!is_software("NVIDIA GeForce RTX 4090", false));
        assert!(!is_software("Apple M2", false));
        let lvp = adapter(0, "llvmpipe", T::Cpu, DeviceKind::Cpu);
        let swiftshader = adapter(0, "SwiftShader Device", T::Other, DeviceKind::DefaultDevice);
        let gl_gpu = adapter(
            1,
            "AMD Radeon (radeonsi)",
            T::Other,
            DeviceKind::DefaultDevice,
        );
        let virt = adapter(
            1,
            "virtio-gpu venus",
            T::VirtualGpu,
            DeviceKind::VirtualGpu(0),
        );
        let nvidia = adapter(2, "NVIDIA", T::DiscreteGpu, DeviceKind::DiscreteGpu(0));
        // wgpu's default already ranks a GPU first: auto keeps the default.
        assert_eq!(auto_adapter(&[lvp.clone(), nvidia.clone()]), None);
        // Only software: the default (it works, slowly).
        assert_eq!(auto_adapter(std::slice::from_ref(&lvp)), None);
        assert_eq!(auto_adapter(&[]), None);
        // A software adapter typed `Other` ranks above a virtual GPU: auto takes the GPU.
        assert_eq!(auto_adapter(&[swiftshader.clone(), virt]), Some(1));
        assert_eq!(auto_adapter(&[swiftshader.clone(), lvp, nvidia]), None);
        // A GPU burn can reach only as the default cannot be asked for by kind.
        assert_eq!(auto_adapter(&[swiftshader, gl_gpu]), None);
    }
}
