//! # pgp-core
//!
//! The one core library of pgp-wgpu: the networks of FaithDiff and PGP-DiffSR (SDXL UNet with
//! FaithDiff's LQ fusion and the pruned configs, PEAM, the VAE, the CLIP text encoders), the
//! Euler scheduler, weight loading with the real key names, and the conformance runner. It
//! runs on burn's wgpu backend (Vulkan/Metal/DX12 natively, WebGPU in the browser) and on
//! burn's CPU backend, and builds for `wasm32-unknown-unknown`: it never touches the file
//! system or blocks; callers hand it bytes.
//!
//! Layout, mapped onto the paper's Figure 2 and diffusers' files:
//! - [`models`]: one module per network component (`unet_2d`, `unet_2d_blocks`,
//!   `transformer_2d`, `resnet`, `embeddings`, `faithdiff`, `peam`, `vae`, `clip`);
//! - [`schedulers`]: noise schedules as plain functions;
//! - [`attention`]: the single attention entry point; [`phase`]: PEAM's phase exchange;
//! - [`weights`]: safetensors parsing and the checked two-pass loader;
//! - [`conformance`]: numerical parity cases; [`info`]: parameter and FLOP counts.

#![forbid(unsafe_code)]

pub mod attention;
pub mod bundle;
pub mod config;
pub mod conformance;
pub mod device;
pub mod error;
pub mod info;
pub mod kernels;
pub mod models;
pub mod nn;
pub mod phase;
pub mod pipeline;
pub mod presets;
pub mod schedulers;
pub mod tokenizer;
pub mod torch_pickle;
pub mod weights;

pub use burn;
pub use error::{Error, Result, WeightsMismatch};
pub use safetensors;
