//! `pgp-web`: the engine in the browser, on WebGPU. A thin shell over `pgp_core`'s facade with
//! this JavaScript API (an ES module built by `web/build.sh`):
//!
//! ```js
//! import init, { Upscaler } from './pkg/pgp_web.js';
//! await init();
//! const up = await Upscaler.load(manifestUrl, { onProgress: (loadedBytes, totalBytes) => {} });
//! const out = await up.upscale(imageData, { scale: 2, steps: 3, tile: 32, seed: 7, prompt: '',
//!   oneStep: false, colorFix: 'adain', signal, onProgress: (done, total) => {} });
//! up.free();
//! ```
//!
//! Omitted options take the bundle's defaults. Failures reject with an `Error` that says what
//! failed; an aborted `signal` rejects with a `DOMException` named `AbortError` before the next
//! unit of GPU work. Nothing here may panic: a panic would end the wasm instance.
#![cfg(target_arch = "wasm32")]

mod fetch;
mod files;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Reflect};
use pgp_core::{ColorFix, Error, Gpu, GpuOptions, ImageView, PixelFormat, TileSize};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::fetch::FetchSource;
use crate::files::FilesSource;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// Runs when the module is instantiated: a panic (a bug: the instance ends with it, as
/// `panic = "abort"`) is written to the console with its message and place before the trap,
/// instead of a bare `unreachable`.
#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error(&format!("pgp-wgpu: a bug ended the module: {info}"));
    }));
}

/// Where the bundle comes from: a URL, or a folder the visitor chose.
enum Source {
    Fetch(FetchSource),
    Files(FilesSource),
}

impl pgp_core::ShardSource for Source {
    async fn read(&self, name: &str) -> pgp_core::Result<Vec<u8>> {
        match self {
            Source::Fetch(s) => s.read(name).await,
            Source::Files(s) => s.read(name).await,
        }
    }
    fn describe(&self) -> String {
        match self {
            Source::Fetch(s) => s.describe(),
            Source::Files(s) => s.describe(),
        }
    }
}

/// A JavaScript `Error` with `msg`.
fn js_error(msg: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&msg.to_string()).into()
}

/// What a core error becomes in JavaScript: `AbortError` for a cancelled run, else an `Error`.
fn to_js(e: Error) -> JsValue {
    match e {
        Error::Cancelled => abort_error(),
        e => js_error(e),
    }
}

fn abort_error() -> JsValue {
    web_sys::DomException::new_with_message_and_name("the upscale was aborted", "AbortError")
        .map_or_else(|e| e, JsValue::from)
}

/// `obj[key]`, or `undefined`.
fn get(obj: &JsValue, key: &str) -> JsValue {
    if obj.is_object() {
        Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

/// A non-negative whole number option, or `None` when it is omitted.
fn count(obj: &JsValue, key: &str) -> Result<Option<u64>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 9007199254740991.0 => Ok(Some(n as u64)),
        _ => Err(js_error(format!(
            "option `{key}` must be a whole number ≥ 0"
        ))),
    }
}

fn callback(obj: &JsValue, key: &str) -> Result<Option<Function>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into::<Function>()
        .map(Some)
        .map_err(|_| js_error(format!("option `{key}` must be a function")))
}

/// Checks what burn needs of the browser's WebGPU before anything touches it (a panic would
/// end the instance), and says whether the adapter is a software renderer (SwiftShader:
/// `isFallbackAdapter`, or its vendor / architecture / description). `timestamp-query` is
/// needed: without it cubecl 0.11 panics when it creates its first stream on wasm ("Cannot
/// profile on web assembly without timestamp_query", cubecl-wgpu `compute/stream.rs`), as the
/// browser test shows by hiding the feature. Also returns the adapter's vendor, architecture,
/// device and description, joined.
async fn check_webgpu() -> Result<(bool, String), JsValue> {
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err(js_error(
            "this browser has no WebGPU (navigator.gpu is missing): use a browser with WebGPU \
             enabled",
        ));
    }
    let request: Function = get(&gpu, "requestAdapter")
        .dyn_into()
        .map_err(|_| js_error("navigator.gpu.requestAdapter is missing"))?;
    let promise: js_sys::Promise = request
        .call0(&gpu)?
        .dyn_into()
        .map_err(|_| js_error("requestAdapter did not return a promise"))?;
    let adapter = JsFuture::from(promise).await?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err(js_error("WebGPU is there but offers no adapter"));
    }
    let features = get(&adapter, "features");
    let has: Function = get(&features, "has")
        .dyn_into()
        .map_err(|_| js_error("the WebGPU adapter lists no features"))?;
    if !has
        .call1(&features, &JsValue::from_str("timestamp-query"))?
        .is_truthy()
    {
        return Err(js_error(
            "the WebGPU adapter lacks the `timestamp-query` feature, which the engine's GPU \
             runtime needs in a browser (Chrome and Edge have it; in Firefox and Safari it can \
             depend on the platform): try another browser",
        ));
    }
    let info = get(&adapter, "info");
    let fallback = get(&info, "isFallbackAdapter").is_truthy()
        || get(&adapter, "isFallbackAdapter").is_truthy();
    let names: Vec<String> = ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|k| get(&info, k).as_string())
        .filter(|v| !v.is_empty())
        .collect();
    let label = names.join(" ");
    Ok((pgp_core::device::is_software(&label, fallback), label))
}

