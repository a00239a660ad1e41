//! # kiln-data
//!
//! Everything between text files and integer tensors: the model's tokenizer
//! (`tokenizer.json` through the `tokenizers` crate) with explicit truncation and padding,
//! and — as the fine-tuning work lands — dataset loaders, batching and metrics.
//!
//! **Owns:** text → ids, batching, task metrics. **Must not touch:** burn tensors or models
//! (it returns plain `Vec`s, so it builds and tests without a backend).
#![warn(missing_docs)]

mod tokenize;

pub use tokenize::{BatchEncoding, DataError, TextInput, TextTokenizer};
