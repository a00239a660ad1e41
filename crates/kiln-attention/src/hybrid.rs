//! The LoLCATs hybrid (Zhang et al. 2024): exact softmax over the last `w` keys and linear
//! attention over all older ones, under one shared normaliser:
//!
//! ```text
//! y_i = (Σ_{j ∈ W(i)} e^{s_ij − m_i} v_j + Σ_{j ∉ W(i), j visible} φ(q_i)ᵀφ(k_j) v_j)
//!     / (Σ_{j ∈ W(i)} e^{s_ij − m_i}      + Σ_{j ∉ W(i), j visible} φ(q_i)ᵀφ(k_j))
//! ```
//!
//! with `s_ij = q_i·k_j/√d`, `m_i` the row maximum over the window (as the authors' code
//! subtracts it from the softmax terms only), `W(i) = {i − w < j ≤ i}` (causal) or
//! `{|i − j| < w}`. The parallel form materialises `n × n` scores (training lengths); decoding
//! keeps the last `w` keys and values plus the linear state of the older ones, so its memory
//! is constant in the position.

use burn::prelude::*;

use crate::linear::LinearAttention;
use crate::{Attention, AttentionMask, AttentionOutput, RecurrentState, SlidingWindowAttention};

/// Window softmax + linear attention with a shared normaliser.
#[derive(Module, Debug)]
pub struct HybridAttention<B: Backend> {
    /// Softmax window `w` (the query's own position included).
    pub window: usize,
    /// The linear part (its feature map; its `eps` floors the shared normaliser).
    pub linear: LinearAttention<B>,
}

/// Decoding state: the window's keys and values `[batch, heads, ≤ w, d]` and the linear
/// state of every key that has left the window.
#[derive(Debug, Clone)]
pub struct HybridState<B: Backend> {
    /// Keys in the window.
    pub k: Tensor<B, 4>,
    /// Values in the window.
    pub v: Tensor<B, 4>,
    /// `S`, `z` of the older keys.
    pub older: RecurrentState<B>,
}

impl<B: Backend> HybridState<B> {
    /// Values held; bounded by the window, independent of the position.
    pub fn numel(&self) -> usize {
        self.k.shape().num_elements() + self.v.shape().num_elements() + self.older.numel()
    }
}

impl<B: Backend> HybridAttention<B> {
    /// A hybrid of window `window` over `linear`.
    pub fn new(window: usize, linear: LinearAttention<B>) -> Self {
        Self {
            window: window.max(1),
            linear,
        }
    }

    /// The state after a prompt's keys and values (`[batch, heads, n, ·]`).
    pub fn state_of(&self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> HybridState<B> {
        let [b, h, n, d] = k.dims();
        let d_v = v.dims()[3];
        let cut = n.saturating_sub(self.window);
        let older = if cut == 0 {
            self.linear.initial_state(b, h, d, d_v, &k.device())
        } else {
            self.linear.state_of(
                k.clone().slice([0..b, 0..h, 0..cut, 0..d]),
                v.clone().slice([0..b, 0..h, 0..cut, 0..d_v]),
            )
        };
        HybridState {
            k: k.slice([0..b, 0..h, cut..n, 0..d]),
            v: v.slice([0..b, 0..h, cut..n, 0..d_v]),
            older,
        }
    }

    /// An empty state.
    pub fn initial_state(
        &self,
        batch: usize,
        heads: usize,
        head_dim: usize,
        d_v: usize,
        device: &B::Device,
    ) -> HybridState<B> {
        HybridState {
            k: Tensor::zeros([batch, heads, 0, head_dim], device),
            v: Tensor::zeros([batch, heads, 0, d_v], device),
            older: self.linear.initial_state(batch, heads, head_dim, d_v, device),
        }
    }

    /// One decoding step (`q, k, v` `[batch, heads, 1, ·]`): the new key enters the window,
    /// the oldest leaves it for the linear state once the window is full.
    pub fn step(
        &self,
        state: HybridState<B>,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, HybridState<B>) {
        let mut wk = Tensor::cat(vec![state.k, k], 2);
        let mut wv = Tensor::cat(vec![state.v, v], 2);
        let mut older = state.older;
        let [b, h, len, d] = wk.dims();
        let d_v = wv.dims()[3];
        if len > self.window {
            let gone = len - self.window;
            let add = self.linear.state_of(
                wk.clone().slice([0..b, 0..h, 0..gone, 0..d]),
                wv.clone().slice([0..b, 0..h, 0..gone, 0..d_v]),
            );
            older = RecurrentState {
                s: older.s + add.s,
                z: older.z + add.z,
            };
            wk = wk.slice([0..b, 0..h, gone..len, 0..d]);
            wv = wv.slice([0..b, 0..h, gone..len, 0..d_v]);
        }
        let scores = q
            .clone()
            .matmul(wk.clone().swap_dims(2, 3))
            .mul_scalar((d as f64).powf(-0.5));
        let a = (scores.clone() - scores.max_dim(3)).exp(); // [b, h, 1, w]
        let fq = self.linear.query_features(q);
        let num = a.clone().matmul(wv.clone()) + fq.clone().matmul(older.s.clone());
        let den = (a.sum_dim(3) + fq.matmul(older.z.clone())).clamp_min(self.linear.eps);
        (num / den, HybridState { k: wk, v: wv, older })
    }
}

impl<B: Backend> Attention<B> for HybridAttention<B> {
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: &AttentionMask<B>,
        need_weights: bool,
    ) -> AttentionOutput<B> {
        let [_, _, n_q, _] = q.dims();
        let n_k = k.dims()[2];
        let device = q.device();
        let heads = q.dims()[1];
        let band = SlidingWindowAttention::new(self.window, 0.0);
        let scores = crate::SoftmaxAttention::masked_scores(q.clone(), k.clone(), mask);
        let shape = scores.shape();
        // Keys the query may not see at all (future, padding).
        let mut invisible = mask
            .causal
            .then(|| AttentionMask::<B>::causal_fill_mask(n_q, n_k, &device).expand(shape.clone()));
        if let Some(pad) = mask.padding_fill_mask(heads, n_q) {
            invisible = Some(match invisible {
                Some(m) => m.bool_or(pad),
                None => pad,
            });
        }
        // Window part (a query whose whole window is invisible — a padded row — gets none).
        let outside = band
            .band_fill_mask::<B>(n_q, n_k, mask.causal, &device)
            .expand(shape.clone());
        let not_window = match &invisible {
            Some(m) => outside.clone().bool_or(m.clone()),
            None => outside.clone(),
        };
        let window_scores = scores.mask_fill(outside.clone(), f32::MIN);
        let a_sm = (window_scores.clone() - window_scores.max_dim(3))
            .exp()
            .mask_fill(not_window, 0.0);
        // Linear part: keys outside the window that the query may see.
        let older = match invisible {
            Some(m) => outside.bool_and(m.bool_not()),
            None => outside,
        };
        let (fq, fk) = self.linear.features_of(q, k);
        let a_ln = fq.matmul(fk.swap_dims(2, 3)).mask_fill(older.bool_not(), 0.0);
        let a = a_sm + a_ln;
        let den = a.clone().sum_dim(3).clamp_min(self.linear.eps);
        if need_weights {
            let weights = a / den;
            return AttentionOutput {
                context: weights.clone().matmul(v),
                weights: Some(weights),
            };
        }
        AttentionOutput {
            context: a.matmul(v) / den,
            weights: None,
        }
    }

    fn name(&self) -> &'static str {
        "lolcats_hybrid"
    }
}
