//! `pgp-wgpu bench`: timings and device memory of the networks at their real sizes, with weights
//! made up on the device (no files needed). Results go to docs/PERFORMANCE.md by hand, with the
//! machine they ran on.

use std::time::Instant;

use anyhow::{Result, bail};
use pgp_core::burn::tensor::{Device, Distribution, FloatDType, Tensor};
use pgp_core::device::read_back;
use pgp_core::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use pgp_core::models::unet_2d::UNet2DConditionModel;
use pgp_core::models::unet_2d::{UNet2DConditionConfig, UNetConditioning};
use pgp_core::precision::dtype_name;
use pgp_core::presets::Arch;
use pgp_core::profile;
use pgp_core::weights::{VarBuilder, count_params};
use serde_json::json;

/// What `bench unet` measures.
pub struct UnetBench {
    pub arch: Arch,
    /// The precision weights and activations are in.
    pub dtype: FloatDType,
    /// `full` (the real sizes) or `tiny` (the test fixture's UNet).
    pub size: String,
    /// Latent tile in output pixels.
    pub tile: usize,
    pub runs: usize,
    pub json: bool,
    /// The UNet alone (diffusers' `UNet2DConditionModel`: no FaithDiff fusion, no PEAM), what
    /// `tools/torch_bench.py` runs in PyTorch.
    pub plain: bool,
    /// Time per kind of op (CPU backend only), printed after the calls.
    pub profile: bool,
}

/// The UNet config dict at the requested size (what `--print-config` prints).
pub fn unet_json(arch: Arch, size: &str) -> Result<serde_json::Value> {
    Ok(match size {
        "full" => arch.unet_json(),
        "tiny" => {
            // tests/hub's UNet (a random-weight test fixture), with the preset's pruning applied
            // where it has one (same three-level structure).
            let mut cfg = json!({
                "in_channels": 4, "out_channels": 4, "sample_size": 16,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "block_out_channels": [16, 32, 64], "layers_per_block": 2,
                "transformer_layers_per_block": [1, 2, 2], "attention_head_dim": [1, 2, 4],
                "cross_attention_dim": 32, "addition_embed_type": "text_time",
                "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 64,
                "use_linear_projection": true, "norm_num_groups": 8
            });
            arch.apply_depths(&mut cfg)?;
            cfg
        }
        other => bail!("--size must be full or tiny, not `{other}`"),
    })
}

/// The UNet config and FaithDiff extras at the requested size.
fn configs(b: &UnetBench) -> Result<(UNet2DConditionConfig, FaithDiffConfig, usize, usize)> {
    let cfg = UNet2DConditionConfig::from_json(&unet_json(b.arch, &b.size)?)?;
    Ok(match b.size.as_str() {
        "full" => (cfg, b.arch.faithdiff_config(), 2048, 1280),
        _ => {
            let fd = FaithDiffConfig {
                lq_channels: 32,
                align_heads: 8,
                align_layers: 2,
                cond_norm_groups: 8,
            };
            (cfg, fd, 32, 16)
        }
    })
}

/// Peak bytes the device's memory pools held, and what they hold now (`None` off wgpu).
fn pool_bytes(device: &Device) -> Option<(u64, u64)> {
    let peak = device
        .memory_pool_report()?
        .iter()
        .map(|p| p.page_size * p.pages_peak)
        .sum();
    Some((peak, device.memory_pool_usage()?.bytes_reserved))
}

