//! The C ABI of pgp-wgpu, for tools written in C or C++ (GIMP / Krita plugins, game engines).
//! A thin shell over `pgp_core`'s facade: an opaque upscaler, RGBA8, BGRA8 (Krita, Qt, Windows)
//! and RGBA16 (GIMP's high bit depths) images in and out, a progress callback that can cancel,
//! a per-thread last-error message. The header
//! `include/pgp_wgpu.h` is generated from this file by cbindgen (see `cbindgen.toml`).
//!
//! Rules the header repeats:
//! - No panic crosses the boundary: every function catches it and returns `PGP_ERR_INTERNAL`.
//! - NULL pointers and bad sizes give `PGP_ERR_INPUT`; nothing is written to `*out` on error.
//! - Threads: an upscaler may be used from any thread, but from one thread at a time (calls on
//!   one upscaler must not overlap). Its GPU work runs on the calling thread; the progress
//!   callback is called on it too. `pgp_last_error` is per thread.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use pgp_core::error::panic_message;
use pgp_core::{
    CancelToken, ColorFix, DirSource, Error, Gpu, Image, ImageView, LoadOptions, Options,
    PixelFormat, Precision, Start, TileSize, Upscaler,
};

/// The result of every call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgpStatus {
    /// Success.
    PGP_OK = 0,
    /// A bad argument: NULL, a size that does not match, an option out of range, an unreadable
    /// image.
    PGP_ERR_INPUT = 1,
    /// The bundle is missing, malformed or does not match its configs.
    PGP_ERR_MODEL = 2,
    /// The device failed (no adapter, a read-back failed, the device was lost).
    PGP_ERR_DEVICE = 3,
    /// The progress callback asked to stop.
    PGP_CANCELLED = 4,
    /// A bug: a panic was caught. `pgp_last_error` says where.
    PGP_ERR_INTERNAL = 5,
}

/// Settings of one upscale; start from `pgp_options_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PgpOptions {
    /// Upscaling factor, 1 to 16 (default 2).
    pub scale: u32,
    /// Euler steps, 1 to 1000 (default 20).
    pub steps: u32,
    /// Latent tile size in output pixels, a multiple of 8; 0 = the largest the device allows
    /// (default 0).
    pub tile: u32,
    /// Seed of the noise (default 0): the same seed gives the same image on every device.
    pub seed: u64,
    /// Classifier-free guidance scale, used with a prompt (default 5).
    pub guidance: f32,
    /// A caption of the image, UTF-8, or NULL / "" for none (default NULL). A prompt loads
    /// the text encoders on first use.
    pub prompt: *const c_char,
    /// 0: the bundle decides (one step for one-step S1 bundles, else the full sampler);
    /// 1: one step; 2: the full sampler (default 0).
    pub one_step: u32,
    /// Colour correction: 0 AdaIN (default), 1 wavelet, 2 none.
    pub color_fix: u32,
    /// Where sampling starts: 0 the encoded input (default), 1 pure noise.
    pub start: u32,
    /// A device memory budget in MiB for `tile` 0 (the weights plus one tile's activations
    /// stay within it); 0: none (default). A tile that runs out of device memory is retried at
    /// half the size either way.
    pub max_memory_mib: u32,
}

/// A loaded model on one device.
pub struct PgpUpscaler {
    upscaler: Upscaler,
    source: DirSource,
}

/// An upscaled image in its input's format (RGBA8, BGRA8 or RGBA16), rows tightly packed.
pub struct PgpImage {
    image: Image,
}

/// Called after each finished unit of work; return nonzero to cancel.
pub type PgpProgressFn = Option<extern "C" fn(user: *mut c_void, done: u32, total: u32) -> i32>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> PgpStatus {
    match e {
        Error::Cancelled => PgpStatus::PGP_CANCELLED,
        Error::Device(_) | Error::DeviceMemory(_) => PgpStatus::PGP_ERR_DEVICE,
        Error::Input(_) => PgpStatus::PGP_ERR_INPUT,
        _ => PgpStatus::PGP_ERR_MODEL,
    }
}

/// Runs `f`, turning errors and panics into a status and this thread's last error.
fn guard(f: impl FnOnce() -> Result<(), (PgpStatus, String)>) -> PgpStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            PgpStatus::PGP_OK
        }
        Ok(Err((status, msg))) => {
            set_error(&msg);
            status
        }
        Err(panic) => {
            let msg = panic_message(panic.as_ref());
            set_error(&format!("internal error: {msg}"));
            PgpStatus::PGP_ERR_INTERNAL
        }
    }
}

fn core_err(e: Error) -> (PgpStatus, String) {
    (status_of(&e), e.to_string())
}

