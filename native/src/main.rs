//! `pgp-wgpu`: the command-line shell over `pgp-core`.

mod conformance;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use pgp_core::device::Backend;
use pgp_core::info::arch_info;
use pgp_core::presets::Arch;

#[derive(Parser)]
#[command(
    name = "pgp-wgpu",
    version,
    about = "Diffusion super-resolution (FaithDiff / PGP-DiffSR) on wgpu, without Python"
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
    },
    /// Parameter counts and FLOPs of an architecture preset.
    Info {
        /// `faithdiff`, `pgp-coarse` or `pgp`.
        #[arg(long, default_value = "faithdiff")]
        arch: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Conformance {
            dirs,
            device,
            verbose,
        } => {
            let backend = Backend::parse(&device)?;
            let ok = conformance::run(&dirs, backend, verbose)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Info { arch, json } => {
            let arch = Arch::parse(&arch)?;
            let info = arch_info(arch, &Backend::Cpu.device())?;
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
