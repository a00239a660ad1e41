//! Opt-in capture of intermediate tensors for analysis (`kiln-lens`).
//!
//! Nothing is cloned or kept unless its flag is set, so a forward pass with
//! [`Capture::default()`] costs exactly what a plain forward pass costs.

use burn::prelude::*;

/// Which intermediate tensors a forward pass records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capture {
    /// Every hidden state: the embedding output, then each layer's output (`n_layers + 1`).
    pub hidden_states: bool,
    /// Per layer: attention probabilities `[batch, heads, seq, seq]`.
    pub attention_probs: bool,
    /// Per layer: the block input `[batch, seq, hidden]`.
    pub block_input: bool,
    /// Per layer: per-head value vectors `v = x W_V + b_V`, `[batch, heads, seq, head_dim]`.
    pub values: bool,
    /// Per layer: the attention block's output after the output projection (incl. its
    /// bias) and before the residual, `[batch, seq, hidden]`.
    pub attention_output: bool,
    /// Per layer: the sum entering the attention LayerNorm (attention output + residual in
    /// post-LN models), `[batch, seq, hidden]`.
    pub pre_ln_sum: bool,
}

impl Capture {
    /// Records nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Records every hidden state and every attention map (what HF's
    /// `output_hidden_states=True, output_attentions=True` returns).
    pub fn hidden_and_attentions() -> Self {
        Self {
            hidden_states: true,
            attention_probs: true,
            ..Self::default()
        }
    }

    /// Records everything (what the norm-based analyses need).
    pub fn all() -> Self {
        Self {
            hidden_states: true,
            attention_probs: true,
            block_input: true,
            values: true,
            attention_output: true,
            pre_ln_sum: true,
        }
    }

    /// Whether any per-layer tensor is requested.
    pub fn any_layer(&self) -> bool {
        self.attention_probs || self.block_input || self.values || self.attention_output || self.pre_ln_sum
    }
}

/// What one layer recorded; each field is `Some` exactly when its [`Capture`] flag was set.
#[derive(Debug, Clone)]
pub struct LayerCapture<B: Backend> {
    /// Block input, `[batch, seq, hidden]`.
    pub block_input: Option<Tensor<B, 3>>,
    /// Attention probabilities, `[batch, heads, seq_q, seq_k]`.
    pub attention_probs: Option<Tensor<B, 4>>,
    /// Per-head values, `[batch, heads, seq, head_dim]`.
    pub values: Option<Tensor<B, 4>>,
    /// Attention output before the residual, `[batch, seq, hidden]`.
    pub attention_output: Option<Tensor<B, 3>>,
    /// Input of the attention LayerNorm, `[batch, seq, hidden]`.
    pub pre_ln_sum: Option<Tensor<B, 3>>,
}

impl<B: Backend> LayerCapture<B> {
    pub(crate) fn empty() -> Self {
        Self {
            block_input: None,
            attention_probs: None,
            values: None,
            attention_output: None,
            pre_ln_sum: None,
        }
    }
}

/// Output of a transformer stack.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// Last hidden state, `[batch, seq, hidden]` (for GPT-2: after the final LayerNorm).
    pub last_hidden_state: Tensor<B, 3>,
    /// All hidden states when [`Capture::hidden_states`] is set (HF order), else empty.
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// One entry per layer when [`Capture::any_layer`], else empty.
    pub layers: Vec<LayerCapture<B>>,
}

impl<B: Backend> ModelOutput<B> {
    /// Attention probabilities of every layer, if they were captured.
    pub fn attentions(&self) -> Vec<Tensor<B, 4>> {
        self.layers.iter().filter_map(|l| l.attention_probs.clone()).collect()
    }
}
