//! Helpers shared by the integration tests: the binary, the repository root, scratch folders,
//! bundles converted from the tiny fixture.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The `pgp-wgpu` binary.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgp-wgpu"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// stdout and stderr of a finished command.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Mean absolute difference of two 8-bit images' bytes, in 1/255 units.
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "images of different sizes");
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.len() as f64
}

/// A scratch folder under the target dir, fresh per test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tiny fixture (tests/hub) in the real layouts.
pub fn hub() -> PathBuf {
    root().join("tests/hub")
}

/// A `convert` command from the given SDXL and VAE folders and checkpoint into `out`.
pub fn convert_command(sdxl: &Path, vae: &Path, faithdiff: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.arg("convert")
        .arg("--sdxl")
        .arg(sdxl)
        .arg("--vae")
        .arg(vae)
        .arg("--faithdiff")
        .arg(faithdiff)
        .arg("-o")
        .arg(out);
    c
}

/// Runs `convert` on tests/hub with `faithdiff` as the checkpoint.
pub fn convert(out: &Path, faithdiff: &Path, extra: &[&str]) -> Output {
    convert_command(&hub().join("sdxl"), &hub().join("vae"), faithdiff, out)
        .args(extra)
        .output()
        .unwrap()
}

/// The fixture converted once per test process: `f32` (`--dtype f32`), `one-step` (also
/// `--one-step`) or `sharded` (f32 in shards of at most 1 MiB).
pub fn bundle(kind: &str) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = made.get(kind) {
        return p.clone();
    }
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = scratch(&format!("bundles-{stem}-{kind}"));
    let out = dir.join("bundle");
    let extra: &[&str] = match kind {
        "f32" => &["--dtype", "f32", "-q"],
        "f16" => &["--dtype", "f16", "-q"],
        "one-step" => &["--dtype", "f32", "--one-step", "-q"],
        "sharded" => &["--dtype", "f32", "--max-shard-mib", "1", "-q"],
        other => panic!("no bundle kind {other}"),
    };
    let o = convert(&out, &hub().join("FaithDiff.bin"), extra);
    assert!(o.status.success(), "{}", text(&o));
    made.insert(kind.into(), out.clone());
    out
}

pub mod hub_server;
