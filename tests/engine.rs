//! The engine's facade at the library level, on the tiny random-weight fixture: an `Upscaler`
//! from bytes, events after finished units, cancelling, several jobs on one `Gpu`, one seed
//! everywhere, images with stride, alpha and 16 bits.

mod support;

use pgp_core::burn::tensor::FloatDType;
use pgp_core::{
    BytesSource, CancelToken, Error, Event, Gpu, GpuOptions, Image, ImageView, LoadOptions,
    Options, PixelFormat, Precision, TileSize, Unit, Upscaler,
};
use support::{bundle, root};

/// Every file of a bundle folder, as bytes.
fn bytes_source(dir: &std::path::Path) -> BytesSource {
    let mut src = BytesSource::new("tiny");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        src.insert(name, std::fs::read(&p).unwrap());
    }
    src
}

fn load(gpu: &Gpu) -> Upscaler {
    load_as(gpu, Precision::Auto)
}

fn load_as(gpu: &Gpu, precision: Precision) -> Upscaler {
    load_bundle(gpu, "f32", precision)
}

/// Loads a test bundle (`kind` as [`bundle`] takes it) checking the progress reports.
fn load_bundle(gpu: &Gpu, kind: &str, precision: Precision) -> Upscaler {
    let mut seen = Vec::new();
    let src = bytes_source(&bundle(kind));
    let options = LoadOptions::default().with_precision(precision);
    let u = pollster::block_on(Upscaler::load_with(&src, gpu, &options, &mut |p| {
        seen.push(p)
    }))
    .unwrap();
    let last = seen.last().unwrap();
    assert_eq!((last.done, seen.len()), (last.total, last.total));
    u
}

/// tests/pipeline/input.png (24×16 RGB).
fn input() -> image::RgbImage {
    image::open(root().join("tests/pipeline/input.png"))
        .unwrap()
        .to_rgb8()
}

fn options() -> Options {
    Options {
        steps: 2,
        tile: TileSize::Pixels(16),
        seed: 7,
        ..Options::default()
    }
}

fn run(u: &Upscaler, view: ImageView, options: Options) -> (Image, Vec<Event>) {
    let mut events = Vec::new();
    let job = u.start(view, options).unwrap();
    let image =
        pollster::block_on(job.finish(&mut |e| events.push(e), &CancelToken::new())).unwrap();
    (image, events)
}

#[test]
fn an_upscaler_from_bytes_reports_each_finished_unit() {
    let gpu = Gpu::cpu();
    let u = load(&gpu);
    assert_eq!(u.arch(), "faithdiff");
    assert!(!u.is_one_step() && !u.default_options().one_step);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let (out, events) = run(&u, view, options());
    assert_eq!(
        (out.width, out.height, out.format),
        (48, 32, PixelFormat::Rgb8)
    );
    assert_eq!(out.data.len(), 48 * 32 * 3);
    // A 48×32 image is a 6×4 latent: 16-px tiles (2 latent) every 1 → 5 × 3 tiles per step.
    let total = events[0].total;
    assert_eq!(total as usize, events.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.done as usize, i + 1);
    }
    let units: Vec<Unit> = events.iter().map(|e| e.unit).collect();
    assert_eq!(
        units[..3],
        [Unit::LqEncode, Unit::Prompt, Unit::StartLatent]
    );
    let denoise: Vec<_> = units
        .iter()
        .filter_map(|u| match u {
            Unit::Denoise {
                step,
                steps,
                tile,
                tiles,
            } => Some((*step, *steps, *tile, *tiles)),
            _ => None,
        })
        .collect();
    assert_eq!(denoise.len(), 2 * 15);
    assert_eq!(denoise[0], (1, 2, 1, 15));
    assert_eq!(denoise[29], (2, 2, 15, 15));
    assert_eq!(units[33], Unit::Decode { tile: 1, tiles: 1 });
    assert_eq!(units[34], Unit::ColorFix);
    assert_eq!(units.len(), 35);
}

