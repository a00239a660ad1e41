//! The typed files of a run directory, shared by the code that writes them (training) and the
//! code that reads them back (`lens analyse`, `export`, `report`): `config.json`
//! ([`RunConfig`], with the run's [`Provenance`]); the lines of `metrics.jsonl`
//! ([`MetricsLine`]), `dynamics.jsonl` and `transfer.jsonl` are defined in the burn-free
//! `kiln-format` (the report reads them) and re-exported here. docs/run-directory.md describes
//! every file.
//!
//! `config.json` carries a format version ([`FORMAT_VERSION`]). Files from before versioning
//! (no `format` key: `{"task", "train"}`) are read as version 1, without provenance; a file
//! written by a newer kiln is refused with a message naming both versions.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::run_dir::DataSource;
use crate::trainer::TrainConfig;

/// The run-format version this kiln writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;

/// `config.json`: what the run was started with and where everything came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run-format version ([`FORMAT_VERSION`] when written by this kiln).
    pub format: u32,
    /// GLUE task short name (`rte`, `sst2` …).
    pub task: String,
    /// The training configuration (strategy, attention conversion, seed … included).
    pub train: TrainConfig,
    /// Where the model and data came from, and what ran it; `None` for runs written before
    /// format 2, or by library callers that give none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// Where a run's inputs came from and what ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The pretrained model.
    pub model: ModelRecord,
    /// The data, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSource>,
    /// `kiln-tune`'s version.
    pub kiln_version: String,
    /// The git commit kiln was built from, where the build knew it (`KILN_GIT_COMMIT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The backend that trained (`flex`, `ndarray`, `wgpu`, `cuda`).
    pub backend: String,
    /// Start time, seconds since the Unix epoch (UTC).
    pub started_unix_s: u64,
}

impl Provenance {
    /// The provenance of a run starting now on `backend` with `model` and `data`; kiln's
    /// version is this crate's, the git commit the one in `KILN_GIT_COMMIT` at build time.
    pub fn now(model: ModelRecord, data: Option<DataSource>, backend: &str) -> Self {
        Self {
            model,
            data,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("KILN_GIT_COMMIT").map(str::to_string),
            backend: backend.to_string(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// A pretrained model directory and the hash of its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// The directory it was loaded from.
    pub path: PathBuf,
    /// Its hub id, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The weights file's name inside `path`.
    pub weights: String,
    /// SHA-256 of the weights file, lowercase hex.
    pub sha256: String,
}

/// The weights files kiln loads, in the order it looks for them.
const WEIGHTS_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.safetensors"];

impl ModelRecord {
    /// Records the model in `dir` (its weights file hashed).
    ///
    /// # Errors
    /// [`RunFileError::Io`] when no weights file can be read.
    pub fn of_dir(dir: &Path, id: Option<String>) -> Result<Self, RunFileError> {
        let weights = WEIGHTS_FILES
            .iter()
            .find(|f| dir.join(f).is_file())
            .ok_or_else(|| RunFileError::Io {
                path: dir.join(WEIGHTS_FILES[0]),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no weights file"),
            })?;
        Ok(Self {
            path: dir.to_path_buf(),
            id,
            weights: weights.to_string(),
            sha256: sha256_file(&dir.join(weights))?,
        })
    }

    /// Checks that `dir` holds the same weights as recorded.
    ///
    /// # Errors
    /// [`RunFileError::ModelChanged`] naming both hashes; [`RunFileError::Io`].
    pub fn verify(&self, dir: &Path) -> Result<(), RunFileError> {
        let file = dir.join(&self.weights);
        let actual = sha256_file(&file)?;
        if actual == self.sha256 {
            Ok(())
        } else {
            Err(RunFileError::ModelChanged {
                file,
                recorded: self.sha256.clone(),
                actual,
            })
        }
    }
}

/// SHA-256 of a file, lowercase hex (read in 1 MiB chunks).
///
/// # Errors
/// [`RunFileError::Io`].
pub fn sha256_file(path: &Path) -> Result<String, RunFileError> {
    let io = |source| RunFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Errors of reading run files.
#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid run file.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (serde's message names the field and position).
        message: String,
    },
    /// Written by a newer kiln.
    #[error("{path}: run format {found} was written by a newer kiln; this kiln reads formats 1 to {FORMAT_VERSION} (upgrade kiln to read this run)")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
    },
    /// The model's weights differ from the ones the run was trained from.
    #[error("{file} is not the model this run was trained from: its SHA-256 is {actual}, the run recorded {recorded} (pass the original model, or retrain)")]
    ModelChanged {
        /// The weights file checked.
        file: PathBuf,
        /// The hash in `config.json`.
        recorded: String,
        /// The file's hash now.
        actual: String,
    },
}

/// The first-version layout (before `format`): task and training configuration only.
#[derive(Deserialize)]
struct RunConfigV1 {
    task: String,
    train: TrainConfig,
}

impl RunConfig {
    /// A format-[`FORMAT_VERSION`] config.
    pub fn new(task: &str, train: TrainConfig, provenance: Option<Provenance>) -> Self {
        Self {
            format: FORMAT_VERSION,
            task: task.to_string(),
            train,
            provenance,
        }
    }

