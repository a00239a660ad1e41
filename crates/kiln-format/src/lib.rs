//! # kiln-format
//!
//! The files of a run directory (docs/run-directory.md) as serde types shared by the code that
//! writes them and every reader — `kiln-tune`, `kiln-lens`, the report (`kiln-viz`), scripts
//! — so a field renamed on one side fails to compile or to parse instead of silently showing
//! nothing: `config.json`, `data.json`, `results.json`, `trainable.json` ([`run`]; the
//! training configuration inside `config.json` is a type parameter, owned by `kiln-tune`),
//! the lines of `metrics.jsonl`, `dynamics.jsonl` and `transfer.jsonl` ([`training`], written
//! by `kiln-tune`'s loop) and `analysis/analysis.json` ([`analysis::Analysis`], written by
//! `kiln_lens::pipeline`).
//!
//! **Owns:** the layout of these files, their format versions, writing them atomically and
//! reading them back with errors that name the file. **Must not touch:** burn, models,
//! training or analysis arithmetic (it holds numbers, it does not compute them).
#![warn(missing_docs)]

pub mod analysis;
pub mod run;
pub mod runs;
pub mod tensorboard;
pub mod training;

use std::path::{Path, PathBuf};

/// A run file that could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape (serde names the line, column and field).
    #[error("{path} is not a valid {what}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which kind of file was expected.
        what: &'static str,
        /// serde's message, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// One line of a JSON-lines file is not an entry of the expected shape.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde's message.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written in a format version this kiln does not read.
    #[error(
        "{path} is in format {found:?}; this kiln reads {expected:?} (re-run `cargo xtask lens analyse` to rewrite it)"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: String,
        /// The version this kiln writes and reads.
        expected: &'static str,
    },
    /// A binary file (a TensorBoard event file) is not in its format.
    #[error("{path} is malformed: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        why: String,
    },
}

/// Reads `path` as JSON of type `T`, naming the file in any error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| FormatError::Parse {
        path: path.to_path_buf(),
        what,
        source,
    })
}