#[test]
fn cancel_stops_within_one_unit_and_the_upscaler_keeps_working() {
    let gpu = Gpu::cpu();
    let u = load(&gpu);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    // Cancelled from the callback after the 5th unit: no further unit runs.
    let cancel = CancelToken::new();
    let mut seen = 0;
    let job = u.start(view, options()).unwrap();
    let r = pollster::block_on(job.finish(
        &mut |e| {
            seen += 1;
            if e.done == 5 {
                cancel.cancel();
            }
        },
        &cancel,
    ));
    assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.err());
    assert_eq!(seen, 5);
    // Dropped half-way: abandoned.
    let mut job = u.start(view, options()).unwrap();
    for _ in 0..4 {
        pollster::block_on(job.next()).unwrap().unwrap();
    }
    drop(job);
    // Two more jobs one after the other on the same Gpu: the same seed, the same bytes.
    let (a, _) = run(&u, view, options());
    let (b, _) = run(&u, view, options());
    assert_eq!(a, b);
    let (c, _) = run(
        &u,
        view,
        Options {
            seed: 8,
            ..options()
        },
    );
    assert_ne!(a, c);
}

#[test]
fn one_seed_gives_one_image_on_cpu_and_lavapipe() {
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    // In f32 on both (the precisions' difference is tests/cli.rs's f16 test).
    let cpu_upscaler = load(&Gpu::cpu());
    assert_eq!(
        cpu_upscaler.dtype(),
        FloatDType::F32,
        "auto is f32 on the CPU"
    );
    let (cpu, _) = run(&cpu_upscaler, view, options());
    let gpu = pollster::block_on(Gpu::from_name("auto")).unwrap();
    let (wgpu, _) = run(&load_as(&gpu, Precision::F32), view, options());
    let mean = support::mean_abs_diff(&cpu.data, &wgpu.data);
    assert!(
        mean <= 0.5,
        "mean |Δ| = {mean}/255 between cpu and {}",
        gpu.info().name
    );
}

