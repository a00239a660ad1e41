//! # kiln
//!
//! Facade of the kiln workspace: re-exports [`model`] (`kiln-model`), [`attention`]
//! (`kiln-attention`), [`kernels`] (`kiln-kernels`), [`data`] (`kiln-data`), [`tune`]
//! (`kiln-tune`), [`lens`] (`kiln-lens`), [`format`] (`kiln-format`) and [`viz`]
//! (`kiln-viz`), and chooses burn backends by cargo feature so that everything else stays
//! generic over `B: Backend`.
//!
//! **Owns:** backend selection ([`backend`]). **Must not touch:** model, data or training
//! logic; nothing here is backend-specific outside the feature-gated aliases.
#![warn(missing_docs)]

pub mod backend;

pub use burn;
pub use kiln_attention as attention;
pub use kiln_data as data;
pub use kiln_format as format;
pub use kiln_kernels as kernels;
pub use kiln_lens as lens;
pub use kiln_model as model;
pub use kiln_tune as tune;
pub use kiln_viz as viz;
