//! The ncnn compatibility mode: `pgp-wgpu` answering the command line of
//! `realesrgan-ncnn-vulkan` / `upscayl-bin`, so the programs built around those binaries
//! (Upscayl, realesrgan-gui, GIMP plug-ins) run a diffusion model unchanged.
//!
//! Entered when the binary is named `upscayl-bin` or `realesrgan-ncnn-vulkan`, or when its first
//! argument is a flag. Their flags, getopt-style (`-s4`, `-xv`, `--` ends the flags); a model is
//! the bundle folder `-m DIR` / `-n NAME` (`pgp-wgpu ncnn-stubs DIR` writes the `NAME.param` /
//! `NAME.bin` files their model lists look for). Outputs are replaced (atomically), an output
//! may be its input (Upscayl's double upscale), and a folder's outputs are named as realesrgan
//! names them.
//!
//! stderr is a protocol here: `0.00%`, then `NN.NN%` after each unit of work (never
//! decreasing), each line in one write; after each image `100.00%` and `Upscaled
//! Successfully`; a failure is a line starting `Error: ` (Upscayl's words where they apply:
//! `Invalid GPU`, `tile size`) and a nonzero exit status. No other line contains `Error`,
//! `failed`, `read`, `write`, `tile size`, `Successful`, `Resizing` or `%` (Upscayl reads
//! every chunk for those words): file paths are quoted and such words in them escaped
//! ([`shown`]). stdout stays empty (Upscayl never drains it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use pgp_core::{Event, Gpu, Options, Precision, TileSize};

use crate::progress::line;
use crate::upscale::{self, Outputs, Reporter, UpscaleArgs};

/// The names of the binaries this mode stands in for.
const NAMES: [&str; 2] = ["upscayl-bin", "realesrgan-ncnn-vulkan"];

/// The usage text (realesrgan-ncnn-vulkan's, with this program's meanings).
const USAGE: &str = "\
Usage: upscayl-bin -i infile -o outfile [options]...
       (pgp-wgpu's realesrgan-ncnn-vulkan / upscayl-bin compatible mode)

  -h                   show this help
  -i input-path        input image path (jpg/png/webp/bmp/jfif) or directory
  -o output-path       output image path (jpg/png/webp) or directory
  -s scale             upscale ratio, 1 to 16 (default: the scale in the model name,
                       x2/2x -> 2, x3/3x -> 3, else 4)
  -t tile-size         tile size in input pixels (0 = auto, default=0)
  -m model-path        folder of model bundles (default: models beside this program,
                       then models in the working directory)
  -n model-name        model name: the bundle folder model-path/model-name
                       (default: the folder's only bundle)
  -g gpu-id            GPU adapter index as `pgp-wgpu devices` lists it, or auto (default)
  -j load:proc:save    accepted; no effect
  -x                   accepted; no effect (no TTA for a diffusion model)
  -z model-scale       accepted; no effect (the model works at any scale)
  -f format            output image format (jpg/png/webp, default=ext/png)
  -c compress          JPEG compression 0 to 100 (quality 100 - compress, default 0)
  -w width             resize the output to this width (aspect ratio kept)
  -v                   verbose output: `IN -> OUT done` per image
";

/// True when the command line is for this mode: the binary's name, or a first argument that
/// is a flag (other than the normal mode's `--help` / `-h` / `--version` / `-V`).
pub fn wanted(args: &[OsString]) -> bool {
    let named = args
        .first()
        .and_then(|a| Path::new(a).file_stem())
        .and_then(|s| s.to_str())
        .is_some_and(|s| NAMES.iter().any(|n| s.eq_ignore_ascii_case(n)));
    let flag_first = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| {
        a.starts_with('-') && a.len() > 1 && !matches!(a, "--help" | "-h" | "--version" | "-V")
    });
    named || flag_first
}

/// The parsed flags.
#[derive(Debug, Default)]
struct Flags {
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    scale: Option<String>,
    tile: Option<String>,
    models: Option<PathBuf>,
    name: Option<String>,
    gpu: Option<String>,
    format: Option<String>,
    compress: Option<String>,
    width: Option<String>,
    verbose: bool,
    help: bool,
}

/// Flags that take a value, and those that do not (getopt's `i:o:s:…vxh`).
const WITH_VALUE: &str = "iostmngjfcwz";
const WITHOUT_VALUE: &str = "xvh";

/// getopt: `-i x`, `-ix`, `-xv`, `--` ends the flags. Anything else is an error.
fn parse(args: &[OsString]) -> Result<Flags> {
    let mut f = Flags::default();
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else {
            bail!("unexpected argument {}", shown_text(&arg.to_string_lossy()));
        };
        if text == "--" {
            if let Some(extra) = it.next() {
                bail!(
                    "unexpected argument {}",
                    shown_text(&extra.to_string_lossy())
                );
            }
            break;
        }
        if !text.starts_with('-') || text.len() < 2 || text.starts_with("--") {
            bail!("unexpected argument {}", shown_text(text));
        }
        // Flags may cluster (`-xv`); a flag that takes a value ends the cluster, its value the
        // rest of the argument or the next one.
        for (i, c) in text.char_indices().skip(1) {
            if WITHOUT_VALUE.contains(c) {
                match c {
                    'v' => f.verbose = true,
                    'h' => f.help = true,
                    _ => {} // -x: accepted, no effect
                }
                continue;
            }
            if !WITH_VALUE.contains(c) {
                bail!("unknown option -{}", shown_text(&c.to_string()));
            }
            let rest = &text[i + c.len_utf8()..];
            let value: OsString = if rest.is_empty() {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("option -{c} requires a value"))?
            } else {
                rest.into()
            };
            let s = || value.to_string_lossy().into_owned();
            match c {
                'i' => f.input = Some(PathBuf::from(&value)),
                'o' => f.output = Some(PathBuf::from(&value)),
                's' => f.scale = Some(s()),
                't' => f.tile = Some(s()),
                'm' => f.models = Some(PathBuf::from(&value)),
                'n' => f.name = Some(s()),
                'g' => f.gpu = Some(s()),
                'f' => f.format = Some(s()),
                'c' => f.compress = Some(s()),
                'w' => f.width = Some(s()),
                _ => {} // -j, -z: accepted, no effect
            }
            break;
        }
    }
    Ok(f)
}

