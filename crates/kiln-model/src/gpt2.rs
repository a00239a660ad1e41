//! GPT-2 pre-LayerNorm causal decoder (Radford et al. 2019), laid out as Hugging Face's
//! `GPT2Model` (+ tied LM head).
//!
//! Per block: `a = x + c_proj(Attn(ln_1(x)))`, `y = a + mlp.c_proj(act(mlp.c_fc(ln_2(a))))`;
//! the stack ends with `ln_f`, and logits are `h · wteᵀ`. HF's `Conv1D` stores weights as
//! `[in, out]`, which is burn's `Linear` layout, so these load without transposition.

use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear};
use burn::prelude::*;
use kiln_attention::{Attention, AttentionKind, AttentionMask, SoftmaxAttention};

use crate::activation::Activation;
use crate::capture::{Capture, LayerCapture, ModelOutput};
use crate::config::GptConfig;
use crate::layers::{embedding, layer_norm, linear, linear_tokens, merge_heads, position_ids, split_heads};

const INIT_STD: f64 = 0.02;

/// Causal self-attention with fused QKV projection (HF `attn`).
#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    /// Fused Q, K, V projection `[n_embd, 3·n_embd]`.
    pub c_attn: Linear<B>,
    /// Output projection.
    pub c_proj: Linear<B>,
    /// The mechanism (softmax for pretrained GPT-2).
    pub mechanism: AttentionKind<B>,
    /// Residual dropout.
    pub resid_dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

/// Feed-forward network (HF `mlp`).
#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    /// Up projection.
    pub c_fc: Linear<B>,
    /// Down projection.
    pub c_proj: Linear<B>,
    /// Activation.
    #[module(skip)]
    pub activation: Activation,
    /// Dropout on the output.
    pub dropout: Dropout,
}

/// One decoder block (HF `h.{i}`).
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    /// Pre-attention LayerNorm.
    pub ln_1: LayerNorm<B>,
    /// Attention.
    pub attn: Gpt2Attention<B>,
    /// Pre-MLP LayerNorm.
    pub ln_2: LayerNorm<B>,
    /// MLP.
    pub mlp: Gpt2Mlp<B>,
}

/// GPT-2 with its tied language-modelling head.
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    /// Token embeddings, also the LM head's weight.
    pub wte: Embedding<B>,
    /// Position embeddings.
    pub wpe: Embedding<B>,
    /// Embedding dropout.
    pub drop: Dropout,
    /// Blocks.
    pub h: Vec<Gpt2Block<B>>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm<B>,
}

impl<B: Backend> Gpt2Block<B> {
    fn new(config: &GptConfig, device: &B::Device) -> Self {
        let d = config.n_embd;
        let eps = config.layer_norm_epsilon;
        let inner = config.inner_size();
        // GPT-2 scales residual projections by 1/√(2·n_layer) at init.
        let proj_std = INIT_STD / (2.0 * config.n_layer as f64).sqrt();
        Self {
            ln_1: layer_norm(d, eps, device),
            attn: Gpt2Attention {
                c_attn: linear(d, 3 * d, INIT_STD, device),
                c_proj: linear(d, d, proj_std, device),
                mechanism: AttentionKind::Softmax(SoftmaxAttention::new(config.attn_pdrop)),
                resid_dropout: DropoutConfig::new(config.resid_pdrop).init(),
                num_heads: config.n_head,
            },
            ln_2: layer_norm(d, eps, device),
            mlp: Gpt2Mlp {
                c_fc: linear(d, inner, INIT_STD, device),
                c_proj: linear(inner, d, proj_std, device),
                activation: config.activation_function,
                dropout: DropoutConfig::new(config.resid_pdrop).init(),
            },
        }
    }

