//! Which keys each query may attend to.

use burn::prelude::*;

/// Masking information passed to an attention mechanism.
///
/// Two independent parts, combined by the mechanism:
/// - `key_padding`: `[batch, seq_k]`, `true` where the key is a real token and `false` at
///   padding (the Hugging Face `attention_mask == 1` convention);
/// - `causal`: when set, query `i` sees only keys `j ≤ i + (seq_k − seq_q)` (bottom-right
///   aligned, so a single new query over a cache of past keys sees all of them).
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    /// `[batch, seq_k]`, `true` = real token.
    pub key_padding: Option<Tensor<B, 2, Bool>>,
    /// Autoregressive masking.
    pub causal: bool,
}

impl<B: Backend> AttentionMask<B> {
    /// Every query sees every key.
    pub fn none() -> Self {
        Self {
            key_padding: None,
            causal: false,
        }
    }

    /// Masks padded keys; `attention_mask` is `[batch, seq_k]` with 1 at real tokens, 0 at
    /// padding (as produced by tokenizers).
    pub fn from_attention_mask(attention_mask: Tensor<B, 2, Int>) -> Self {
        Self {
            key_padding: Some(attention_mask.equal_elem(1)),
            causal: false,
        }
    }

    /// Adds (or removes) autoregressive masking.
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// The padding part as burn's attention-op convention: `[batch, heads, seq_q, seq_k]`,
    /// `true` where the score must be masked out. `None` when nothing is padded.
    pub fn padding_fill_mask(&self, heads: usize, seq_q: usize) -> Option<Tensor<B, 4, Bool>> {
        self.key_padding.as_ref().map(|keep| {
            let [batch, seq_k] = keep.dims();
            keep.clone()
                .bool_not()
                .reshape([batch, 1, 1, seq_k])
                .expand([batch, heads, seq_q, seq_k])
        })
    }

    /// Causal part: `[1, 1, seq_q, seq_k]`, `true` above the (bottom-right aligned) diagonal.
    pub fn causal_fill_mask(seq_q: usize, seq_k: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
        let offset = seq_k as i64 - seq_q as i64;
        let rows = Tensor::<B, 1, Int>::arange(0..seq_q as i64, device)
            .reshape([seq_q, 1])
            .add_scalar(offset);
        let cols = Tensor::<B, 1, Int>::arange(0..seq_k as i64, device).reshape([1, seq_k]);
        rows.lower(cols).reshape([1, 1, seq_q, seq_k])
    }
}
