//! The closed set of mechanisms a model layer can hold.

use burn::prelude::*;

use crate::{
    Attention, AttentionMask, AttentionOutput, HybridAttention, LinearAttention, SlidingWindowAttention,
    SoftmaxAttention,
};

/// One of kiln's attention mechanisms, as stored in a model layer. Model blocks hold this
/// enum, so converting a layer to another mechanism replaces this value and touches nothing
/// else of the block (the Q/K/V/O projections stay).
#[derive(Module, Debug)]
pub enum AttentionKind<B: Backend> {
    /// Exact softmax attention.
    Softmax(SoftmaxAttention),
    /// Softmax over a band of positions.
    SlidingWindow(SlidingWindowAttention),
    /// Kernelised linear attention (ELU+1, T2R, Hedgehog).
    Linear(LinearAttention<B>),
    /// Window softmax + linear attention over older keys (LoLCATs).
    Hybrid(HybridAttention<B>),
}

impl<B: Backend> Default for AttentionKind<B> {
    fn default() -> Self {
        Self::Softmax(SoftmaxAttention::default())
    }
}

impl<B: Backend> AttentionKind<B> {
    /// Ids of the mechanism's parameters that never train (Performer's random projection `ω`:
    /// fixed by definition, "redraw" means converting again). Every other parameter of a
    /// mechanism (feature-map weights) is new and trainable.
    pub fn fixed_param_ids(&self) -> Vec<burn::module::ParamId> {
        let of = |m: &crate::LinearAttention<B>| m.feature_map.projection.iter().map(|p| p.id).collect();
        match self {
            Self::Softmax(_) | Self::SlidingWindow(_) => Vec::new(),
            Self::Linear(m) => of(m),
            Self::Hybrid(m) => of(&m.linear),
        }
    }

    /// Sets the attention-probability dropout where the mechanism has one.
    pub fn set_dropout(&mut self, p: f64) {
        let d = burn::nn::DropoutConfig::new(p).init();
        match self {
            Self::Softmax(m) => m.dropout = d,
            Self::SlidingWindow(m) => m.dropout = d,
            Self::Linear(_) | Self::Hybrid(_) => {}
        }
    }
}

impl<B: Backend> Attention<B> for AttentionKind<B> {
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
            Self::SlidingWindow(m) => m.attend(q, k, v, mask, need_weights),
            Self::Linear(m) => m.attend(q, k, v, mask, need_weights),
            Self::Hybrid(m) => m.attend(q, k, v, mask, need_weights),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Softmax(m) => Attention::<B>::name(m),
            Self::SlidingWindow(m) => Attention::<B>::name(m),
            Self::Linear(m) => m.name(),
            Self::Hybrid(m) => m.name(),
        }
    }
}

/// A mechanism as written in a config file: `{ kind = "t2r", features = 32 }`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttentionVariant {
    /// Exact softmax.
    Softmax,
    /// Softmax over a band of `window` positions.
    SlidingWindow {
        /// Band half-width.
        window: usize,
    },
    /// ELU+1 linear attention.
    EluLinear,
    /// T2R: `ReLU(Wx + b)` with `features` features per head.
    T2r {
        /// Feature count `k` (T2R's default 32).
        #[serde(default = "default_features")]
        features: usize,
        /// Normaliser floor.
        #[serde(default = "default_t2r_eps")]
        eps: f64,
    },
    /// Performer FAVOR+ with `features` orthogonal random features drawn from `seed`.
    Performer {
        /// Number of random features `m`.
        #[serde(default = "default_performer_features")]
        features: usize,
        /// Seed of the draw (fixed for the run; redraw by converting again).
        #[serde(default)]
        seed: u64,
    },
    /// Hedgehog: `[softmax(Wx + b), softmax(−Wx − b)]`, `2 × features` features.
    Hedgehog {
        /// Projection width (Hedgehog uses the head dimension).
        #[serde(default = "default_features")]
        features: usize,
    },
    /// LoLCATs: softmax over the last `window` keys + Hedgehog-feature linear attention over
    /// older ones, one shared normaliser.
    Hybrid {
        /// Softmax window.
        #[serde(default = "default_window")]
        window: usize,
        /// Hedgehog projection width.
        #[serde(default = "default_features")]
        features: usize,
    },
}

fn default_window() -> usize {
    64
}

fn default_features() -> usize {
    32
}
fn default_performer_features() -> usize {
    64
}
fn default_t2r_eps() -> f64 {
    1e-2
}

impl AttentionVariant {
    /// Builds the mechanism for a layer of `heads` heads of `head_dim`, with probability
    /// dropout `dropout` where the mechanism has probabilities. New parameters are drawn from
    /// the backend RNG.
    pub fn build<B: Backend>(
        &self,
        heads: usize,
        head_dim: usize,
        dropout: f64,
        device: &B::Device,
    ) -> AttentionKind<B> {
        use crate::{FeatureKind, FeatureMap};
        match self {
            Self::Softmax => AttentionKind::Softmax(SoftmaxAttention::new(dropout)),
            Self::SlidingWindow { window } => {
                AttentionKind::SlidingWindow(SlidingWindowAttention::new(*window, dropout))
            }
            Self::EluLinear => AttentionKind::Linear(LinearAttention::new(FeatureMap::elu_plus_one(), 1e-6)),
            Self::T2r { features, eps } => AttentionKind::Linear(LinearAttention::new(
                FeatureMap::learned(FeatureKind::T2r, heads, head_dim, *features, device),
                *eps,
            )),
            Self::Performer { features, seed } => AttentionKind::Linear(LinearAttention::new(
                FeatureMap::performer(head_dim, *features, *seed, device),
                1e-12,
            )),
            Self::Hedgehog { features } => AttentionKind::Linear(LinearAttention::new(
                FeatureMap::learned(FeatureKind::Hedgehog, heads, head_dim, *features, device),
                1e-6,
            )),
            Self::Hybrid { window, features } => AttentionKind::Hybrid(HybridAttention::new(
                *window,
                LinearAttention::new(
                    FeatureMap::learned(FeatureKind::Hedgehog, heads, head_dim, *features, device),
                    1e-6,
                ),
            )),
        }
    }
}