/// One FaithDiff / PGP-DiffSR UNet call (batch 1, the empty-prompt path) on a `tile`² tile.
pub async fn unet(b: &UnetBench, device: &Device) -> Result<()> {
    if b.tile == 0 || !b.tile.is_multiple_of(8) || b.runs == 0 {
        bail!("--tile must be a positive multiple of 8 and --runs positive");
    }
    if b.profile && !profile::supported(device) {
        bail!(
            "--profile times ops as they run, which only burn's CPU backend does: use --device cpu"
        );
    }
    let (cfg, fd, ctx, pooled) = configs(b)?;
    let peam = b.arch.peam_config();
    let build = |vb: &VarBuilder| -> pgp_core::Result<Net> {
        Ok(if b.plain {
            Net::Plain(Box::new(UNet2DConditionModel::new(vb, &cfg)?))
        } else {
            Net::Fused(Box::new(FaithDiffUNet::new(vb, &cfg, &fd, peam.as_ref())?))
        })
    };
    let params = count_params(device, |vb| build(&vb))?;
    let t0 = Instant::now();
    let model = build(&VarBuilder::random(device).with_dtype(b.dtype))?;
    device.sync()?;
    let build_s = t0.elapsed().as_secs_f64();
    let l = b.tile / 8;
    let normal = Distribution::Normal(0.0, 1.0);
    let cond = UNetConditioning {
        timestep: Tensor::from_floats([951.0], device),
        encoder_hidden_states: Tensor::random([1, 77, ctx], normal, device),
        text_embeds: Some(Tensor::random([1, pooled], normal, device)),
        time_ids: Some(Tensor::from_floats(
            [[b.tile as f32, b.tile as f32, 0.0, 0.0, 1024.0, 1024.0]],
            device,
        )),
    };
    let sample = Tensor::<4>::random([1, 4, l, l], normal, device);
    let lq = Tensor::<4>::random([1, fd.lq_channels, l, l], normal, device);
    let weights_pool = pool_bytes(device);
    let mut times = Vec::new();
    for run in 0..b.runs + 1 {
        // The warm-up call is not profiled.
        if b.profile && run == 1 {
            profile::enable(true);
        }
        let t = Instant::now();
        let out = match &model {
            Net::Fused(m) => m.forward(sample.clone(), &cond, lq.clone())?,
            Net::Plain(m) => m.forward(sample.clone(), &cond)?,
        };
        let (v, _) = read_back(out).await?;
        times.push(t.elapsed().as_secs_f64());
        if v.iter().any(|x| !x.is_finite()) {
            eprintln!("note: the output has non-finite values (made-up weights)");
        }
    }
    let ops = profile::take();
    let first = times.remove(0);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let pools = pool_bytes(device);
    let network = if b.plain { "unet" } else { "faithdiff_unet" };
    let kinds = b
        .profile
        .then(|| op_kinds(&ops, mean * b.runs as f64, b.runs));
    if b.json {
        println!(
            "{}",
            json!({
                "bench": "unet", "arch": b.arch.name(), "size": b.size, "tile": b.tile, "latent": l,
                "network": network, "threads": threads(),
                "profile_s_per_call": kinds.as_ref().map(|k| k.iter().map(|(n, t, _)| (n.clone(), json!(*t))).collect::<serde_json::Map<_, _>>()),
                "precision": dtype_name(b.dtype),
                "params": params, "weights_bytes_f32": params * 4, "build_s": build_s,
                "first_call_s": first, "mean_call_s": mean, "runs": b.runs,
                "pool_peak_bytes": pools.map(|p| p.0),
                "pool_reserved_after_bytes": pools.map(|p| p.1),
                "pool_peak_after_build_bytes": weights_pool.map(|p| p.0),
            })
        );
    } else {
        println!(
            "UNet {} ({}{}), tile {}² px (latent {l}²), batch 1, {}, {}",
            b.arch.name(),
            b.size,
            if b.plain { ", UNet alone" } else { "" },
            b.tile,
            dtype_name(b.dtype),
            threads()
        );
        println!(
            "parameters      {params} ({:.1} MiB in f32)",
            mib(params * 4)
        );
        println!("build           {build_s:.2} s (weights made up on the device)");
        println!("first call      {first:.3} s (includes shader compilation)");
        println!("mean of {}       {mean:.3} s", b.runs);
        match (weights_pool, pools) {
            (Some(w), Some((peak, now))) => {
                println!(
                    "pool peak       {:.1} MiB (after building: {:.1} MiB; activations ≈ {:.1} MiB)",
                    mib(peak),
                    mib(w.0),
                    mib(peak.saturating_sub(w.0))
                );
                println!("pool reserved   {:.1} MiB after the calls", mib(now));
            }
            _ => println!("device memory   not reported by this backend"),
        }
        if let Some(kinds) = &kinds {
            print_profile(kinds, &ops, mean, b.runs);
        }
    }
    Ok(())
}

