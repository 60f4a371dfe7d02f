//! # pgp-core
//!
//! The one core library of pgp-wgpu: the networks of FaithDiff and PGP-DiffSR (SDXL UNet with
//! FaithDiff's LQ fusion and the pruned configs, PEAM, the VAE, the CLIP text encoders), the
//! Euler scheduler, weight loading with the real key names, and the conformance runner. It
//! runs on burn's wgpu backend (Vulkan/Metal/DX12 natively, WebGPU in the browser) and on
//! burn's CPU backend, and builds for `wasm32-unknown-unknown`: it never touches the file
//! system or blocks; callers hand it bytes.
//!
//! The way in is the facade ([`upscaler`]): a [`Gpu`], a bundle read through a [`ShardSource`],
//! an [`Upscaler`] and its [`Job`]s; the CLI, the web page and the C ABI all use it.
//!
//! Layout, mapped onto the paper's Figure 2 and diffusers' files:
//! - [`models`]: one module per network component (`unet_2d`, `unet_2d_blocks`,
//!   `transformer_2d`, `resnet`, `embeddings`, `faithdiff`, `peam`, `vae`, `clip`);
//! - [`schedulers`]: noise schedules as plain functions;
//! - [`attention`]: the single attention entry point; [`phase`]: PEAM's phase exchange;
//! - [`weights`]: safetensors parsing and the checked two-pass loader;
//! - [`conformance`]: numerical parity cases; [`info`]: parameter and FLOP counts;
//!   [`profile`]: time per kind of op on the CPU backend; [`ppa`]: the pruning analysis
//!   (feature measures through [`models::probe`], the report, the pruning plan).

#![forbid(unsafe_code)]

pub mod attention;
pub mod bundle;
pub mod config;
pub mod conformance;
pub mod device;
pub mod error;
pub mod families;
pub mod gpu_io;
pub mod info;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod phase;
pub mod pipeline;
pub mod pixels;
pub mod ppa;
pub mod precision;
pub mod presets;
pub mod profile;
pub mod prune;
pub mod rng;
pub mod schedulers;
pub mod source;
pub mod tokenizer;
pub mod torch_pickle;
pub mod upscaler;
pub mod weights;

pub use bundle::LoadProgress;
pub use burn;
pub use device::{Gpu, GpuInfo, GpuOptions};
pub use error::{Error, Result, WeightsMismatch};
pub use gpu_io::GpuImage;
pub use pipeline::color_fix::ColorFix;
pub use pipeline::run::{Event, NoiseData, Options, Stages, Start, TileSize, Unit};
pub use pixels::{Image, ImageView, PixelFormat};
pub use precision::Precision;
pub use safetensors;
#[cfg(feature = "fs")]
pub use source::DirSource;
pub use source::{BytesSource, ShardSource};
pub use upscaler::{CancelToken, Job, LoadOptions, Upscaler};