    /// One block on `[batch, seq, n_embd]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        capture: Capture,
    ) -> (Tensor<B, 3>, LayerCapture<B>) {
        let mut rec = LayerCapture::empty();
        if capture.block_input {
            rec.block_input = Some(x.clone());
        }
        let heads = self.attn.num_heads;
        let qkv = linear_tokens(&self.attn.c_attn, self.ln_1.forward(x.clone()));
        let [batch, seq, width3] = qkv.dims();
        let d = width3 / 3;
        let q = split_heads(qkv.clone().slice([0..batch, 0..seq, 0..d]), heads);
        let k = split_heads(qkv.clone().slice([0..batch, 0..seq, d..2 * d]), heads);
        let v = split_heads(qkv.slice([0..batch, 0..seq, 2 * d..3 * d]), heads);
        if capture.values {
            rec.values = Some(v.clone());
        }
        let out = self.attn.mechanism.attend(q, k, v, mask, capture.attention_probs);
        rec.attention_probs = out.weights;
        let attn_out = self
            .attn
            .resid_dropout
            .forward(linear_tokens(&self.attn.c_proj, merge_heads(out.context)));
        if capture.attention_output {
            rec.attention_output = Some(attn_out.clone());
        }
        let a = x + attn_out;
        if capture.pre_ln_sum {
            rec.pre_ln_sum = Some(a.clone());
        }
        let inner = self
            .mlp
            .activation
            .forward(linear_tokens(&self.mlp.c_fc, self.ln_2.forward(a.clone())));
        (
            a + self.mlp.dropout.forward(linear_tokens(&self.mlp.c_proj, inner)),
            rec,
        )
    }
}

impl<B: Backend> Gpt2Model<B> {
    /// A randomly initialised model (GPT-2 initialisation).
    pub fn new(config: &GptConfig, device: &B::Device) -> Self {
        Self {
            wte: embedding(config.vocab_size, config.n_embd, INIT_STD, device),
            wpe: embedding(config.n_positions, config.n_embd, 0.01, device),
            drop: DropoutConfig::new(config.embd_pdrop).init(),
            h: (0..config.n_layer).map(|_| Gpt2Block::new(config, device)).collect(),
            ln_f: layer_norm(config.n_embd, config.layer_norm_epsilon, device),
        }
    }

    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        self.h.len()
    }

    /// `wte(ids) + wpe(positions)` → `[batch, seq, n_embd]` (HF `hidden_states[0]`).
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        self.drop
            .forward(self.wte.forward(input_ids) + self.wpe.forward(position_ids(batch, seq, 0, &device)))
    }

    /// Blocks and final LayerNorm on embeddings. Hidden states follow HF: the embedding
    /// output, each block's output except the last, then the last *after* `ln_f`.
    pub fn decode(
        &self,
        embeddings: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        capture: Capture,
    ) -> ModelOutput<B> {
        let mask = attention_mask
            .map(AttentionMask::from_attention_mask)
            .unwrap_or_else(AttentionMask::none)
            .with_causal(true);
        let mut hidden_states = Vec::new();
        let mut layers = Vec::new();
        let mut x = embeddings;
        for block in &self.h {
            if capture.hidden_states {
                hidden_states.push(x.clone());
            }
            let (y, rec) = block.forward(x, &mask, capture);
            if capture.any_layer() {
                layers.push(rec);
            }
            x = y;
        }
        let x = self.ln_f.forward(x);
        if capture.hidden_states {
            hidden_states.push(x.clone());
        }
        ModelOutput {
            last_hidden_state: x,
            hidden_states,
            layers,
        }
    }

    /// Embeddings, blocks, `ln_f`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        capture: Capture,
    ) -> ModelOutput<B> {
        let embeddings = self.embed(input_ids);
        self.decode(embeddings, attention_mask, capture)
    }

    /// Tied LM head: `[batch, seq, n_embd]` → logits `[batch, seq, vocab]`.
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = hidden.dims();
        let wte = self.wte.weight.val();
        let vocab = wte.dims()[0];
        hidden
            .reshape([batch * seq, d])
            .matmul(wte.transpose())
            .reshape([batch, seq, vocab])
    }
}
