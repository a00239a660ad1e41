//! Model hyper-parameters read from Hugging Face `config.json` files.
//!
//! Unknown fields are ignored (HF configs carry many); a missing required field, or a value
//! kiln cannot honour, is a [`ModelError`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::error::ModelError;

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Config {
        path: path.to_path_buf(),
        source,
    })
}

fn default_bert_eps() -> f64 {
    1e-12
}
fn default_gelu() -> Activation {
    Activation::Gelu
}
fn default_type_vocab() -> usize {
    2
}
fn default_absolute() -> String {
    "absolute".into()
}
fn default_dropout() -> f64 {
    0.1
}

/// BERT-style encoder configuration (`model_type` `bert`, and look-alikes such as MiniLM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward inner layer.
    pub intermediate_size: usize,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Number of segment (token type) ids.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (BERT: 1e-12; burn's default 1e-5 would be wrong here).
    #[serde(default = "default_bert_eps")]
    pub layer_norm_eps: f64,
    /// Feed-forward activation.
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    /// Dropout on embeddings and residual branches (train mode only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (train mode only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Only `"absolute"` is supported.
    #[serde(default = "default_absolute")]
    pub position_embedding_type: String,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: usize,
}

impl BertConfig {
    /// Reads and validates `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Io`], [`ModelError::Config`] or [`ModelError::Unsupported`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let config: Self = read_json(path.as_ref())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that kiln can build this model.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.position_embedding_type != "absolute" {
            return Err(ModelError::Unsupported(format!(
                "position_embedding_type = {:?} (only \"absolute\")",
                self.position_embedding_type
            )));
        }
        check_heads(self.hidden_size, self.num_attention_heads)?;
        if self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return Err(ModelError::Unsupported(
                "num_hidden_layers and vocab_size must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn check_heads(hidden: usize, heads: usize) -> Result<(), ModelError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(ModelError::Unsupported(format!(
            "hidden size {hidden} is not divisible by {heads} attention heads"
        )));
    }
    Ok(())
}

fn default_gpt_eps() -> f64 {
    1e-5
}
fn default_gelu_new() -> Activation {
    Activation::GeluNew
}
fn default_true() -> bool {
    true
}

/// GPT-2 decoder configuration (`model_type` `gpt2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence the position embeddings cover.
    pub n_positions: usize,
    /// Width of every hidden state.
    pub n_embd: usize,
    /// Number of decoder blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Width of the MLP inner layer (`None` = 4 × `n_embd`).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation.
    #[serde(default = "default_gelu_new")]
    pub activation_function: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "default_gpt_eps")]
    pub layer_norm_epsilon: f64,
    /// Residual dropout.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Embedding dropout.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Attention-probability dropout.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// Divide scores by √d_head (GPT-2 default true).
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// LM head shares the token embedding matrix.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

impl GptConfig {
    /// Reads and validates `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Io`], [`ModelError::Config`] or [`ModelError::Unsupported`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let config: Self = read_json(path.as_ref())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that kiln can build this model.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_heads(self.n_embd, self.n_head)?;
        if !self.scale_attn_weights {
            return Err(ModelError::Unsupported("scale_attn_weights = false".into()));
        }
        if !self.tie_word_embeddings {
            return Err(ModelError::Unsupported(
                "tie_word_embeddings = false (GPT-2 checkpoints tie the LM head)".into(),
            ));
        }
        Ok(())
    }

    /// Width of the MLP inner layer.
    pub fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn missing_required_field_is_a_config_error_naming_it() {
        let f = write(r#"{"vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2}"#);
        let err = BertConfig::from_file(f.path()).unwrap_err();
        assert!(matches!(err, ModelError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains("num_hidden_layers"), "{err}");
        // The cause is kept as a source: serde's error, with its position.
        let source = std::error::Error::source(&err).expect("a source");
        let json = source.downcast_ref::<serde_json::Error>().expect("serde_json's error");
        assert_eq!((json.line(), json.is_data()), (1, true));
    }

    #[test]
    fn malformed_json_is_a_config_error() {
        let f = write(r#"{"vocab_size": 10,"#);
        assert!(matches!(
            BertConfig::from_file(f.path()),
            Err(ModelError::Config { .. })
        ));
    }

    #[test]
    fn indivisible_heads_are_unsupported() {
        let f = write(
            r#"{"vocab_size": 10, "hidden_size": 10, "num_hidden_layers": 1, "num_attention_heads": 3,
                "intermediate_size": 4, "max_position_embeddings": 8, "some_unknown_field": [1]}"#,
        );
        let err = BertConfig::from_file(f.path()).unwrap_err();
        assert!(
            matches!(err, ModelError::Unsupported(_)) && err.to_string().contains("divisible"),
            "{err}"
        );
    }

    #[test]
    fn unknown_activation_is_rejected() {
        let f = write(
            r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 4, "max_position_embeddings": 8, "hidden_act": "swish"}"#,
        );
        let err = BertConfig::from_file(f.path()).unwrap_err();
        assert!(err.to_string().contains("swish"), "{err}");
    }
}
