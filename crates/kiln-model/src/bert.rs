//! BERT-style post-LayerNorm encoder (Devlin et al. 2019), laid out as Hugging Face's
//! `BertModel` so checkpoint names map one to one (see [`crate::load`]).
//!
//! Per layer: `a = LN(x + Dropout(SelfAttn(x) W_O + b_O))`, then
//! `y = LN(a + Dropout(act(a W_1 + b_1) W_2 + b_2))`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear};
use burn::prelude::*;
use kiln_attention::{Attention, AttentionKind, AttentionMask, SoftmaxAttention};

use crate::activation::Activation;
use crate::capture::{Capture, LayerCapture, ModelOutput};
use crate::config::BertConfig;
use crate::layers::{dropout, embedding, layer_norm, linear, merge_heads, norm, position_ids, split_heads};
use crate::peft::{LayerInserts, SharedInserts, Sublayer};
use crate::roles::LinearSlot;

const INIT_STD: f64 = 0.02;

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// Token embeddings `[vocab, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// Absolute position embeddings `[max_positions, hidden]`.
    pub position_embeddings: Embedding<B>,
    /// Segment embeddings `[type_vocab, hidden]`.
    pub token_type_embeddings: Embedding<B>,
    /// LayerNorm over the sum.
    pub layer_norm: LayerNorm<B>,
    /// ε of `layer_norm` (burn's `LayerNorm` keeps its own private; the fused kernel needs it).
    #[module(skip)]
    pub layer_norm_eps: f64,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

impl<B: Backend> BertEmbeddings<B> {
    /// `[batch, seq]` ids → `[batch, seq, hidden]`. `token_type_ids` default to zeros.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, token_type_ids: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let token_type_ids = token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, seq], &device));
        let sum = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(position_ids(batch, seq, 0, &device))
            + self.token_type_embeddings.forward(token_type_ids);
        dropout(&self.dropout, norm(&self.layer_norm, self.layer_norm_eps, sum))
    }
}

/// Q/K/V projections around an attention mechanism (HF `attention.self`).
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    /// The mechanism combining them (softmax for pretrained BERT).
    pub mechanism: AttentionKind<B>,
    /// Number of heads.
    pub num_heads: usize,
}

/// Output projection + residual + LayerNorm of the attention block (HF `attention.output`).
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    /// `W_O`, `b_O`.
    pub dense: Linear<B>,
    /// LayerNorm after the residual.
    pub layer_norm: LayerNorm<B>,
    /// ε of `layer_norm` (burn's `LayerNorm` keeps its own private; the fused kernel needs it).
    #[module(skip)]
    pub layer_norm_eps: f64,
    /// Dropout before the residual.
    pub dropout: Dropout,
}

/// The attention block (HF `attention`).
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// Projections and mechanism.
    pub self_attention: BertSelfAttention<B>,
    /// Output projection, residual, LayerNorm.
    pub output: BertSelfOutput<B>,
}

/// First FFN projection + activation (HF `intermediate`).
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// `W_1`, `b_1`.
    pub dense: Linear<B>,
    /// Activation.
    #[module(skip)]
    pub activation: Activation,
}

/// Second FFN projection + residual + LayerNorm (HF `output`).
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    /// `W_2`, `b_2`.
    pub dense: Linear<B>,
    /// LayerNorm after the residual.
    pub layer_norm: LayerNorm<B>,
    /// ε of `layer_norm` (burn's `LayerNorm` keeps its own private; the fused kernel needs it).
    #[module(skip)]
    pub layer_norm_eps: f64,
    /// Dropout before the residual.
    pub dropout: Dropout,
}

/// One encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Attention block.
    pub attention: BertAttention<B>,
    /// FFN first half.
    pub intermediate: BertIntermediate<B>,
    /// FFN second half.
    pub output: BertOutput<B>,
    /// Modules inserted by tuning strategies (LoRA, adapters); empty for a pretrained model.
    pub inserts: LayerInserts<B>,
}

/// The layer stack (HF `encoder`; the field is named `layer` as in HF checkpoints).
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// Layers, bottom first.
    pub layer: Vec<BertLayer<B>>,
    /// Parameters shared by inserted modules of every layer (empty for a pretrained model).
    pub shared: SharedInserts<B>,
}

