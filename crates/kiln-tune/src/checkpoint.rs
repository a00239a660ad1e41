//! Checkpoints of a classifier run: weights in Hugging Face names, optimizer moments, and the
//! loop's position — all written atomically (temporary file or directory, then rename), so an
//! interrupted write never replaces a good checkpoint with a partial one.
//!
//! Layout of a checkpoint directory:
//! - `model.safetensors` — `bert.*`, `classifier.*` in `BertForSequenceClassification`
//!   names and layouts (Linear weights `[out, in]`), loadable by transformers — when every
//!   parameter trains; or `tuned.safetensors` — only the trained tensors in kiln paths, with
//!   the strategy in its metadata — when a strategy trains a subset;
//! - `optimizer.safetensors` — `exp_avg.<kiln path>`, `exp_avg_sq.<kiln path>` (flattened);
//! - `state.json` — [`TrainState`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::strategy::Tuning;

use crate::classifier::SequenceClassifier;
use crate::optim::{AdamW, Moments};

/// Errors of checkpoint I/O.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is not safetensors.
    #[error("checkpoint {path}: {source}")]
    Safetensors {
        /// The path.
        path: PathBuf,
        /// The safetensors error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// `state.json` or the optimizer's step metadata is not JSON of its shape.
    #[error("checkpoint {path}: {source}")]
    Json {
        /// The path.
        path: PathBuf,
        /// serde's error (field, line, column).
        #[source]
        source: serde_json::Error,
    },
    /// A tuned-part file (kiln paths) that does not load.
    #[error("checkpoint {path}: {source}")]
    Tuned {
        /// The path.
        path: PathBuf,
        /// Why it does not load.
        #[source]
        source: Box<crate::strategy::TunedIoError>,
    },
    /// A model family's weights file (GPT-2) that does not load or save.
    #[error("checkpoint {path}: {source}")]
    Model {
        /// The path.
        path: PathBuf,
        /// kiln-model's error (boxed: it is large and rare).
        #[source]
        source: Box<kiln_model::ModelError>,
    },
    /// A checkpoint file is malformed or does not fit the model.
    #[error("checkpoint {path}: {message}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory (so the rename itself survives a power cut). On failure
/// (disk full, say) the temporary file is removed and `path` is untouched.
///
/// # Errors
/// [`CheckpointError::Io`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    kiln_format::run::write_atomic(path, bytes).map_err(CheckpointError::from)
}

impl From<kiln_format::run::RunFileError> for CheckpointError {
    fn from(e: kiln_format::run::RunFileError) -> Self {
        use kiln_format::run::RunFileError as E;
        let message = e.to_string();
        match e {
            E::Io { path, source } => Self::Io { path, source },
            E::Parse { path, source } => Self::Json { path, source },
            E::Invalid { path, .. }
            | E::NewerFormat { path, .. }
            | E::ModelChanged { file: path, .. }
            | E::DataChanged { file: path, .. } => Self::Invalid { path, message },
        }
    }
}

/// fsyncs a directory, making renames inside it durable.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The sibling directories [`save`] stages a checkpoint in and moves the previous one to.
fn swap_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    (
        parent.join(format!(".{name}.staging")),
        parent.join(format!(".{name}.old")),
    )
}

/// Finishes a checkpoint swap that a crash interrupted. [`save`] moves the previous checkpoint
/// aside (`.<name>.old`) and then renames the complete new one (`.<name>.staging`) into place;
/// a crash between the two renames leaves no `dir`. This puts the newest complete checkpoint
/// back (the staged one when it is complete — `state.json` is written last — else the old one)
/// and returns which one it used. Called by [`save`] and before a resume.
///
/// # Errors
/// [`CheckpointError::Io`] if a rename fails.
pub fn recover(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    if dir.exists() {
        return Ok(None);
    }
    let (staging, old) = swap_dirs(dir);
    for candidate in [staging, old] {
        if candidate.join("state.json").is_file() {
            std::fs::rename(&candidate, dir).map_err(io(dir))?;
            sync_dir(dir.parent().unwrap_or(Path::new(".")))?;
            tracing::warn!(
                "recovered checkpoint {} from {} (a previous save was interrupted)",
                dir.display(),
                candidate.display()
            );
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Where the loop stands; enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer updates done.
    pub global_step: usize,
    /// Epoch of the next micro-batch.
    pub epoch: usize,
    /// Index of the next micro-batch within the epoch's order.
    pub next_batch: usize,
    /// Best value of the primary dev metric so far, and its step.
    pub best: Option<(f64, usize)>,
    /// Seed of the run (data order, dropout).
    pub seed: u64,
}

fn to_hf() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (r"attention\.self_attention\.", "attention.self."),
        (r"layer_norm\.", "LayerNorm."),
        (r"\.mechanism\.[A-Za-z]+\.", "."),
    ])
    .expect("static patterns")
}

fn from_hf() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (r"attention\.self\.", "attention.self_attention."),
        (
            r"attention\.self_attention\.feature_map\.",
            "attention.self_attention.mechanism.Linear.feature_map.",
        ),
        (r"LayerNorm\.weight$", "layer_norm.gamma"),
        (r"LayerNorm\.bias$", "layer_norm.beta"),
    ])
    .expect("static patterns")
}