fn input_err(msg: &str) -> (PgpStatus, String) {
    (PgpStatus::PGP_ERR_INPUT, msg.to_string())
}

/// A C string argument as UTF-8 (`None` for NULL).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, (PgpStatus, String)> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| input_err(&format!("{what} is not UTF-8")))
}

/// The default options: scale 2, 20 steps, automatic tiles, seed 0, guidance 5, no prompt, the
/// bundle's own step mode, AdaIN colour fix, start from the encoded input.
#[unsafe(no_mangle)]
pub extern "C" fn pgp_options_default() -> PgpOptions {
    let d = Options::default();
    PgpOptions {
        scale: d.scale as u32,
        steps: d.steps as u32,
        tile: match d.tile {
            TileSize::Pixels(t) => t as u32,
            TileSize::Auto => 0,
        },
        seed: d.seed,
        guidance: d.guidance as f32,
        prompt: std::ptr::null(),
        one_step: 0,
        color_fix: 0,
        start: 0,
        max_memory_mib: 0,
    }
}

/// Loads the bundle folder `bundle_dir` (made by `pgp-wgpu convert`) on `device`: "auto" (the
/// default GPU adapter), "cpu", or "gpu:N" (the index `pgp-wgpu devices` prints), computing in
/// the default precision ("auto": f16 where the adapter has `shader-f16`, else f32). On success
/// `*out` holds an upscaler to free with `pgp_upscaler_free`.
///
/// # Safety
/// `bundle_dir` and `device` are NUL-terminated strings (or NULL), `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_upscaler_new(
    bundle_dir: *const c_char,
    device: *const c_char,
    out: *mut *mut PgpUpscaler,
) -> PgpStatus {
    // SAFETY: the same contract, with no precision.
    unsafe { pgp_upscaler_new_precision(bundle_dir, device, std::ptr::null(), out) }
}

