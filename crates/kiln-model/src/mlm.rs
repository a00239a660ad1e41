//! The masked-language-model head of BERT (HF `BertForMaskedLM`'s `cls.predictions`).
//!
//! `logits = LN(act(h W_t + b_t)) Eᵀ + b`, where `E` is the word-embedding matrix (tied, as in
//! every BERT checkpoint: a stored `cls.predictions.decoder.weight` is ignored and `decoder.bias`
//! is the same tensor as `cls.predictions.bias`). Sentence-embedding checkpoints such as
//! all-MiniLM-L6-v2 ship no head; [`BertMlmHead::from_checkpoint`] then fails with
//! [`ModelError::Mismatch`] naming the missing tensors.

use std::path::Path;

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter};

use crate::activation::Activation;
use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::error::ModelError;
use crate::load::{check, open_store, remapper, store_error};

/// Checkpoint name of a head parameter path.
fn head_checkpoint_name(path: &str) -> String {
    match path {
        "bias" => "cls.predictions.bias".to_string(),
        "layer_norm.gamma" => "cls.predictions.transform.LayerNorm.weight".to_string(),
        "layer_norm.beta" => "cls.predictions.transform.LayerNorm.bias".to_string(),
        other => format!("cls.predictions.transform.{other}"),
    }
}

/// `cls.predictions`: transform (dense + activation + LayerNorm) and the output bias.
#[derive(Module, Debug)]
pub struct BertMlmHead<B: Backend> {
    /// `cls.predictions.transform.dense`.
    pub dense: Linear<B>,
    /// `cls.predictions.transform.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// `cls.predictions.bias` `[vocab]`.
    pub bias: Param<Tensor<B, 1>>,
    /// The config's `hidden_act`.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> BertMlmHead<B> {
    /// A freshly initialised head (bias zero, as HF).
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            dense: LinearConfig::new(config.hidden_size, config.hidden_size).init(device),
            layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
            activation: config.hidden_act,
        }
    }

    /// Vocabulary logits `[batch, seq, vocab]` of hidden states `[batch, seq, hidden]`, with the
    /// decoder tied to `model`'s word embeddings.
    pub fn forward(&self, model: &BertModel<B>, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = hidden.dims();
        let h = self.dense.forward(hidden.reshape([batch * seq, d]));
        let h = self.layer_norm.forward(self.activation.forward(h));
        let embeddings = model.embeddings.word_embeddings.weight.val();
        let vocab = embeddings.dims()[0];
        (h.matmul(embeddings.transpose()) + self.bias.val().unsqueeze()).reshape([batch, seq, vocab])
    }

    /// Reads `cls.predictions.*` from a HF safetensors file.
    ///
    /// # Errors
    /// [`ModelError::Io`]/[`ModelError::Checkpoint`] for unreadable files;
    /// [`ModelError::Mismatch`] when the checkpoint has no (or a differently shaped) MLM head.
    pub fn from_checkpoint(
        config: &BertConfig,
        path: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let remap = remapper(&[
            (r"^cls\.predictions\.transform\.dense\.", "dense."),
            (r"^cls\.predictions\.transform\.LayerNorm\.weight$", "layer_norm.gamma"),
            (r"^cls\.predictions\.transform\.LayerNorm\.bias$", "layer_norm.beta"),
            (r"^cls\.predictions\.bias$", "bias"),
        ]);
        let mut store = open_store(path)?.with_from_adapter(PyTorchToBurnAdapter).remap(remap);
        let mut head = Self::new(config, device);
        let result = head.load_from(&mut store).map_err(|e| store_error(path, e))?;
        // Every other tensor of the file belongs to the encoder: ignorable here.
        check(path, result, |_| true, head_checkpoint_name)?;
        Ok(head)
    }
}
