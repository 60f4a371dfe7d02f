//! Where downloaded models' bundles live, and the one `upscale` uses by default.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

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
