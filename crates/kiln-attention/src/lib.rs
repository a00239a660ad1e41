//! # kiln-attention
//!
//! The attention *mechanism* of a transformer layer, behind one trait: given per-head queries,
//! keys and values it returns the per-head context vectors (and, where the mechanism has them,
//! the attention probabilities). Projections (Q/K/V/O) belong to the model's blocks in
//! `kiln-model`; this crate owns only what happens between them, so that a pretrained model's
//! projections stay untouched when one mechanism is swapped for another.
//!
//! **Owns:** the [`Attention`] trait, the masks it receives ([`AttentionMask`]), and the
//! mechanisms themselves: exact [`SoftmaxAttention`], [`SlidingWindowAttention`], and kernelised
//! [`LinearAttention`] with ELU+1, T2R, Performer and Hedgehog feature maps (bidirectional, causal in
//! chunked parallel form, and recurrent with O(1) state per token), and the LoLCATs
//! [`HybridAttention`] (window softmax + linear attention, one normaliser); what each keeps
//! between incremental decoding steps and how it advances ([`LayerState`],
//! [`AttentionKind::step`]), so models decode without knowing the mechanisms.
//! **Must not touch:** model layout, weight loading, tokenization, training.
//!
//! When the caller does not ask for the probabilities, the softmax mechanism runs
//! `kiln-kernels`' flash-style CPU kernel on Flex (dropout included, custom backward) and
//! burn's fused [`burn::tensor::module::attention`] op on other backends (dropout off); it
//! computes the explicit `softmax(QKᵀ·scale + mask)·V` otherwise, since the fused forms never
//! materialise the probabilities.
#![warn(missing_docs)]

mod decode;
mod hybrid;
mod kind;
pub mod linear;
mod mask;
mod softmax;
mod window;

pub use decode::LayerState;
pub use hybrid::{HybridAttention, HybridState};
pub use kind::{AttentionKind, AttentionVariant};
pub use linear::{FeatureKind, FeatureMap, LinearAttention, RecurrentState};
pub use mask::AttentionMask;
pub use softmax::SoftmaxAttention;
pub use window::SlidingWindowAttention;

use burn::prelude::*;

/// Output of an attention mechanism.
#[derive(Debug, Clone)]
pub struct AttentionOutput<B: Backend> {
    /// Per-head context vectors, `[batch, heads, seq_q, head_dim_v]`.
    pub context: Tensor<B, 4>,
    /// Attention probabilities `[batch, heads, seq_q, seq_k]`, when requested and when the
    /// mechanism has them (softmax does; kernelised linear attention does not).
    pub weights: Option<Tensor<B, 4>>,
}

/// An attention mechanism: maps per-head `q`, `k`, `v` to per-head context vectors.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use kiln_attention::{Attention, AttentionMask, SoftmaxAttention};
///
/// let device = Default::default();
/// // One head, two positions; the keys are equal, so each query attends half to each.
/// let q = Tensor::<Flex, 4>::from_floats([[[[1.0, 0.0], [0.0, 1.0]]]], &device);
/// let k = Tensor::<Flex, 4>::from_floats([[[[1.0, 1.0], [1.0, 1.0]]]], &device);
/// let v = Tensor::<Flex, 4>::from_floats([[[[2.0, 0.0], [0.0, 4.0]]]], &device);
/// let out = SoftmaxAttention::new(0.0).attend(q, k, v, &AttentionMask::none(), true);
/// let context: Vec<f32> = out.context.into_data().to_vec().unwrap();
/// assert_eq!(context, [1.0, 2.0, 1.0, 2.0]);
/// assert!(out.weights.is_some());
/// ```
///
/// Shapes: `q` is `[batch, heads, seq_q, head_dim]`, `k` is `[batch, heads, seq_k, head_dim]`,
/// `v` is `[batch, heads, seq_k, head_dim_v]`. Queries are *not* pre-scaled: each mechanism
/// applies its own scaling (softmax uses `head_dim^-1/2`).
pub trait Attention<B: Backend> {
    /// Computes the context vectors. When `need_weights` is true and the mechanism has
    /// attention probabilities, they are returned in [`AttentionOutput::weights`].
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
        need_weights: bool,
    ) -> AttentionOutput<B>;

    /// Short, stable name of the mechanism (used in reports and configs).
    fn name(&self) -> &'static str;
}
