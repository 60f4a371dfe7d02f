//! `pgp-wgpu bench`: timings and device memory of the networks at their real sizes, with weights
//! made up on the device (no files needed). Results go to docs/PERFORMANCE.md by hand, with the
//! machine they ran on.

use std::time::Instant;

use anyhow::{Result, bail};
use pgp_core::burn::tensor::{Device, Distribution, FloatDType, Tensor};
use pgp_core::device::read_back;
use pgp_core::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use pgp_core::models::unet_2d::{UNet2DConditionConfig, UNetConditioning};
use pgp_core::precision::dtype_name;
use pgp_core::presets::Arch;
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
}

/// The UNet config and FaithDiff extras at the requested size.
fn configs(b: &UnetBench) -> Result<(UNet2DConditionConfig, FaithDiffConfig, usize, usize)> {
    Ok(match b.size.as_str() {
        "full" => (b.arch.unet_config(), b.arch.faithdiff_config(), 2048, 1280),
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
            b.arch.apply_depths(&mut cfg)?;
            let fd = FaithDiffConfig {
                lq_channels: 32,
                align_heads: 8,
                align_layers: 2,
                cond_norm_groups: 8,
            };
            (UNet2DConditionConfig::from_json(&cfg)?, fd, 32, 16)
        }
        other => bail!("--size must be full or tiny, not `{other}`"),
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
    let (cfg, fd, ctx, pooled) = configs(b)?;
    let peam = b.arch.peam_config();
    let params = count_params(device, |vb| {
        FaithDiffUNet::new(&vb, &cfg, &fd, peam.as_ref())
    })?;
    let t0 = Instant::now();
    let model = FaithDiffUNet::new(
        &VarBuilder::random(device).with_dtype(b.dtype),
        &cfg,
        &fd,
        peam.as_ref(),
    )?;
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
    for _ in 0..b.runs + 1 {
        let t = Instant::now();
        let out = model.forward(sample.clone(), &cond, lq.clone())?;
        let (v, _) = read_back(out).await?;
        times.push(t.elapsed().as_secs_f64());
        if v.iter().any(|x| !x.is_finite()) {
            eprintln!("note: the output has non-finite values (made-up weights)");
        }
    }
    let first = times.remove(0);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let pools = pool_bytes(device);
    if b.json {
        println!(
            "{}",
            json!({
                "arch": b.arch.name(), "size": b.size, "tile": b.tile, "latent": l,
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
            "UNet {} ({}), tile {}² px (latent {l}²), batch 1, {}",
            b.arch.name(),
            b.size,
            b.tile,
            dtype_name(b.dtype)
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
    }
    Ok(())
}

/// What `bench attention` measures.
pub struct AttentionBench {
    pub heads: usize,
    pub tokens: usize,
    pub dim: usize,
    pub runs: usize,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// One result line of a comparison: time and pool growth, or why the path failed.
fn report(label: &str, result: &Result<(f64, Option<u64>)>) {
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
    println!(
        "attention 1 × {} heads × {} tokens × {} (inputs + output {:.1} MiB; a materialised score matrix {:.1} MiB)",
        b.heads,
        b.tokens,
        b.dim,
        mib(io_bytes),
        mib(scores)
    );
    // The kernel first: the pool's peak then only grows if the reference needs more.
    let kernel = || kernels::flash_attention(q.clone(), k.clone(), v.clone(), false);
    report("flash kernel", &Ok(timed(device, b.runs, &kernel).await?));
    let reference = || reference_attention(q.clone(), k.clone(), v.clone(), false);
    report("burn attention", &timed(device, b.runs, &reference).await);
    Ok(())
}

/// The WGSL phase exchange (FFT or DFT path) against the plain-burn DFT-matrix composition.
pub async fn phase(shape: [usize; 4], runs: usize, device: &Device) -> Result<()> {
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
    println!(
        "phase exchange {shape:?} ({planes} planes; spectra {:.1} MiB each)",
        mib((planes * hh * (ww / 2 + 1) * 8) as u64)
    );
    let kernel = || kernels::phase_exchange(f.clone(), h.clone());
    let path = if kernels::phase::fft_size(hh) && kernels::phase::fft_size(ww) {
        "kernel (FFT)"
    } else {
        "kernel (DFT)"
    };
    report(path, &Ok(timed(device, runs, &kernel).await?));
    let reference = || reference_phase_exchange(f.clone(), h.clone()).expect("equal shapes");
    report("DFT matmuls", &timed(device, runs, &reference).await);
    Ok(())
}
