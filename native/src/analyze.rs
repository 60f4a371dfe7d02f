//! `pgp-wgpu analyze`: the progressive pruning analysis (PPA, pgp-model.md §3) over a folder of
//! images. Each image runs the real pipeline (the bundle's Euler trajectory and sampling
//! settings) with a [`pgp_core::ppa::Analysis`] probe on the UNet, up to the last sampling step
//! (the VAE decode is skipped: it is not measured). Each finished image's measures are written
//! at once to `REPORT_DIR/images/NAME.json` with the settings they were made with, so an
//! interrupted analysis resumes where it stopped; then `report.json` and the figures are
//! written from every image's file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pgp_core::bundle::{Bundle, MANIFEST, Manifest, sha256_hex};
use pgp_core::info::unet_flops;
use pgp_core::models::probe::Probe;
use pgp_core::models::unet_2d::UNet2DConditionConfig;
use pgp_core::ppa::{Analysis, ImageMeasures, Report, attention_modules};
use pgp_core::{DirSource, Gpu, LoadOptions, Options, Precision, TileSize, Unit, Upscaler};
use pgp_wgpu_cli::{input, output};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::figures;
use crate::progress::Progress;

/// What `analyze` was asked to do.
pub struct AnalyzeArgs {
    pub model: PathBuf,
    pub images: PathBuf,
    pub output: PathBuf,
    pub options: Options,
    pub max_images: Option<usize>,
    pub gpu: Gpu,
    pub precision: Precision,
    pub max_pixels: u64,
    pub quiet: bool,
}

/// One image's file under `images/`: its measures and what they were made with.
#[derive(Serialize, Deserialize)]
struct ImageFile {
    image: String,
    /// SHA-256 of the image file: an image replaced under the same name is measured again.
    sha256: String,
    settings: Value,
    measures: ImageMeasures,
}

fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_hex(&b))
}

/// The images of a folder (not its subfolders), sorted by name.
fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("--images {}: not a folder", dir.display());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && input::is_image(p))
        .collect();
    found.sort();
    Ok(found)
}

/// A bundle folder's manifest and its SHA-256 (the manifest lists every shard's own checksum,
/// so this is the model's fingerprint in a report's settings).
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String)> {
    let path = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest = Bundle::parse_manifest(&path.display().to_string(), &text)?;
    Ok((manifest, sha256_hex(text.as_bytes())))
}

/// The model as the report describes it.
pub fn describe_model(unet: &Value, arch: &str) -> Result<Value> {
    let cfg = UNet2DConditionConfig::from_json(unet)?;
    let l = cfg.layout()?;
    let blocks: usize = attention_modules(&l).iter().map(|(_, _, d)| d).sum();
    Ok(json!({
        "arch": arch,
        "transformer_layers_per_block": l.down_depth,
        "mid_transformer_layers_per_block": l.mid_depth,
        "reverse_transformer_layers_per_block": l.up_depth,
        "transformer_blocks": blocks,
        "unet_flops_1024": unet_flops(&cfg, 128, 128)?,
    }))
}

