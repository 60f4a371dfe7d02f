//! `pgp_wgpu._native`: the Python extension module under the `pgp_wgpu` package. A thin shell
//! over `pgp_core`'s facade (and, for `convert` / `download`, the CLI's own code in
//! `pgp_wgpu_cli`): raw pixels in and out — the Python half (`python/pgp_wgpu`) turns NumPy
//! arrays and PIL images into them and back.
//!
//! Rules: the GIL is released while the engine works (loading, every upscale); the progress
//! callback runs with the GIL taken back after each finished unit, and so do Python's signal
//! handlers — Ctrl-C raises `KeyboardInterrupt` at the next unit and the run stops there. A
//! callback that returns `False` stops the run with `Cancelled`. Engine errors keep their
//! messages: bad input is `ValueError`, everything else `pgp_wgpu.Error`.

use std::path::PathBuf;
use std::sync::Mutex;

use pgp_core::{
    CancelToken, ColorFix, DirSource, Event, Gpu, ImageView, LoadOptions, Options, PixelFormat,
    Precision, Start, TileSize, Upscaler as CoreUpscaler,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes};

pyo3::create_exception!(
    _native,
    Error,
    PyRuntimeError,
    "An error of the engine: the model, the device or a file."
);
pyo3::create_exception!(
    _native,
    Cancelled,
    Error,
    "The run was stopped by its progress callback."
);

fn core_err(e: pgp_core::Error) -> PyErr {
    match e {
        pgp_core::Error::Input(_) => PyValueError::new_err(e.to_string()),
        pgp_core::Error::Cancelled => Cancelled::new_err(e.to_string()),
        other => Error::new_err(other.to_string()),
    }
}

