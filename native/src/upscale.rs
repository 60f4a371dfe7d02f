//! `pgp-wgpu upscale`: files and folders in, upscaled images out, with the flags users of
//! realesrgan-ncnn-vulkan know. Options and the output folders are checked before the model
//! loads; outputs are encoded in memory and published whole ([`output`]), never over an
//! input or an existing file unless `--overwrite`; in a batch a bad file is reported and the
//! rest continue.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, ImageFormat};
use pgp_core::device::read_back;
use pgp_core::safetensors::Dtype;
use pgp_core::weights::WeightFile;
use pgp_core::{
    DirSource, Event, Gpu, LoadOptions, NoiseData, Options, PixelFormat, Precision, Stages, Unit,
    Upscaler,
};
use pgp_wgpu_cli::{input, output};

use crate::progress::{Progress, line};

/// What `upscale` was asked to do.
pub struct UpscaleArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub recursive: bool,
    pub format: Option<String>,
    pub model: PathBuf,
    pub options: Options,
    pub noise: Option<PathBuf>,
    pub overwrite: bool,
    pub gpu: Gpu,
    pub precision: Precision,
    pub dump_stages: Option<PathBuf>,
    /// Largest output, in pixels (`--max-megapixels`).
    pub max_pixels: u64,
    /// How outputs are named and written.
    pub outputs: Outputs,
}

/// How outputs are named and written: `upscale`'s defaults, or realesrgan-ncnn-vulkan's.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// A folder's outputs: the input tree mirrored, each named `stem.EXT` (false), or
    /// realesrgan's flat `stem.EXT`, `name.ext.EXT` for the second of two equal stems (true).
    pub ncnn_names: bool,
    /// An output may be its own input (written whole, then renamed over it).
    pub in_place: bool,
    /// JPEG quality, 1 to 100.
    pub jpeg_quality: u8,
    /// Resize the result to this width (Lanczos, the aspect ratio kept).
    pub width: Option<u32>,
}

impl Default for Outputs {
    fn default() -> Self {
        Self {
            ncnn_names: false,
            in_place: false,
            // The image crate's default.
            jpeg_quality: 75,
            width: None,
        }
    }
}

/// What a batch tells stderr, per image and at its end.
pub trait Reporter {
    /// An image's run starts.
    fn begin(&mut self, input: &Path);
    /// A unit of its work finished.
    fn event(&mut self, input: &Path, event: &Event);
    /// Its output was published.
    fn done(&mut self, input: &Path, output: &Path);
    /// It failed (nothing was written).
    fn failed(&mut self, input: &Path, error: &anyhow::Error);
    /// The batch ended.
    fn summary(&mut self, upscaled: usize, all: usize);
}

/// `upscale`'s own report: a progress bar (or plain lines off a terminal), `IN → OUT` per image.
pub struct Plain {
    quiet: bool,
    progress: Progress,
}

impl Plain {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            progress: Progress::Hidden,
        }
    }
}

impl Reporter for Plain {
    fn begin(&mut self, input: &Path) {
        self.progress = Progress::new(self.quiet, input.display().to_string());
    }
    fn event(&mut self, input: &Path, event: &Event) {
        if matches!(event.unit, Unit::Retry { .. }) {
            // Shown even with -q: the run continues, slower, with smaller tiles.
            self.progress
                .note(&format!("{}: {}", input.display(), event.unit));
        }
        self.progress.event(event);
    }
    fn done(&mut self, input: &Path, output: &Path) {
        self.progress.finish();
        if !self.quiet {
            line(&format!("{} → {}", input.display(), output.display()));
        }
    }
    fn failed(&mut self, input: &Path, error: &anyhow::Error) {
        self.progress.finish();
        line(&format!("error: {}: {error:#}", input.display()));
    }
    fn summary(&mut self, upscaled: usize, all: usize) {
        if all > 1 && !self.quiet {
            line(&format!("{upscaled} of {all} images upscaled"));
        }
    }
}

/// A path written with a trailing separator (`out/`) names a folder, existing or not.
fn names_folder(p: &Path) -> bool {
    p.as_os_str()
        .to_string_lossy()
        .ends_with(std::path::is_separator)
}

fn output_format(path: &Path, forced: Option<&str>) -> Result<ImageFormat> {
    let ext = match forced {
        Some(f) => f.to_string(),
        None => path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| "png".into()),
    };
    Ok(match ext.as_str() {
        "png" => ImageFormat::Png,
        "jpg" | "jpeg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::WebP,
        other => bail!("unsupported output format `{other}` (png, jpg, webp)"),
    })
}

