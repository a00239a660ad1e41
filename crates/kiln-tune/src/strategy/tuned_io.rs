//! Saving and loading the tuned part of a model: the tensors its strategy trains (all of
//! them under full fine-tuning) and the pooler, by kiln path, with the strategy in the file's
//! metadata.
//!
//! The pooler is saved although no restricting strategy trains it: checkpoints such as
//! all-MiniLM-L6-v2 have none, so it is initialised fresh for the run and the base model alone
//! cannot reproduce it (files written before it was saved load with a warning and whatever
//! pooler the base model gets).

use std::collections::HashMap;

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use kiln_model::roles::{ModelRoles, ParamRole, Roles, Site};

use super::{StrategyConfig, Tuning};

/// Whether a tuned-part file holds the parameter with `role`.
fn saved(tuning: &Tuning, role: &ParamRole) -> bool {
    tuning.trains(role) || role.site == Site::Pooler
}

/// Errors of saving or loading a tuned part.
#[derive(Debug, thiserror::Error)]
pub enum TunedIoError {
    /// Writing the file.
    #[error(transparent)]
    Write(#[from] crate::checkpoint::CheckpointError),
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a safetensors file.
    #[error("{path}: {source}")]
    Safetensors {
        /// The file.
        path: std::path::PathBuf,
        /// The safetensors error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The strategy in the file's metadata is not valid JSON of a strategy list.
    #[error("{path}: kiln.tuning metadata: {source}")]
    TuningJson {
        /// The file.
        path: std::path::PathBuf,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The strategy in the file's metadata is not a valid combination.
    #[error("{path}: kiln.tuning metadata: {source}")]
    TuningInvalid {
        /// The file.
        path: std::path::PathBuf,
        /// Why the strategy is refused.
        #[source]
        source: super::StrategyError,
    },
    /// Valid safetensors, but not a tuned part (no strategy metadata, a non-f32 tensor).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file and the model disagree.
    #[error("{path}: tuned tensors do not fit the model: missing {missing:?}, wrong shape {wrong_shape:?}")]
    Mismatch {
        /// The file.
        path: std::path::PathBuf,
        /// Trained paths of the model the file lacks.
        missing: Vec<String>,
        /// `path: file shape vs model shape`.
        wrong_shape: Vec<String>,
    },
}

struct Collect<'a> {
    tuning: &'a Tuning,
    roles: &'a Roles,
    stack: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for Collect<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.stack.join(".");
        if self.roles.get(param.id).is_some_and(|r| saved(self.tuning, r)) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
            self.out.push((path, shape, data));
        }
    }
}

/// The trained tensors of `model` under `tuning` as a safetensors file (kiln paths, f32), with
/// the strategy in the metadata (`kiln.tuning`). Full fine-tuning saves everything.
pub fn tuned_bytes<B: Backend, M: Module<B> + ModelRoles>(model: &M, tuning: &Tuning) -> Vec<u8> {
    let roles = model.param_roles();
    let mut c = Collect {
        tuning,
        roles: &roles,
        stack: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = c
        .out
        .into_iter()
        .map(|(p, s, d)| (p, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(p, s, b)| {
            (
                p.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    let meta = HashMap::from([(
        "kiln.tuning".to_string(),
        serde_json::to_string(&tuning.components).expect("json"),
    )]);
    safetensors::serialize(views, Some(meta)).expect("serialize")
}

struct Apply<'a> {
    tensors: &'a HashMap<String, (Vec<usize>, Vec<f32>)>,
    tuning: &'a Tuning,
    roles: &'a Roles,
    stack: Vec<String>,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Apply<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.join(".");
        let Some(role) = self.roles.get(param.id).filter(|r| saved(self.tuning, r)) else {
            return param;
        };
        let Some((shape, data)) = self.tensors.get(&path) else {
            if role.site == Site::Pooler && !self.tuning.trains(role) {
                tracing::warn!(
                    "{path}: not in the tuned file (written before kiln saved the pooler); the base model's is used"
                );
            } else {
                self.missing.push(path);
            }
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        if shape.as_slice() != tensor.dims().as_slice() {
            self.wrong_shape
                .push(format!("{path}: {shape:?} vs {:?}", tensor.dims()));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let loaded = Tensor::<B, D>::from_data(
            burn::tensor::TensorData::new(data.clone(), shape.clone()),
            &tensor.device(),
        )
        .set_require_grad(require_grad);
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Writes [`tuned_bytes`] atomically to `path`.
///
/// # Errors
/// [`TunedIoError::Io`].
pub fn save_tuned<B: Backend, M: Module<B> + ModelRoles>(
    model: &M,
    tuning: &Tuning,
    path: &std::path::Path,
) -> Result<(), TunedIoError> {
    Ok(crate::checkpoint::write_atomic(path, &tuned_bytes(model, tuning))?)
}

/// The strategy stored in a tuned-part file.
///
/// # Errors
/// [`TunedIoError`] when the file cannot be read or has no valid `kiln.tuning` metadata.
pub fn read_tuning(path: &std::path::Path) -> Result<Tuning, TunedIoError> {
    let bytes = std::fs::read(path).map_err(|source| TunedIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |message: String| TunedIoError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|source| TunedIoError::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("kiln.tuning"))
        .ok_or_else(|| format("no kiln.tuning metadata".into()))?;
    let components: Vec<StrategyConfig> = serde_json::from_str(text).map_err(|source| TunedIoError::TuningJson {
        path: path.to_path_buf(),
        source,
    })?;
    Tuning::new(&components).map_err(|source| TunedIoError::TuningInvalid {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a tuned part saved by [`save_tuned`] into `model`, which must already carry the
/// strategy's inserted modules ([`Tuning::insert`]) on top of the same base weights.
///
/// # Errors
/// [`TunedIoError`]: unreadable file, or tensors missing or of the wrong shape.
pub fn load_tuned<B: Backend, M: Module<B> + ModelRoles>(
    model: M,
    tuning: &Tuning,
    path: &std::path::Path,
) -> Result<M, TunedIoError> {
    let bytes = std::fs::read(path).map_err(|source| TunedIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|source| TunedIoError::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(TunedIoError::Format {
                path: path.to_path_buf(),
                message: format!("{name}: dtype {:?}, expected F32", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    let roles = model.param_roles();
    let mut apply = Apply {
        tensors: &tensors,
        tuning,
        roles: &roles,
        stack: Vec::new(),
        missing: Vec::new(),
        wrong_shape: Vec::new(),
    };
    let model = model.map(&mut apply);
    if !apply.missing.is_empty() || !apply.wrong_shape.is_empty() {
        return Err(TunedIoError::Mismatch {
            path: path.to_path_buf(),
            missing: apply.missing,
            wrong_shape: apply.wrong_shape,
        });
    }
    Ok(model)
}