/// `tanh(W h_[CLS] + b)` (HF `pooler`).
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// Dense layer.
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    /// `[batch, seq, hidden]` → `[batch, hidden]` from the first token.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, width] = hidden.dims();
        let cls = hidden.slice([0..batch, 0..1]).reshape([batch, width]);
        self.dense.forward(cls).tanh()
    }
}

/// A BERT encoder with an optional pooler.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Embedding layer.
    pub embeddings: BertEmbeddings<B>,
    /// Encoder layers.
    pub encoder: BertEncoder<B>,
    /// Pooler (present in most BERT checkpoints; sentence-transformers models ignore it).
    pub pooler: Option<BertPooler<B>>,
    /// Soft prompt `[n_virtual, hidden]` (prompt tuning, Lester et al. 2021): when present, it
    /// is prepended to the word embeddings of every input, as PEFT does, so outputs have
    /// `n_virtual` extra leading positions. `None` for a pretrained model.
    pub prompt: Option<Param<Tensor<B, 2>>>,
}

impl<B: Backend> BertLayer<B> {
    /// A randomly initialised layer of `config`'s sizes (HF initialisation).
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        let h = config.hidden_size;
        let dropout = || DropoutConfig::new(config.hidden_dropout_prob).init();
        Self {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: linear(h, h, INIT_STD, device),
                    key: linear(h, h, INIT_STD, device),
                    value: linear(h, h, INIT_STD, device),
                    mechanism: AttentionKind::Softmax(SoftmaxAttention::new(config.attention_probs_dropout_prob)),
                    num_heads: config.num_attention_heads,
                },
                output: BertSelfOutput {
                    dense: linear(h, h, INIT_STD, device),
                    layer_norm: layer_norm(h, config.layer_norm_eps, device),
                    layer_norm_eps: config.layer_norm_eps,
                    dropout: dropout(),
                },
            },
            intermediate: BertIntermediate {
                dense: linear(h, config.intermediate_size, INIT_STD, device),
                activation: config.hidden_act,
            },
            output: BertOutput {
                dense: linear(config.intermediate_size, h, INIT_STD, device),
                layer_norm: layer_norm(h, config.layer_norm_eps, device),
                layer_norm_eps: config.layer_norm_eps,
                dropout: dropout(),
            },
            inserts: LayerInserts::empty(),
        }
    }

    /// One layer on `[batch, seq, hidden]`, recording into `capture` what is asked.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        capture: Capture,
    ) -> (Tensor<B, 3>, LayerCapture<B>) {
        self.forward_shared(x, mask, capture, None)
    }

    /// [`BertLayer::forward`] with the encoder's shared insert parameters (Compacter's rules).
    pub fn forward_shared(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        capture: Capture,
        phm_rules: Option<Tensor<B, 3>>,
    ) -> (Tensor<B, 3>, LayerCapture<B>) {
        self.forward_intervened(x, mask, capture, phm_rules, &Intervention::none())
    }

    /// [`BertLayer::forward_shared`] with an analysis-time [`Intervention`] (value zeroing,
    /// knowledge-neuron scaling). With [`Intervention::none`] it is the plain forward.
    pub fn forward_intervened(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        capture: Capture,
        phm_rules: Option<Tensor<B, 3>>,
        intervention: &Intervention<B>,
    ) -> (Tensor<B, 3>, LayerCapture<B>) {
        let mut rec = LayerCapture::empty();
        if capture.block_input {
            rec.block_input = Some(x.clone());
        }
        let sa = &self.attention.self_attention;
        let ins = &self.inserts;
        let heads = sa.num_heads;
        let q = ins.project(LinearSlot::Query, &sa.query, x.clone());
        let k = ins.project(LinearSlot::Key, &sa.key, x.clone());
        let v = ins.project(LinearSlot::Value, &sa.value, x.clone());
        let v = match &intervention.value_scale {
            Some(scale) => v * scale.clone(),
            None => v,
        };
        let (q, k, v) = (split_heads(q, heads), split_heads(k, heads), split_heads(v, heads));
        if capture.values {
            rec.values = Some(v.clone());
        }
        let mut out = sa.mechanism.attend(q, k, v, mask, capture.attention_probs);
        rec.attention_probs = out.weights.take();
        let context = merge_heads(ins.gate_heads(out.context));
        let attn_out = dropout(
            &self.attention.output.dropout,
            ins.project(LinearSlot::AttentionOutput, &self.attention.output.dense, context),
        );
        let attn_out = ins.after(Sublayer::Attention, attn_out, phm_rules.clone());
        if capture.attention_output {
            rec.attention_output = Some(attn_out.clone());
        }
        let sum = attn_out + x;
        if capture.pre_ln_sum {
            rec.pre_ln_sum = Some(sum.clone());
        }
        let out = &self.attention.output;
        let a = norm(&out.layer_norm, out.layer_norm_eps, sum);
        let inner = self.intermediate.activation.forward(ins.project(
            LinearSlot::Intermediate,
            &self.intermediate.dense,
            a.clone(),
        ));
        let inner = ins.scale_ffn(inner);
        let inner = match &intervention.ffn_scale {
            Some(scale) => inner * scale.clone(),
            None => inner,
        };
        let ffn = dropout(
            &self.output.dropout,
            ins.project(LinearSlot::Output, &self.output.dense, inner),
        );
        let ffn = ins.after(Sublayer::Ffn, ffn, phm_rules);
        (norm(&self.output.layer_norm, self.output.layer_norm_eps, ffn + a), rec)
    }
}

