//! Sliding-window softmax attention: query `i` sees keys `j` with `i − w < j ≤ i` (causal) or
//! `|i − j| < w` (bidirectional), besides the padding and causal masks.
//!
//! Computed as masked softmax over the full score matrix (the band is a mask): exact and
//! simple, `O(n²)` memory. A blockwise kernel is the next step where long sequences need it.

use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::{Attention, AttentionMask, AttentionOutput};

/// Softmax attention restricted to a band of `window` positions.
#[derive(Module, Debug, Clone)]
pub struct SlidingWindowAttention {
    /// Band half-width (`w`).
    pub window: usize,
    /// Dropout on the probabilities (autodiff backends only).
    pub dropout: Dropout,
}

impl SlidingWindowAttention {
    /// A window of `window` positions.
    pub fn new(window: usize, dropout: f64) -> Self {
        Self {
            window,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `[1, 1, seq_q, seq_k]`, `true` outside the band (bottom-right aligned like the causal
    /// mask).
    pub fn band_fill_mask<B: Backend>(
        &self,
        seq_q: usize,
        seq_k: usize,
        causal: bool,
        device: &B::Device,
    ) -> Tensor<B, 4, Bool> {
        let offset = seq_k as i64 - seq_q as i64;
        let rows = Tensor::<B, 1, Int>::arange(0..seq_q as i64, device)
            .reshape([seq_q, 1])
            .add_scalar(offset);
        let cols = Tensor::<B, 1, Int>::arange(0..seq_k as i64, device).reshape([1, seq_k]);
        let diff = rows - cols; // i − j
        let w = self.window as i64;
        let outside = if causal {
            diff.greater_equal_elem(w)
        } else {
            diff.abs().greater_equal_elem(w)
        };
        outside.reshape([1, 1, seq_q, seq_k])
    }
}

impl<B: Backend> Attention<B> for SlidingWindowAttention {
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
        need_weights: bool,
    ) -> AttentionOutput<B> {
        let seq_q = q.dims()[2];
        let seq_k = k.dims()[2];
        let device = q.device();
        let scores = crate::SoftmaxAttention::masked_scores(q, k, mask);
        let shape = scores.shape();
        let scores = scores.mask_fill(
            self.band_fill_mask::<B>(seq_q, seq_k, mask.causal, &device)
                .expand(shape),
            f32::MIN,
        );
        let weights = softmax(scores, 3);
        let context = self.dropout.forward(weights.clone()).matmul(v);
        AttentionOutput {
            context,
            weights: need_weights.then_some(weights),
        }
    }

    fn name(&self) -> &'static str {
        "sliding_window"
    }
}