/// A bad argument value (a name that does not parse) is a `ValueError`, whatever the kind.
fn arg_err(e: pgp_core::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn any_err(e: anyhow::Error) -> PyErr {
    match e.downcast::<pgp_core::Error>() {
        Ok(core) => core_err(core),
        Err(e) => Error::new_err(format!("{e:#}")),
    }
}

struct Inner {
    upscaler: CoreUpscaler,
    source: DirSource,
}

/// A model bundle loaded on one device.
#[pyclass(module = "pgp_wgpu._native")]
struct Upscaler {
    inner: Mutex<Inner>,
    family: &'static str,
    one_step: bool,
    device: String,
}

fn pixel_format(name: &str) -> PyResult<PixelFormat> {
    Ok(match name {
        "rgb8" => PixelFormat::Rgb8,
        "rgba8" => PixelFormat::Rgba8,
        "bgra8" => PixelFormat::Bgra8,
        "rgb16" => PixelFormat::Rgb16,
        "rgba16" => PixelFormat::Rgba16,
        other => {
            return Err(PyValueError::new_err(format!(
                "pixel format `{other}`: rgb8, rgba8, bgra8, rgb16 or rgba16"
            )));
        }
    })
}

#[pymethods]
impl Upscaler {
    /// Loads the bundle folder `bundle` on `device` ("auto", "cpu" or "gpu:N") at `precision`
    /// ("auto": f16 where the adapter has shader-f16, else f32; "f16"; "f32").
    #[new]
    #[pyo3(signature = (bundle, device = "auto", precision = "auto"))]
    fn new(py: Python<'_>, bundle: PathBuf, device: &str, precision: &str) -> PyResult<Self> {
        let precision = Precision::parse(precision).map_err(arg_err)?;
        let device_name = device.to_string();
        let inner = py.detach(move || -> pgp_core::Result<Inner> {
            let gpu = pollster::block_on(Gpu::from_name(&device_name))?;
            let source = DirSource::new(&bundle);
            let load = LoadOptions::default().with_precision(precision);
            let upscaler =
                pollster::block_on(CoreUpscaler::load_with(&source, &gpu, &load, &mut |_| {}))?;
            Ok(Inner { upscaler, source })
        });
        let inner = inner.map_err(core_err)?;
        Ok(Self {
            family: inner.upscaler.family().name(),
            one_step: inner.upscaler.is_one_step(),
            device: inner.upscaler.gpu().info().name.clone(),
            inner: Mutex::new(inner),
        })
    }

    /// The model family: "faithdiff" (FaithDiff, PGP-DiffSR) or "sd21" (OSEDiff, PiSA-SR).
    #[getter]
    fn family(&self) -> &'static str {
        self.family
    }

    /// Whether the bundle is a one-step model (its default is one UNet call).
    #[getter]
    fn one_step(&self) -> bool {
        self.one_step
    }

    /// The adapter's name.
    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// Upscales packed pixels (`height` rows of `width` pixels in `format`, 16-bit channels
    /// little-endian) and returns `(bytes, width, height)` in the same format. `None` options
    /// take the bundle's defaults.
    #[pyo3(signature = (
        data, width, height, format, *, scale = None, steps = None, tile = 0, seed = 0,
        prompt = "", guidance = None, color_fix = "adain", start = "lr", one_step = None,
        max_memory_mib = None, progress = None
    ))]
    fn upscale<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        width: usize,
        height: usize,
        format: &str,
        scale: Option<usize>,
        steps: Option<usize>,
        tile: usize,
        seed: u64,
        prompt: &str,
        guidance: Option<f64>,
        color_fix: &str,
        start: &str,
        one_step: Option<bool>,
        max_memory_mib: Option<u64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize, usize)> {
        let format = pixel_format(format)?;
        let pixels = data.to_vec();
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| Error::new_err("an earlier call on this upscaler panicked"))?;
        let inner = &mut *guard;
        let defaults = inner.upscaler.default_options();
        let options = Options {
            scale: scale.unwrap_or(defaults.scale),
            steps: steps.unwrap_or(defaults.steps),
            guidance: guidance.unwrap_or(defaults.guidance),
            prompt: prompt.to_string(),
            tile: if tile == 0 {
                TileSize::Auto
            } else {
                TileSize::Pixels(tile)
            },
            color_fix: ColorFix::parse(color_fix).map_err(arg_err)?,
            start: Start::parse(start).map_err(arg_err)?,
            seed,
            one_step: one_step.unwrap_or(defaults.one_step),
            noise: None,
            max_memory: max_memory_mib.map(|m| m << 20),
        };
        options.validate().map_err(core_err)?;
        let outcome = py.detach(|| -> Result<pgp_core::Image, PyErr> {
            if inner.upscaler.uses_prompt(&options) {
                pollster::block_on(
                    inner
                        .upscaler
                        .load_text_encoders(&inner.source, &mut |_| {}),
                )
                .map_err(core_err)?;
            }
            let view = ImageView::packed(&pixels, width, height, format).map_err(core_err)?;
            let job = inner.upscaler.start(view, options).map_err(core_err)?;
            let cancel = CancelToken::new();
            let mut stop: Option<PyErr> = None;
            let mut on_event = |e: Event| {
                Python::attach(|py| {
                    if let Err(err) = py.check_signals() {
                        stop = Some(err);
                        cancel.cancel();
                        return;
                    }
                    let Some(cb) = &progress else { return };
                    match cb.call1(py, (e.done, e.total, e.unit.to_string())) {
                        Ok(v) => {
                            let v = v.bind(py);
                            if v.is_instance_of::<PyBool>() && !v.is_truthy().unwrap_or(true) {
                                cancel.cancel();
                            }
                        }
                        Err(err) => {
                            stop = Some(err);
                            cancel.cancel();
                        }
                    }
                });
            };
            let result = pollster::block_on(job.finish(&mut on_event, &cancel));
            match (result, stop) {
                // A Python exception (the callback's, or KeyboardInterrupt) wins.
                (_, Some(err)) => Err(err),
                (r, None) => r.map_err(core_err),
            }
        })?;
        let (w, h) = (outcome.width, outcome.height);
        Ok((PyBytes::new(py, &outcome.data), w, h))
    }
}