/// (input, output) pairs: a file to a file (or into a folder), a folder to a folder. A
/// recursive walk enters each real folder once (symbolic links to folders are followed, but a
/// link back into the tree is not walked again) and skips the output folder.
fn jobs(a: &UpscaleArgs) -> Result<Vec<(PathBuf, PathBuf)>> {
    let ext = a.format.as_deref().unwrap_or("png");
    if a.input.is_file() {
        let out = if a.output.is_dir() || names_folder(&a.output) {
            let stem = a.input.file_stem().context("the input has no file name")?;
            a.output.join(format!("{}.{ext}", stem.to_string_lossy()))
        } else {
            a.output.clone()
        };
        return Ok(vec![(a.input.clone(), out)]);
    }
    if !a.input.is_dir() {
        bail!("{}: no such file or folder", a.input.display());
    }
    if a.output.exists() && !a.output.is_dir() {
        bail!(
            "{}: the output for a folder must be a folder",
            a.output.display()
        );
    }
    let skip = a.output.canonicalize().ok();
    let mut visited = HashSet::new();
    let mut found = Vec::new();
    let mut stack = vec![a.input.clone()];
    while let Some(dir) = stack.pop() {
        let real = dir
            .canonicalize()
            .with_context(|| format!("reading {}", dir.display()))?;
        if !visited.insert(real.clone()) || (dir != a.input && skip.as_ref() == Some(&real)) {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if a.recursive {
                    stack.push(p);
                }
            } else if input::is_image(&p) {
                let rel = p.strip_prefix(&a.input).expect("under the input folder");
                found.push((p.clone(), a.output.join(rel).with_extension(ext)));
            }
        }
    }
    found.sort();
    if a.outputs.ncnn_names {
        ncnn_names(&mut found, &a.output, ext);
    }
    Ok(found)
}

/// realesrgan-ncnn-vulkan's names for a folder's outputs (sorted inputs): `stem.EXT`, and
/// `name.ext.EXT` for an input whose stem equals the one before it (`a.jpg`, `a.png` →
/// `a.EXT`, `a.png.EXT`).
fn ncnn_names(jobs: &mut [(PathBuf, PathBuf)], folder: &Path, ext: &str) {
    let mut last_stem = None;
    for (input, output) in jobs.iter_mut() {
        let stem = input.file_stem().map(|s| s.to_os_string());
        let name = input.file_name().unwrap_or_default().to_string_lossy();
        *output = if stem.is_some() && stem == last_stem {
            folder.join(format!("{name}.{ext}"))
        } else {
            folder.join(input.with_extension(ext).file_name().unwrap_or_default())
        };
        last_stem = stem;
    }
}

fn load_noise(path: &Path) -> Result<NoiseData> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let f = WeightFile::from_bytes(path.display().to_string(), bytes)?;
    Ok(NoiseData {
        // One-step SD2.1 models use only the posterior's noise.
        latent: match f.shape("latent_noise") {
            Some(_) => f.f32_data("latent_noise")?.0,
            None => Vec::new(),
        },
        vae: f.f32_data("vae_noise")?.0,
    })
}

async fn dump(stages: &Stages, path: &Path) -> Result<()> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let tensors = [
        ("lq_features", &stages.lq_features),
        ("start_latent", &stages.start_latent),
        ("latent_step_1", &stages.latent_step_1),
        ("latent_final", &stages.latent_final),
        ("decoded", &stages.decoded),
    ];
    for (name, t) in tensors {
        if let Some(t) = t {
            let (v, shape) = read_back(t.clone()).await?;
            owned.push((
                name.into(),
                Dtype::F32,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    if let Some(img) = &stages.image_raw {
        owned.push((
            "image_raw".into(),
            Dtype::U8,
            vec![img.height, img.width, 3],
            img.data.clone(),
        ));
    }
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                pgp_core::safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .expect("sizes match"),
            )
        })
        .collect();
    let bytes = pgp_core::safetensors::serialize(views, None).context("writing stages")?;
    output::publish_file(path, &bytes, true)
}

/// Refuses an output that is the input (unless in place), or that exists without
/// `--overwrite`.
fn check_output(a: &UpscaleArgs, input: &Path, output: &Path) -> Result<()> {
    if !a.outputs.in_place
        && output.exists()
        && output.canonicalize().ok() == input.canonicalize().ok()
    {
        bail!("{}: refusing to write over the input", output.display());
    }
    if output.exists() && !a.overwrite {
        bail!("{}: exists (use --overwrite)", output.display());
    }
    Ok(())
}