    /// Reads `run/config.json`, of any format this kiln knows.
    ///
    /// # Errors
    /// [`RunFileError`]: unreadable, malformed, or from a newer kiln.
    pub fn read(run: &Path) -> Result<Self, RunFileError> {
        let path = run.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| RunFileError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a `config.json` found at `path` (for messages).
    ///
    /// # Errors
    /// As [`RunConfig::read`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, RunFileError> {
        let invalid = |e: serde_json::Error| RunFileError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(invalid)?;
        match value.get("format").map(serde_json::Value::as_u64) {
            None if value.get("provenance").is_some() => Err(RunFileError::Invalid {
                path: path.to_path_buf(),
                message: "has `provenance` but no `format` (a format-2 file missing its version?)".into(),
            }),
            None => {
                let v1: RunConfigV1 = serde_json::from_value(value).map_err(invalid)?;
                Ok(Self {
                    format: 1,
                    task: v1.task,
                    train: v1.train,
                    provenance: None,
                })
            }
            Some(Some(found)) if found > u64::from(FORMAT_VERSION) => Err(RunFileError::NewerFormat {
                path: path.to_path_buf(),
                found: found.try_into().unwrap_or(u32::MAX),
            }),
            Some(Some(_)) => serde_json::from_value(value).map_err(invalid),
            Some(None) => Err(RunFileError::Invalid {
                path: path.to_path_buf(),
                message: "`format` must be a whole number".into(),
            }),
        }
    }

    /// The JSON value written to `config.json` (and compared on resume).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a run config serialises")
    }
}