/// As `pgp_upscaler_new`, computing in `precision`: "auto" (or NULL), "f16" or "f32". The
/// same seed and precision give the same image on every device within float rounding; f16
/// and f32 differ by a few 8-bit steps at most (README, "What a seed promises").
///
/// # Safety
/// `bundle_dir`, `device` and `precision` are NUL-terminated strings (or NULL), `out` is NULL
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_upscaler_new_precision(
    bundle_dir: *const c_char,
    device: *const c_char,
    precision: *const c_char,
    out: *mut *mut PgpUpscaler,
) -> PgpStatus {
    guard(|| {
        if out.is_null() {
            return Err(input_err("out is NULL"));
        }
        // SAFETY: the header's contract for the strings.
        let dir = unsafe { c_str(bundle_dir, "bundle_dir") }?
            .ok_or_else(|| input_err("bundle_dir is NULL"))?;
        // SAFETY: as above.
        let device = unsafe { c_str(device, "device") }?.unwrap_or("auto");
        // SAFETY: as above.
        let precision = unsafe { c_str(precision, "precision") }?.unwrap_or("auto");
        let precision = Precision::parse(precision).map_err(core_err)?;
        let gpu = pollster::block_on(Gpu::from_name(device)).map_err(core_err)?;
        let source = DirSource::new(dir);
        let load = LoadOptions::default().with_precision(precision);
        let upscaler = pollster::block_on(Upscaler::load_with(&source, &gpu, &load, &mut |_| {}))
            .map_err(core_err)?;
        let boxed = Box::new(PgpUpscaler { upscaler, source });
        // SAFETY: `out` is not NULL and the caller vouches it is writable.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

/// Reads the C options into the engine's, loading the text encoders if a prompt needs them.
fn options_of(u: &mut PgpUpscaler, o: &PgpOptions) -> Result<Options, (PgpStatus, String)> {
    // SAFETY: the header's contract for `prompt`.
    let prompt = unsafe { c_str(o.prompt, "prompt") }?.unwrap_or("");
    let defaults = u.upscaler.default_options();
    let one_step = match o.one_step {
        0 => defaults.one_step,
        1 => true,
        2 => false,
        other => return Err(input_err(&format!("one_step {other}: 0, 1 or 2"))),
    };
    let options = Options {
        scale: o.scale as usize,
        steps: o.steps as usize,
        guidance: f64::from(o.guidance),
        prompt: prompt.to_string(),
        tile: match o.tile {
            0 => TileSize::Auto,
            t => TileSize::Pixels(t as usize),
        },
        color_fix: match o.color_fix {
            0 => ColorFix::Adain,
            1 => ColorFix::Wavelet,
            2 => ColorFix::None,
            other => return Err(input_err(&format!("color_fix {other}: 0, 1 or 2"))),
        },
        start: match o.start {
            0 => Start::Lr,
            1 => Start::Noise,
            other => return Err(input_err(&format!("start {other}: 0 or 1"))),
        },
        seed: o.seed,
        one_step,
        noise: None,
        max_memory: (o.max_memory_mib > 0).then(|| u64::from(o.max_memory_mib) << 20),
    };
    // FaithDiff's one-step recipe uses no prompt: its text encoders are not loaded then.
    if u.upscaler.uses_prompt(&options) {
        pollster::block_on(u.upscaler.load_text_encoders(&u.source, &mut |_| {}))
            .map_err(core_err)?;
    }
    Ok(options)
}

/// The shared body of the `pgp_upscale_*` entry points.
///
/// # Safety
/// As `pgp_upscale_rgba8`, with `format`'s bytes per pixel.
unsafe fn upscale(
    u: *mut PgpUpscaler,
    pixels: *const u8,
    width: u32,
    height: u32,
    stride_bytes: u32,
    format: PixelFormat,
    options: *const PgpOptions,
    progress: PgpProgressFn,
    user: *mut c_void,
    out: *mut *mut PgpImage,
) -> PgpStatus {
    guard(|| {
        if u.is_null() || pixels.is_null() || out.is_null() {
            return Err(input_err(
                "the upscaler, the pixels and out must not be NULL",
            ));
        }
        if width == 0 || height == 0 {
            return Err(input_err("the image is empty"));
        }
        let row = format.bytes_per_pixel() * width as usize;
        if (stride_bytes as usize) < row {
            return Err(input_err(&format!(
                "stride_bytes {stride_bytes} is shorter than a row ({row} bytes)"
            )));
        }
        // SAFETY: `u` came from `pgp_upscaler_new` and is used by this thread only.
        let u = unsafe { &mut *u };
        let opts = if options.is_null() {
            pgp_options_default()
        } else {
            // SAFETY: not NULL, and valid by the contract.
            unsafe { *options }
        };
        let opts = options_of(u, &opts)?;
        let len = stride_bytes as usize * (height as usize - 1) + row;
        // SAFETY: the caller guarantees `len` readable bytes at `pixels`.
        let pixels = unsafe { std::slice::from_raw_parts(pixels, len) };
        let view = ImageView::new(
            pixels,
            width as usize,
            height as usize,
            stride_bytes as usize,
            format,
        )
        .map_err(core_err)?;
        let cancel = CancelToken::new();
        let job = u.upscaler.start(view, opts).map_err(core_err)?;
        let mut on_event = |e: pgp_core::Event| {
            if let Some(f) = progress
                && f(user, e.done, e.total) != 0
            {
                cancel.cancel();
            }
        };
        let image = pollster::block_on(job.finish(&mut on_event, &cancel)).map_err(core_err)?;
        // SAFETY: `out` is not NULL and writable by the contract.
        unsafe { *out = Box::into_raw(Box::new(PgpImage { image })) };
        Ok(())
    })
}

/// Upscales an RGBA8 image (`height` rows of `width` pixels, row `y` at byte
/// `y * stride_bytes`; alpha is upscaled separately and kept). `options` may be NULL for the
/// defaults. `progress` (may be NULL) is called with `user` after each finished unit of work;
/// when it returns nonzero the run stops before the next unit and this returns
/// `PGP_CANCELLED`. On success `*out` holds an RGBA8 image to free with `pgp_image_free`.
///
/// # Safety
/// `u` is an upscaler from `pgp_upscaler_new`, not in use on another thread; `rgba` points to
/// at least `stride_bytes * (height - 1) + 4 * width` readable bytes; `options` is NULL or
/// valid; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_upscale_rgba8(
    u: *mut PgpUpscaler,
    rgba: *const u8,
    width: u32,
    height: u32,
    stride_bytes: u32,
    options: *const PgpOptions,
    progress: PgpProgressFn,
    user: *mut c_void,
    out: *mut *mut PgpImage,
) -> PgpStatus {
    // SAFETY: the same contract.
    unsafe {
        upscale(
            u,
            rgba,
            width,
            height,
            stride_bytes,
            PixelFormat::Rgba8,
            options,
            progress,
            user,
            out,
        )
    }
}

/// As `pgp_upscale_rgba8` for BGRA8 pixels (`[b, g, r, a]` bytes: Krita's `BGRA U8`, Qt's
/// `ARGB32` on little-endian machines, Windows DIBs); the result is BGRA8.
///
/// # Safety
/// As `pgp_upscale_rgba8`: `bgra` points to at least `stride_bytes * (height - 1) + 4 * width`
/// readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_upscale_bgra8(
    u: *mut PgpUpscaler,
    bgra: *const u8,
    width: u32,
    height: u32,
    stride_bytes: u32,
    options: *const PgpOptions,
    progress: PgpProgressFn,
    user: *mut c_void,
    out: *mut *mut PgpImage,
) -> PgpStatus {
    // SAFETY: the same contract.
    unsafe {
        upscale(
            u,
            bgra,
            width,
            height,
            stride_bytes,
            PixelFormat::Bgra8,
            options,
            progress,
            user,
            out,
        )
    }
}

/// As `pgp_upscale_rgba8` for 16-bit RGBA (`[r, g, b, a]`, one native-endian `uint16_t`
/// each, 0 to 65535: GIMP's 16-bit integer buffers); the result is RGBA16 with the decoder's
/// float precision (colour) and the alpha resized at 16 bits. `stride_bytes` counts bytes.
///
/// # Safety
/// As `pgp_upscale_rgba8`: `rgba16` points to at least `stride_bytes * (height - 1) + 8 *
/// width` readable bytes, 2-byte aligned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_upscale_rgba16(
    u: *mut PgpUpscaler,
    rgba16: *const u16,
    width: u32,
    height: u32,
    stride_bytes: u32,
    options: *const PgpOptions,
    progress: PgpProgressFn,
    user: *mut c_void,
    out: *mut *mut PgpImage,
) -> PgpStatus {
    // SAFETY: the same contract.
    unsafe {
        upscale(
            u,
            rgba16.cast(),
            width,
            height,
            stride_bytes,
            PixelFormat::Rgba16,
            options,
            progress,
            user,
            out,
        )
    }
}

