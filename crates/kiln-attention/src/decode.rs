//! Incremental (token-by-token) decoding per mechanism: what each mechanism keeps between
//! steps ([`LayerState`]) and how it advances. Softmax keeps a key/value cache (sliding
//! window: the last `w` positions); linear attention keeps its recurrent state `S, z` (O(1)
//! per token); the LoLCATs hybrid keeps both. Models call [`AttentionKind::prefill_state`]
//! after a causal prompt pass and [`AttentionKind::step`] for each new position, so a new
//! mechanism brings its own decoding with it and no model matches on mechanisms.

use burn::prelude::*;

use crate::{Attention, AttentionKind, AttentionMask, HybridState, RecurrentState};

/// What one layer's attention keeps between decoding steps.
#[derive(Debug, Clone)]
pub enum LayerState<B: Backend> {
    /// Softmax attention: keys and values of every earlier position (sliding window: the
    /// last `w`), `[batch, heads, t, d_head]`; `None` before the first token.
    KvCache {
        /// Cached keys.
        k: Option<Tensor<B, 4>>,
        /// Cached values.
        v: Option<Tensor<B, 4>>,
    },
    /// Linear attention: `S` and `z`, whose size does not depend on the position.
    Recurrent(RecurrentState<B>),
    /// LoLCATs hybrid: the window's keys and values and the linear state of older ones.
    Hybrid(HybridState<B>),
}

impl<B: Backend> LayerState<B> {
    /// The state before any token (every mechanism turns it into its own on the first step).
    pub fn empty() -> Self {
        Self::KvCache { k: None, v: None }
    }

    /// Number of values held.
    pub fn numel(&self) -> usize {
        match self {
            Self::KvCache { k, v } => [k, v]
                .iter()
                .map(|t| t.as_ref().map_or(0, |t| t.shape().num_elements()))
                .sum(),
            Self::Recurrent(s) => s.numel(),
            Self::Hybrid(s) => s.numel(),
        }
    }
}

/// The last `n` positions of `[batch, heads, seq, d]`.
fn keep_last<B: Backend>(t: Tensor<B, 4>, n: usize) -> Tensor<B, 4> {
    let [b, h, seq, d] = t.dims();
    if seq <= n {
        t
    } else {
        t.slice([0..b, 0..h, seq - n..seq, 0..d])
    }
}

impl<B: Backend> AttentionKind<B> {
    /// The state after a causal pass over a prompt's keys and values `[batch, heads, n, d]`.
    pub fn prefill_state(&self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> LayerState<B> {
        match self {
            Self::Linear(m) => LayerState::Recurrent(m.state_of(k, v)),
            Self::Hybrid(m) => LayerState::Hybrid(m.state_of(k, v)),
            Self::SlidingWindow(m) => LayerState::KvCache {
                k: Some(keep_last(k, m.window)),
                v: Some(keep_last(v, m.window)),
            },
            Self::Softmax(_) => LayerState::KvCache { k: Some(k), v: Some(v) },
        }
    }

    /// One new position (`q, k, v: [batch, heads, 1, d]`) given the layer's state: the
    /// context `[batch, heads, 1, d_v]` and the next state.
    ///
    /// # Panics
    /// When `state` belongs to another mechanism (start from [`LayerState::empty`]).
    pub fn step(
        &self,
        state: LayerState<B>,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, LayerState<B>) {
        let [batch, heads, _, d] = k.dims();
        let d_v = v.dims()[3];
        match (self, state) {
            (Self::Linear(m), LayerState::KvCache { k: None, .. }) => {
                let s = m.initial_state(batch, heads, d, d_v, &k.device());
                let (context, s) = m.step(s, q, k, v);
                (context, LayerState::Recurrent(s))
            }
            (Self::Linear(m), LayerState::Recurrent(s)) => {
                let (context, s) = m.step(s, q, k, v);
                (context, LayerState::Recurrent(s))
            }
            (Self::Hybrid(m), LayerState::KvCache { k: None, .. }) => {
                let s = m.initial_state(batch, heads, d, d_v, &k.device());
                let (context, s) = m.step(s, q, k, v);
                (context, LayerState::Hybrid(s))
            }
            (Self::Hybrid(m), LayerState::Hybrid(s)) => {
                let (context, s) = m.step(s, q, k, v);
                (context, LayerState::Hybrid(s))
            }
            (Self::Softmax(_) | Self::SlidingWindow(_), LayerState::KvCache { k: ck, v: cv }) => {
                let append = |cache: Option<Tensor<B, 4>>, new: Tensor<B, 4>| match cache {
                    Some(c) => Tensor::cat(vec![c, new], 2),
                    None => new,
                };
                let (mut k, mut v) = (append(ck, k), append(cv, v));
                if let Self::SlidingWindow(m) = self {
                    k = keep_last(k, m.window);
                    v = keep_last(v, m.window);
                }
                let mask = AttentionMask::none().with_causal(true);
                let context = self.attend(q, k.clone(), v.clone(), &mask, false).context;
                (context, LayerState::KvCache { k: Some(k), v: Some(v) })
            }
            (Self::Linear(_), LayerState::KvCache { k: Some(_), .. } | LayerState::Hybrid(_))
            | (Self::Hybrid(_), LayerState::KvCache { k: Some(_), .. } | LayerState::Recurrent(_))
            | (Self::Softmax(_) | Self::SlidingWindow(_), LayerState::Recurrent(_) | LayerState::Hybrid(_)) => {
                panic!("a layer's state does not match its mechanism; start from DecodeState::new")
            }
        }
    }
}