/// Serialises the classifier's weights in HF names and layout.
///
/// # Errors
/// [`CheckpointError::Invalid`] if burn-store fails.
pub fn model_bytes<B: Backend>(model: &SequenceClassifier<B>) -> Result<Vec<u8>, CheckpointError> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(to_hf());
    model
        .save_into(&mut store)
        .map_err(|e| invalid(Path::new("<memory>"), e))?;
    store.get_bytes().map_err(|e| invalid(Path::new("<memory>"), e))
}

/// Loads weights written by [`model_bytes`] (or by transformers) into `model`.
///
/// # Errors
/// [`CheckpointError`] when unreadable, incomplete or of the wrong shapes.
pub fn load_model<B: Backend>(model: &mut SequenceClassifier<B>, path: &Path) -> Result<(), CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(from_hf())
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| invalid(path, e))?;
    let unused: Vec<&String> = result.unused.iter().filter(|u| !u.ends_with("position_ids")).collect();
    if !result.missing.is_empty() || !result.errors.is_empty() || !unused.is_empty() {
        return Err(invalid(
            path,
            format!(
                "missing {:?}, unexpected {:?}, errors {:?}",
                result.missing, unused, result.errors
            ),
        ));
    }
    Ok(())
}

fn optimizer_bytes<B: Backend>(opt: &AdamW<B>) -> Result<Vec<u8>, CheckpointError> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (path, m) in &opt.state {
        for (kind, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
            let values = t
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| invalid(Path::new(path), format!("{e:?}")))?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((format!("{kind}.{path}"), vec![values.len()], bytes));
        }
    }
    data.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    let steps: std::collections::BTreeMap<&String, u64> = opt.state.iter().map(|(p, m)| (p, m.step)).collect();
    let meta = HashMap::from([
        ("step".to_string(), opt.step.to_string()),
        ("param_steps".to_string(), serde_json::to_string(&steps).expect("json")),
    ]);
    safetensors::serialize(views, Some(meta)).map_err(|source| CheckpointError::Safetensors {
        path: PathBuf::from("optimizer.safetensors"),
        source,
    })
}

fn load_optimizer<B: Backend>(opt: &mut AdamW<B>, path: &Path, device: &B::Device) -> Result<(), CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st_error = |source| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        source,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(st_error)?;
    let step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(path, "no step in metadata"))?;
    let param_steps: HashMap<String, u64> = match meta.metadata().as_ref().and_then(|m| m.get("param_steps")) {
        Some(text) => serde_json::from_str(text).map_err(|source| CheckpointError::Json {
            path: path.to_path_buf(),
            source,
        })?,
        None => HashMap::new(),
    };
    let st = SafeTensors::deserialize(&bytes).map_err(st_error)?;
    let mut tensors: HashMap<String, Tensor<B, 1>> = HashMap::new();
    for (name, view) in st.tensors() {
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let n = values.len();
        tensors.insert(name, Tensor::from_data(TensorData::new(values, [n]), device));
    }
    let mut state = HashMap::new();
    let paths: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("exp_avg.").map(str::to_string))
        .collect();
    for p in paths {
        let m = tensors.remove(&format!("exp_avg.{p}")).expect("listed");
        let v = tensors
            .remove(&format!("exp_avg_sq.{p}"))
            .ok_or_else(|| invalid(path, format!("exp_avg_sq.{p} missing")))?;
        state.insert(
            p.clone(),
            Moments {
                exp_avg: m,
                exp_avg_sq: v,
                step: param_steps.get(&p).copied().unwrap_or(step),
            },
        );
    }
    opt.state = state;
    opt.step = step;
    Ok(())
}

