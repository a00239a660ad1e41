//! # kiln-data
//!
//! Everything between text files and integer ids: the model's tokenizer (`tokenizer.json`
//! through the `tokenizers` crate) with explicit truncation and padding, GLUE task files as
//! published, plain-text LM corpora, deterministic batching, and GLUE's metrics.
//!
//! **Owns:** text → ids, batching order, task metrics. **Must not touch:** burn tensors or
//! models (it returns plain `Vec`s, so it builds and tests without a backend).
#![warn(missing_docs)]

pub mod batching;
pub mod glue;
pub mod lm;
pub mod metrics;
mod tokenize;

pub use glue::{Example, GlueError, GlueSplit, GlueTask, Label, OnMalformed};
pub use tokenize::{BatchEncoding, DataError, TextInput, TextTokenizer};
