//! Noise schedulers as plain functions over their diffusers configs.

pub mod euler;
