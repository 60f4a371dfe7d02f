//! The binary's file handling, as a library so that the fuzzers (`fuzz/`) reach the same code:
//! reading input images and publishing outputs.

pub mod input;
pub mod output;
