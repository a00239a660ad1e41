//! Loading Hugging Face checkpoints (`config.json` + `model.safetensors`) through burn-store.
//!
//! burn-store does the reading, key remapping and layout adaptation; this module only states
//! the name mapping of each model family and turns burn-store's [`ApplyResult`] into a typed
//! [`ModelError::Mismatch`] listing missing, unexpected and wrong-shape tensors by their
//! checkpoint names.
//!
//! Name mapping (checkpoint → kiln):
//! - BERT: an optional `bert.` prefix is dropped; `attention.self.` → `attention.self_attention.`;
//!   `LayerNorm.weight/bias` → `layer_norm.gamma/beta`; Linear weights are transposed
//!   (`[out, in]` → burn's `[in, out]`) by burn-store's `PyTorchToBurnAdapter`.
//! - GPT-2: an optional `transformer.` prefix is dropped; `ln_*.weight/bias` → `gamma/beta`;
//!   no transposition (HF's `Conv1D` is already `[in, out]`).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn_store::{ApplyError, ApplyResult, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::bert::BertModel;
use crate::config::{BertConfig, GptConfig};
use crate::error::{ModelError, ShapeMismatch};
use crate::gpt2::Gpt2Model;

/// What a successful load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of tensors written into the model.
    pub applied: usize,
    /// Checkpoint tensors deliberately not used (buffers such as `position_ids`, heads the
    /// model was built without).
    pub ignored: Vec<String>,
}

/// Tensors a checkpoint may carry that an encoder/decoder body legitimately leaves unused.
fn is_ignorable(name: &str, has_pooler: bool) -> bool {
    name.ends_with("position_ids")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.starts_with("cls.")
        || name.starts_with("classifier.")
        || name.starts_with("lm_head.")
        || (!has_pooler && name.starts_with("pooler."))
}

pub(crate) fn open_store(path: &Path) -> Result<SafetensorsStore, ModelError> {
    // Report a missing file as I/O, before burn-store's lazy reader gets to it.
    std::fs::metadata(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SafetensorsStore::from_file(path).allow_partial(true).validate(false))
}

pub(crate) fn remapper(patterns: &[(&str, &str)]) -> KeyRemapper {
    KeyRemapper::from_patterns(patterns.to_vec()).expect("static patterns are valid regexes")
}

/// Turns burn-store's result into a report or a typed mismatch error; unused checkpoint
/// tensors for which `ignorable` holds are reported as ignored, the others as unexpected.
pub(crate) fn check(
    path: &Path,
    result: ApplyResult,
    ignorable: impl Fn(&str) -> bool,
    to_checkpoint_name: fn(&str) -> String,
) -> Result<LoadReport, ModelError> {
    let missing: Vec<String> = result.missing.iter().map(|(p, _)| to_checkpoint_name(p)).collect();
    let (ignored, unexpected): (Vec<String>, Vec<String>) = result
        .unused
        .iter()
        .map(|p| to_checkpoint_name(p))
        .partition(|n| ignorable(n));
    let mut wrong_shape = Vec::new();
    let mut other = Vec::new();
    for error in &result.errors {
        match error {
            ApplyError::ShapeMismatch { path, expected, found } => wrong_shape.push(ShapeMismatch {
                name: to_checkpoint_name(path),
                expected: expected.to_vec(),
                found: found.to_vec(),
            }),
            e => other.push(e.to_string()),
        }
    }
    if missing.is_empty() && unexpected.is_empty() && wrong_shape.is_empty() && other.is_empty() {
        tracing::debug!(
            applied = result.applied.len(),
            ignored = ignored.len(),
            "checkpoint loaded"
        );
        return Ok(LoadReport {
            applied: result.applied.len(),
            ignored,
        });
    }
    Err(ModelError::Mismatch {
        path: path.to_path_buf(),
        missing,
        unexpected,
        wrong_shape,
        other,
    })
}