/// The network a UNet bench runs.
enum Net {
    /// FaithDiff's UNet with its fusion (and PGP-DiffSR's PEAM).
    Fused(Box<FaithDiffUNet>),
    /// diffusers' `UNet2DConditionModel` alone.
    Plain(Box<UNet2DConditionModel>),
}

/// How many threads burn's CPU backend uses (its rayon pool).
fn threads() -> String {
    match std::env::var("RAYON_NUM_THREADS") {
        Ok(n) => format!("RAYON_NUM_THREADS={n}"),
        Err(_) => format!(
            "{} threads",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    }
}

/// Seconds per call and calls per call of each kind of op, longest first; what no scope
/// covered (residual adds, concatenations, embeddings, layout copies) is `other`.
fn op_kinds(
    ops: &[(String, profile::Entry)],
    total_s: f64,
    runs: usize,
) -> Vec<(String, f64, u64)> {
    let mut kinds: Vec<(String, f64, u64)> = Vec::new();
    for (key, e) in ops {
        let kind = profile::kind(key);
        let s = e.time.as_secs_f64() / runs as f64;
        let calls = e.calls / runs as u64;
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += s;
                k.2 += calls;
            }
            None => kinds.push((kind.to_string(), s, calls)),
        }
    }
    let covered: f64 = kinds.iter().map(|k| k.1).sum();
    kinds.push((
        "other".into(),
        (total_s / runs as f64 - covered).max(0.0),
        0,
    ));
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds
}

fn print_profile(
    kinds: &[(String, f64, u64)],
    ops: &[(String, profile::Entry)],
    mean: f64,
    runs: usize,
) {
    println!("\ntime per call by kind of op (mean of {runs} calls):");
    for (kind, s, calls) in kinds {
        let calls = if *calls > 0 {
            format!("{calls:>5} calls")
        } else {
            String::new()
        };
        println!(
            "  {kind:<20} {:>9.1} ms {:>5.1}%  {calls}",
            s * 1e3,
            100.0 * s / mean
        );
    }
    println!("\nlongest ops (per call):");
    for (key, e) in ops.iter().take(20) {
        let s = e.time.as_secs_f64() / runs as f64;
        println!(
            "  {key:<44} {:>9.1} ms {:>5.1}%  {:>4} calls",
            s * 1e3,
            100.0 * s / mean,
            e.calls / runs as u64
        );
    }
}