#[test]
fn strided_rgba8_and_rgba16_inputs_keep_their_alpha_and_depth() {
    let gpu = Gpu::cpu();
    let u = load(&gpu);
    let img = input();
    let alpha = |x: usize, y: usize| (x * 10 + y) as u8;
    // RGBA8, rows padded to 100 bytes.
    let mut rgba8 = vec![0xAB; 100 * 15 + 96];
    let mut rgba16 = vec![0u8; 24 * 16 * 8];
    for (i, p) in img.pixels().enumerate() {
        let (x, y) = (i % 24, i / 24);
        rgba8[y * 100 + x * 4..][..4].copy_from_slice(&[p[0], p[1], p[2], alpha(x, y)]);
        for c in 0..4 {
            let v = if c < 3 {
                u16::from(p[c]) * 257
            } else {
                u16::from(alpha(x, y)) * 257
            };
            rgba16[i * 8 + 2 * c..][..2].copy_from_slice(&v.to_le_bytes());
        }
    }
    let rgb = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let (plain, _) = run(&u, rgb, options());
    let view8 = ImageView::new(&rgba8, 24, 16, 100, PixelFormat::Rgba8).unwrap();
    let (out8, _) = run(&u, view8, options());
    assert_eq!(out8.format, PixelFormat::Rgba8);
    // The colour is the RGB run's; alpha is the Lanczos-upscaled input alpha.
    let colour: Vec<u8> = out8
        .data
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    assert_eq!(colour, plain.data);
    let a8: Vec<u8> = out8.data.chunks_exact(4).map(|p| p[3]).collect();
    assert!(a8[0] < 5 && a8[47] > 200, "{:?}", &a8[..48]);
    let view16 = ImageView::packed(&rgba16, 24, 16, PixelFormat::Rgba16).unwrap();
    let (out16, _) = run(&u, view16, options());
    assert_eq!(
        (out16.format, out16.data.len()),
        (PixelFormat::Rgba16, 48 * 32 * 8)
    );
    let px16 = |i: usize, c: usize| {
        u16::from_le_bytes([out16.data[i * 8 + 2 * c], out16.data[i * 8 + 2 * c + 1]])
    };
    for i in 0..48 * 32 {
        // 16-bit colour keeps the float result: within one 8-bit step of the 8-bit output.
        for c in 0..3 {
            let (v16, v8) = (
                f64::from(px16(i, c)) / 257.0,
                f64::from(plain.data[i * 3 + c]),
            );
            assert!(
                (v16 - v8).abs() <= 1.0,
                "pixel {i} channel {c}: {v16} vs {v8}"
            );
        }
        let (a16, a8) = (f64::from(px16(i, 3)) / 257.0, f64::from(a8[i]));
        assert!((a16 - a8).abs() <= 1.0, "alpha {i}: {a16} vs {a8}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let gpu = Gpu::cpu();
    let mut u = load(&gpu);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let err = |o: Options| {
        u.start(view, o)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        err(Options {
            scale: 0,
            ..options()
        })
        .contains("scale must be 1 to 16")
    );
    assert!(
        err(Options {
            tile: TileSize::Pixels(12),
            ..options()
        })
        .contains("multiple of 8")
    );
    assert!(
        err(Options {
            prompt: "a cat".into(),
            ..options()
        })
        .contains("text encoders")
    );
    assert!(ImageView::packed(&[0; 10], 2, 2, PixelFormat::Rgb8).is_err());
    let src = BytesSource::new("empty");
    let r = pollster::block_on(Upscaler::load(&src, &gpu, &mut |_| {}));
    assert!(
        r.err()
            .unwrap()
            .to_string()
            .contains("empty: not a model bundle")
    );
    // With the text encoders loaded, a prompt runs (CFG: two UNet calls a tile).
    let src = bytes_source(&bundle("f32"));
    pollster::block_on(u.load_text_encoders(&src, &mut |_| {})).unwrap();
    let (out, _) = run(
        &u,
        view,
        Options {
            prompt: "a cat".into(),
            ..options()
        },
    );
    assert_eq!((out.width, out.height), (48, 32));
}

#[test]
fn one_step_bundles_default_to_one_step() {
    let gpu = Gpu::cpu();
    let src = bytes_source(&bundle("one-step"));
    let u = pollster::block_on(Upscaler::load(&src, &gpu, &mut |_| {})).unwrap();
    assert!(u.is_one_step() && u.default_options().one_step);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let o = Options {
        tile: TileSize::Pixels(16),
        ..u.default_options()
    };
    let (_, events) = run(&u, view, o);
    // LQ, prompt, start, 15 tiles once, one decode tile, colour fix.
    assert_eq!(events.len(), 3 + 15 + 1 + 1);
}

/// One one-step run's encoded input and output latent, with the manifest's `recipe` set.
fn one_step_latents(recipe: Option<serde_json::Value>) -> (Vec<f32>, Vec<f32>) {
    let gpu = Gpu::cpu();
    let src = with_manifest(&bundle("one-step"), |m| {
        if let Some(r) = &recipe {
            m["recipe"] = r.clone();
        }
    });
    let u = pollster::block_on(Upscaler::load(&src, &gpu, &mut |_| {})).unwrap();
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let options = Options {
        tile: TileSize::Pixels(256),
        seed: 3,
        ..u.default_options()
    };
    let mut job = u.start(view, options).unwrap();
    job.record_stages();
    while let Some(e) = pollster::block_on(job.next()) {
        e.unwrap();
    }
    let stages = job.stages().unwrap();
    let values = |t: &Option<pgp_core::burn::tensor::Tensor<4>>| {
        pollster::block_on(pgp_core::device::read_back(t.clone().unwrap()))
            .unwrap()
            .0
    };
    (values(&stages.start_latent), values(&stages.latent_final))
}

#[test]
fn the_one_step_recipe_is_the_manifests() {
    // No recipe is the standard one, bit for bit.
    let standard = one_step_latents(None);
    let explicit = one_step_latents(Some(serde_json::json!({"timestep": 999, "x0": "epsilon"})));
    assert_eq!(standard, explicit);
    // At another timestep, x0 = z − ε̂ and the DDPM estimate agree on the same ε̂ (one UNet call,
    // same z): recover ε̂ from the residual run and form the DDPM estimate by hand.
    let (z, residual) =
        one_step_latents(Some(serde_json::json!({"timestep": 500, "x0": "residual"})));
    let (z2, ddpm) = one_step_latents(Some(serde_json::json!({"timestep": 500, "x0": "epsilon"})));
    assert_eq!(z, z2);
    let a = f64::from(pgp_core::schedulers::euler::EulerConfig::default().alphas_cumprod()[500]);
    let mut worst = 0f64;
    for ((&z, &r), &d) in z.iter().zip(&residual).zip(&ddpm) {
        let eps = f64::from(z) - f64::from(r);
        let expected = (f64::from(z) - eps * (1.0 - a).sqrt()) / a.sqrt();
        worst = worst.max((expected - f64::from(d)).abs() / expected.abs().max(1.0));
    }
    assert!(worst < 1e-4, "worst relative difference {worst}");
    assert_ne!(residual, ddpm);
    assert_ne!(ddpm, standard.1, "the timestep changed nothing");
    // A timestep outside the scheduler's range, an unknown rule: errors naming them.
    let src = with_manifest(&bundle("one-step"), |m| {
        m["recipe"] = serde_json::json!({"timestep": 1000, "x0": "epsilon"})
    });
    assert!(
        load_error(&src).contains("timestep 1000"),
        "{}",
        load_error(&src)
    );
    let src = with_manifest(&bundle("one-step"), |m| {
        m["recipe"] = serde_json::json!({"timestep": 1, "x0": "velocity"})
    });
    assert!(
        load_error(&src).contains("velocity"),
        "{}",
        load_error(&src)
    );
}

#[test]
fn manifests_agree_with_their_family() {
    let dir = bundle("f32");
    let e = load_error(&with_manifest(&dir, |m| {
        m.as_object_mut().unwrap().remove("text_encoder_2");
    }));
    assert!(
        e.contains("a faithdiff bundle needs `text_encoder_2`"),
        "{e}"
    );
    let e = load_error(&with_manifest(&dir, |m| m["family"] = "sd21".into()));
    assert!(e.contains("a sd21 bundle has no `faithdiff`"), "{e}");
    let e = load_error(&with_manifest(&dir, |m| {
        m["pad_tokens"] = serde_json::json!(["!"])
    }));
    assert!(
        e.contains("1 pad tokens, a faithdiff bundle has 2 text encoders"),
        "{e}"
    );
    let e = load_error(&with_manifest(&dir, |m| m["family"] = "sd3".into()));
    assert!(e.contains("sd3"), "{e}");
    // Today's bundles (no family field) are FaithDiff's.
    let src = with_manifest(&dir, |m| {
        m.as_object_mut().unwrap().remove("family");
    });
    let u = pollster::block_on(Upscaler::load(&src, &Gpu::cpu(), &mut |_| {})).unwrap();
    assert_eq!(u.family(), pgp_core::families::Family::FaithDiff);
}

#[test]
fn an_osediff_run_matches_the_references_stages() {
    // Converted by the binary; run through the engine with the reference's posterior noise.
    let dir = support::scratch("engine-osediff");
    let model = dir.join("osediff.bundle");
    let o = support::bin()
        .args(["convert", "-q", "--dtype", "f32", "--sd21"])
        .arg(root().join("tests/hub/sd21"))
        .arg("--osediff")
        .arg(root().join("tests/hub/osediff.pkl"))
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    let stages = std::fs::read(root().join("tests/osediff/stages.safetensors")).unwrap();
    let stages = pgp_core::weights::WeightFile::from_bytes("stages", stages).unwrap();
    let want = |k: &str| stages.f32_data(&format!("even.{k}")).unwrap().0;
    let u = pollster::block_on(Upscaler::load(
        &bytes_source(&model),
        &Gpu::cpu(),
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(u.family(), pgp_core::families::Family::Sd21);
    assert!(u.is_one_step() && u.default_options().one_step);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let options = Options {
        scale: 4,
        noise: Some(pgp_core::NoiseData {
            latent: Vec::new(),
            vae: want("vae_noise"),
        }),
        ..u.default_options()
    };
    let mut job = u.start(view, options).unwrap();
    job.record_stages();
    while let Some(e) = pollster::block_on(job.next()) {
        e.unwrap();
    }
    let s = job.stages().unwrap();
    let got = |t: &Option<pgp_core::burn::tensor::Tensor<4>>| {
        pollster::block_on(pgp_core::device::read_back(t.clone().unwrap()))
            .unwrap()
            .0
    };
    for (name, t, tol) in [
        ("start_latent", &s.start_latent, 1e-5),
        ("latent_final", &s.latent_final, 1e-4),
        ("decoded", &s.decoded, 1e-4),
    ] {
        let err = pgp_core::conformance::rel_l2(&got(t), &want(name));
        assert!(err < tol, "{name}: rel L2 {err}");
    }
}

#[test]
fn the_host_device_example_runs_on_lavapipe() {
    // Built by `cargo test` with the other examples (crates/pgp-core/examples/host_device.rs).
    let deps = std::env::current_exe().unwrap();
    let exe = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/host_device");
    assert!(exe.is_file(), "{} is not built", exe.display());
    let o = std::process::Command::new(&exe)
        .arg(bundle("f32"))
        .args(["20", "12"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let t = support::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("result: 40×24 RGBA f32 in the host's buffer (15360 bytes)"),
        "{t}"
    );
    assert!(
        t.contains("the buffer matches the 40×24 RGBA8 pixels"),
        "{t}"
    );
}

#[test]
fn gpus_on_one_adapter_share_its_runtime() {
    let first = pollster::block_on(Gpu::from_name("auto")).unwrap();
    let again = pollster::block_on(Gpu::new(&GpuOptions::default())).unwrap();
    assert_eq!(first.info(), again.info());
    assert!(first.info().max_buffer_bytes > 0 && first.info().max_buffer_bytes < u64::MAX);
    // Runtime settings cannot change once the runtime runs: said, not ignored.
    let tuned = GpuOptions {
        tasks_max: Some(4),
        ..GpuOptions::default()
    };
    let err = pollster::block_on(Gpu::new(&tuned))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apply to the first Gpu on an adapter"),
        "{err}"
    );
    let err = pollster::block_on(Gpu::from_name("gpu:99"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("there is no adapter 99"), "{err}");
    assert!(pollster::block_on(Gpu::from_name("tpu")).is_err());
}

#[test]
fn bundles_stream_shard_by_shard_and_shard_sizes_are_checked() {
    let gpu = Gpu::cpu();
    let dir = bundle("sharded");
    let mut src = bytes_source(&dir);
    let mut seen = Vec::new();
    let mut u = pollster::block_on(Upscaler::load(&src, &gpu, &mut |p| seen.push(p))).unwrap();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f != "manifest.json")
        .collect();
    let text = files
        .iter()
        .filter(|f| f.starts_with("text_encoder"))
        .count();
    assert!(files.len() - text >= 5, "{files:?}");
    // Only the image components' shards are read (version 2: each component has its own).
    assert_eq!(seen.len(), files.len() - text + 1);
    assert!(seen.iter().all(|p| !p.file.starts_with("text_encoder")));
    assert!(seen.windows(2).all(|w| w[0].bytes < w[1].bytes));
    let last = seen.last().unwrap();
    assert_eq!(
        (last.bytes, last.total_bytes),
        (last.total_bytes, last.total_bytes)
    );
    // The text encoders come later, from their own shards only.
    let mut seen_text = Vec::new();
    pollster::block_on(u.load_text_encoders(&src, &mut |p| seen_text.push(p.file))).unwrap();
    assert_eq!(seen_text.len(), text + 1);
    assert!(seen_text[1..].iter().all(|f| f.starts_with("text_encoder")));
    // The same networks as the one-shard bundle: the same image.
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let (a, _) = run(&u, view, options());
    let (b, _) = run(&load(&gpu), view, options());
    assert_eq!(a, b);
    // A shard cut short is named, with both sizes.
    let name = seen[2].file.clone();
    let bytes = std::fs::read(dir.join(&name)).unwrap();
    src.insert(name.clone(), bytes[..bytes.len() - 10].to_vec());
    let err = pollster::block_on(Upscaler::load(&src, &gpu, &mut |_| {}))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!(
            "tiny/{name}: {} bytes, the manifest says {}",
            bytes.len() - 10,
            bytes.len()
        )),
        "{err}"
    );
}

#[test]
fn f16_shards_compute_in_f16_where_the_adapter_can() {
    let gpu = pollster::block_on(Gpu::from_name("auto")).unwrap();
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    // f16 shards go to the device as f16; auto picks f16 on an adapter with shader-f16
    // (lavapipe has it).
    let half = load_bundle(&gpu, "f16", Precision::Auto);
    let expected = if gpu.info().shader_f16 {
        FloatDType::F16
    } else {
        FloatDType::F32
    };
    assert_eq!(half.dtype(), expected);
    let (a, _) = run(&half, view, options());
    // The reference: f32 shards computed in f32.
    let (b, _) = run(&load_as(&gpu, Precision::F32), view, options());
    let mean = support::mean_abs_diff(&a.data, &b.data);
    assert!(mean <= 2.0, "mean |f16 − f32| = {mean}/255");
    // f16 shards can also be computed in f32 (cast on the device).
    assert_eq!(
        load_bundle(&gpu, "f16", Precision::F32).dtype(),
        FloatDType::F32
    );
    assert!(matches!(Precision::parse("f8"), Err(Error::Input(_))));
}

/// The bundle's manifest, changed by `edit`, in a copy of its files.
fn with_manifest(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) -> BytesSource {
    let mut src = bytes_source(dir);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    edit(&mut m);
    src.insert("manifest.json", serde_json::to_vec(&m).unwrap());
    src
}

fn load_error(src: &BytesSource) -> String {
    match pollster::block_on(Upscaler::load(src, &Gpu::cpu(), &mut |_| {})) {
        Ok(_) => panic!("the bundle loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn version_1_bundles_load_and_manifests_are_checked() {
    let gpu = Gpu::cpu();
    let dir = bundle("f32");
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    // Version 1: no components, checksums or weight_map; every shard is read.
    let v1 = with_manifest(&dir, |m| {
        m["version"] = 1.into();
        m.as_object_mut().unwrap().remove("weight_map");
        for s in m["shards"].as_array_mut().unwrap() {
            let s = s.as_object_mut().unwrap();
            s.remove("component");
            s.remove("sha256");
        }
    });
    let mut seen = 0;
    let old = pollster::block_on(Upscaler::load(&v1, &gpu, &mut |_| seen += 1)).unwrap();
    assert_eq!(seen, std::fs::read_dir(&dir).unwrap().count());
    assert_eq!(
        run(&old, view, options()).0,
        run(&load(&gpu), view, options()).0
    );

    // Shard paths stay inside the bundle.
    for bad in [
        "../unet-00001.safetensors",
        "/etc/passwd",
        "a/../../b",
        "C:\\x",
        "",
    ] {
        let src = with_manifest(&dir, |m| m["shards"][0]["file"] = bad.into());
        let err = load_error(&src);
        assert!(err.contains("shard paths must be relative"), "{bad}: {err}");
    }
    // The weight_map must agree with the shards' headers.
    let src = with_manifest(&dir, |m| {
        m["weight_map"]["unet.conv_in.weight"]["shape"] = serde_json::json!([1, 2, 3, 4]);
    });
    let err = load_error(&src);
    assert!(
        err.contains("`unet.conv_in.weight` is F32 [16, 4, 3, 3]"),
        "{err}"
    );
    let src = with_manifest(&dir, |m| {
        let w = m["weight_map"].as_object_mut().unwrap();
        w.remove("unet.conv_in.weight");
    });
    let err = load_error(&src);
    assert!(err.contains("the weight_map places"), "{err}");
    let src = with_manifest(&dir, |m| m["shards"][0]["sha256"] = "xyz".into());
    assert!(load_error(&src).contains("has no valid sha256"));
    let src = with_manifest(&dir, |m| m["version"] = 3.into());
    assert!(load_error(&src).contains("versions 1 to 2"));
}

#[test]
fn a_tile_out_of_device_memory_is_retried_at_half_the_size() {
    let gpu = Gpu::cpu();
    let u = load(&gpu);
    // 128² in, 256² out: one 256-pixel tile, or nine of 128 pixels.
    let img = image::RgbImage::from_fn(128, 128, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x + y) % 256) as u8])
    });
    let view = ImageView::packed(img.as_raw(), 128, 128, PixelFormat::Rgb8).unwrap();
    let opts = |tile: usize| Options {
        steps: 2,
        tile: TileSize::Pixels(tile),
        ..options()
    };
    let mut job = u.start(view, opts(256)).unwrap();
    job.fail_tiles_over(128);
    let mut events = Vec::new();
    let image =
        pollster::block_on(job.finish(&mut |e| events.push(e), &CancelToken::new())).unwrap();
    let retries: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.unit, Unit::Retry { .. }))
        .collect();
    assert_eq!(retries.len(), 1, "{events:?}");
    assert_eq!(
        retries[0].unit,
        Unit::Retry {
            tile_px: 128,
            reason: "out of device memory"
        }
    );
    assert!(
        retries[0]
            .unit
            .to_string()
            .contains("retrying with 128-pixel tiles")
    );
    // Every step then ran nine tiles, and the count stayed true.
    let denoise = events
        .iter()
        .filter(|e| matches!(e.unit, Unit::Denoise { tiles: 9, .. }))
        .count();
    assert_eq!(denoise, 2 * 9);
    let last = events.last().unwrap();
    assert_eq!((last.done, last.total), (last.total, events.len() as u32));
    // The same image as asking for 128-pixel tiles in the first place.
    let (direct, _) = run(&u, view, opts(128));
    assert_eq!(image, direct);
    // Below the smallest retry tile the run ends with a clear error.
    let mut job = u.start(view, opts(128)).unwrap();
    job.fail_tiles_over(32);
    let err = pollster::block_on(job.finish(&mut |_| {}, &CancelToken::new())).unwrap_err();
    assert!(matches!(err, Error::DeviceMemory(_)), "{err}");
    assert!(
        err.to_string().contains("even with 64-pixel tiles"),
        "{err}"
    );
}