pub(crate) fn store_error(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn bert_checkpoint_name(kiln_path: &str) -> String {
    kiln_path
        .replace("attention.self_attention.", "attention.self.")
        .replace("layer_norm.gamma", "LayerNorm.weight")
        .replace("layer_norm.beta", "LayerNorm.bias")
        .replace("layer_norm", "LayerNorm")
}

fn gpt2_checkpoint_name(kiln_path: &str) -> String {
    kiln_path.replace(".gamma", ".weight").replace(".beta", ".bias")
}

/// Loads BERT weights (HF names, with or without the `bert.` prefix) into `model`.
/// Wrong shapes are reported in kiln's layout (Linear weights `[in, out]`).
///
/// # Errors
/// [`ModelError::Io`] / [`ModelError::Checkpoint`] for unreadable files,
/// [`ModelError::Mismatch`] when tensors are missing, unexpected or of the wrong shape.
pub fn load_bert_weights<B: Backend>(
    model: &mut BertModel<B>,
    path: impl AsRef<Path>,
) -> Result<LoadReport, ModelError> {
    let path = path.as_ref();
    let mut store = open_store(path)?
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(remapper(&[
            (r"^bert\.", ""),
            (r"attention\.self\.", "attention.self_attention."),
            // Explicit (not via the adapter's alternative-name lookup, which burn-store 0.21
            // still reports as "unused").
            (r"LayerNorm\.weight$", "layer_norm.gamma"),
            (r"LayerNorm\.bias$", "layer_norm.beta"),
        ]));
    let result = model.load_from(&mut store).map_err(|e| store_error(path, e))?;
    let has_pooler = model.pooler.is_some();
    check(path, result, |n| is_ignorable(n, has_pooler), bert_checkpoint_name)
}

/// Loads GPT-2 weights (HF names, with or without the `transformer.` prefix).
///
/// # Errors
/// As [`load_bert_weights`].
pub fn load_gpt2_weights<B: Backend>(
    model: &mut Gpt2Model<B>,
    path: impl AsRef<Path>,
) -> Result<LoadReport, ModelError> {
    let path = path.as_ref();
    let mut store = open_store(path)?.remap(remapper(&[
        (r"^transformer\.", ""),
        (r"(ln_\w+)\.weight$", "$1.gamma"),
        (r"(ln_\w+)\.bias$", "$1.beta"),
    ]));
    let result = model.load_from(&mut store).map_err(|e| store_error(path, e))?;
    check(path, result, |n| is_ignorable(n, false), gpt2_checkpoint_name)
}

/// A softmax GPT-2 model's weights as Hugging Face `GPT2LMHeadModel` safetensors
/// (`transformer.h.{i}.attn.c_attn.weight`, Conv1D `[in, out]` layout, tied head not
/// stored), readable by [`load_gpt2_weights`] and by transformers. Parameters of converted
/// attention mechanisms have no GPT-2 name and are written under their kiln path.
///
/// # Errors
/// [`ModelError::Checkpoint`] when burn-store fails to serialise.
pub fn gpt2_weights_bytes<B: Backend>(model: &Gpt2Model<B>) -> Result<Vec<u8>, ModelError> {
    let fail = |e: &dyn std::fmt::Display| ModelError::Checkpoint {
        path: PathBuf::from("<memory>"),
        message: e.to_string(),
    };
    let mut store = SafetensorsStore::from_bytes(None).remap(remapper(&[
        (r"(ln_\w+)\.gamma$", "$1.weight"),
        (r"(ln_\w+)\.beta$", "$1.bias"),
        (r"^", "transformer."),
    ]));
    model.save_into(&mut store).map_err(|e| fail(&e))?;
    store.get_bytes().map_err(|e| fail(&e))
}

/// Paths of a Hugging Face model directory.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    /// The directory.
    pub dir: PathBuf,
}

impl CheckpointDir {
    /// Wraps a directory holding `config.json` and `model.safetensors`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `model.safetensors`.
    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    /// `tokenizer.json`.
    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

impl<B: Backend> BertModel<B> {
    /// Builds the model from `dir/config.json` and loads `dir/model.safetensors`.
    /// With `with_pooler`, the checkpoint must contain `pooler.dense`.
    ///
    /// Loading a checkpoint and running a forward pass that captures every hidden state and
    /// attention map (what transformers returns with `output_hidden_states=True,
    /// output_attentions=True`):
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use burn::prelude::*;
    /// use kiln_model::{BertModel, Capture};
    ///
    /// let device = Default::default();
    /// // A 2-layer BERT in Hugging Face layout (any BERT checkpoint directory works).
    /// let (model, config) = BertModel::<Flex>::from_pretrained("../../fixtures/tiny-bert-mlm", false, &device)?;
    /// let ids = Tensor::<Flex, 2, Int>::from_ints([[2, 17, 30, 3]], &device);
    /// let mask = Tensor::<Flex, 2, Int>::ones([1, 4], &device);
    /// let out = model.forward(ids, None, Some(mask), Capture::hidden_and_attentions());
    /// assert_eq!(out.last_hidden_state.dims(), [1, 4, config.hidden_size]);
    /// assert_eq!(out.hidden_states.len(), config.num_hidden_layers + 1);
    /// let attentions = out.attentions(); // per layer [batch, heads, seq, seq]
    /// let row_sum: f32 = attentions[0].clone().sum_dim(3).mean().into_scalar();
    /// assert!((row_sum - 1.0).abs() < 1e-5);
    /// # Ok::<(), kiln_model::ModelError>(())
    /// ```
    ///
    /// # Errors
    /// Any [`ModelError`] from the config or the weights.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        with_pooler: bool,
        device: &B::Device,
    ) -> Result<(Self, BertConfig), ModelError> {
        let dir = CheckpointDir::new(dir.as_ref());
        let config = BertConfig::from_file(dir.config())?;
        let mut model = Self::new(&config, with_pooler, device);
        load_bert_weights(&mut model, dir.weights())?;
        Ok((model, config))
    }
}

impl<B: Backend> Gpt2Model<B> {
    /// Builds the model from `dir/config.json` and loads `dir/model.safetensors`.
    ///
    /// # Errors
    /// Any [`ModelError`] from the config or the weights.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<(Self, GptConfig), ModelError> {
        let dir = CheckpointDir::new(dir.as_ref());
        let config = GptConfig::from_file(dir.config())?;
        let mut model = Self::new(&config, device);
        load_gpt2_weights(&mut model, dir.weights())?;
        Ok((model, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_invert_the_remapping() {
        assert_eq!(
            bert_checkpoint_name("encoder.layer.3.attention.self_attention.query.weight"),
            "encoder.layer.3.attention.self.query.weight"
        );
        assert_eq!(
            bert_checkpoint_name("embeddings.layer_norm.gamma"),
            "embeddings.LayerNorm.weight"
        );
        assert_eq!(gpt2_checkpoint_name("h.1.ln_2.beta"), "h.1.ln_2.bias");
    }

    #[test]
    fn buffers_and_heads_are_ignorable_but_weights_are_not() {
        assert!(is_ignorable("embeddings.position_ids", false));
        assert!(is_ignorable("pooler.dense.weight", false));
        assert!(!is_ignorable("pooler.dense.weight", true));
        assert!(!is_ignorable("encoder.layer.0.output.dense.weight", false));
    }
}