/// What `bench attention` measures.
pub struct AttentionBench {
    pub heads: usize,
    pub tokens: usize,
    pub dim: usize,
    pub runs: usize,
    pub json: bool,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// One result line of a comparison: time and pool growth, or why the path failed; with
/// `json`, one JSON line (`json`'s fields plus the result's).
fn report(label: &str, result: &Result<(f64, Option<u64>)>, json: Option<&serde_json::Value>) {
    if let Some(base) = json {
        let mut v = base.clone();
        v["path"] = label.into();
        match result {
            Ok((t, grew)) => {
                v["mean_call_s"] = (*t).into();
                v["pool_growth_bytes"] = (*grew).into();
            }
            Err(e) => v["error"] = e.to_string().lines().next().unwrap_or("").into(),
        }
        println!("{v}");
        return;
    }
    match result {
        Ok((t, grew)) => println!(
            "  {label:<16} {:.1} ms, pool peak grew {}",
            t * 1e3,
            grew.map_or("?".into(), |g| format!("{:.1} MiB", mib(g)))
        ),
        Err(e) => println!(
            "  {label:<16} failed: {}",
            e.to_string().lines().next().unwrap_or("")
        ),
    }
}

/// Times `f` (one warm-up call first) and reports how much the pool's peak grew over the calls
/// (outputs and scratch beyond what was already allocated).
async fn timed(
    device: &Device,
    runs: usize,
    f: &dyn Fn() -> Tensor<4>,
) -> Result<(f64, Option<u64>)> {
    let before = pool_bytes(device).map(|p| p.0);
    read_back(f()).await?;
    let t = Instant::now();
    for _ in 0..runs {
        read_back(f()).await?;
    }
    let mean = t.elapsed().as_secs_f64() / runs as f64;
    let after = pool_bytes(device).map(|p| p.0);
    Ok((mean, before.zip(after).map(|(b, a)| a - b)))
}

/// The WGSL flash-attention kernel against burn's `module::attention` (batch 1).
pub async fn attention(b: &AttentionBench, device: &Device) -> Result<()> {
    use pgp_core::attention::reference_attention;
    use pgp_core::kernels;
    if !kernels::available(device) {
        bail!("the kernels run on burn's wgpu runtime; use --device wgpu");
    }
    let n = Distribution::Normal(0.0, 1.0);
    let shape = [1, b.heads, b.tokens, b.dim];
    let (q, k, v) = (
        Tensor::<4>::random(shape, n, device),
        Tensor::<4>::random(shape, n, device),
        Tensor::<4>::random(shape, n, device),
    );
    let io_bytes = 4 * 4 * (b.heads * b.tokens * b.dim) as u64;
    let scores = 4 * (b.heads * b.tokens * b.tokens) as u64;
    let base = json!({
        "bench": "attention", "heads": b.heads, "tokens": b.tokens, "dim": b.dim,
        "runs": b.runs, "precision": "f32",
    });
    let base = b.json.then_some(&base);
    if base.is_none() {
        println!(
            "attention 1 × {} heads × {} tokens × {} (inputs + output {:.1} MiB; a materialised score matrix {:.1} MiB)",
            b.heads,
            b.tokens,
            b.dim,
            mib(io_bytes),
            mib(scores)
        );
    }
    // The kernel first: the pool's peak then only grows if the reference needs more.
    let kernel = || kernels::flash_attention(q.clone(), k.clone(), v.clone(), false);
    report(
        "flash kernel",
        &Ok(timed(device, b.runs, &kernel).await?),
        base,
    );
    let reference = || reference_attention(q.clone(), k.clone(), v.clone(), false);
    report(
        "burn attention",
        &timed(device, b.runs, &reference).await,
        base,
    );
    Ok(())
}

/// The WGSL phase exchange (FFT or DFT path) against the plain-burn DFT-matrix composition.
pub async fn phase(shape: [usize; 4], runs: usize, json_out: bool, device: &Device) -> Result<()> {
    use pgp_core::kernels;
    use pgp_core::phase::reference_phase_exchange;
    if !kernels::available(device) {
        bail!("the kernels run on burn's wgpu runtime; use --device wgpu");
    }
    let n = Distribution::Normal(0.0, 1.0);
    let (f, h) = (
        Tensor::<4>::random(shape, n, device),
        Tensor::<4>::random(shape, n, device),
    );
    let [_, _, hh, ww] = shape;
    let planes = shape.iter().product::<usize>() / (hh * ww);
    let base = json!({"bench": "phase", "shape": shape, "runs": runs, "precision": "f32"});
    let base = json_out.then_some(&base);
    if base.is_none() {
        println!(
            "phase exchange {shape:?} ({planes} planes; spectra {:.1} MiB each)",
            mib((planes * hh * (ww / 2 + 1) * 8) as u64)
        );
    }
    let kernel = || kernels::phase_exchange(f.clone(), h.clone());
    let path = if kernels::phase::fft_size(hh) && kernels::phase::fft_size(ww) {
        "kernel (FFT)"
    } else {
        "kernel (DFT)"
    };
    report(path, &Ok(timed(device, runs, &kernel).await?), base);
    let reference = || reference_phase_exchange(f.clone(), h.clone()).expect("equal shapes");
    report("DFT matmuls", &timed(device, runs, &reference).await, base);
    Ok(())
}

/// Little-endian f16 bytes of `n` made-up values in ±`scale` (a fixed xorshift, so bundles are
/// reproducible).
fn made_up_f16(n: usize, scale: f32, state: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let u = (*state >> 40) as f32 / (1u64 << 24) as f32;
        out.extend_from_slice(&half::f16::from_f32((2.0 * u - 1.0) * scale).to_le_bytes());
    }
    out
}