/// Errors of restoring a run's model from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A run file.
    #[error(transparent)]
    RunFile(#[from] RunFileError),
    /// The checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The tuned part.
    #[error(transparent)]
    Tuned(#[from] crate::strategy::TunedIoError),
    /// The strategy.
    #[error(transparent)]
    Strategy(#[from] crate::strategy::StrategyError),
    /// Neither weights file.
    #[error("{0} has neither tuned.safetensors nor model.safetensors")]
    NoWeights(PathBuf),
}

impl RunConfig {
    /// Rebuilds the model a run saved in `run/checkpoints/<checkpoint>` on top of `base` (the
    /// pretrained model with a fresh head, loaded by the caller): converts the attention the
    /// run converted (same variant and layers), inserts the strategy's modules and loads the
    /// saved weights. Returns the model and its strategy.
    ///
    /// # Errors
    /// [`RestoreError`]: missing or mismatched checkpoint files.
    pub fn restore<B: burn::prelude::Backend>(
        &self,
        mut base: crate::classifier::SequenceClassifier<B>,
        run: &Path,
        checkpoint: &str,
        device: &B::Device,
    ) -> Result<(crate::classifier::SequenceClassifier<B>, crate::strategy::Tuning), RestoreError> {
        use crate::checkpoint::{load_model, MODEL_FILE, TUNED_FILE};
        if let Some(variant) = &self.train.attention {
            // Feature maps come from the checkpoint; fixed projections from the variant's seed.
            base.bert
                .convert_attention(variant, self.train.attention_layers.as_deref(), 0.0);
        }
        let dir = run.join("checkpoints").join(checkpoint);
        if dir.join(TUNED_FILE).exists() {
            let tuning = crate::strategy::read_tuning(&dir.join(TUNED_FILE))?;
            let model = tuning.insert(base, device)?;
            Ok((
                crate::strategy::load_tuned(model, &tuning, &dir.join(TUNED_FILE))?,
                tuning,
            ))
        } else if dir.join(MODEL_FILE).exists() {
            load_model(&mut base, &dir.join(MODEL_FILE))?;
            Ok((base, crate::strategy::Tuning::new(&[])?))
        } else {
            Err(RestoreError::NoWeights(dir))
        }
    }
}

pub use kiln_format::training::{DynamicsLine, MetricsLine, TransferLine};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_config_reads_without_provenance_and_a_newer_one_is_refused() {
        let path = Path::new("run/config.json");
        let v1 = r#"{"task": "rte", "train": {"epochs": 2, "lr": 3e-5}}"#;
        let c = RunConfig::parse(v1, path).unwrap();
        assert_eq!(
            (c.format, c.task.as_str(), c.train.epochs, c.train.lr),
            (1, "rte", 2, 3e-5)
        );
        assert!(c.provenance.is_none());

        let newer = r#"{"format": 3, "task": "rte", "train": {}, "provenance": {"anything": 1}}"#;
        let e = RunConfig::parse(newer, path).unwrap_err().to_string();
        assert!(
            e.contains("run format 3 was written by a newer kiln") && e.contains("1 to 2"),
            "{e}"
        );

        let unversioned = r#"{"task": "rte", "train": {}, "provenance": {}}"#;
        let e = RunConfig::parse(unversioned, path).unwrap_err().to_string();
        assert!(e.contains("has `provenance` but no `format`"), "{e}");

        let bad = r#"{"format": 2, "task": "rte", "train": {"epoch": 2}}"#;
        let e = RunConfig::parse(bad, path).unwrap_err().to_string();
        assert!(
            e.starts_with("run/config.json: ") && e.contains("unknown field `epoch`"),
            "{e}"
        );
    }

    #[test]
    fn a_config_round_trips_and_a_changed_model_is_named_by_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"weights v1").unwrap();
        let model = ModelRecord::of_dir(dir.path(), Some("sentence-transformers/all-MiniLM-L6-v2".into())).unwrap();
        // sha256("weights v1"), computed independently (Python hashlib).
        assert_eq!(
            model.sha256,
            "13e35c44395f6cade670c076230362267c5288989d3498e207877d62b859a6d8"
        );
        let config = RunConfig::new(
            "mrpc",
            TrainConfig::default(),
            Some(Provenance {
                model: model.clone(),
                data: None,
                kiln_version: "0.1.0".into(),
                git_commit: None,
                backend: "flex".into(),
                started_unix_s: 1_800_000_000,
            }),
        );
        let text = serde_json::to_string_pretty(&config).unwrap();
        assert_eq!(RunConfig::parse(&text, Path::new("config.json")).unwrap(), config);
        model.verify(dir.path()).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"weights v2").unwrap();
        let e = model.verify(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&model.sha256) && e.contains("is not the model this run was trained from"),
            "{e}"
        );
        let actual = sha256_file(&dir.path().join("model.safetensors")).unwrap();
        assert!(e.contains(&actual), "{e}");
    }
}