/// Resets the busy flag when a run ends, however it ends.
struct Busy(Rc<Cell<bool>>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// A loaded model on the browser's GPU.
#[wasm_bindgen]
pub struct Upscaler {
    inner: Rc<RefCell<pgp_core::Upscaler>>,
    source: Rc<Source>,
    busy: Rc<Cell<bool>>,
    info: pgp_core::GpuInfo,
    one_step: bool,
    precision: &'static str,
}

#[wasm_bindgen]
impl Upscaler {
    /// Loads the bundle whose `manifest.json` is at `manifest_url` (its shards next to it),
    /// reading shards from the Cache API when they are there. `options.onProgress(loadedBytes,
    /// totalBytes)` is called after the manifest and after each shard; `options.precision`
    /// (`auto`, the default: f16 where the adapter has `shader-f16`; `f16`; `f32`) picks the
    /// compute precision.
    pub async fn load(manifest_url: String, options: JsValue) -> Result<Upscaler, JsValue> {
        Self::load_from(Source::Fetch(FetchSource::new(&manifest_url)), &options).await
    }

    /// Loads a bundle folder the visitor chose (`files`: the `FileList` of an
    /// `<input type="file" webkitdirectory>`, or an array of `File`s: `manifest.json` and its
    /// shards). Same options as [`Upscaler::load`].
    #[wasm_bindgen(js_name = loadFiles)]
    pub async fn load_files(files: JsValue, options: JsValue) -> Result<Upscaler, JsValue> {
        Self::load_from(Source::Files(FilesSource::new(&files)?), &options).await
    }

    async fn load_from(source: Source, options: &JsValue) -> Result<Upscaler, JsValue> {
        let on_progress = callback(options, "onProgress")?;
        let precision = get(options, "precision");
        let precision = match precision.as_string() {
            Some(name) => pgp_core::Precision::parse(&name).map_err(to_js)?,
            None if precision.is_undefined() || precision.is_null() => pgp_core::Precision::Auto,
            None => return Err(js_error("option `precision` must be a string")),
        };
        let (software, label) = check_webgpu().await?;
        let gpu = Gpu::new(&GpuOptions::default()).await.map_err(to_js)?;
        let source = Rc::new(source);
        let mut report = |p: pgp_core::LoadProgress| {
            if let Some(f) = &on_progress {
                let _ = f.call2(
                    &JsValue::NULL,
                    &JsValue::from_f64(p.bytes as f64),
                    &JsValue::from_f64(p.total_bytes as f64),
                );
            }
        };
        let load = pgp_core::LoadOptions::default().with_precision(precision);
        let inner = pgp_core::Upscaler::load_with(source.as_ref(), &gpu, &load, &mut report)
            .await
            .map_err(to_js)?;
        Ok(Upscaler {
            info: {
                // wgpu names a browser's adapter by its description, which Chrome leaves empty,
                // and knows it as software only by `isFallbackAdapter`.
                let mut info = inner.gpu().info().clone();
                if info.name.is_empty() {
                    info.name = label;
                }
                info.software |= software;
                info
            },
            one_step: inner.is_one_step(),
            precision: pgp_core::precision::dtype_name(inner.dtype()),
            inner: Rc::new(RefCell::new(inner)),
            source,
            busy: Rc::new(Cell::new(false)),
        })
    }

    /// The GPU adapter's name.
    #[wasm_bindgen(getter, js_name = adapterName)]
    pub fn adapter_name(&self) -> String {
        self.info.name.clone()
    }

    /// Whether the adapter is a software renderer on the CPU (SwiftShader, a fallback adapter):
    /// it works, one or two orders of magnitude slower than a GPU.
    #[wasm_bindgen(getter, js_name = softwareAdapter)]
    pub fn software_adapter(&self) -> bool {
        self.info.software
    }

    /// Whether the adapter can run f16 shaders.
    #[wasm_bindgen(getter, js_name = shaderF16)]
    pub fn shader_f16(&self) -> bool {
        self.info.shader_f16
    }

    /// The precision the networks compute in: `f16` or `f32`.
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        self.precision.to_string()
    }

    /// Whether the bundle is a one-step (S1) model.
    #[wasm_bindgen(getter, js_name = oneStep)]
    pub fn one_step(&self) -> bool {
        self.one_step
    }

    /// Upscales an `ImageData` (RGBA8); resolves to an `ImageData` `scale ×` its size, alpha
    /// upscaled. Options (all optional): `scale`, `steps`, `tile` (0 = the largest the adapter
    /// allows), `seed`, `prompt`, `oneStep`, `colorFix` (`adain`, `wavelet`, `none`), `signal`
    /// (an `AbortSignal`), `onProgress(done, total, stage)` after each finished unit of GPU work
    /// (`stage` names it: `step 2/20, tile 3/15`, `decode tile 1/4`, …).
    #[expect(
        clippy::await_holding_refcell_ref,
        reason = "the run holds `inner` across its awaits; the busy flag admits one upscale at \
                  a time, and nothing else borrows `inner`"
    )]
    pub fn upscale(&self, image: web_sys::ImageData, options: JsValue) -> js_sys::Promise {
        let (inner, source, busy) = (self.inner.clone(), self.source.clone(), self.busy.clone());
        future_to_promise(async move {
            if busy.replace(true) {
                return Err(js_error(
                    "an upscale is already running on this Upscaler; await it first",
                ));
            }
            let _busy = Busy(busy);
            let on_progress = callback(&options, "onProgress")?;
            let signal = get(&options, "signal");
            let signal: Option<web_sys::AbortSignal> = if signal.is_undefined() || signal.is_null()
            {
                None
            } else {
                Some(
                    signal
                        .dyn_into()
                        .map_err(|_| js_error("option `signal` must be an AbortSignal"))?,
                )
            };
            let aborted = || signal.as_ref().is_some_and(|s| s.aborted());
            let mut opts = inner.borrow().default_options();
            if let Some(v) = count(&options, "scale")? {
                opts.scale = v as usize;
            }
            if let Some(v) = count(&options, "steps")? {
                opts.steps = v as usize;
            }
            if let Some(v) = count(&options, "tile")? {
                opts.tile = match v {
                    0 => TileSize::Auto,
                    t => TileSize::Pixels(t as usize),
                };
            }
            if let Some(v) = count(&options, "seed")? {
                opts.seed = v;
            }
            let one_step = get(&options, "oneStep");
            if !one_step.is_undefined() && !one_step.is_null() {
                opts.one_step = one_step
                    .as_bool()
                    .ok_or_else(|| js_error("option `oneStep` must be true or false"))?;
            }
            let fix = get(&options, "colorFix");
            if let Some(name) = fix.as_string() {
                opts.color_fix = ColorFix::parse(&name).map_err(to_js)?;
            } else if !fix.is_undefined() && !fix.is_null() {
                return Err(js_error("option `colorFix` must be a string"));
            }
            let prompt = get(&options, "prompt");
            if let Some(p) = prompt.as_string() {
                opts.prompt = p;
            } else if !prompt.is_undefined() && !prompt.is_null() {
                return Err(js_error("option `prompt` must be a string"));
            }
            let needs_text = {
                let up = inner.borrow();
                up.uses_prompt(&opts) && !up.has_text_encoders()
            };
            if needs_text {
                // The busy flag keeps every other borrow out while this one is held.
                let mut up = inner.borrow_mut();
                up.load_text_encoders(source.as_ref(), &mut |_| {})
                    .await
                    .map_err(to_js)?;
            }
            if aborted() {
                return Err(abort_error());
            }
            let (w, h) = (image.width() as usize, image.height() as usize);
            let pixels = image.data().0;
            let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgba8).map_err(to_js)?;
            // Held across the job's awaits (the job borrows the upscaler): see `upscale`.
            let up = inner.borrow();
            let mut job = up.start(view, opts).map_err(to_js)?;
            loop {
                if aborted() {
                    return Err(abort_error());
                }
                match job.next().await {
                    Some(Ok(e)) => {
                        if let Some(f) = &on_progress {
                            let _ = f.call3(
                                &JsValue::NULL,
                                &JsValue::from(e.done),
                                &JsValue::from(e.total),
                                &JsValue::from_str(&e.unit.to_string()),
                            );
                        }
                    }
                    Some(Err(e)) => return Err(to_js(e)),
                    None => break,
                }
            }
            let out = job.into_image().map_err(to_js)?;
            image_data(&out.data, out.width, out.height).map(JsValue::from)
        })
    }
}

/// An `ImageData` that owns a copy of `rgba`. Never hand JavaScript a view of wasm memory that
/// outlives its Rust owner (`Clamped(&[u8])` is such a view, and `ImageData` keeps what it is
/// given): once `rgba` is freed the allocator writes its bookkeeping over the first bytes, and
/// a later memory growth detaches the rest.
fn image_data(rgba: &[u8], width: usize, height: usize) -> Result<web_sys::ImageData, JsValue> {
    let array = js_sys::Uint8ClampedArray::new_with_length(rgba.len() as u32);
    array.copy_from(rgba);
    web_sys::ImageData::new_with_js_u8_clamped_array_and_sh(&array, width as u32, height as u32)
}