#[test]
fn a_memory_budget_bounds_the_automatic_tile() {
    let gpu = Gpu::cpu();
    let u = load(&gpu);
    assert!(u.weights_bytes() > 1 << 20 && u.weights_bytes() < 64 << 20);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let budget = |bytes: u64| Options {
        tile: TileSize::Auto,
        max_memory: Some(bytes),
        ..options()
    };
    // The weights and the smallest tile's estimate (≥ 128 MiB of pool overhead) do not fit.
    let err = u.start(view, budget(100 << 20)).err().unwrap();
    assert!(
        err.to_string().contains("memory budget of 100 MiB"),
        "{err}"
    );
    // A roomy budget: the whole image in one tile, as without one.
    let (a, events) = run(&u, view, budget(4 << 30));
    assert!(
        events
            .iter()
            .any(|e| matches!(e.unit, Unit::Denoise { tiles: 1, .. }))
    );
    let (b, _) = run(
        &u,
        view,
        Options {
            tile: TileSize::Auto,
            ..options()
        },
    );
    assert_eq!(a, b);
}

#[test]
fn a_prepared_prompt_releases_the_text_encoders() {
    let gpu = Gpu::cpu();
    let src = bytes_source(&bundle("f32"));
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let prompted = Options {
        prompt: "a red brick wall".into(),
        ..options()
    };
    // Encoded once, encoders dropped: the weights are the image networks' again.
    let mut u = load(&gpu);
    let image_only = u.weights_bytes();
    let mut read = Vec::new();
    pollster::block_on(u.prepare_prompt(&src, "a red brick wall", &mut |p| read.push(p.file)))
        .unwrap();
    assert!(
        read[1..].iter().all(|f| f.starts_with("text_encoder")),
        "{read:?}"
    );
    assert!(!u.has_text_encoders());
    assert_eq!(u.weights_bytes(), image_only);
    let (a, _) = run(&u, view, prompted.clone());
    // Another prompt still needs the encoders: a clear error, not a wrong image.
    let other = Options {
        prompt: "grass".into(),
        ..options()
    };
    assert!(u.start(view, other).is_err());
    // The same image as with the encoders kept.
    let mut kept = load(&gpu);
    pollster::block_on(kept.load_text_encoders(&src, &mut |_| {})).unwrap();
    let (b, _) = run(&kept, view, prompted);
    assert_eq!(a, b);
}

