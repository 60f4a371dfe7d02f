//! The binary's work that is not its command line, as a library: reading input images and
//! publishing outputs (which the fuzzers reach), converting weights into bundles and
//! downloading models (which the Python package calls, so Python and the CLI write the same
//! bundles).

pub mod cache;
pub mod convert;
#[cfg(feature = "download")]
pub mod download;
pub mod input;
pub mod output;
