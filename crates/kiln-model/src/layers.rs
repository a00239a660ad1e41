//! Small building blocks shared by the model families: HF-style initialisation and the
//! head split/merge of multi-head attention.

use burn::module::Param;
use burn::nn::{Dropout, Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;

/// A linear layer initialised as Hugging Face does: weights `N(0, std²)`, bias zero.
/// Weight layout is burn's `[d_in, d_out]`.
pub fn linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::random([d_in, d_out], Distribution::Normal(0.0, std), device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// An embedding table initialised `N(0, std²)`.
pub fn embedding<B: Backend>(n: usize, d: usize, std: f64, device: &B::Device) -> Embedding<B> {
    Embedding {
        weight: Param::from_tensor(Tensor::random([n, d], Distribution::Normal(0.0, std), device)),
    }
}

/// LayerNorm with γ = 1, β = 0 and the model's epsilon.
pub fn layer_norm<B: Backend>(d: usize, eps: f64, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(eps).init(device)
}

/// `[batch, seq, heads·head_dim]` → `[batch, heads, seq, head_dim]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads]).swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads·head_dim]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// Position ids `0..seq` broadcast over the batch, `[batch, seq]`, starting at `offset`.
pub fn position_ids<B: Backend>(batch: usize, seq: usize, offset: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::<B, 1, Int>::arange(offset as i64..(offset + seq) as i64, device)
        .reshape([1, seq])
        .expand([batch, seq])
}

/// Applies `linear` to `[batch, seq, d_in]` as one `[batch·seq, d_in]` matrix product.
///
/// burn's `Linear` on a 3-D input broadcasts the weight over the batch; the single large
/// GEMM measured ~11% faster on NdArray and the same on Flex (`cargo xtask bench ops`).
pub fn linear_tokens<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let y = linear_2d(linear, x.reshape([batch * seq, d_in]));
    let d_out = y.dims()[1];
    y.reshape([batch, seq, d_out])
}

/// `linear` on `[rows, d_in]`: kiln-kernels' GEMM with the bias folded in (and its own
/// backward) on Flex, burn's `Linear::forward` elsewhere.
pub fn linear_2d<B: Backend>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    match kiln_kernels::ops::linear(x, linear.weight.val(), linear.bias.as_ref().map(|b| b.val())) {
        Ok(y) => y,
        Err((x, _, _)) => linear.forward(x),
    }
}

/// `dropout` on `x`: kiln-kernels' one-pass counter-based dropout (mask regenerated in the
/// backward, never stored) on `Autodiff<Flex>`, burn's `Dropout::forward` elsewhere. Like
/// burn's, it is the identity when autodiff is off or the probability is 0.
pub fn dropout<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    if dropout.prob == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    match kiln_kernels::ops::dropout(x, dropout.prob) {
        Ok(y) => y,
        Err(x) => dropout.forward(x),
    }
}

/// `ln` on `x` with its ε `eps` (which burn's `LayerNorm` does not expose): kiln-kernels'
/// one-pass LayerNorm with its own backward on Flex, burn's `LayerNorm::forward` elsewhere.
pub fn norm<B: Backend, const D: usize>(ln: &LayerNorm<B>, eps: f64, x: Tensor<B, D>) -> Tensor<B, D> {
    match kiln_kernels::ops::layer_norm(x, ln.gamma.val(), ln.beta.as_ref().map(|b| b.val()), eps) {
        Ok(y) => y,
        Err((x, _, _)) => ln.forward(x),
    }
}

/// One layer's attention, as [`convert_attention`] sees it: the mechanism slot, the head
/// count and width, and the device of its projections.
pub(crate) struct MechanismSlot<'a, B: Backend> {
    pub mechanism: &'a mut kiln_attention::AttentionKind<B>,
    pub num_heads: usize,
    pub width: usize,
    pub device: B::Device,
}

/// Replaces the mechanism of every layer in `slots` (or only those listed in `layers`) by
/// `variant`, built as the variant's paper does; the model's projections are untouched. Both
/// model families convert through this one function.
///
/// # Panics
/// When a listed layer does not exist.
pub(crate) fn convert_attention<B: Backend>(
    slots: Vec<MechanismSlot<'_, B>>,
    variant: &kiln_attention::AttentionVariant,
    layers: Option<&[usize]>,
    dropout: f64,
) {
    let n = slots.len();
    if let Some(layers) = layers {
        if let Some(i) = layers.iter().find(|&&i| i >= n) {
            panic!("layer {i} out of range (the model has {n})");
        }
    }
    for (i, slot) in slots.into_iter().enumerate() {
        if layers.is_none_or(|l| l.contains(&i)) {
            *slot.mechanism = variant.build(slot.num_heads, slot.width / slot.num_heads, dropout, &slot.device);
        }
    }
}
