//! Attention rollout and gradient-based token attributions.
//!
//! - Rollout (Abnar & Zuidema 2020): per layer `Â = 0.5·mean_h A + 0.5·I`, rows renormalised,
//!   multiplied from the first layer up: `R = Â_L ⋯ Â_1`. Padding rows/columns are dropped
//!   before renormalising. [`rollout_matrices`] rolls out any per-layer matrices (norm-based,
//!   value zeroing), with or without the `+I`.
//! - Gradient × input (Shrikumar et al. 2017) and integrated gradients (Sundararajan et al.
//!   2017) on the embedding-layer output: the caller gives `f: embeddings → [N]` (e.g. a logit
//!   of the predicted class), kiln makes the embeddings a leaf and takes its gradient — burn
//!   keeps no gradient of intermediate tensors, so this is the attribution entry point. IG
//!   uses the midpoint Riemann sum with `steps` points from a baseline (zeros by default),
//!   evaluated `steps_per_batch` points per forward/backward, and
//!   satisfies completeness up to the discretisation: `Σ attributions ≈ f(x) − f(baseline)`.
//!   For post-LN encoders pass the embeddings of a `[PAD]` sequence as baseline: along `t·x`
//!   from zero the encoder is nearly scale invariant with a jump at `t → 0`, which no Riemann
//!   sum sees, so completeness fails for the zero baseline.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// Attention rollout `[N, S, S]` from per-layer attention `[N, H, S, S]` (bottom layer first)
/// and the attention mask `[N, S]`.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
///
/// let device = Default::default();
/// // One layer, one head, two tokens, each attending only to token 0.
/// let attention = Tensor::<Flex, 4>::from_floats([[[[1.0, 0.0], [1.0, 0.0]]]], &device);
/// let mask = Tensor::<Flex, 2, Int>::ones([1, 2], &device);
/// let r = kiln_lens::attribution::rollout(&[attention], mask);
/// // 0.5·A + 0.5·I, rows renormalised: token 1 keeps half of itself.
/// let got: Vec<f32> = r.into_data().to_vec().unwrap();
/// assert_eq!(got, [1.0, 0.0, 0.5, 0.5]);
/// ```
pub fn rollout<B: Backend>(attentions: &[Tensor<B, 4>], attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let means: Vec<Tensor<B, 3>> = attentions
        .iter()
        .map(|a| {
            let [n, _, s, _] = a.dims();
            a.clone().mean_dim(1).reshape([n, s, s])
        })
        .collect();
    rollout_matrices(&means, attention_mask, true)
}

/// Rollout of any per-layer token-to-token matrices `[N, S, S]` (rows = receiving token):
/// with `add_residual`, each layer is `0.5·M + 0.5·I` (for attention weights, which leave the
/// residual out); without it the matrices are used as they are — for the norm-based
/// AttnRes-N/AttnResLn-N matrices or value zeroing, which already account for the residual.
/// Each layer's rows are renormalised to sum to 1 over real tokens, then multiplied bottom-up.
pub fn rollout_matrices<B: Backend>(
    matrices: &[Tensor<B, 3>],
    attention_mask: Tensor<B, 2, Int>,
    add_residual: bool,
) -> Tensor<B, 3> {
    let [n, s, _] = matrices[0].dims();
    let device = matrices[0].device();
    let real = attention_mask.float();
    let pair = real.clone().reshape([n, s, 1]) * real.reshape([n, 1, s]);
    let eye = Tensor::<B, 2>::eye(s, &device).reshape([1, s, s]);
    let mut r = eye.clone().expand([n, s, s]) * pair.clone();
    for m in matrices {
        let m = m.clone() * pair.clone();
        let mixed = if add_residual {
            (m.mul_scalar(0.5) + eye.clone().mul_scalar(0.5)) * pair.clone()
        } else {
            m
        };
        let rows = mixed.clone().sum_dim(2).clamp_min(1e-30);
        r = (mixed / rows).matmul(r);
    }
    r
}

/// `∂f/∂e ⊙ e` for embeddings `e: [N, S, d]`, and its per-token sum `[N, S]`.
pub fn gradient_x_input<B: AutodiffBackend>(
    embeddings: Tensor<B, 3>,
    f: impl Fn(Tensor<B, 3>) -> Tensor<B, 1>,
) -> (Tensor<B::InnerBackend, 3>, Tensor<B::InnerBackend, 2>) {
    let e = embeddings.detach().require_grad();
    let grads = f(e.clone()).sum().backward();
    let g = e.grad(&grads).expect("the embeddings are a leaf");
    let attr = g * e.inner();
    let [n, s, _] = attr.dims();
    let per_token = attr.clone().sum_dim(2).reshape([n, s]);
    (attr, per_token)
}

/// Integrated gradients of `f` from `baseline` (zeros when `None`) to `embeddings` `[N, S, d]`
/// with `steps` midpoint-rule points; returns the attributions `[N, S, d]` and per-token sums.
///
/// The points are batched: `f` is called on `[c·N, S, d]` with `c ≤ steps_per_batch` points
/// stacked step-major (rows `k·N .. (k+1)·N` are point `k` of every sequence), so `f` must
/// accept any multiple of `N` rows (repeat masks with [`repeat_rows`]) and return one value
/// per row.
pub fn integrated_gradients<B: AutodiffBackend>(
    embeddings: Tensor<B, 3>,
    baseline: Option<Tensor<B, 3>>,
    steps: usize,
    steps_per_batch: usize,
    f: impl Fn(Tensor<B, 3>) -> Tensor<B, 1>,
) -> (Tensor<B::InnerBackend, 3>, Tensor<B::InnerBackend, 2>) {
    let x = embeddings.detach();
    let [n, s, d] = x.dims();
    let base = baseline.map(|b| b.detach()).unwrap_or_else(|| x.zeros_like());
    let delta = x.clone() - base.clone();
    let steps = steps.max(1);
    let chunk = steps_per_batch.clamp(1, steps);
    let mut total: Option<Tensor<B::InnerBackend, 3>> = None;
    let mut k0 = 0;
    while k0 < steps {
        let c = chunk.min(steps - k0);
        let points: Vec<Tensor<B, 3>> = (k0..k0 + c)
            .map(|k| base.clone() + delta.clone().mul_scalar((k as f64 + 0.5) / steps as f64))
            .collect();
        let stacked = Tensor::cat(points, 0).detach().require_grad();
        let grads = f(stacked.clone()).sum().backward();
        let g = stacked
            .grad(&grads)
            .expect("leaf")
            .reshape([c, n, s, d])
            .sum_dim(0)
            .reshape([n, s, d]);
        total = Some(match total {
            Some(t) => t + g,
            None => g,
        });
        k0 += c;
    }
    let attr = total.expect("steps ≥ 1").div_scalar(steps as f64) * delta.inner();
    let per_token = attr.clone().sum_dim(2).reshape([n, s]);
    (attr, per_token)
}

/// `[N, S]` → `[times·N, S]`, the whole block repeated (matches the step-major stacking of
/// [`integrated_gradients`]).
pub fn repeat_rows<B: Backend, K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>>(
    t: Tensor<B, 2, K>,
    times: usize,
) -> Tensor<B, 2, K> {
    let [n, s] = t.dims();
    t.unsqueeze_dim::<3>(0).expand([times, n, s]).reshape([times * n, s])
}
