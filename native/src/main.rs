//! `pgp-wgpu`: the command-line shell over `pgp-core`.

mod conformance;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use pgp_core::device::Backend;
use pgp_core::info::arch_info;
use pgp_core::presets::Arch;
use pgp_core::tokenizer::ClipTokenizer;

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
    /// Show the token ids SDXL's two CLIP tokenizers give a prompt.
    Tokenize {
        /// The prompt.
        text: String,
        /// Print JSON: {"ids_1": [77 ids], "ids_2": [77 ids], "truncated": bool}.
        #[arg(long)]
        json: bool,
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
        Command::Tokenize { text, json } => {
            let (t1, t2) = ClipTokenizer::sdxl()?;
            let (e1, e2) = (t1.encode(&text), t2.encode(&text));
            if json {
                let v = serde_json::json!({
                    "ids_1": e1.ids, "ids_2": e2.ids, "truncated": e1.truncated || e2.truncated,
                });
                println!("{v}");
            } else {
                let ids =
                    |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
                let content = t1.content_ids(&text);
                let shown: String = content
                    .iter()
                    .take(75)
                    .map(|&id| t1.token_text(id))
                    .collect();
                println!("tokenizer 1 (pads with <|endoftext|>): {}", ids(&e1.ids));
                println!("tokenizer 2 (pads with !):             {}", ids(&e2.ids));
                println!("the model sees: {}", shown.trim_end());
                if e1.truncated {
                    let dropped: String = content
                        .iter()
                        .skip(75)
                        .map(|&id| t1.token_text(id))
                        .collect();
                    println!(
                        "TRUNCATED: {} content tokens, 75 fit; dropped: {}",
                        content.len(),
                        dropped.trim_end()
                    );
                } else {
                    println!("{} of 75 content tokens used, not truncated", content.len());
                }
            }
            Ok(ExitCode::SUCCESS)
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
