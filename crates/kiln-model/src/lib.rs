//! # kiln-model
//!
//! The transformer core of kiln: model configurations read from Hugging Face `config.json`,
//! a BERT-style post-LN encoder ([`BertModel`]) and a GPT-2 pre-LN causal decoder
//! ([`Gpt2Model`], with incremental decoding: KV cache or RNN-mode state, [`DecodeState`])
//! whose parameter trees mirror HF's so checkpoints load by name, mean
//! pooling for sentence embeddings, opt-in [`Capture`] of intermediate tensors for
//! analysis, and typed parameter roles ([`roles`]: where each parameter sits and what it is,
//! from the model's own fields) by which tuning strategies choose what trains. Every model is
//! generic over `B: Backend`.
//!
//! **Owns:** configs, embeddings, blocks, pooling, checkpoint loading, capture points.
//! **Must not touch:** the attention mechanism itself (`kiln-attention`: blocks only call
//! the [`kiln_attention::Attention`] trait), tokenization and datasets (`kiln-data`),
//! training (`kiln-tune`), analyses (`kiln-lens`).
//!
//! Written here rather than taken from burn: burn's `gelu` backward is the tanh
//! approximation's derivative ([`activation::gelu_exact`] composes `erf` instead), and
//! burn-nn's `TransformerEncoder` is pre/post-LN configurable but lays parameters out
//! differently from HF and exposes no capture points. Loading uses burn-store's safetensors
//! store with key remapping ([`load`]).
#![warn(missing_docs)]

pub mod activation;
pub mod bert;
pub mod capture;
pub mod config;
pub mod error;
pub mod gpt2;
pub mod heads;
pub mod hub;
pub mod layers;
pub mod load;
pub mod mlm;
pub mod parity;
pub mod peft;
pub mod pooling;
pub mod roles;

pub use bert::{BertModel, Intervention};
pub use capture::{Capture, LayerCapture, ModelOutput};
pub use config::{BertConfig, GptConfig};
pub use error::{ModelError, ShapeMismatch};
pub use gpt2::{DecodeState, Gpt2Model, LayerState, Sampling};
pub use heads::{AttentionHeads, HeadLayer};
pub use load::{gpt2_weights_bytes, load_bert_weights, load_gpt2_weights, CheckpointDir, LoadReport};
pub use mlm::BertMlmHead;
pub use pooling::{l2_normalize, mean_pool, sentence_embedding};
pub use roles::{LinearSlot, ParamRole, Part, Roles, Site, TensorKind};