#[test]
fn non_finite_weights_and_results_are_errors_not_flat_images() {
    let gpu = Gpu::cpu();
    let dir = bundle("f32");
    // A NaN written into a shard (same size, valid header): refused at load, named.
    let mut src = bytes_source(&dir);
    let vae = std::fs::read(dir.join("vae-00001.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&vae).unwrap();
    let (key, view) = st.tensors().into_iter().next().unwrap();
    let offset = view.data().as_ptr() as usize - vae.as_ptr() as usize;
    let mut damaged = vae.clone();
    damaged[offset..offset + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    src.insert("vae-00001.safetensors", damaged);
    let err = load_error(&src);
    assert!(
        err.contains(&format!("tensor `{key}` holds a non-finite value")),
        "{err}"
    );
    // Guidance is bounded (1e300 once overflowed the guided prediction): refused before work.
    let u = load(&gpu);
    let img = input();
    let view = ImageView::packed(img.as_raw(), 24, 16, PixelFormat::Rgb8).unwrap();
    let guided = Options {
        guidance: 1e300,
        ..options()
    };
    let err = u.start(view, guided).err().unwrap().to_string();
    assert!(err.contains("the guidance scale must be 0 to 30"), "{err}");
    // Finite weights that overflow f32 in use (conv_in all 3e38): the sampling turns
    // non-finite, an error before decoding, not a flat image.
    let mut src = bytes_source(&dir);
    let unet = std::fs::read(dir.join("unet-00001.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&unet).unwrap();
    let view_w = st.tensor("unet.conv_in.weight").unwrap();
    let offset = view_w.data().as_ptr() as usize - unet.as_ptr() as usize;
    let mut huge = unet.clone();
    for chunk in huge[offset..offset + view_w.data().len()].chunks_exact_mut(4) {
        chunk.copy_from_slice(&3e38f32.to_le_bytes());
    }
    src.insert("unet-00001.safetensors", huge);
    let u = pollster::block_on(Upscaler::load(&src, &gpu, &mut |_| {})).unwrap();
    let job = u.start(view, options()).unwrap();
    let err = pollster::block_on(job.finish(&mut |_| {}, &CancelToken::new())).unwrap_err();
    assert!(
        err.to_string()
            .contains("sampling produced non-finite values"),
        "{err}"
    );
}