/// The scale a model's name implies, as Upscayl and realesrgan assume it: `x2`/`2x` → 2,
/// `x3`/`3x` → 3, else 4.
pub fn model_scale(name: &str) -> usize {
    let n = name.to_ascii_lowercase();
    if n.contains("x2") || n.contains("2x") {
        2
    } else if n.contains("x3") || n.contains("3x") {
        3
    } else {
        4
    }
}

/// Words a parent process reads as an outcome (Upscayl tests every stderr chunk for them).
const SIGNAL_WORDS: [&str; 8] = [
    "error",
    "failed",
    "read",
    "write",
    "tile size",
    "successful",
    "resizing",
    "invalid gpu",
];

/// Text for stderr that no parent can mistake for an outcome or a progress figure: quoted,
/// with `\`, `"`, control characters and `%` as `\xNN`, and the first letter of each signal
/// word (any case) escaped the same way — `/tmp/thread/a.png` is shown as
/// `"/tmp/th\x72ead/a.png"`.
pub fn shown_text(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut starts = vec![false; text.len()];
    for w in SIGNAL_WORDS {
        for (i, _) in lower.match_indices(w) {
            starts[i] = true;
        }
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for (i, ch) in text.char_indices() {
        if starts[i] || ch.is_control() || matches!(ch, '\\' | '"' | '%') {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(ch);
        }
    }
    out.push('"');
    out
}

/// A path for stderr ([`shown_text`]).
pub fn shown(path: &Path) -> String {
    shown_text(&path.to_string_lossy())
}

/// The models folder: `-m` (a relative one that does not exist here is looked for beside the
/// binary, as realesrgan does), else `models` beside the binary, else `models` in the working
/// directory.
fn models_dir(flag: Option<PathBuf>) -> PathBuf {
    let beside = |p: &Path| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(p)))
            .filter(|d| d.is_dir())
    };
    match flag {
        Some(dir) if dir.is_dir() || dir.is_absolute() => dir,
        Some(dir) => beside(&dir).unwrap_or(dir),
        None => beside(Path::new("models")).unwrap_or_else(|| PathBuf::from("models")),
    }
}