/// Converts downloaded FaithDiff / PGP-DiffSR weights into a bundle (as `pgp-wgpu convert
/// --sdxl --vae --faithdiff`).
#[pyfunction]
#[pyo3(signature = (
    output, *, sdxl, vae, faithdiff, arch = "faithdiff", dtype = "f16", unet_config = None,
    peam_config = None, one_step = false, lora = None, lora_scale = 1.0, lora_alpha = None
))]
fn convert_faithdiff(
    py: Python<'_>,
    output: PathBuf,
    sdxl: PathBuf,
    vae: PathBuf,
    faithdiff: PathBuf,
    arch: &str,
    dtype: &str,
    unet_config: Option<PathBuf>,
    peam_config: Option<PathBuf>,
    one_step: bool,
    lora: Option<PathBuf>,
    lora_scale: f32,
    lora_alpha: Option<f32>,
) -> PyResult<()> {
    let args = pgp_wgpu_cli::convert::ConvertArgs {
        sdxl,
        vae,
        faithdiff,
        arch: pgp_core::presets::Arch::parse(arch).map_err(arg_err)?,
        unet_config,
        peam_config,
        dtype: dtype.to_string(),
        output,
        max_shard_bytes: 256 << 20,
        quiet: true,
        one_step,
        lora: lora.map(|p| (p, lora_scale, lora_alpha)),
    };
    py.detach(|| pgp_wgpu_cli::convert::run(&args))
        .map_err(any_err)
}

/// Converts SD2.1-base and a one-step model (OSEDiff's osediff.pkl or PiSA-SR's pisa_sr.pkl)
/// into a bundle (as `pgp-wgpu convert --sd21 --osediff|--pisa`).
#[pyfunction]
#[pyo3(signature = (output, *, sd21, osediff = None, pisa = None, dtype = "f16"))]
fn convert_sd21(
    py: Python<'_>,
    output: PathBuf,
    sd21: PathBuf,
    osediff: Option<PathBuf>,
    pisa: Option<PathBuf>,
    dtype: &str,
) -> PyResult<()> {
    use pgp_wgpu_cli::convert::Sd21Model;
    let model = match (osediff, pisa) {
        (Some(p), None) => Sd21Model::OseDiff(p),
        (None, Some(p)) => Sd21Model::Pisa(p),
        _ => {
            return Err(PyValueError::new_err(
                "give one of osediff= (osediff.pkl) and pisa= (pisa_sr.pkl)",
            ));
        }
    };
    let args = pgp_wgpu_cli::convert::Sd21Args {
        sd21,
        model,
        dtype: dtype.to_string(),
        output,
        max_shard_bytes: 256 << 20,
        quiet: true,
    };
    py.detach(|| pgp_wgpu_cli::convert::run_sd21(&args))
        .map_err(any_err)
}

/// Downloads and converts a model ("faithdiff" or "osediff") as `pgp-wgpu download` does;
/// returns the bundle's folder.
#[cfg(feature = "download")]
#[pyfunction]
#[pyo3(signature = (model, output = None, quiet = true))]
fn download(
    py: Python<'_>,
    model: &str,
    output: Option<PathBuf>,
    quiet: bool,
) -> PyResult<PathBuf> {
    let model = model.to_string();
    py.detach(move || pgp_wgpu_cli::download::run(&model, output, quiet))
        .map_err(any_err)
}

/// The GPU adapters: (index, name, backend, kind, shader_f16, software) each; `software`
/// marks a CPU renderer (llvmpipe, SwiftShader, WARP), which "auto" passes over for a GPU.
#[pyfunction]
fn devices(py: Python<'_>) -> Vec<(usize, String, String, String, bool, bool)> {
    py.detach(|| pollster::block_on(pgp_core::device::adapters()))
        .into_iter()
        .map(|a| {
            let i = a.info;
            (
                a.index,
                i.name,
                i.backend.to_string(),
                i.kind.to_string(),
                i.shader_f16,
                i.software,
            )
        })
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Upscaler>()?;
    m.add_function(wrap_pyfunction!(convert_faithdiff, m)?)?;
    m.add_function(wrap_pyfunction!(convert_sd21, m)?)?;
    #[cfg(feature = "download")]
    m.add_function(wrap_pyfunction!(download, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("Cancelled", m.py().get_type::<Cancelled>())?;
    Ok(())
}
