//! Typed errors of model configuration and checkpoint loading.

use std::path::PathBuf;

/// A tensor whose shape in the checkpoint differs from what the model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Checkpoint (Hugging Face) name of the tensor.
    pub name: String,
    /// Shape the model expects.
    pub expected: Vec<usize>,
    /// Shape found in the checkpoint.
    pub found: Vec<usize>,
}

/// Errors raised while reading a configuration or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or lacks a required field.
    #[error("invalid model config {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. "missing field `hidden_size` at line 3 column 1".
        #[source]
        source: serde_json::Error,
    },
    /// The config parsed but describes a model kiln cannot build.
    #[error("unsupported model config: {0}")]
    Unsupported(String),
    /// The safetensors file is malformed (truncated, bad header, ...).
    #[error("cannot read checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What the safetensors reader reported.
        message: String,
    },
    /// The checkpoint's tensors do not match the model built from the config.
    #[error("checkpoint {path} does not match the model: {}", describe_mismatch(.missing, .unexpected, .wrong_shape, .other))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Tensors the model needs that the checkpoint lacks (checkpoint names).
        missing: Vec<String>,
        /// Tensors in the checkpoint that the model has no place for (checkpoint names).
        unexpected: Vec<String>,
        /// Tensors present with the wrong shape.
        wrong_shape: Vec<ShapeMismatch>,
        /// Any other per-tensor error (dtype, adapter) as reported by burn-store.
        other: Vec<String>,
    },
    /// An input the model cannot take (too long for its positions, an id outside its
    /// vocabulary): reported before any tensor op, which would panic in a gather.
    #[error("input {what} = {value} is out of range: {limit}")]
    Input {
        /// What was checked (`sequence length`, `token id`, `token type id`, `batch size`).
        what: &'static str,
        /// The offending value.
        value: i64,
        /// What the model allows.
        limit: String,
    },
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    wrong_shape: &[ShapeMismatch],
    other: &[String],
) -> String {
    let mut parts = Vec::new();
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = v.len().saturating_sub(8);
        if more > 0 {
            format!("{} (+{more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), list(missing)));
    }
    if !wrong_shape.is_empty() {
        let shapes: Vec<String> = wrong_shape
            .iter()
            .map(|m| format!("{} expected {:?} found {:?}", m.name, m.expected, m.found))
            .collect();
        parts.push(format!("{} wrong shape: {}", shapes.len(), list(&shapes)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("{} unexpected: {}", unexpected.len(), list(unexpected)));
    }
    if !other.is_empty() {
        parts.push(format!("{} other: {}", other.len(), list(other)));
    }
    parts.join("; ")
}

/// Checks a `[batch, seq]` batch of token ids against a model's position table and
/// vocabulary (shared by [`crate::BertModel::check_input`] and
/// [`crate::Gpt2Model::check_input`]). `room` is the positions left for the text, `positions`
/// and `note` only word the message.
pub(crate) fn check_ids(
    batch: usize,
    seq: usize,
    ids: &[i64],
    room: usize,
    vocab: usize,
    note: &str,
) -> Result<(), ModelError> {
    let input = |what, value: usize, limit: String| ModelError::Input {
        what,
        value: i64::try_from(value).unwrap_or(i64::MAX),
        limit,
    };
    if batch == 0 || seq == 0 {
        return Err(input(
            "batch size × length",
            batch * seq,
            "an input needs at least one row of one token".into(),
        ));
    }
    if seq > room {
        return Err(input(
            "sequence length",
            seq,
            format!("{note}; truncate to max_length ≤ {room}"),
        ));
    }
    if let Some(&id) = ids.iter().find(|&&i| i < 0 || i >= vocab as i64) {
        return Err(ModelError::Input {
            what: "token id",
            value: id,
            limit: format!("the vocabulary has ids 0..{vocab}"),
        });
    }
    Ok(())
}
