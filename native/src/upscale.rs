//! `pgp-wgpu upscale`: files and folders in, upscaled images out, with the flags users of
//! realesrgan-ncnn-vulkan know. Options and the output folders are checked before the model
//! loads; outputs are encoded in memory and published whole ([`output`]), never over an
//! input or an existing file unless `--overwrite`; in a batch a bad file is reported and the
//! rest continue.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, ImageFormat};
use indicatif::{ProgressBar, ProgressStyle};
use pgp_core::device::read_back;
use pgp_core::safetensors::Dtype;
use pgp_core::weights::WeightFile;
use pgp_core::{
    DirSource, Gpu, LoadOptions, NoiseData, Options, PixelFormat, Precision, Stages, Unit, Upscaler,
};
use pgp_wgpu_cli::{input, output};

/// What `upscale` was asked to do.
/// Where downloaded models' bundles live (`pgp-wgpu download`): `$PGP_WGPU_CACHE`, else the
/// platform's cache folder (`~/.cache/pgp-wgpu` on Linux).
pub fn bundle_dir(model: &str) -> Result<PathBuf> {
    let root = match std::env::var_os("PGP_WGPU_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()
            .context("no cache folder on this system; set PGP_WGPU_CACHE")?
            .join("pgp-wgpu"),
    };
    Ok(root.join(format!("{model}.bundle")))
}

/// The bundle `upscale` uses without `--model`, or the command that makes it.
pub fn default_model() -> Result<PathBuf> {
    let dir = bundle_dir("faithdiff")?;
    if dir.join(pgp_core::bundle::MANIFEST).is_file() {
        Ok(dir)
    } else {
        bail!(
            "no --model given and no downloaded model at {}: run `pgp-wgpu download faithdiff` \
             once (about 13 GB from the Hugging Face Hub), or pass --model BUNDLE",
            dir.display()
        )
    }
}

pub struct UpscaleArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub recursive: bool,
    pub format: Option<String>,
    pub model: PathBuf,
    pub options: Options,
    pub noise: Option<PathBuf>,
    pub overwrite: bool,
    pub quiet: bool,
    pub gpu: Gpu,
    pub precision: Precision,
    pub dump_stages: Option<PathBuf>,
    /// Largest output, in pixels (`--max-megapixels`).
    pub max_pixels: u64,
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
    Ok(found)
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

/// Refuses an output that is the input, or that exists without `--overwrite`.
fn check_output(a: &UpscaleArgs, input: &Path, output: &Path) -> Result<()> {
    if output.exists() && output.canonicalize().ok() == input.canonicalize().ok() {
        bail!("{}: refusing to write over the input", output.display());
    }
    if output.exists() && !a.overwrite {
        bail!("{}: exists (use --overwrite)", output.display());
    }
    Ok(())
}

/// The progress bar of one job (hidden with `-q`): `prefix [bar] unit elapsed`.
pub fn job_bar(quiet: bool, prefix: String) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {msg} {elapsed_precise}")
            .expect("valid template"),
    );
    bar.set_prefix(prefix);
    bar
}

/// Upscales one file through the engine (which also upscales the alpha channel). Errors name
/// the output when it is at fault; the caller names the input.
fn one(a: &UpscaleArgs, upscaler: &Upscaler, input: &Path, output: &Path) -> Result<()> {
    let format = output_format(output, a.format.as_deref())?;
    check_output(a, input, output)?;
    let pixels = input::load(input, a.options.scale as u64, a.max_pixels)?;
    let view = pixels.view()?;
    let bar = job_bar(a.quiet, input.display().to_string());
    let mut job = upscaler.start(view, a.options.clone())?;
    if a.dump_stages.is_some() {
        job.record_stages();
    }
    bar.set_length(u64::from(job.total()));
    while let Some(event) = pollster::block_on(job.next()) {
        let event = event?;
        if matches!(event.unit, Unit::Retry { .. }) {
            // Shown even with -q: the run continues, slower, with smaller tiles.
            bar.suspend(|| eprintln!("{}: {}", input.display(), event.unit));
            bar.set_length(u64::from(event.total));
        }
        bar.set_position(u64::from(event.done));
        bar.set_message(event.unit.to_string());
    }
    bar.finish_and_clear();
    if let (Some(path), Some(stages)) = (&a.dump_stages, job.stages()) {
        pollster::block_on(dump(stages, path))?;
    }
    let out = job.into_image()?;
    let (ow, oh) = (out.width as u32, out.height as u32);
    let result = match out.format {
        PixelFormat::Rgba8 => {
            let img = image::RgbaImage::from_raw(ow, oh, out.data).expect("sizes match");
            if format == ImageFormat::Jpeg {
                DynamicImage::ImageRgba8(img).to_rgb8().into()
            } else {
                DynamicImage::ImageRgba8(img)
            }
        }
        _ => DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(ow, oh, out.data).expect("sizes match"),
        ),
    };
    let mut encoded = std::io::Cursor::new(Vec::new());
    result
        .write_to(&mut encoded, format)
        .context("encoding the output")?;
    output::publish_file(output, encoded.get_ref(), a.overwrite)
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
            eprintln!(
                "warning: the prompt has {n} tokens; CLIP reads 75, so this is ignored: {dropped}"
            );
        }
    }
    Ok(())
}

/// Runs the batch; true when every image succeeded.
pub fn run(mut a: UpscaleArgs) -> Result<bool> {
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
        match one(a, &upscaler, input, output) {
            Ok(()) => {
                if !a.quiet {
                    eprintln!("{} → {}", input.display(), output.display());
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", input.display());
            }
        }
    }
    if jobs.len() > 1 && !a.quiet {
        eprintln!("{} of {} images upscaled", jobs.len() - failed, jobs.len());
    }
    Ok(failed == 0)
}
