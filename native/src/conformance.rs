//! `pgp-wgpu conformance DIR...`: finds cases, reads their files, runs each through
//! `pgp_core::conformance`, prints one line per case. A broken case is a FAIL, never a crash.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pgp_core::Gpu;
use pgp_core::burn::tensor::FloatDType;
use pgp_core::conformance::{CaseFiles, CaseOutcome, run_case};
use pgp_core::error::panic_message;
use pgp_core::precision::dtype_name;
use pgp_core::weights::WeightFile;

/// Expands each argument into case folders: a folder with `case.json`, or the sorted
/// sub-folders of a folder that hold one.
pub fn find_cases(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut cases = Vec::new();
    for dir in dirs {
        if dir.join("case.json").is_file() {
            cases.push(dir.clone());
            continue;
        }
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("{}: not a case or a folder of cases", dir.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("case.json").is_file())
            .collect();
        if found.is_empty() {
            bail!(
                "{}: holds no case (no case.json in it or its sub-folders)",
                dir.display()
            );
        }
        found.sort();
        cases.extend(found);
    }
    Ok(cases)
}

fn read_safetensors(path: &Path) -> Result<WeightFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(WeightFile::from_bytes(path.display().to_string(), bytes)?)
}

/// Reads one case's files.
pub fn load_case(dir: &Path) -> Result<CaseFiles> {
    let case_json = std::fs::read_to_string(dir.join("case.json"))
        .with_context(|| format!("reading {}", dir.join("case.json").display()))?;
    let weights_path = dir.join("weights.safetensors");
    let weights = if weights_path.exists() {
        Some(read_safetensors(&weights_path)?)
    } else {
        None
    };
    let tensors = read_safetensors(&dir.join("tensors.safetensors"))?;
    Ok(CaseFiles {
        case_json,
        weights,
        tensors,
    })
}

/// Runs one case folder; any error or panic becomes `Err` with its reason.
pub fn run_one(dir: &Path, gpu: &Gpu, dtype: FloatDType) -> Result<CaseOutcome> {
    let files = load_case(dir)?;
    let device = gpu.device();
    match catch_unwind(AssertUnwindSafe(|| {
        pollster::block_on(run_case(&files, device, dtype))
    })) {
        Ok(result) => Ok(result?),
        Err(panic) => {
            bail!("internal error: {}", panic_message(panic.as_ref()))
        }
    }
}

/// Runs every case and prints a line each; true when all pass.
pub fn run(dirs: &[PathBuf], gpu: &Gpu, dtype: FloatDType, verbose: bool) -> Result<bool> {
    let cases = find_cases(dirs)?;
    let mut failed = 0;
    for dir in &cases {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match run_one(dir, gpu, dtype) {
            Ok(o) => {
                let verdict = if o.pass() { "PASS" } else { "FAIL" };
                if !o.pass() {
                    failed += 1;
                }
                println!(
                    "{name:<32} {:<26} {:>10.3e}  {verdict}  (max_rel_l2 {:.0e})",
                    o.kind, o.worst, o.tolerance
                );
                if verbose {
                    for (t, e) in &o.errors {
                        println!("    {t:<28} {e:.3e}");
                    }
                }
            }
            Err(e) => {
                failed += 1;
                let kind = std::fs::read_to_string(dir.join("case.json"))
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .and_then(|v| v["kind"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "?".into());
                let reason = format!("{e:#}").replace('\n', "\n    ");
                println!("{name:<32} {kind:<26} {:>10}  FAIL  {reason}", "-");
            }
        }
    }
    println!(
        "{} of {} cases passed on {} ({}) in {}",
        cases.len() - failed,
        cases.len(),
        gpu.info().name,
        gpu.info().backend,
        dtype_name(dtype)
    );
    Ok(failed == 0)
}
