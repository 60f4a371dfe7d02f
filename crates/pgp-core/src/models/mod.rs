//! The networks, one module per component (the paper's Figure 2 and diffusers' file layout).

pub mod clip;
pub mod embeddings;
pub mod faithdiff;
pub mod peam;
pub mod probe;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
