//! Sequence classification and regression on the pooled `[CLS]` state, as Hugging Face's
//! `BertForSequenceClassification`: `logits = W · Dropout(tanh(W_p h_[CLS] + b_p)) + b`.
//! One output unit means regression (mean squared error); more, classification (mean
//! cross-entropy).

use std::path::Path;

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use kiln_model::bert::BertPooler;
use kiln_model::layers::linear;
use kiln_model::{BertConfig, BertModel, Capture, ModelError};

/// Targets of a batch.
#[derive(Debug, Clone)]
pub enum Targets<B: Backend> {
    /// Class indices `[batch]`.
    Classes(Tensor<B, 1, Int>),
    /// Regression targets `[batch]`.
    Scores(Tensor<B, 1>),
}

/// BERT + pooler + dropout + linear head.
#[derive(Module, Debug)]
pub struct SequenceClassifier<B: Backend> {
    /// The encoder (its `pooler` is always present).
    pub bert: BertModel<B>,
    /// Dropout before the head.
    pub dropout: Dropout,
    /// The head, `[hidden, num_labels]`.
    pub classifier: Linear<B>,
    /// Ladder side network (LST); when present the head reads it instead of the backbone.
    pub side: Option<crate::ladder::LadderSide<B>>,
}

impl<B: Backend> SequenceClassifier<B> {
    /// Loads the encoder (and its pooler, freshly initialised when the checkpoint has none)
    /// from a HF directory and adds a new head. Initialisation follows HF (`N(0, 0.02²)`,
    /// zero bias) and is drawn from the backend's RNG: seed it first for reproducibility.
    ///
    /// # Errors
    /// Any [`ModelError`] of loading.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        num_labels: usize,
        device: &B::Device,
    ) -> Result<(Self, BertConfig), ModelError> {
        let dir = dir.as_ref();
        let (bert, config) = match BertModel::<B>::from_pretrained(dir, true, device) {
            Ok(loaded) => loaded,
            Err(ModelError::Mismatch {
                missing,
                unexpected,
                wrong_shape,
                other,
                ..
            }) if missing.iter().all(|m| m.starts_with("pooler."))
                && unexpected.is_empty()
                && wrong_shape.is_empty()
                && other.is_empty() =>
            {
                tracing::info!("checkpoint has no pooler: initialising one");
                let (mut bert, config) = BertModel::<B>::from_pretrained(dir, false, device)?;
                bert.pooler = Some(BertPooler {
                    dense: linear(config.hidden_size, config.hidden_size, 0.02, device),
                });
                (bert, config)
            }
            Err(e) => return Err(e),
        };
        let head = Self::new_head(bert, &config, num_labels, device);
        Ok((head, config))
    }

    /// Adds a freshly initialised head to `bert` (which must have a pooler).
    pub fn new_head(mut bert: BertModel<B>, config: &BertConfig, num_labels: usize, device: &B::Device) -> Self {
        if bert.pooler.is_none() {
            bert.pooler = Some(BertPooler {
                dense: linear(config.hidden_size, config.hidden_size, 0.02, device),
            });
        }
        Self {
            bert,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier: linear(config.hidden_size, num_labels, 0.02, device),
            side: None,
        }
    }

    /// Replaces the pooler and head weights by tensors in PyTorch layout (`[out, in]`).
    pub fn set_head(
        &mut self,
        pooler_w: Tensor<B, 2>,
        pooler_b: Tensor<B, 1>,
        cls_w: Tensor<B, 2>,
        cls_b: Tensor<B, 1>,
    ) {
        let pooler = self.bert.pooler.as_mut().expect("classifier always has a pooler");
        pooler.dense.weight = Param::from_tensor(pooler_w.transpose());
        pooler.dense.bias = Some(Param::from_tensor(pooler_b));
        self.classifier.weight = Param::from_tensor(cls_w.transpose());
        self.classifier.bias = Some(Param::from_tensor(cls_b));
    }

    /// Sets every dropout probability of the model (e.g. 0 for exactness checks), inserted
    /// LoRA deltas' included.
    pub fn set_dropout(&mut self, p: f64) {
        let d = || DropoutConfig::new(p).init();
        self.dropout = d();
        self.bert.embeddings.dropout = d();
        for layer in &mut self.bert.encoder.layer {
            layer.attention.output.dropout = d();
            layer.output.dropout = d();
            layer.attention.self_attention.mechanism.set_dropout(p);
            layer.inserts.set_dropout(p);
        }
    }

    /// Number of outputs.
    pub fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    /// Logits `[batch, num_labels]` for ids `[batch, seq]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let last = match &self.side {
            None => {
                self.bert
                    .forward(input_ids, Some(token_type_ids), Some(attention_mask), Capture::none())
                    .last_hidden_state
            }
            Some(side) => {
                let capture = Capture {
                    hidden_states: true,
                    ..Capture::none()
                };
                let n = self.bert.prompt_len();
                let mask = match n {
                    0 => attention_mask.clone(),
                    _ => {
                        let [batch, _] = attention_mask.dims();
                        Tensor::cat(
                            vec![
                                Tensor::ones([batch, n], &attention_mask.device()),
                                attention_mask.clone(),
                            ],
                            1,
                        )
                    }
                };
                let out = self
                    .bert
                    .forward(input_ids, Some(token_type_ids), Some(attention_mask), capture);
                side.forward(
                    &out.hidden_states,
                    &kiln_attention::AttentionMask::from_attention_mask(mask),
                )
            }
        };
        let pooled = self
            .bert
            .pooler
            .as_ref()
            .expect("classifier always has a pooler")
            .forward(last);
        let [batch, hidden] = pooled.dims();
        let logits = self
            .classifier
            .forward(kiln_model::layers::dropout(&self.dropout, pooled).reshape([batch, hidden]));
        logits.reshape([batch, self.num_labels()])
    }

    /// Mean cross-entropy (classes) or mean squared error (scores), a scalar tensor `[1]`.
    pub fn loss(&self, logits: Tensor<B, 2>, targets: &Targets<B>) -> Tensor<B, 1> {
        match targets {
            Targets::Classes(labels) => {
                let [batch, _] = logits.dims();
                let logp = log_softmax(logits, 1);
                logp.gather(1, labels.clone().reshape([batch, 1])).mean().neg()
            }
            Targets::Scores(y) => {
                let [batch, _] = logits.dims();
                (logits.reshape([batch]) - y.clone()).powi_scalar(2).mean()
            }
        }
    }
}

impl<B: Backend> kiln_model::roles::ModelRoles for SequenceClassifier<B> {
    /// The encoder's roles, the head ([`Site::Head`](kiln_model::roles::Site::Head)) and the
    /// side network, if any ([`Site::Side`](kiln_model::roles::Site::Side)).
    fn param_roles(&self) -> kiln_model::roles::Roles {
        use kiln_model::roles::{Part, Site};
        let mut roles = self.bert.param_roles();
        roles.tag_linear(&self.classifier, Site::Head, Part::Whole);
        if let Some(side) = &self.side {
            roles.tag_module(side, Site::Side, Part::Whole);
        }
        roles
    }
}