/// The bundle folders in `dir` (sorted names).
pub fn bundles_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(pgp_core::bundle::MANIFEST).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The bundle `-m` / `-n` name.
fn model(dir: &Path, name: Option<&str>) -> Result<(PathBuf, String)> {
    let name = match name {
        Some(n) => n.to_string(),
        None => match bundles_in(dir).as_slice() {
            [one] => one.clone(),
            [] => bail!("no model bundle in the models folder {}", shown(dir)),
            many => bail!(
                "the models folder {} holds several bundles ({}); choose one with -n",
                shown(dir),
                many.iter()
                    .map(|n| shown_text(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let path = dir.join(&name);
    if !path.join(pgp_core::bundle::MANIFEST).is_file() {
        bail!(
            "no model {} in {} (a model is a bundle folder made by `pgp-wgpu convert`)",
            shown_text(&name),
            shown(dir)
        );
    }
    Ok((path, name))
}

/// Writes `NAME.param` and `NAME.bin` beside each bundle folder of `dir` (files that model
/// lists built from ncnn's file pairs show; their text says what they are). Returns the names.
pub fn write_stubs(dir: &Path) -> Result<Vec<String>> {
    let names = bundles_in(dir);
    if names.is_empty() {
        bail!("{}: no model bundle folders in it", dir.display());
    }
    for name in &names {
        let text = format!(
            "pgp-wgpu model stub: the model is the bundle folder `{name}/` beside this file. \
             Written by `pgp-wgpu ncnn-stubs` so that programs listing ncnn models \
             (NAME.param + NAME.bin) show it; ncnn cannot load it.\n"
        );
        for ext in ["param", "bin"] {
            let path = dir.join(format!("{name}.{ext}"));
            pgp_wgpu_cli::output::publish_file(&path, text.as_bytes(), true)?;
        }
    }
    Ok(names)
}

/// The ncnn protocol on stderr.
struct Ncnn {
    verbose: bool,
    /// The last percentage printed for this image (hundredths).
    last: u32,
}

impl Ncnn {
    fn percent(&mut self, hundredths: u32) {
        if hundredths > self.last {
            self.last = hundredths;
            line(&format!("{}.{:02}%", hundredths / 100, hundredths % 100));
        }
    }
}

impl Reporter for Ncnn {
    fn begin(&mut self, _input: &Path) {
        self.last = 0;
        line("0.00%");
    }
    fn event(&mut self, _input: &Path, event: &Event) {
        // A retry after running out of device memory grows the total: the figure waits until
        // the work passes the one shown (it never goes back).
        let total = u64::from(event.total.max(1));
        let h = (u64::from(event.done.min(event.total)) * 10_000 / total) as u32;
        // 100.00% is printed once the output is written.
        self.percent(h.min(9_999));
    }
    fn done(&mut self, input: &Path, output: &Path) {
        self.percent(10_000);
        line("Upscaled Successfully");
        if self.verbose {
            line(&format!("{} -> {} done", shown(input), shown(output)));
        }
    }
    fn failed(&mut self, input: &Path, error: &anyhow::Error) {
        line(&format!("Error: {}: {}", shown(input), describe(error)));
    }
    fn summary(&mut self, _upscaled: usize, _all: usize) {}
}

/// An error's text, in Upscayl's words where they apply.
fn describe(error: &anyhow::Error) -> String {
    let memory = error
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(pgp_core::Error::DeviceMemory(_))));
    let text = format!("{error:#}");
    if memory {
        format!("out of device memory at the smallest tile size ({text})")
    } else {
        text
    }
}

/// Runs the mode; the exit status: 0 when every image was upscaled, 1 when any failed, 2 for
/// a bad command line or a model or device that cannot be used.
pub fn main(args: &[OsString]) -> ExitCode {
    let flags = match parse(args) {
        Ok(f) => f,
        Err(e) => {
            line(&format!("Error: {e:#}"));
            line(USAGE);
            return ExitCode::from(2);
        }
    };
    if flags.help {
        line(USAGE);
        return ExitCode::SUCCESS;
    }
    let verbose = flags.verbose;
    match run(flags) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let mut text = format!("Error: {}", describe(&e));
            for msg in crate::device_errors() {
                text.push_str(&format!(" (device: {msg})"));
            }
            line(&text);
            if verbose {
                line(USAGE);
            }
            ExitCode::from(2)
        }
    }
}

fn number<T: std::str::FromStr>(flag: char, value: &str, what: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid -{flag} value {}: {what}", shown_text(value)))
}

fn run(f: Flags) -> Result<bool> {
    let (Some(input), Some(output)) = (f.input, f.output) else {
        bail!("-i input-path and -o output-path are required");
    };
    let dir = models_dir(f.models);
    let (bundle, name) = model(&dir, f.name.as_deref())?;
    let scale: usize = match &f.scale {
        Some(s) => number('s', s, "an upscale ratio from 1 to 16")?,
        None => model_scale(&name),
    };
    let tile = match &f.tile {
        None => TileSize::Auto,
        Some(t) => match number::<usize>('t', t, "a tile size in pixels, 0 = auto")? {
            0 => TileSize::Auto,
            // Input pixels → the engine's output pixels, a multiple of 8.
            t => TileSize::Pixels((t.saturating_mul(scale) / 8).max(1) * 8),
        },
    };
    let format = match f.format.as_deref().map(str::to_ascii_lowercase) {
        None => None,
        Some(f) if matches!(f.as_str(), "png" | "jpg" | "jpeg" | "webp") => {
            Some(if f == "jpeg" { "jpg".to_string() } else { f })
        }
        Some(other) => bail!("invalid format {} (jpg, png, webp)", shown_text(&other)),
    };
    let compress: f64 = match &f.compress {
        None => 0.0,
        Some(c) => number('c', c, "a compression from 0 to 100")?,
    };
    if !(0.0..=100.0).contains(&compress) {
        bail!("invalid compression {compress}: it should be between 0 and 100");
    }
    let width = match &f.width {
        None => None,
        Some(w) => {
            let (w, mode) = w.split_once(':').unwrap_or((w, "default"));
            if mode != "default" {
                bail!("invalid resize mode {} (only default)", shown_text(mode));
            }
            match number::<u32>('w', w, "a width in pixels")? {
                0 => None,
                w => Some(w),
            }
        }
    };
    let gpu_name = match f.gpu.as_deref().map(str::trim) {
        None | Some("auto") | Some("") => "auto".to_string(),
        Some(g) if g.contains(',') => {
            bail!(
                "Invalid GPU device list {}: one GPU at a time",
                shown_text(g)
            )
        }
        Some(g) => match g.parse::<usize>() {
            Ok(i) => format!("gpu:{i}"),
            Err(_) => bail!("Invalid GPU device {} (an index, or auto)", shown_text(g)),
        },
    };
    let gpu = pollster::block_on(Gpu::from_name(&gpu_name))
        .map_err(|e| anyhow!("Invalid GPU device {}: {e}", shown_text(&gpu_name)))?;
    if input.is_dir() && output.exists() && !output.is_dir() {
        bail!("the input and the output must both be files or both be folders");
    }
    let args = UpscaleArgs {
        input,
        output,
        recursive: false,
        format,
        model: bundle,
        options: Options {
            scale,
            tile,
            ..Options::default()
        },
        noise: None,
        overwrite: true,
        gpu,
        precision: Precision::Auto,
        dump_stages: None,
        max_pixels: 256_000_000,
        outputs: Outputs {
            ncnn_names: true,
            in_place: true,
            jpeg_quality: (100.0 - compress).round().max(1.0) as u8,
            width,
        },
    };
    upscale::run(
        args,
        &mut Ncnn {
            verbose: f.verbose,
            last: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn getopt_forms() {
        let f = parse(&os(&[
            "x",
            "-i",
            "a.png",
            "-oout.png",
            "-xvs3",
            "-n",
            "m",
            "-j",
            "1:2:2",
        ]))
        .unwrap();
        assert_eq!(f.input.as_deref(), Some(Path::new("a.png")));
        assert_eq!(f.output.as_deref(), Some(Path::new("out.png")));
        assert_eq!(f.scale.as_deref(), Some("3"));
        assert!(f.verbose);
        assert!(parse(&os(&["x", "-q"])).is_err());
        assert!(parse(&os(&["x", "-i"])).is_err());
        assert!(parse(&os(&["x", "stray"])).is_err());
        assert!(parse(&os(&["x", "--long"])).is_err());
        assert!(parse(&os(&["x", "-h"])).unwrap().help);
    }

    #[test]
    fn the_mode_is_chosen_by_name_or_a_leading_flag() {
        assert!(wanted(&os(&["/opt/bin/upscayl-bin", "upscale"])));
        assert!(wanted(&os(&["/x/realesrgan-ncnn-vulkan.exe"])));
        assert!(wanted(&os(&["realesrgan-ncnn-vulkan"])));
        assert!(wanted(&os(&["pgp-wgpu", "-i", "a"])));
        assert!(!wanted(&os(&["pgp-wgpu", "upscale", "-i", "a"])));
        assert!(!wanted(&os(&["pgp-wgpu", "--help"])));
        assert!(!wanted(&os(&["pgp-wgpu", "-V"])));
        assert!(!wanted(&os(&["pgp-wgpu"])));
    }

    #[test]
    fn model_names_give_scales() {
        assert_eq!(model_scale("RealESRGAN_x2plus"), 2);
        assert_eq!(model_scale("pgp-2x"), 2);
        assert_eq!(model_scale("x3"), 3);
        assert_eq!(model_scale("realesrgan-x4plus"), 4);
        assert_eq!(model_scale("osediff"), 4);
    }

    #[test]
    fn shown_paths_carry_no_signal_words() {
        let s = shown_text("/tmp/thread/Error 50% \"q\"/already written.png");
        for w in ["read", "Error", "%", "write", "\"q"] {
            assert!(!s[1..s.len() - 1].contains(w), "{s}");
        }
        assert_eq!(shown_text("a/b.png"), "\"a/b.png\"");
        assert_eq!(shown_text("th-read"), "\"th-\\x72ead\"");
    }
}