/// The image's width in pixels (0 for NULL).
///
/// # Safety
/// `img` is NULL or an image from `pgp_upscale_rgba8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_image_width(img: *const PgpImage) -> u32 {
    // SAFETY: NULL or a live image, by the contract.
    unsafe { img.as_ref() }.map_or(0, |i| i.image.width as u32)
}

/// The image's height in pixels (0 for NULL).
///
/// # Safety
/// `img` is NULL or an image from `pgp_upscale_rgba8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_image_height(img: *const PgpImage) -> u32 {
    // SAFETY: NULL or a live image, by the contract.
    unsafe { img.as_ref() }.map_or(0, |i| i.image.height as u32)
}

/// The pixels of an RGBA8 image: `height` rows of `4 * width` bytes, tightly packed (NULL for
/// NULL, and for an image of another format). Valid until `pgp_image_free`.
///
/// # Safety
/// `img` is NULL or an image from `pgp_upscale_rgba8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_image_rgba8(img: *const PgpImage) -> *const u8 {
    // SAFETY: NULL or a live image, by the contract.
    unsafe { img.as_ref() }
        .filter(|i| i.image.format == PixelFormat::Rgba8)
        .map_or(std::ptr::null(), |i| i.image.data.as_ptr())
}

/// The pixels in the input's format (RGBA8, BGRA8 or RGBA16): `height` rows of
/// `pgp_image_bytes_per_pixel(img) * width` bytes, tightly packed (NULL for NULL). Valid until
/// `pgp_image_free`; 2-byte aligned for RGBA16.
///
/// # Safety
/// `img` is NULL or an image from a `pgp_upscale_*` call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_image_pixels(img: *const PgpImage) -> *const u8 {
    // SAFETY: NULL or a live image, by the contract.
    unsafe { img.as_ref() }.map_or(std::ptr::null(), |i| i.image.data.as_ptr())
}

/// Bytes per pixel of the image: 4 (RGBA8, BGRA8) or 8 (RGBA16); 0 for NULL.
///
/// # Safety
/// `img` is NULL or an image from a `pgp_upscale_*` call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_image_bytes_per_pixel(img: *const PgpImage) -> u32 {
    // SAFETY: NULL or a live image, by the contract.
    unsafe { img.as_ref() }.map_or(0, |i| i.image.format.bytes_per_pixel() as u32)
}

/// Frees an image (NULL is ignored).
///
/// # Safety
/// `img` is NULL or an image from `pgp_upscale_rgba8`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_image_free(img: *mut PgpImage) {
    if !img.is_null() {
        // SAFETY: it came from Box::into_raw and is freed once, by the contract.
        drop(unsafe { Box::from_raw(img) });
    }
}

/// Frees an upscaler and its device memory (NULL is ignored).
///
/// # Safety
/// `u` is NULL or an upscaler from `pgp_upscaler_new`, not yet freed and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pgp_upscaler_free(u: *mut PgpUpscaler) {
    if !u.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: it came from Box::into_raw and is freed once, by the contract.
            drop(unsafe { Box::from_raw(u) })
        }));
    }
}

/// This thread's last error message (UTF-8, "" after a success). Valid until the next call on
/// this thread.
#[unsafe(no_mangle)]
pub extern "C" fn pgp_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}
