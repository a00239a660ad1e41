//! The closed set of mechanisms a model layer can hold.

use burn::prelude::*;

use crate::{Attention, AttentionMask, AttentionOutput, SoftmaxAttention};

/// One of kiln's attention mechanisms, as stored in a model layer. Model blocks hold this
/// enum, so converting a layer to another mechanism replaces this value and touches nothing
/// else of the block.
#[derive(Module, Debug, Clone)]
pub enum AttentionKind {
    /// Exact softmax attention.
    Softmax(SoftmaxAttention),
}

impl Default for AttentionKind {
    fn default() -> Self {
        Self::Softmax(SoftmaxAttention::default())
    }
}

impl<B: Backend> Attention<B> for AttentionKind {
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
        need_weights: bool,
    ) -> AttentionOutput<B> {
        match self {
            Self::Softmax(m) => m.attend(q, k, v, mask, need_weights),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Softmax(m) => Attention::<B>::name(m),
        }
    }
}
