//! The FaithDiff / PGP-DiffSR inference pipeline (`shared/spec/pipeline.md`): image
//! pre- and post-processing, latent tiling and colour correction. Pure functions over host
//! images and burn tensors, so the same code runs natively and in the browser.

pub mod color_fix;
pub mod image;
pub mod one_step;
pub mod run;
pub mod tiling;