/// Analysis-time changes to one layer's forward, used by `kiln-lens` (not trained, not saved).
///
/// - `value_scale` `[batch, seq, 1]` multiplies each token's value vectors (all heads) before
///   attention: a 0 at token `j` is *value zeroing* (Mohebbi et al. 2023) — `j` still shapes the
///   attention weights but contributes nothing through them.
/// - `ffn_scale` `[batch, seq, intermediate]` multiplies the FFN's intermediate activations:
///   scaling them at a `[MASK]` position is how knowledge-neuron attribution integrates
///   (Dai et al. 2021).
#[derive(Debug, Clone)]
pub struct Intervention<B: Backend> {
    /// Per-token multiplier of the value vectors, `[batch, seq, 1]` (broadcast over features).
    pub value_scale: Option<Tensor<B, 3>>,
    /// Multiplier of the FFN intermediate activations, `[batch, seq, intermediate]`.
    pub ffn_scale: Option<Tensor<B, 3>>,
}

impl<B: Backend> Intervention<B> {
    /// No change.
    pub fn none() -> Self {
        Self {
            value_scale: None,
            ffn_scale: None,
        }
    }
}

impl<B: Backend> BertModel<B> {
    /// A randomly initialised model (HF initialisation: `N(0, 0.02²)` weights, zero biases,
    /// unit LayerNorms).
    pub fn new(config: &BertConfig, with_pooler: bool, device: &B::Device) -> Self {
        let h = config.hidden_size;
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(config.vocab_size, h, INIT_STD, device),
                position_embeddings: embedding(config.max_position_embeddings, h, INIT_STD, device),
                token_type_embeddings: embedding(config.type_vocab_size, h, INIT_STD, device),
                layer_norm: layer_norm(h, config.layer_norm_eps, device),
                layer_norm_eps: config.layer_norm_eps,
                dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            },
            encoder: BertEncoder {
                layer: (0..config.num_hidden_layers)
                    .map(|_| BertLayer::new(config, device))
                    .collect(),
                shared: SharedInserts { phm_rules: None },
            },
            pooler: with_pooler.then(|| BertPooler {
                dense: linear(h, h, INIT_STD, device),
            }),
            prompt: None,
        }
    }

    /// Swaps the attention mechanism of the layers in `layers` (all when `None`) for
    /// `variant`, keeping every other weight (swap-then-finetune, Kasai et al. 2021). New
    /// feature-map parameters are drawn from the backend RNG as the variant's paper does.
    ///
    /// # Panics
    /// If a layer index is out of range.
    pub fn convert_attention(
        &mut self,
        variant: &kiln_attention::AttentionVariant,
        layers: Option<&[usize]>,
        dropout: f64,
    ) {
        let slots = self
            .encoder
            .layer
            .iter_mut()
            .map(|layer| {
                let sa = &mut layer.attention.self_attention;
                crate::layers::MechanismSlot {
                    width: sa.query.weight.dims()[1],
                    device: sa.query.weight.device(),
                    num_heads: sa.num_heads,
                    mechanism: &mut sa.mechanism,
                }
            })
            .collect();
        crate::layers::convert_attention(slots, variant, layers, dropout);
    }

    /// Checks a batch of host-side inputs against what this model can embed: at least one row,
    /// `seq + prompt_len ≤ max_position_embeddings`, token ids in `[0, vocab)`, token type ids
    /// in `[0, type_vocab)`. Call it wherever ids come from user input (a dataset, a CLI
    /// argument, a reference file): the embedding gathers would panic on any of these.
    ///
    /// # Errors
    /// [`crate::ModelError::Input`] naming the first bad value and the model's limit.
    pub fn check_input(&self, batch: usize, seq: usize, ids: &[i64], types: &[i64]) -> Result<(), crate::ModelError> {
        let e = &self.embeddings;
        let positions = e.position_embeddings.weight.dims()[0];
        let vocab = e.word_embeddings.weight.dims()[0];
        let type_vocab = e.token_type_embeddings.weight.dims()[0];
        let prompt = self.prompt_len();
        let note = if prompt > 0 {
            format!("this model has {positions} positions, of which the soft prompt takes {prompt}")
        } else {
            format!("this model has {positions} positions")
        };
        crate::error::check_ids(batch, seq, ids, positions.saturating_sub(prompt), vocab, &note)?;
        if let Some(&t) = types.iter().find(|&&t| t < 0 || t >= type_vocab as i64) {
            return Err(crate::ModelError::Input {
                what: "token type id",
                value: t,
                limit: format!("the model has {type_vocab} token types"),
            });
        }
        Ok(())
    }

    /// Number of soft-prompt positions prepended to every input (0 without prompt tuning).
    pub fn prompt_len(&self) -> usize {
        self.prompt.as_ref().map_or(0, |p| p.dims()[0])
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }

    /// Embedding-layer output `[batch, seq, hidden]` (HF `hidden_states[0]`).
    ///
    /// To attribute to the embeddings (gradient × input, integrated gradients), detach this
    /// tensor, mark it `require_grad()`, and pass it to [`BertModel::encode`]: burn keeps no
    /// gradient of intermediate tensors, but a leaf's gradient is reachable.
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>, token_type_ids: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        self.embeddings.forward(input_ids, token_type_ids)
    }

    /// Runs the encoder layers on embeddings `[batch, seq, hidden]`; `attention_mask` is
    /// `[batch, seq]` with 1 at real tokens (all real when `None`).
    pub fn encode(
        &self,
        embeddings: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        capture: Capture,
    ) -> ModelOutput<B> {
        let mask = attention_mask
            .map(AttentionMask::from_attention_mask)
            .unwrap_or_else(AttentionMask::none);
        let mut hidden_states = Vec::new();
        let mut layers = Vec::new();
        let mut x = embeddings;
        for layer in &self.encoder.layer {
            if capture.hidden_states {
                hidden_states.push(x.clone());
            }
            let rules = self.encoder.shared.phm_rules.as_ref().map(|p| p.val());
            let (y, rec) = layer.forward_shared(x, &mask, capture, rules);
            if capture.any_layer() {
                layers.push(rec);
            }
            x = y;
        }
        if capture.hidden_states {
            hidden_states.push(x.clone());
        }
        ModelOutput {
            last_hidden_state: x,
            hidden_states,
            layers,
        }
    }

    /// Embeddings then encoder: `[batch, seq]` ids → [`ModelOutput`].
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        capture: Capture,
    ) -> ModelOutput<B> {
        match &self.prompt {
            None => {
                let embeddings = self.embed(input_ids, token_type_ids);
                self.encode(embeddings, attention_mask, capture)
            }
            Some(prompt) => {
                let [batch, seq] = input_ids.dims();
                let n = prompt.dims()[0];
                let device = input_ids.device();
                let e = &self.embeddings;
                let words = Tensor::cat(
                    vec![
                        prompt.val().unsqueeze::<3>().expand([batch, n, prompt.dims()[1]]),
                        e.word_embeddings.forward(input_ids),
                    ],
                    1,
                );
                let types = Tensor::cat(
                    vec![
                        Tensor::<B, 2, Int>::zeros([batch, n], &device),
                        token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, seq], &device)),
                    ],
                    1,
                );
                let sum = words
                    + e.position_embeddings.forward(position_ids(batch, n + seq, 0, &device))
                    + e.token_type_embeddings.forward(types);
                let embeddings = dropout(&e.dropout, norm(&e.layer_norm, e.layer_norm_eps, sum));
                let mask = attention_mask.map(|m| Tensor::cat(vec![Tensor::ones([batch, n], &device), m], 1));
                self.encode(embeddings, mask, capture)
            }
        }
    }
}