/// Writes a complete checkpoint into `dir` atomically (staged in a sibling directory,
/// then swapped in).
///
/// # Errors
/// [`CheckpointError`].
pub fn save<B: Backend, O: Backend, M: WholeWeights<B>>(
    dir: &Path,
    model: &M,
    tuning: &Tuning,
    opt: &AdamW<O>,
    state: &TrainState,
) -> Result<(), CheckpointError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    // A crash inside the previous swap must not cost the complete checkpoint it left.
    recover(dir)?;
    let (staging, old) = swap_dirs(dir);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let staged = (|| {
        write_weights(&staging, model, tuning)?;
        write_atomic(&staging.join("optimizer.safetensors"), &optimizer_bytes(opt)?)?;
        write_atomic(
            &staging.join("state.json"),
            serde_json::to_string_pretty(state).expect("serialisable").as_bytes(),
        )
    })();
    if let Err(e) = staged {
        // Disk full, say: drop the partial checkpoint (the previous one is untouched) so that
        // it does not hold on to the space.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))?;
    sync_dir(parent)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Writes what `tuning` trains into `dir`: `model.safetensors` (HF names, the whole model) when
/// everything trains, else `tuned.safetensors` (only the trained tensors, kiln paths; see
/// [`crate::strategy::save_tuned`]).
///
/// # Errors
/// [`CheckpointError`] on I/O.
pub fn write_weights<B: Backend, M: WholeWeights<B>>(
    dir: &Path,
    model: &M,
    tuning: &Tuning,
) -> Result<(), CheckpointError> {
    if tuning.restricts() {
        write_atomic(&dir.join(TUNED_FILE), &crate::strategy::tuned_bytes(model, tuning))
    } else {
        write_atomic(&dir.join(MODEL_FILE), &model.whole_weights()?)
    }
}

/// Loads what [`write_weights`] wrote into `dir` back into `model` (which carries the
/// strategy's inserts).
///
/// # Errors
/// [`CheckpointError`] when the file is unreadable or does not fit.
pub fn read_weights<B: Backend, M: WholeWeights<B>>(
    dir: &Path,
    model: M,
    tuning: &Tuning,
) -> Result<M, CheckpointError> {
    if tuning.restricts() {
        let path = dir.join(TUNED_FILE);
        crate::strategy::load_tuned(model, tuning, &path).map_err(|e| CheckpointError::Tuned {
            path: path.clone(),
            source: Box::new(e),
        })
    } else {
        let mut model = model;
        model.load_whole_weights(&dir.join(MODEL_FILE))?;
        Ok(model)
    }
}

/// A model whose whole weights a checkpoint can hold, in its family's Hugging Face names.
pub trait WholeWeights<B: Backend>: Module<B> + kiln_model::roles::ModelRoles {
    /// The weights as a safetensors file.
    ///
    /// # Errors
    /// [`CheckpointError::Invalid`] when serialisation fails.
    fn whole_weights(&self) -> Result<Vec<u8>, CheckpointError>;

    /// Loads a file written by [`WholeWeights::whole_weights`].
    ///
    /// # Errors
    /// [`CheckpointError`] when unreadable, incomplete or of the wrong shapes.
    fn load_whole_weights(&mut self, path: &Path) -> Result<(), CheckpointError>;
}

impl<B: Backend> WholeWeights<B> for SequenceClassifier<B> {
    fn whole_weights(&self) -> Result<Vec<u8>, CheckpointError> {
        model_bytes(self)
    }

    fn load_whole_weights(&mut self, path: &Path) -> Result<(), CheckpointError> {
        load_model(self, path)
    }
}

impl<B: Backend> WholeWeights<B> for kiln_model::Gpt2Model<B> {
    fn whole_weights(&self) -> Result<Vec<u8>, CheckpointError> {
        kiln_model::gpt2_weights_bytes(self).map_err(|source| CheckpointError::Model {
            path: PathBuf::from("<memory>"),
            source: Box::new(source),
        })
    }

    fn load_whole_weights(&mut self, path: &Path) -> Result<(), CheckpointError> {
        kiln_model::load_gpt2_weights(self, path)
            .map(|_| ())
            .map_err(|source| CheckpointError::Model {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
    }
}

/// Whole-model weights file of a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Tuned-part file of a checkpoint directory (strategies that train a subset).
pub const TUNED_FILE: &str = "tuned.safetensors";

/// Restores optimizer moments and the loop state from `dir` (load the model weights first
/// with [`load_model`], then build the optimizer for the loaded parameters).
///
/// # Errors
/// [`CheckpointError`].
pub fn load_optimizer_and_state<O: Backend>(
    dir: &Path,
    opt: &mut AdamW<O>,
    device: &O::Device,
) -> Result<TrainState, CheckpointError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|source| CheckpointError::Json {
        path: state_path.clone(),
        source,
    })?;
    load_optimizer(opt, &dir.join("optimizer.safetensors"), device)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed write (here: the rename onto a non-empty directory fails, as a full disk fails
    /// the write) leaves the target untouched and no temporary file behind.
    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("results.json");
        std::fs::create_dir_all(target.join("occupied")).unwrap();
        assert!(write_atomic(&target, b"{}").is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["results.json".to_string()]);
        assert!(target.join("occupied").is_dir());
    }

    /// `recover` prefers the complete staged checkpoint, falls back to the old one, ignores an
    /// incomplete staging directory, and leaves an existing checkpoint alone.
    #[test]
    fn recover_restores_the_newest_complete_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let last = dir.path().join("last");
        let (staging, old) = swap_dirs(&last);
        let make = |d: &Path, step: &str| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("state.json"), step).unwrap();
        };
        make(&staging, "new");
        make(&old, "old");
        assert_eq!(recover(&last).unwrap(), Some(staging.clone()));
        assert_eq!(std::fs::read_to_string(last.join("state.json")).unwrap(), "new");
        assert_eq!(recover(&last).unwrap(), None, "a present checkpoint is left alone");
        std::fs::remove_dir_all(&last).unwrap();
        std::fs::create_dir_all(&staging).unwrap(); // incomplete: no state.json
        assert_eq!(recover(&last).unwrap(), Some(old.clone()));
        assert_eq!(std::fs::read_to_string(last.join("state.json")).unwrap(), "old");
    }
}
