//! # kiln-lens
//!
//! Interpretability metrics computed from a model's capture points. Today: the norm-based
//! analysis of the attention block of post-LN BERT, with residual and LayerNorm, and the
//! mixing ratios of Kobayashi et al. (2020, "Attention is Not Only a Weight"; 2021,
//! "Incorporating Residual and Normalization Layers into Analysis of Masked Language
//! Models") — see [`norm`]; attention rollout, gradient × input and integrated gradients —
//! see [`attribution`]; head importance (gate gradients and first-order Taylor scores), head
//! masking and pruning — see [`heads`]; value zeroing (Mohebbi et al. 2023) — see
//! [`value_zeroing`]; knowledge neurons (Dai et al. 2022) — see [`neurons`]; exact PCA,
//! t-SNE and neighbourhood-preservation scores of hidden-state projections — see
//! [`projection`]; data maps of training dynamics — see [`datamap`]. All of them for a trained
//! classifier at once, as the typed `analysis.json` the report shows: [`pipeline::analyse`]; the
//! ones that make sense for a causal decoder (attention, rollout, gradient × input, IG, head
//! importance and pruning, projections), in the same format: [`decoder::analyse_decoder`].
//!
//! **Owns:** analysis arithmetic on captured tensors, and the pipeline that runs it on a
//! trained classifier. **Must not touch:** model code (it reads weights and `Capture` outputs
//! of `kiln-model`, never changes them), training (it uses kiln-tune's classifier, batching
//! and evaluation, never its optimiser or loop), rendering, file layout (`kiln-format`).
//! Everything is batched and backend-generic.
#![warn(missing_docs)]

pub mod attribution;
pub mod datamap;
pub mod decoder;
pub mod heads;
pub mod neurons;
pub mod norm;
pub mod pipeline;
pub mod projection;
pub mod value_zeroing;