/// Runs the analysis; true when every image was measured.
pub fn run(a: AnalyzeArgs) -> Result<bool> {
    a.options.validate()?;
    let mut images = list_images(&a.images)?;
    if images.is_empty() {
        bail!(
            "{}: no images ({}) found",
            a.images.display(),
            input::FORMATS
        );
    }
    if let Some(n) = a.max_images {
        images.truncate(n);
    }
    let (manifest, manifest_sha) = read_manifest(&a.model)?;
    let cfg = UNet2DConditionConfig::from_json(&manifest.unet)?;
    let layout = cfg.layout()?;
    let per_image = a.output.join("images");
    output::check_writable(&per_image)?;
    let tile = match a.options.tile {
        TileSize::Auto => Value::from("auto"),
        TileSize::Pixels(px) => Value::from(px),
    };
    let settings = json!({
        "manifest_sha256": manifest_sha,
        "steps": a.options.steps,
        "scale": a.options.scale,
        "tile": tile,
        "seed": a.options.seed,
        "start": format!("{:?}", a.options.start).to_lowercase(),
        "precision": format!("{:?}", a.precision.resolve(a.gpu.device())?).to_lowercase(),
        "device": format!("{} ({})", a.gpu.info().name, a.gpu.info().backend),
    });
    let file_of = |image: &Path| {
        let name = image.file_name().expect("listed files have names");
        per_image.join(format!("{}.json", name.to_string_lossy()))
    };
    // Each image's content hash, and its measures from an earlier run with the same settings
    // and the same content (kept); the others are measured now.
    let hashes: Vec<String> = images
        .iter()
        .map(|p| file_sha256(p).unwrap_or_default())
        .collect();
    let mut results: Vec<Option<ImageFile>> = images
        .iter()
        .zip(&hashes)
        .map(|(image, sha256)| {
            let text = std::fs::read_to_string(file_of(image)).ok()?;
            let f: ImageFile = serde_json::from_str(&text).ok()?;
            (f.settings == settings && f.sha256 == *sha256).then_some(f)
        })
        .collect();
    let todo: Vec<usize> = (0..images.len())
        .filter(|&i| results[i].is_none())
        .collect();
    if !a.quiet && todo.len() < images.len() {
        eprintln!(
            "{} of {} images were measured before with these settings; resuming",
            images.len() - todo.len(),
            images.len()
        );
    }
    let mut failed = 0;
    if !todo.is_empty() {
        let source = DirSource::new(&a.model);
        let load = LoadOptions::default().with_precision(a.precision);
        let upscaler =
            pollster::block_on(Upscaler::load_with(&source, &a.gpu, &load, &mut |_| {}))?;
        if upscaler.is_one_step() {
            bail!(
                "{}: a one-step (S1) bundle has no sampling trajectory to analyse",
                a.model.display()
            );
        }
        for (n, &i) in todo.iter().enumerate() {
            let image = &images[i];
            let name = image
                .file_name()
                .expect("listed")
                .to_string_lossy()
                .to_string();
            let start = std::time::Instant::now();
            let result = measure(&a, &upscaler, image, n, todo.len())
                .inspect(|_| {
                    if !a.quiet {
                        let s = start.elapsed().as_secs_f64();
                        eprintln!(
                            "{name}: {} steps measured in {s:.2} s ({:.3} s per step)",
                            a.options.steps,
                            s / a.options.steps as f64
                        );
                    }
                })
                .and_then(|measures| {
                    let f = ImageFile {
                        image: name.clone(),
                        sha256: hashes[i].clone(),
                        settings: settings.clone(),
                        measures,
                    };
                    let text = serde_json::to_string(&f)?;
                    output::publish_file(&file_of(image), text.as_bytes(), true)?;
                    Ok(f)
                });
            match result {
                Ok(f) => results[i] = Some(f),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {}: {e:#}", image.display());
                }
            }
        }
    }
    let measured: Vec<(String, ImageMeasures)> = results
        .into_iter()
        .flatten()
        .map(|f| (f.image, f.measures))
        .collect();
    if measured.is_empty() {
        bail!("no image could be measured");
    }
    let report = Report::new(
        &measured,
        a.options.steps,
        &layout,
        describe_model(&manifest.unet, &manifest.arch)?,
        settings,
    )?;
    // Everything is rendered before anything is published: a failure leaves the previous
    // report and figures as they were, together.
    let figures = figures::render_all(&report)?;
    let text = serde_json::to_string_pretty(&report)?;
    for (name, bytes) in &figures {
        output::publish_file(&a.output.join(name), bytes, true)?;
    }
    output::publish_file(&a.output.join("report.json"), text.as_bytes(), true)?;
    if !a.quiet {
        eprintln!(
            "{} images, {} steps → {} (figures: coarse.png/.svg, fine.png/.svg)",
            measured.len(),
            a.options.steps,
            a.output.join("report.json").display()
        );
        for d in &report.decisions {
            eprintln!(
                "{} (coarse depth {}): prunes {} blocks, {} left",
                d.rule,
                d.coarse_depth,
                d.prune.len(),
                d.blocks_left
            );
        }
    }
    Ok(failed == 0)
}

/// Runs one image up to its last sampling step with the probe on (a fresh one per image, so a
/// failed image leaves nothing behind in the next one's sums).
fn measure(
    a: &AnalyzeArgs,
    upscaler: &Upscaler,
    image: &Path,
    index: usize,
    count: usize,
) -> Result<ImageMeasures> {
    let pixels = input::load(image, a.options.scale as u64, a.max_pixels)?;
    let mut job = upscaler.start(pixels.view()?, a.options.clone())?;
    let mut analysis = Analysis::new();
    let bar = Progress::new(
        a.quiet,
        format!("{}/{count} {}", index + 1, image.display()),
    );
    loop {
        let probe: &mut dyn Probe = &mut analysis;
        let Some(event) = pollster::block_on(job.next_probed(Some(probe))) else {
            break;
        };
        let event = event?;
        bar.event(&event);
        match event.unit {
            Unit::Retry { .. } => bail!(
                "a tile ran out of device memory; run analyze with a smaller --tile (one \
                 image's measures must come from one tile grid)"
            ),
            Unit::Denoise {
                step,
                steps,
                tile,
                tiles,
            } if step == steps && tile == tiles => break,
            _ => {}
        }
    }
    bar.finish();
    drop(job);
    Ok(pollster::block_on(analysis.finish_image())?)
}
