//! The lines training appends to a run directory — `metrics.jsonl` ([`MetricsLine`]),
//! `dynamics.jsonl` ([`DynamicsLine`]) and `transfer.jsonl` ([`TransferLine`]) — written by
//! `kiln-tune`'s loop and read back by the report, with [`read_lines`] naming the file and line
//! of a malformed entry.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::FormatError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsLine {
    /// Training loss over the last `log_every` optimizer steps.
    Train {
        /// Optimizer step (1-based).
        step: usize,
        /// Epoch (0-based).
        epoch: usize,
        /// Mean loss of the window.
        loss: f64,
        /// Learning rate of the step.
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
        /// Training throughput so far.
        seq_per_s: f64,
    },
    /// Dev-set metrics.
    Eval {
        /// Optimizer step.
        step: usize,
        /// Epoch.
        epoch: usize,
        /// Metric name → value (`accuracy`, `f1`, `mcc`, `pearson` …).
        metrics: BTreeMap<String, f64>,
    },
}

/// One line of `dynamics.jsonl` (training dynamics for data maps, Swayamdipta et al. 2020):
/// after each epoch, every training example's probability of its gold label and whether the
/// prediction was right, in file order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicsLine {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Optimizer step.
    pub step: usize,
    /// `P(gold)` per training example.
    pub p_gold: Vec<f32>,
    /// Whether the argmax was the gold label, per training example.
    pub correct: Vec<bool>,
}

/// One line of `transfer.jsonl`: the attention-transfer loss at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "transfer")]
pub struct TransferLine {
    /// Transfer step (0-based).
    pub step: usize,
    /// Loss.
    pub loss: f64,
}

/// Every non-empty line of the JSON-lines file at `path` as a `T`; an empty list where the
/// file does not exist (a run without that kind of record).
///
/// # Errors
/// [`FormatError::Io`] for an unreadable file, [`FormatError::Line`] naming the file and the
/// 1-based line of the first malformed entry.
pub fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, FormatError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FormatError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| FormatError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_typed_and_a_bad_line_is_named_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let lines = [
            MetricsLine::Train {
                step: 1,
                epoch: 0,
                loss: 0.7,
                lr: 1e-5,
                grad_norm: 1.5,
                seq_per_s: 30.0,
            },
            MetricsLine::Eval {
                step: 1,
                epoch: 0,
                metrics: [("accuracy".to_string(), 0.5)].into(),
            },
        ];
        let text: String = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n\n")
            .collect();
        assert!(text.starts_with(r#"{"kind":"train","step":1"#), "{text}");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_lines::<MetricsLine>(&path).unwrap(), lines);
        std::fs::write(&path, text + "{\"kind\":\"train\",\"step\":2}\n").unwrap();
        let e = read_lines::<MetricsLine>(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:5") && e.contains("missing field"), "{e}");
        assert!(read_lines::<DynamicsLine>(&dir.path().join("absent.jsonl"))
            .unwrap()
            .is_empty());
        let t: TransferLine = serde_json::from_str(r#"{"kind":"transfer","step":3,"loss":0.25}"#).unwrap();
        assert_eq!(t, TransferLine { step: 3, loss: 0.25 });
    }
}