/// Upscales one file through the engine (which also upscales the alpha channel). Errors name
/// the output when it is at fault; the caller names the input.
fn one(
    a: &UpscaleArgs,
    upscaler: &Upscaler,
    input: &Path,
    output: &Path,
    report: &mut dyn Reporter,
) -> Result<()> {
    let format = output_format(output, a.format.as_deref())?;
    check_output(a, input, output)?;
    let pixels = input::load(input, a.options.scale as u64, a.max_pixels)?;
    let view = pixels.view()?;
    let mut job = upscaler.start(view, a.options.clone())?;
    if a.dump_stages.is_some() {
        job.record_stages();
    }
    report.begin(input);
    while let Some(event) = pollster::block_on(job.next()) {
        report.event(input, &event?);
    }
    if let (Some(path), Some(stages)) = (&a.dump_stages, job.stages()) {
        pollster::block_on(dump(stages, path))?;
    }
    let out = job.into_image()?;
    let (ow, oh) = (out.width as u32, out.height as u32);
    let mut result = match out.format {
        PixelFormat::Rgba8 => DynamicImage::ImageRgba8(
            image::RgbaImage::from_raw(ow, oh, out.data).expect("sizes match"),
        ),
        _ => DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(ow, oh, out.data).expect("sizes match"),
        ),
    };
    if let Some(w) = a.outputs.width.filter(|&w| w != ow) {
        let h = ((f64::from(oh) * f64::from(w) / f64::from(ow)).round() as u32).max(1);
        result = result.resize_exact(w, h, image::imageops::FilterType::Lanczos3);
    }
    let encoded = encode(result, format, a.outputs.jpeg_quality)?;
    output::publish_file(output, &encoded, a.overwrite)
}

/// The image in `format` (JPEG without alpha, at `jpeg_quality`).
fn encode(image: DynamicImage, format: ImageFormat, jpeg_quality: u8) -> Result<Vec<u8>> {
    let mut encoded = std::io::Cursor::new(Vec::new());
    if format == ImageFormat::Jpeg {
        let rgb = image.to_rgb8();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, jpeg_quality.clamp(1, 100))
            .encode_image(&rgb)
    } else {
        image.write_to(&mut encoded, format)
    }
    .context("encoding the output")?;
    Ok(encoded.into_inner())
}

/// Checks, before the model loads, what can be checked without it: the options and the output
/// folders (made and written to). Each output's name is checked by [`one`], before its work.
fn preflight(a: &UpscaleArgs, jobs: &[(PathBuf, PathBuf)]) -> Result<()> {
    a.options.validate()?;
    output_format(&jobs[0].1, a.format.as_deref())?;
    let dirs: HashSet<PathBuf> = jobs.iter().map(|(_, o)| output::parent_dir(o)).collect();
    for dir in dirs {
        output::check_writable(&dir)?;
    }
    if !a.options.prompt.is_empty() && !a.options.one_step {
        let (t1, _) = pgp_core::tokenizer::ClipTokenizer::sdxl()?;
        if let Some((n, mut dropped)) = t1.dropped(&a.options.prompt) {
            if let Some((cut, _)) = dropped.char_indices().nth(120) {
                dropped.truncate(cut);
                dropped.push('…');
            }
            line(&format!(
                "warning: the prompt has {n} tokens; CLIP reads 75, so this is ignored: {dropped}"
            ));
        }
    }
    Ok(())
}

/// Runs the batch; true when every image succeeded.
pub fn run(mut a: UpscaleArgs, report: &mut dyn Reporter) -> Result<bool> {
    let jobs = jobs(&a)?;
    if jobs.is_empty() {
        bail!(
            "{}: no images ({}) found",
            a.input.display(),
            input::FORMATS
        );
    }
    preflight(&a, &jobs)?;
    let source = DirSource::new(&a.model);
    let load = LoadOptions::default().with_precision(a.precision);
    let mut upscaler =
        pollster::block_on(Upscaler::load_with(&source, &a.gpu, &load, &mut |_| {}))?;
    a.options.one_step |= upscaler.is_one_step();
    // One prompt for the whole batch: encoded once, the text encoders released after.
    if upscaler.uses_prompt(&a.options) {
        let prompt = a.options.prompt.clone();
        pollster::block_on(upscaler.prepare_prompt(&source, &prompt, &mut |_| {}))?;
    }
    if let Some(path) = &a.noise {
        a.options.noise = Some(load_noise(path)?);
    }
    let a = &a;
    let mut failed = 0;
    for (input, output) in &jobs {
        match one(a, &upscaler, input, output, report) {
            Ok(()) => report.done(input, output),
            Err(e) => {
                failed += 1;
                report.failed(input, &e);
            }
        }
    }
    report.summary(jobs.len() - failed, jobs.len());
    Ok(failed == 0)
}
