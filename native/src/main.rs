//! `pgp-wgpu`: the command-line shell over `pgp-core`.

mod analyze;
mod bench;
mod conformance;
mod figures;
mod ncnn;
mod progress;
mod prune;
mod upscale;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use pgp_core::info::arch_info;
use pgp_core::presets::Arch;
use pgp_core::tokenizer::ClipTokenizer;
use pgp_core::{ColorFix, Gpu, GpuOptions, Options, Precision, Start, TileSize};
use pgp_wgpu_cli::convert;
#[cfg(feature = "download")]
use pgp_wgpu_cli::download;

#[derive(Parser)]
#[command(
    name = "pgp-wgpu",
    version,
    about = "Diffusion super-resolution (FaithDiff / PGP-DiffSR) on wgpu, without Python",
    after_help = "With realesrgan-ncnn-vulkan's flags and no subcommand (`pgp-wgpu -i IN -o OUT \
                  -m MODELS -n NAME`), or renamed upscayl-bin / realesrgan-ncnn-vulkan, it runs \
                  as a drop-in for them (`pgp-wgpu -x -h` shows that usage)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run numerical parity cases against the PyTorch reference outputs.
    Conformance {
        /// Case folders, or folders of case folders.
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        /// Backend: `wgpu` (the GPU; lavapipe where there is none) or `cpu`.
        #[arg(long, default_value = "wgpu")]
        device: String,
        /// Also print the error of every expected tensor.
        #[arg(long, short)]
        verbose: bool,
        /// Precision of the networks under test: f32 (the reference's) or f16 (judged by the
        /// per-kind f16 tolerances).
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// Convert downloaded weights (SDXL diffusers folder, VAE folder, FaithDiff.bin) into a
    /// model bundle: manifest.json + safetensors shards of at most 256 MiB.
    Convert {
        /// The SDXL diffusers folder (RealVisXL_V4.0: unet/, text_encoder/, text_encoder_2/,
        /// tokenizer/, tokenizer_2/, scheduler/).
        #[arg(long, required_unless_present = "sd21", conflicts_with = "sd21")]
        sdxl: Option<std::path::PathBuf>,
        /// The VAE folder (sdxl-vae-fp16-fix).
        #[arg(long, required_unless_present = "sd21", conflicts_with = "sd21")]
        vae: Option<std::path::PathBuf>,
        /// FaithDiff.bin (a torch.save state dict; read without running any code), or a
        /// PGP-DiffSR checkpoint in the same layout (`--arch pgp`). Also a .safetensors file.
        #[arg(long, required_unless_present = "sd21", conflicts_with = "sd21")]
        faithdiff: Option<std::path::PathBuf>,
        /// A Stable Diffusion 2.1-base diffusers folder (unet/, vae/, text_encoder/, tokenizer/,
        /// scheduler/), for the one-step models built on it (with --osediff).
        #[arg(long)]
        sd21: Option<std::path::PathBuf>,
        /// OSEDiff's osediff.pkl (its UNet and VAE-encoder LoRAs and trained conv_in), merged
        /// into SD2.1-base: a one-step bundle (t = 999, x0 from the predicted noise).
        #[arg(long, requires = "sd21", conflicts_with = "pisa")]
        osediff: Option<std::path::PathBuf>,
        /// PiSA-SR's pisa_sr.pkl (pixel and semantic LoRA groups), merged into SD2.1-base: a
        /// one-step bundle (t = 1, x0 = z − the prediction).
        #[arg(long, requires = "sd21")]
        pisa: Option<std::path::PathBuf>,
        /// PiSA-SR's guidance weights PIX,SEM; only 1,1 (its default mode, both groups merged):
        /// other weights need two UNet calls per tile, which is not implemented.
        #[arg(long, requires = "pisa", default_value = "1,1")]
        pisa_weights: String,
        /// The checkpoint's architecture: faithdiff, pgp-coarse (pruned) or pgp (pruned + PEAM).
        #[arg(long, default_value = "faithdiff", conflicts_with = "sd21")]
        arch: String,
        /// The checkpoint's UNet config.json, for pruned checkpoints that ship one; default:
        /// the SDXL folder's unet/config.json with the preset's transformer depths.
        #[arg(long, conflicts_with = "sd21")]
        unet_config: Option<std::path::PathBuf>,
        /// PEAM config JSON (levels, variant, hidden, stacked_convs, negative_slope,
        /// keep_faithdiff_fusion); default for `--arch pgp`: one full PEAM after conv_in.
        #[arg(long, conflicts_with = "sd21")]
        peam_config: Option<std::path::PathBuf>,
        /// Storage dtype of the weights.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Mark the bundle as a one-step (S1) model: `upscale` and the engine's default
        /// options then run the one-step recipe.
        #[arg(long, conflicts_with = "sd21")]
        one_step: bool,
        /// A UNet LoRA (diffusers / PEFT layout, safetensors) to merge: W += scale·(alpha/r)·B·A.
        /// The bundle is then one-step (the S1 recipe).
        #[arg(long, conflicts_with = "sd21")]
        lora: Option<std::path::PathBuf>,
        /// Multiplies the LoRA's update.
        #[arg(long, default_value_t = 1.0, requires = "lora")]
        lora_scale: f32,
        /// The LoRA's alpha, for files that do not record it (default: the file's `.alpha`
        /// tensors, else adapter_config.json's lora_alpha, else the rank).
        #[arg(long, requires = "lora")]
        lora_alpha: Option<f32>,
        /// The bundle folder to create (must not exist).
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Largest shard in MiB (256 fits WebGPU's default buffer limit).
        #[arg(long, default_value_t = 256, hide = true)]
        max_shard_mib: usize,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Upscale images (a file, or every image in a folder).
    Upscale {
        /// Input image or folder.
        #[arg(short, long)]
        input: std::path::PathBuf,
        /// Output image or folder.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// With a folder input, mirror its whole tree.
        #[arg(long)]
        recursive: bool,
        /// Upscaling factor.
        #[arg(short, long, default_value_t = 2)]
        scale: usize,
        /// Latent tile size in output pixels (multiple of 8; tiles overlap by half; 0 = the
        /// largest whose buffers fit the adapter's limits, the whole image when it fits).
        #[arg(short, long, default_value_t = 1024)]
        tile: usize,
        /// Output format: png, jpg or webp (default: the output's extension, else png).
        #[arg(short, long)]
        format: Option<String>,
        /// The model bundle made by `convert` (default: the one `pgp-wgpu download faithdiff`
        /// made).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Euler steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Classifier-free guidance scale (applies when --prompt is not empty).
        #[arg(long, default_value_t = 5.0)]
        cfg: f64,
        /// Noise seed: the same seed gives the same image on every device (host-side PRNG).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Caption of the image (empty by default).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Colour correction: adain, wavelet or none.
        #[arg(long, default_value = "adain")]
        color_fix: String,
        /// Start point: lr (the encoded input, FaithDiff's default) or noise.
        #[arg(long, default_value = "lr")]
        start: String,
        /// One-step S1 mode (for PGP-DiffSR-S1 checkpoints): one UNet call at t = 999 on the
        /// encoded input, no CFG; --steps, --start and --cfg are ignored.
        #[arg(long)]
        one_step: bool,
        /// A safetensors file with `latent_noise` and `vae_noise` [1, 4, H/8, W/8] for the
        /// padded image (OSEDiff bundles: `vae_noise` alone, the posterior's); no RNG is used.
        #[arg(long)]
        noise: Option<std::path::PathBuf>,
        /// Replace existing outputs.
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        compute: Compute,
        /// Device memory budget for -t 0 (e.g. 6G, 8000M): the weights plus one tile's
        /// activations stay within it. Default: none (wgpu does not report device memory); a
        /// tile that runs out of device memory is retried at half the size either way.
        #[arg(long)]
        max_memory: Option<String>,
        /// Cap every buffer of the device at this many MiB (simulates a smaller GPU).
        #[arg(long, hide = true)]
        max_buffer_mib: Option<u64>,
        /// Largest output in megapixels (a 4K image ×4 is 133); bigger outputs are refused
        /// before any work.
        #[arg(long, default_value_t = 256.0)]
        max_megapixels: f64,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Write the pipeline's intermediate tensors here (for parity checks).
        #[arg(long, hide = true)]
        dump_stages: Option<std::path::PathBuf>,
    },
    /// The progressive pruning analysis (PPA): run the pipeline on every image of a folder and
    /// measure how much each UNet level changes between timesteps and each decoder transformer
    /// block changes its input; writes report.json and figures (resumable: finished images are
    /// kept in REPORT_DIR/images/).
    Analyze {
        /// The model bundle (FaithDiff, or any of its pruned forms).
        #[arg(long)]
        model: std::path::PathBuf,
        /// A folder of images (PNG, JPEG, WebP, BMP; not its subfolders).
        #[arg(long)]
        images: std::path::PathBuf,
        /// The report folder (made if needed; an earlier run's finished images are reused).
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Euler steps (the paper's analysis: 20).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Latent tile size in output pixels (multiple of 8; 0 = the largest that fits).
        #[arg(short, long, default_value_t = 1024)]
        tile: usize,
        /// Upscaling factor.
        #[arg(short, long, default_value_t = 2)]
        scale: usize,
        /// Analyse only the first N images (by name).
        #[arg(long)]
        max_images: Option<usize>,
        /// Noise seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        compute: Compute,
        /// Largest output in megapixels.
        #[arg(long, default_value_t = 256.0)]
        max_megapixels: f64,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Prune a bundle's UNet by an analysis report: encoder and bottleneck transformers to
    /// --coarse-depth blocks, decoder blocks by --keep-top-k or --threshold. Writes
    /// OUT_DIR/unet.safetensors (FaithDiff's key layout), unet_config.json, prune.json and,
    /// with a PEAM, peam_config.json.
    Prune {
        /// The model bundle the report was made with.
        #[arg(long)]
        model: std::path::PathBuf,
        /// REPORT_DIR/report.json from `analyze`.
        #[arg(long)]
        report: std::path::PathBuf,
        /// The folder to create (must not exist).
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Keep the K blocks of each decoder transformer that change their input most (the
        /// paper keeps 4 at the smallest decoder scale).
        #[arg(
            long,
            conflicts_with = "threshold",
            required_unless_present = "threshold"
        )]
        keep_top_k: Option<usize>,
        /// The paper's printed rule: prune a decoder block when Φcos ≥ PHI and ΨKL ≥ KL
        /// (paper: 0.2,1.0).
        #[arg(long, value_name = "PHI,KL")]
        threshold: Option<String>,
        /// Transformer depth the encoder and bottleneck keep (their first blocks).
        #[arg(long, default_value_t = 1)]
        coarse_depth: usize,
        /// Without a PEAM in the bundle: `init` adds one (PyTorch's Conv2d initialisation,
        /// seeded by --seed; it is trained during fine-tuning), `none` adds none.
        #[arg(long, default_value = "init")]
        peam: String,
        /// Seed of a new PEAM's initial weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Download a model's files from the Hugging Face Hub (resuming unfinished ones) and
    /// convert them into the bundle `upscale` uses by default.
    #[cfg(feature = "download")]
    Download {
        /// The model: `faithdiff` (RealVisXL_V4.0's configs and f16 text encoders,
        /// sdxl-vae-fp16-fix, FaithDiff.bin; about 13 GB) or `osediff` (SD2.1-base from a Hub
        /// mirror, osediff.pkl from OSEDiff's GitHub repository; one step, interactive).
        model: String,
        /// Where the bundle goes (default: $PGP_WGPU_CACHE, else the system cache folder).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the GPU adapters (`-g` picks one by its index).
    Devices,
    /// Write NAME.param and NAME.bin beside each bundle folder NAME/ of a models folder, so
    /// that programs listing ncnn models (Upscayl, realesrgan-gui, GIMP plug-ins) show the
    /// bundles. They then run `pgp-wgpu` renamed upscayl-bin / realesrgan-ncnn-vulkan, or with
    /// their flags and no subcommand: the ncnn compatibility mode (`pgp-wgpu -h`… see README).
    NcnnStubs {
        /// The models folder (holding bundle folders made by `convert` or `download`).
        dir: std::path::PathBuf,
    },
    /// Check a model bundle and list what it holds.
    Inspect {
        /// The bundle folder.
        bundle: std::path::PathBuf,
    },
    /// Show the token ids SDXL's two CLIP tokenizers give a prompt.
    Tokenize {
        /// The prompt.
        text: String,
        /// Print JSON: {"ids_1": [77 ids], "ids_2": [77 ids], "truncated": bool}.
        #[arg(long)]
        json: bool,
    },
    /// Parameter counts and FLOPs of an architecture preset.
    /// Benchmarks with made-up weights (no files needed); see docs/PERFORMANCE.md.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    Info {
        /// `faithdiff`, `pgp-coarse` or `pgp`.
        #[arg(long, default_value = "faithdiff")]
        arch: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where and how the networks run (`upscale`, `analyze`).
#[derive(clap::Args)]
struct Compute {
    /// Backend: wgpu or cpu.
    #[arg(long, default_value = "wgpu")]
    device: String,
    /// GPU adapter index, as `pgp-wgpu devices` lists them (default: the best one).
    #[arg(short, long)]
    gpu: Option<usize>,
    /// Compute precision: auto (f16 where the adapter has shader-f16, else f32), f16 or f32.
    #[arg(long, default_value = "auto")]
    precision: String,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Write a full-size bundle with made-up f16 weights (every component, the real configs),
    /// for `bench load`.
    Bundle {
        /// `faithdiff`, `pgp-coarse` or `pgp`.
        #[arg(long, default_value = "pgp")]
        arch: String,
        /// The bundle folder to create.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Largest shard in MiB.
        #[arg(long, default_value_t = 256)]
        max_shard_mib: usize,
    },
    /// Load a bundle's image components as `upscale` does: load time, host resident set
    /// (peak while loading) and device pool.
    Load {
        /// The bundle folder.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Backend: wgpu or cpu.
        #[arg(long, default_value = "wgpu")]
        device: String,
        /// Compute precision: auto, f16 or f32.
        #[arg(long, default_value = "auto")]
        precision: String,
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// The WGSL phase exchange against the plain-burn composition.
    Phase {
        /// B, C, h, w.
        #[arg(long, num_args = 4, default_values_t = [1, 320, 128, 128])]
        shape: Vec<usize>,
        /// Timed calls after a warm-up call.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print one JSON line per path.
        #[arg(long)]
        json: bool,
    },
    /// The WGSL flash-attention kernel against burn's attention: time and pool growth.
    Attention {
        #[arg(long, default_value_t = 10)]
        heads: usize,
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// Timed calls after a warm-up call.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print one JSON line per path.
        #[arg(long)]
        json: bool,
    },
    /// A whole upscale on the CPU backend: per sampling step, the time outside the UNet calls
    /// (the pipeline's own work).
    Steps {
        /// The bundle folder.
        #[arg(long)]
        model: std::path::PathBuf,
        /// The input image.
        #[arg(short, long)]
        input: std::path::PathBuf,
        /// Tile size in output pixels.
        #[arg(short, long, default_value_t = 32)]
        tile: usize,
        /// Sampling steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Backend (cpu: the only one whose UNet time can be told apart).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// One FaithDiff / PGP-DiffSR UNet call on one latent tile: time and peak device memory.
    Unet {
        /// `faithdiff`, `pgp-coarse` or `pgp`.
        #[arg(long, default_value = "faithdiff")]
        arch: String,
        /// `full` (the real network) or `tiny` (the test fixture's sizes).
        #[arg(long, default_value = "full")]
        size: String,
        /// Tile size in output pixels (latent = tile / 8).
        #[arg(short, long, default_value_t = 1024)]
        tile: usize,
        /// Timed calls after the first.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Backend: wgpu or cpu.
        #[arg(long, default_value = "wgpu")]
        device: String,
        /// Compute precision: auto (f16 where the adapter has shader-f16, else f32), f16 or f32.
        #[arg(long, default_value = "auto")]
        precision: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The UNet alone (diffusers' UNet2DConditionModel: no FaithDiff fusion, no PEAM), as
        /// tools/torch_bench.py runs it.
        #[arg(long)]
        plain: bool,
        /// Time per kind of op after the calls (--device cpu only; the CPU backend's thread
        /// count is RAYON_NUM_THREADS, default all cores).
        #[arg(long)]
        profile: bool,
        /// Print the UNet's config.json (diffusers keys) and exit.
        #[arg(long)]
        print_config: bool,
    },
}

/// The exit status of a command that ran to its end: failure when any of its items failed.
fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The device `--device` and `-g` name together (`-g` picks a GPU adapter by index).
fn device_name(device: String, gpu: Option<usize>) -> Result<String> {
    match gpu {
        Some(_) if device == "cpu" => anyhow::bail!("-g selects a GPU adapter; drop --device cpu"),
        Some(i) => Ok(format!("gpu:{i}")),
        None => Ok(device),
    }
}

/// cubecl reports a wgpu error (an allocation the device refuses) by panicking on its own
/// device thread, where the panic is caught and the work fails — which the engine then reports
/// as an error, or recovers from (a tile that ran out of memory is retried smaller). Such
/// panics are kept, one line each, and printed only when the command fails
/// ([`device_errors`]); panics of the main thread keep the default report.
fn keep_device_thread_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        if thread.name() == Some("main") {
            return default(info);
        }
        let msg = pgp_core::error::panic_message(info.payload())
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if let Ok(mut seen) = DEVICE_ERRORS.lock()
            && !seen.contains(&msg)
        {
            seen.push(msg);
        }
    }));
}

static DEVICE_ERRORS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The device threads' panic messages so far (each once), taken.
pub fn device_errors() -> Vec<String> {
    DEVICE_ERRORS
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    keep_device_thread_panics();
    pgp_wgpu_cli::output::remove_partials_on_signal();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if ncnn::wanted(&args) {
        return ncnn::main(&args);
    }
    let cli = Cli::parse_from(args);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            progress::line(&format!("error: {e:#}"));
            ExitCode::from(2)
        }
    };
    if code != ExitCode::SUCCESS {
        for msg in device_errors() {
            progress::line(&format!("device error: {msg}"));
        }
    }
    code
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Conformance {
            dirs,
            device,
            verbose,
            precision,
        } => {
            let gpu = pollster::block_on(Gpu::from_name(&device))?;
            let dtype = Precision::parse(&precision)?.resolve(gpu.device())?;
            let ok = conformance::run(&dirs, &gpu, dtype, verbose)?;
            Ok(status(ok))
        }
        Command::Convert {
            sd21: Some(sd21),
            osediff,
            pisa,
            pisa_weights,
            dtype,
            output,
            max_shard_mib,
            quiet,
            ..
        } => {
            let model = match (osediff, pisa) {
                (Some(p), None) => convert::Sd21Model::OseDiff(p),
                (None, Some(p)) => {
                    convert::check_pisa_weights(&pisa_weights)?;
                    convert::Sd21Model::Pisa(p)
                }
                _ => {
                    anyhow::bail!("--sd21 needs the one-step model: --osediff FILE or --pisa FILE")
                }
            };
            convert::run_sd21(&convert::Sd21Args {
                sd21,
                model,
                dtype,
                output,
                max_shard_bytes: max_shard_mib.max(1) << 20,
                quiet,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert {
            sdxl: Some(sdxl),
            vae: Some(vae),
            faithdiff: Some(faithdiff),
            arch,
            unet_config,
            peam_config,
            dtype,
            one_step,
            lora,
            lora_scale,
            lora_alpha,
            output,
            max_shard_mib,
            quiet,
            ..
        } => {
            convert::run(&convert::ConvertArgs {
                sdxl,
                vae,
                faithdiff,
                arch: Arch::parse(&arch)?,
                unet_config,
                peam_config,
                dtype,
                output,
                max_shard_bytes: max_shard_mib.max(1) << 20,
                quiet,
                one_step,
                lora: lora.map(|p| (p, lora_scale, lora_alpha)),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert { .. } => anyhow::bail!(
            "convert takes --sdxl, --vae and --faithdiff (FaithDiff, PGP-DiffSR), or --sd21 with \
             --osediff (OSEDiff) or --pisa (PiSA-SR)"
        ),
        Command::Upscale {
            input,
            output,
            recursive,
            scale,
            tile,
            format,
            model,
            steps,
            cfg,
            seed,
            prompt,
            color_fix,
            start,
            one_step,
            noise,
            overwrite,
            compute:
                Compute {
                    device,
                    gpu,
                    precision,
                },
            max_memory,
            max_buffer_mib,
            max_megapixels,
            quiet,
            dump_stages,
        } => {
            if !(max_megapixels.is_finite() && max_megapixels > 0.0) {
                anyhow::bail!("--max-megapixels must be a positive number");
            }
            let model = match model {
                Some(m) => m,
                None => pgp_wgpu_cli::cache::default_model()?,
            };
            let precision = Precision::parse(&precision)?;
            let max_memory = max_memory.as_deref().map(parse_bytes).transpose()?;
            let name = device_name(device, gpu)?;
            let gpu = match max_buffer_mib {
                Some(mib) => {
                    let options = GpuOptions {
                        adapter: gpu,
                        max_buffer_bytes: Some(mib << 20),
                        ..GpuOptions::default()
                    };
                    pollster::block_on(Gpu::new(&options))?
                }
                None => pollster::block_on(Gpu::from_name(&name))?,
            };
            let args = upscale::UpscaleArgs {
                input,
                output,
                recursive,
                format,
                model,
                options: Options {
                    scale,
                    steps,
                    guidance: cfg,
                    prompt,
                    tile: if tile == 0 {
                        TileSize::Auto
                    } else {
                        TileSize::Pixels(tile)
                    },
                    color_fix: ColorFix::parse(&color_fix)?,
                    start: Start::parse(&start)?,
                    seed,
                    one_step,
                    noise: None,
                    max_memory,
                },
                noise,
                overwrite,
                gpu,
                precision,
                dump_stages,
                max_pixels: (max_megapixels * 1e6) as u64,
                outputs: upscale::Outputs::default(),
            };
            let ok = upscale::run(args, &mut upscale::Plain::new(quiet))?;
            Ok(status(ok))
        }
        Command::Analyze {
            model,
            images,
            output,
            steps,
            tile,
            scale,
            max_images,
            seed,
            compute:
                Compute {
                    device,
                    gpu,
                    precision,
                },
            max_megapixels,
            quiet,
        } => {
            if !(max_megapixels.is_finite() && max_megapixels > 0.0) {
                anyhow::bail!("--max-megapixels must be a positive number");
            }
            if max_images == Some(0) {
                anyhow::bail!("--max-images must be at least 1");
            }
            let gpu = pollster::block_on(Gpu::from_name(&device_name(device, gpu)?))?;
            let ok = analyze::run(analyze::AnalyzeArgs {
                model,
                images,
                output,
                options: Options {
                    scale,
                    steps,
                    tile: if tile == 0 {
                        TileSize::Auto
                    } else {
                        TileSize::Pixels(tile)
                    },
                    seed,
                    ..Options::default()
                },
                max_images,
                gpu,
                precision: Precision::parse(&precision)?,
                max_pixels: (max_megapixels * 1e6) as u64,
                quiet,
            })?;
            Ok(status(ok))
        }
        Command::Prune {
            model,
            report,
            output,
            keep_top_k,
            threshold,
            coarse_depth,
            peam,
            seed,
            quiet,
        } => {
            let rule = match (keep_top_k, threshold) {
                (Some(k), None) => pgp_core::ppa::Rule::KeepTopK(k),
                (None, Some(t)) => prune::parse_threshold(&t)?,
                _ => anyhow::bail!("give one of --keep-top-k K and --threshold PHI,KL"),
            };
            let peam = match peam.as_str() {
                "init" => prune::PeamInit::Init(seed),
                "none" => prune::PeamInit::None,
                other => anyhow::bail!("--peam must be init or none, not `{other}`"),
            };
            prune::run(&prune::PruneArgs {
                model,
                report,
                output,
                rule,
                coarse_depth,
                peam,
                quiet,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "download")]
        Command::Download {
            model,
            output,
            quiet,
        } => {
            let bundle = download::run(&model, output, quiet)?;
            println!("{}", bundle.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::NcnnStubs { dir } => {
            for name in ncnn::write_stubs(&dir)? {
                println!("{}", dir.join(format!("{name}.param")).display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices => {
            let adapters = pollster::block_on(pgp_core::device::adapters());
            if adapters.is_empty() {
                println!(
                    "no GPU adapter found (install a Vulkan driver; `--device cpu` works anywhere)"
                );
            }
            for a in adapters {
                let i = &a.info;
                println!(
                    "{}: {} ({}, {}, {}){}, buffers up to {} MiB{}",
                    a.index,
                    i.name,
                    i.backend,
                    i.kind,
                    a.driver,
                    if i.shader_f16 { ", shader-f16" } else { "" },
                    i.max_buffer_bytes >> 20,
                    if i.software {
                        "; software (a CPU renderer: `auto` takes a GPU before it)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { bundle } => {
            let b = convert::load_bundle(&bundle)?;
            b.check(Gpu::cpu().device())?;
            let m = &b.manifest;
            println!("bundle        {}", bundle.display());
            println!(
                "architecture  {} ({} family, {} weights{})",
                m.arch,
                m.family.name(),
                m.dtype,
                if m.one_step { ", one-step" } else { "" }
            );
            let src = b.source();
            for prefix in m.family.components().iter().map(|c| c.prefix()) {
                let (n, params) = src
                    .all_keys()
                    .iter()
                    .filter(|k| k.starts_with(prefix.as_str()))
                    .filter_map(|k| src.info(k))
                    .fold((0usize, 0u64), |(n, p), (_, s)| {
                        (n + 1, p + s.iter().product::<usize>() as u64)
                    });
                println!(
                    "{:<16} {:>5} tensors {:>16} values",
                    prefix.trim_end_matches('.'),
                    n,
                    group(params)
                );
            }
            for s in &m.shards {
                println!(
                    "{:<32} {:>12} bytes {:>5} tensors",
                    s.file, s.bytes, s.tensors
                );
            }
            if m.version >= 2 {
                println!(
                    "format version {}: every shard matches its SHA-256 and the weight_map \
                     (dtypes, shapes, byte ranges)",
                    m.version
                );
            } else {
                println!("format version 1: no checksums to verify (`convert` writes version 2)");
            }
            println!("all components match their configs");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize { text, json } => {
            let (t1, t2) = ClipTokenizer::sdxl()?;
            let (e1, e2) = (t1.encode(&text), t2.encode(&text));
            if json {
                let v = serde_json::json!({
                    "ids_1": e1.ids, "ids_2": e2.ids, "truncated": e1.truncated || e2.truncated,
                });
                println!("{v}");
            } else {
                let ids =
                    |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
                let content = t1.content_ids(&text);
                let shown: String = content
                    .iter()
                    .take(75)
                    .map(|&id| t1.token_text(id))
                    .collect();
                println!("tokenizer 1 (pads with <|endoftext|>): {}", ids(&e1.ids));
                println!("tokenizer 2 (pads with !):             {}", ids(&e2.ids));
                println!("the model sees: {}", shown.trim_end());
                if let Some((n, dropped)) = t1.dropped(&text) {
                    println!("TRUNCATED: {n} content tokens, 75 fit; dropped: {dropped}");
                } else {
                    println!("{} of 75 content tokens used, not truncated", content.len());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Bundle {
                    arch,
                    output,
                    max_shard_mib,
                },
        } => {
            bench::make_bundle(Arch::parse(&arch)?, &output, max_shard_mib.max(1) << 20)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Load {
                    model,
                    device,
                    precision,
                    json,
                },
        } => {
            let gpu = pollster::block_on(Gpu::from_name(&device))?;
            let precision = Precision::parse(&precision)?;
            pollster::block_on(bench::load(&model, &gpu, precision, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Steps {
                    model,
                    input,
                    tile,
                    steps,
                    device,
                    json,
                },
        } => {
            let gpu = pollster::block_on(Gpu::from_name(&device))?;
            let b = bench::StepsBench {
                model,
                image: input,
                tile,
                steps,
                json,
            };
            pollster::block_on(bench::steps(&b, &gpu))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Phase { shape, runs, json },
        } => {
            let shape: [usize; 4] = shape.try_into().expect("clap takes four values");
            let gpu = pollster::block_on(Gpu::from_name("wgpu"))?;
            pollster::block_on(bench::phase(shape, runs.max(1), json, gpu.device()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Attention {
                    heads,
                    tokens,
                    dim,
                    runs,
                    json,
                },
        } => {
            let b = bench::AttentionBench {
                heads,
                tokens,
                dim,
                runs: runs.max(1),
                json,
            };
            let gpu = pollster::block_on(Gpu::from_name("wgpu"))?;
            pollster::block_on(bench::attention(&b, gpu.device()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Unet {
                    arch,
                    size,
                    tile,
                    runs,
                    device,
                    precision,
                    json,
                    plain,
                    profile,
                    print_config,
                },
        } => {
            if print_config {
                let cfg = bench::unet_json(Arch::parse(&arch)?, &size)?;
                println!("{}", serde_json::to_string_pretty(&cfg)?);
                return Ok(ExitCode::SUCCESS);
            }
            let gpu = pollster::block_on(Gpu::from_name(&device))?;
            let b = bench::UnetBench {
                dtype: Precision::parse(&precision)?.resolve(gpu.device())?,
                arch: Arch::parse(&arch)?,
                size,
                tile,
                runs,
                json,
                plain,
                profile,
            };
            pollster::block_on(bench::unet(&b, gpu.device()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { arch, json } => {
            let arch = Arch::parse(&arch)?;
            let info = arch_info(arch, Gpu::cpu().device())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("architecture        {}", info.arch);
                println!("UNet parameters     {}", group(info.unet_params));
                println!("FaithDiff extras    {}", group(info.extras_params));
                println!("PEAM parameters     {}", group(info.peam_params));
                println!("transformer blocks  {}", info.transformer_blocks);
                println!("FLOPs @1024² (UNet) {:.1} G", info.flops_1024 as f64 / 1e9);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `6G`, `8000M`, `512K` or a plain byte count (binary units).
fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('G') => (&t[..t.len() - 1], 30),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('K') => (&t[..t.len() - 1], 10),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--max-memory `{text}`: a size like 6G, 8000M or bytes"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| anyhow::anyhow!("--max-memory `{text}`: out of range"))
}

/// `2567463684` → `2,567,463,684`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