/// `bench bundle`: a full-size bundle of `arch` with made-up f16 weights (every component,
/// the real configs), written by the same writer as `convert`, for `bench load`.
pub fn make_bundle(arch: Arch, out: &std::path::Path, max_shard_bytes: usize) -> Result<()> {
    use pgp_core::bundle::{Component, Configs, Contents, Writer};
    use pgp_core::families::Family;
    use pgp_core::presets;
    use pgp_core::safetensors::Dtype;
    if out.exists() {
        bail!("{}: already exists", out.display());
    }
    std::fs::create_dir_all(out)?;
    let device = pgp_core::Gpu::cpu().device().clone();
    let (unet_json, vae_json) = (arch.unet_json(), presets::sdxl_vae_json());
    let te_json = [
        presets::sdxl_text_encoder_json(false),
        presets::sdxl_text_encoder_json(true),
    ];
    let cfg = Configs::from_json(
        Family::FaithDiff,
        &unet_json,
        arch.faithdiff_config(),
        arch.peam_config(),
        &vae_json,
        &[&te_json[0], &te_json[1]],
    )?;
    let mut w = Writer::new(
        pgp_wgpu_cli::convert::FolderSink(out.to_path_buf()),
        max_shard_bytes,
        Dtype::F16,
    )?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for component in Component::ALL {
        w.begin(component)?;
        for (key, shape) in component.wanted(&cfg, &device)? {
            let n: usize = shape.iter().product();
            if component == Component::EmptyPrompt {
                let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.1).collect();
                w.add_f32(key, shape, &values)?;
                continue;
            }
            let fan_in = shape[1..].iter().product::<usize>().max(1);
            let scale = if shape.len() == 1 {
                0.02
            } else {
                1.0 / (fan_in as f32).sqrt()
            };
            let data = made_up_f16(n, scale, &mut state);
            w.add(key, Dtype::F16, shape, &data)?;
        }
    }
    let (manifest, _) = w.finish(Contents {
        family: Family::FaithDiff,
        arch: arch.name().into(),
        unet: unet_json,
        faithdiff: Some(cfg.faithdiff.clone()),
        peam: cfg.peam.clone(),
        vae: vae_json,
        text_encoders: te_json.into(),
        pad_tokens: vec!["<|endoftext|>".into(), "!".into()],
        scheduler: presets::sdxl_scheduler_json(),
        sources: [("made-up".to_string(), "pgp-wgpu bench bundle".to_string())].into(),
        one_step: false,
        recipe: None,
    })?;
    let total: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    eprintln!(
        "wrote {} ({} shards, {:.2} GiB, made-up f16 weights)",
        out.display(),
        manifest.shards.len(),
        total as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

/// The process's resident set now and at its peak (Linux `/proc/self/status`), in bytes.
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb << 10)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `bench load`: loads a bundle's image components as `upscale` does, and reports the load
/// time, the host's resident set (before, peak while loading, after) and the device pool.
/// Where the device is the CPU (lavapipe, burn's CPU backend), device memory is host memory
/// too: the pool is then subtracted to give the host's own overhead.
pub async fn load(
    model: &std::path::Path,
    gpu: &pgp_core::Gpu,
    precision: pgp_core::Precision,
    json_out: bool,
) -> Result<()> {
    use pgp_core::{DirSource, LoadOptions, Upscaler};
    let device = gpu.device();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json"))?)?;
    let largest_shard = manifest["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["bytes"].as_u64())
        .max()
        .unwrap_or(0);
    // Reset the peak (Linux: writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss();
    let pool_before = pool_bytes(device).map(|p| p.1);
    let t = Instant::now();
    let options = LoadOptions::default().with_precision(precision);
    let upscaler = Upscaler::load_with(&DirSource::new(model), gpu, &options, &mut |_| {}).await?;
    device.sync()?;
    let load_s = t.elapsed().as_secs_f64();
    let after = rss();
    let pool_after = pool_bytes(device);
    let (rss_before, rss_peak, rss_after) = match (before, after) {
        (Some(b), Some(a)) => (Some(b.0), Some(a.1), Some(a.0)),
        _ => (None, None, None),
    };
    let device_growth = pool_after
        .map(|p| p.1)
        .zip(pool_before)
        .map(|(a, b)| a.saturating_sub(b));
    // Host memory the load itself needed beyond what it left on the device.
    let host_overhead = rss_peak.zip(rss_before).map(|(p, b)| {
        p.saturating_sub(b)
            .saturating_sub(device_growth.unwrap_or(0))
    });
    let v = json!({
        "model": model.display().to_string(), "arch": manifest["arch"],
        "precision": dtype_name(upscaler.dtype()), "device": gpu.info().name,
        "load_s": load_s, "largest_shard_bytes": largest_shard,
        "weights_bytes": upscaler.weights_bytes(),
        "rss_before_bytes": rss_before, "rss_peak_bytes": rss_peak, "rss_after_bytes": rss_after,
        "pool_peak_bytes": pool_after.map(|p| p.0), "pool_reserved_bytes": pool_after.map(|p| p.1),
        "host_overhead_bytes": host_overhead,
        "target_bytes": largest_shard + (512 << 20),
    });
    if json_out {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// What `bench steps` measures.
pub struct StepsBench {
    pub model: std::path::PathBuf,
    pub image: std::path::PathBuf,
    pub tile: usize,
    pub steps: usize,
    pub json: bool,
}

/// A whole upscale through the engine's job on the CPU backend: each sampling step's wall
/// time against the time inside its UNet calls; the rest is the pipeline's own per-step work
/// (slicing tiles, blending, scheduler arithmetic, uploads, waiting for the device).
pub async fn steps(b: &StepsBench, gpu: &pgp_core::Gpu) -> Result<()> {
    use pgp_core::{DirSource, TileSize, Unit, Upscaler};
    if !profile::supported(gpu.device()) {
        bail!(
            "bench steps times the UNet calls inside each step, which only burn's CPU backend allows: use --device cpu"
        );
    }
    let pixels = pgp_wgpu_cli::input::load(&b.image, 1, 1 << 28)?;
    let view = pixels.view()?;
    let u = Upscaler::load(&DirSource::new(&b.model), gpu, &mut |_| {}).await?;
    let mut options = u.default_options();
    options.steps = b.steps;
    options.tile = TileSize::Pixels(b.tile);
    let mut job = u.start(view, options)?;
    let sampling = b.steps.max(1);
    // Per step: wall time of its units, UNet time inside them.
    let mut step_s = vec![0.0f64; sampling];
    let mut unet_s = vec![0.0f64; sampling];
    let (mut tiles, mut other_s) = (0, 0.0);
    profile::enable(true);
    let mut t = Instant::now();
    while let Some(event) = job.next().await {
        let event = event?;
        let dt = t.elapsed().as_secs_f64();
        let inside = profile::take()
            .into_iter()
            .find(|(k, _)| k == profile::UNET_CALL)
            .map_or(0.0, |(_, e)| e.time.as_secs_f64());
        profile::enable(true);
        match event.unit {
            Unit::Denoise { step, tile, .. } => {
                step_s[step - 1] += dt;
                unet_s[step - 1] += inside;
                tiles = tiles.max(tile);
            }
            _ => other_s += dt,
        }
        t = Instant::now();
    }
    profile::enable(false);
    let steps_run = step_s.iter().filter(|&&s| s > 0.0).count().max(1);
    let total: f64 = step_s.iter().sum();
    let unet: f64 = unet_s.iter().sum();
    let overhead = total - unet;
    if b.json {
        println!(
            "{}",
            json!({
                "bench": "steps", "model": b.model, "image": b.image, "tile": b.tile,
                "tiles": tiles, "steps": steps_run, "threads": threads(),
                "step_s": step_s, "unet_s": unet_s,
                "overhead_per_step_s": overhead / steps_run as f64,
                "overhead_fraction": overhead / total, "other_units_s": other_s,
            })
        );
        return Ok(());
    }
    println!(
        "{} steps × {tiles} tile(s) of {} px, {}",
        steps_run,
        b.tile,
        threads()
    );
    println!("step   wall (ms)   UNet (ms)   outside the UNet");
    for (i, (s, n)) in step_s.iter().zip(&unet_s).enumerate() {
        println!(
            "{:>4} {:>11.2} {:>11.2}   {:.3} ms ({:.1}%)",
            i + 1,
            s * 1e3,
            n * 1e3,
            (s - n) * 1e3,
            100.0 * (s - n) / s
        );
    }
    println!(
        "mean outside the UNet: {:.3} ms per step, {:.2}% of a step",
        overhead * 1e3 / steps_run as f64,
        100.0 * overhead / total
    );
    println!(
        "other units (LQ encode, start latent, decode, colour fix): {:.1} ms",
        other_s * 1e3
    );
    Ok(())
}
