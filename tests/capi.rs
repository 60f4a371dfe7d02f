//! The C ABI from C: crates/pgp-capi/examples/upscale.c compiled with the system C compiler
//! against the committed header and the shared library, run on the tiny fixture.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{bin, bundle, root, scratch, text};

/// The folder holding `libpgp_wgpu.so` (built as a dev-dependency of this package).
fn lib_dir() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let name = format!(
        "{}pgp_wgpu{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    [deps.clone(), deps.parent().unwrap().to_path_buf()]
        .into_iter()
        .find(|d| d.join(&name).is_file())
        .unwrap_or_else(|| panic!("{name} not found next to {}", deps.display()))
}

/// Compiles the C example once per call into `dir`.
fn compile(dir: &Path) -> PathBuf {
    let capi = root().join("crates/pgp-capi");
    let exe = dir.join("upscale");
    let lib = lib_dir();
    let o = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(capi.join("examples/upscale.c"))
        .arg("-I")
        .arg(capi.join("include"))
        .arg("-L")
        .arg(&lib)
        .arg("-lpgp_wgpu")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("a C compiler (cc)");
    assert!(o.status.success(), "compiling upscale.c:\n{}", text(&o));
    exe
}

/// tests/pipeline/input.png as an RGB PAM file.
fn input_pam(dir: &Path) -> PathBuf {
    let img = image::open(root().join("tests/pipeline/input.png"))
        .unwrap()
        .to_rgb8();
    let mut bytes = format!(
        "P7\nWIDTH {}\nHEIGHT {}\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n",
        img.width(),
        img.height()
    )
    .into_bytes();
    bytes.extend_from_slice(img.as_raw());
    let path = dir.join("in.pam");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// (width, height, RGBA bytes) of a PAM the example wrote.
fn read_pam(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.windows(7).position(|w| w == b"ENDHDR\n").unwrap() + 7;
    let header = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let field = |k: &str| -> u32 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (field("WIDTH "), field("HEIGHT "), bytes[end..].to_vec())
}

fn run_c(exe: &Path, args: &[&str], dir: &Path) -> Output {
    run_c_with(exe, &bundle("f32"), args, dir)
}

fn run_c_with(exe: &Path, model: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(exe)
        .arg(model)
        .arg(input_pam(dir))
        .arg(dir.join("out.pam"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        // cargo's LD_LIBRARY_PATH lists target/debug first, whose copy of the library can be
        // older than the one this test built (the example's rpath ranks below the variable).
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap()
}

/// RGBA bytes without their alpha.
fn rgb_of(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// The CLI's RGB output for the pipeline input with `model` and `args` (after `upscale -q`).
fn cli_rgb(dir: &Path, model: &Path, args: &[&str]) -> Vec<u8> {
    let out = dir.join("cli.png");
    let o = bin()
        .args(["upscale", "-q", "--overwrite"])
        .args(args)
        .arg("-i")
        .arg(root().join("tests/pipeline/input.png"))
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    image::open(&out).unwrap().to_rgb8().into_raw()
}

/// The CLI's output on lavapipe at the C example's settings (2 steps, tile 16, seed 3).
fn cli_rgb_on_lavapipe(dir: &Path, precision: &str) -> Vec<u8> {
    let settings = ["--steps", "2", "-t", "16", "--seed", "3"];
    let args = [
        &["--device", "wgpu", "--precision", precision][..],
        &settings,
    ]
    .concat();
    cli_rgb(dir, &bundle("f32"), &args)
}

#[test]
fn the_c_example_equals_the_cli_on_lavapipe() {
    let dir = scratch("capi_equal");
    let exe = compile(&dir);
    let o = run_c(
        &exe,
        &["-d", "auto", "-n", "2", "-t", "16", "--seed", "3"],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    let progress = text(&o)
        .lines()
        .filter(|l| l.starts_with("progress "))
        .count();
    assert_eq!(progress, 35, "one call per unit:\n{}", text(&o));
    let (w, h, rgba) = read_pam(&dir.join("out.pam"));
    assert_eq!((w, h), (48, 32));
    let c_rgb = rgb_of(&rgba);
    assert_eq!(
        c_rgb,
        cli_rgb_on_lavapipe(&dir, "auto"),
        "the C output differs from the CLI's"
    );
    // The precision chosen from C: f32 on lavapipe equals the CLI's f32 there, and differs
    // from the f16 run above (auto is f16 on lavapipe, which has shader-f16).
    let o = run_c(
        &exe,
        &[
            "-d", "auto", "-p", "f32", "-n", "2", "-t", "16", "--seed", "3",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    let c_rgb32 = rgb_of(&read_pam(&dir.join("out.pam")).2);
    assert_eq!(
        c_rgb32,
        cli_rgb_on_lavapipe(&dir, "f32"),
        "the C f32 output differs from the CLI's"
    );
    assert_ne!(
        c_rgb32, c_rgb,
        "f32 and f16 gave the same bytes: the precision was not applied"
    );
}

#[test]
fn bgra8_and_rgba16_entry_points_match_rgba8() {
    let dir = scratch("capi_formats");
    let exe = compile(&dir);
    let mut outs = Vec::new();
    for format in ["rgba8", "bgra8", "rgba16"] {
        let o = run_c(
            &exe,
            &[
                "-d", "cpu", "-n", "2", "-t", "16", "--seed", "3", "--format", format,
            ],
            &dir,
        );
        assert!(o.status.success(), "{format}: {}", text(&o));
        let bytes = std::fs::read(dir.join("out.pam")).unwrap();
        let header = String::from_utf8_lossy(&bytes[..80]).into_owned();
        let (w, h, px) = read_pam(&dir.join("out.pam"));
        assert_eq!((w, h), (48, 32));
        outs.push((header.contains("MAXVAL 65535"), px));
    }
    let (wide8, rgba) = &outs[0];
    assert!(!wide8);
    // BGRA in, BGRA out: swapped back by the example, the same bytes as RGBA's.
    assert_eq!(&outs[1].1, rgba, "BGRA8 differs from RGBA8");
    // RGBA16 (v · 257 in): big-endian 16-bit PAM values; within one 8-bit step of RGBA8's
    // colour (the 16-bit output keeps the decoder's float precision), alpha 65535.
    let (wide16, px16) = &outs[2];
    assert!(wide16);
    assert_eq!(px16.len(), 2 * rgba.len());
    let mut worst = 0i32;
    for (i, v) in px16.chunks_exact(2).enumerate() {
        let v = u16::from_be_bytes([v[0], v[1]]);
        if i % 4 == 3 {
            assert_eq!(v, 65535, "alpha at {i}");
            continue;
        }
        let eight = (f64::from(v) / 257.0).round() as i32;
        worst = worst.max((eight - i32::from(rgba[i])).abs());
    }
    assert!(worst <= 1, "RGBA16 differs from RGBA8 by {worst}/255");
}

#[test]
fn the_c_callback_cancels_and_errors_are_reported() {
    let dir = scratch("capi_cancel");
    let exe = compile(&dir);
    let o = run_c(
        &exe,
        &["-d", "cpu", "-n", "2", "-t", "16", "--cancel-after", "5"],
        &dir,
    );
    // PGP_CANCELLED (4) + 10, with no unit after the one that asked to stop.
    assert_eq!(o.status.code(), Some(14), "{}", text(&o));
    assert!(
        text(&o).contains("cancelled (after 5 progress calls)"),
        "{}",
        text(&o)
    );
    assert!(!dir.join("out.pam").exists());
    // Bad options and a missing bundle: PGP_ERR_INPUT (1), PGP_ERR_MODEL (2) with messages.
    let o = run_c(&exe, &["-d", "cpu", "-s", "0"], &dir);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(text(&o).contains("scale must be 1 to 16"), "{}", text(&o));
    let o = run_c(&exe, &["-d", "nope"], &dir);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(text(&o).contains("unknown device `nope`"), "{}", text(&o));
    let o = run_c(&exe, &["-d", "cpu", "-p", "f8"], &dir);
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(text(&o).contains("unknown precision `f8`"), "{}", text(&o));
    let o = Command::new(&exe)
        .args(["/nonexistent/bundle"])
        .arg(input_pam(&dir))
        .arg(dir.join("x.pam"))
        .args(["-d", "cpu"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(
        text(&o).contains("/nonexistent/bundle: not a model bundle"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_c_abi_runs_a_one_step_sd21_model_as_the_cli_does() {
    let dir = scratch("capi_osediff");
    let model = dir.join("osediff.bundle");
    let hub = root().join("tests/hub");
    let o = bin()
        .args(["convert", "-q", "--dtype", "f32", "--sd21"])
        .arg(hub.join("sd21"))
        .arg("--osediff")
        .arg(hub.join("osediff.pkl"))
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let exe = compile(&dir);
    // The bundle's defaults are one-step: the example asks for nothing else.
    let o = run_c_with(&exe, &model, &["-d", "cpu", "-s", "4", "--seed", "5"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    // Encode, prompt, one UNet tile, one decode tile, colour fix.
    let progress = text(&o)
        .lines()
        .filter(|l| l.starts_with("progress "))
        .count();
    assert_eq!(progress, 5, "{}", text(&o));
    let (w, h, rgba) = read_pam(&dir.join("out.pam"));
    assert_eq!((w, h), (96, 64));
    assert_eq!(
        rgb_of(&rgba),
        cli_rgb(&dir, &model, &["--device", "cpu", "-s", "4", "--seed", "5"]),
        "the C output differs from the CLI's"
    );
}
