//! Norm-based analysis of the attention block (Kobayashi et al. 2020, 2021).
//!
//! For layer input `x` (rows `x_j`), heads `h`, attention `α^h_ij`, values
//! `v^h_j = x_j W_V^h + b_V^h` and the output projection split per head `W_O^h`:
//! `f^h(x_j) = v^h_j W_O^h`, and the attention output is `Σ_h Σ_j α^h_ij f^h(x_j) + b_O`.
//!
//! - Attn-N matrix `‖Σ_h α^h_ij f^h(x_j)‖`, computed as `√(α_ijᵀ G_j α_ij)` with the per-token
//!   Gram matrix `G_j[h, h'] = ⟨f^h(x_j), f^{h'}(x_j)⟩`: heads are contracted first and no
//!   `[batch, heads, S, S, d]` tensor is ever built (memory `O(N·S²·H)`).
//! - Mixing ratio of token `i` for a decomposition `C_i(x_j)`:
//!   `‖Σ_{j≠i} C_i(x_j)‖ / (‖Σ_{j≠i} C_i(x_j)‖ + ‖C_i(x_i)‖)` (norm of the sum). The sums are
//!   formed as "all j" minus "j = i", each `[N, S, d]`:
//!   - Attn-N: `C = Σ_h α f`;
//!   - AttnRes-N: `F_i(x_j) = Σ_h α^h_ij f^h(x_j) + [i = j] x_j`;
//!   - AttnResLn-N: `G_i(x_j) = (F_i(x_j) − mean(F_i(x_j))) / s(y_i) ⊙ γ`, with
//!     `s(y_i) = √(var(y_i) + ε)` of the whole pre-LN vector `y_i` (attention output with
//!     `b_O`, plus `x_i`). `G` is linear in `F`, so the two sums transform directly.
//! - Weight-based: Attn-W `= 1 − mean_h α^h_ii`, AttnRes-W `= (1 − mean_h α^h_ii) / 2`.
//!
//! Padding takes no part: attention to padded keys is zeroed before anything is summed, and
//! every output is 0 at padded query positions.

use burn::prelude::*;
use kiln_model::bert::BertLayer;
use kiln_model::LayerCapture;

/// Per-layer results, `N` sequences of `S` positions.
#[derive(Debug, Clone)]
pub struct LayerNorms<B: Backend> {
    /// `‖Σ_h α^h_ij f^h(x_j)‖`, `[N, S, S]` (0 for padded i or j).
    pub norm_afx: Tensor<B, 3>,
    /// Attn-W, `[N, S]`.
    pub attn_w: Tensor<B, 2>,
    /// AttnRes-W, `[N, S]`.
    pub attnres_w: Tensor<B, 2>,
    /// Attn-N, `[N, S]`.
    pub attn_n: Tensor<B, 2>,
    /// AttnRes-N, `[N, S]`.
    pub attnres_n: Tensor<B, 2>,
    /// AttnResLn-N, `[N, S]`.
    pub attnresln_n: Tensor<B, 2>,
}

/// What [`analyse_layer`] needs from a forward pass with `Capture { block_input,
/// attention_probs, values, pre_ln_sum }`.
///
/// # Panics
/// If one of those captures is missing.
pub fn analyse_layer<B: Backend>(
    layer: &BertLayer<B>,
    capture: &LayerCapture<B>,
    attention_mask: Tensor<B, 2, Int>,
    layer_norm_eps: f64,
) -> LayerNorms<B> {
    let x = capture.block_input.clone().expect("capture block_input");
    let alpha = capture.attention_probs.clone().expect("capture attention_probs");
    let v = capture.values.clone().expect("capture values");
    let y = capture.pre_ln_sum.clone().expect("capture pre_ln_sum");
    let [n, heads, s, dh] = v.dims();
    let d = heads * dh;
    let real = attention_mask.float(); // [N, S]
                                       // Attention to padded keys is zero; padded query rows are dropped at the end.
    let alpha = alpha * real.clone().reshape([n, 1, 1, s]);
    // f^h(x_j) = v^h_j W_O^h: [N, H, S, d].
    let w_o = layer.attention.output.dense.weight.val().reshape([1, heads, dh, d]);
    let f = v.matmul(w_o);
    // Attn-N matrix via per-token Gram matrices.
    let f_t = f.clone().swap_dims(1, 2); // [N, S_j, H, d]
    let gram = f_t.clone().matmul(f_t.swap_dims(2, 3)); // [N, S_j, H, H]
    let a = alpha.clone().permute([0, 3, 2, 1]); // [N, S_j, S_i, H]
    let quad = (a.clone().matmul(gram) * a).sum_dim(3).reshape([n, s, s]); // [N, S_j, S_i]
    let norm_afx = quad.clamp_min(0.0).sqrt().swap_dims(1, 2); // [N, S_i, S_j]
    let pair_mask = real.clone().reshape([n, s, 1]) * real.clone().reshape([n, 1, s]);
    let norm_afx = norm_afx * pair_mask;

    // Σ_j Σ_h α f (all j) and the j = i term, [N, S, d].
    let all = alpha.clone().matmul(f.clone()).sum_dim(1).reshape([n, s, d]);
    let diag = diagonal(alpha.clone()); // [N, H, S]
    let own = (f * diag.clone().reshape([n, heads, s, 1]))
        .sum_dim(1)
        .reshape([n, s, d]);
    let others = all - own.clone();
    let ratio = |o: Tensor<B, 3>, m: Tensor<B, 3>| {
        let no = l2(o);
        let nm = l2(m);
        no.clone() / (no + nm).clamp_min(1e-30)
    };
    let attn_n = ratio(others.clone(), own.clone());
    let res_own = own + x;
    let attnres_n = ratio(others.clone(), res_own.clone());
    // LayerNorm split.
    let centred = |t: Tensor<B, 3>| t.clone() - t.mean_dim(2);
    let var = (y.clone() - y.mean_dim(2)).powi_scalar(2).mean_dim(2); // population variance
    let sd = var.add_scalar(layer_norm_eps).sqrt(); // [N, S, 1]
    let gamma = layer.attention.output.layer_norm.gamma.val().reshape([1, 1, d]);
    let g = |t: Tensor<B, 3>| centred(t) / sd.clone() * gamma.clone();
    let attnresln_n = ratio(g(others), g(res_own));
    let mean_diag = diag.mean_dim(1).reshape([n, s]);
    let attn_w = mean_diag.neg().add_scalar(1.0);
    let attnres_w = attn_w.clone().div_scalar(2.0);
    LayerNorms {
        norm_afx,
        attn_w: attn_w * real.clone(),
        attnres_w: attnres_w * real.clone(),
        attn_n: attn_n * real.clone(),
        attnres_n: attnres_n * real.clone(),
        attnresln_n: attnresln_n * real,
    }
}

/// Mixing-ratio rollout through a stack of layers (rows = receiving token): in each
/// layer token `i` keeps `1 − r_i` of itself and takes its measured context share `r_i`
/// (AttnResLn-N: after the residual and LayerNorm, Kobayashi et al. 2021) from the other
/// tokens in proportion to `‖Σ_h α^h_ij f^h(x_j)‖`, `j ≠ i`; the layers are then multiplied
/// bottom-up ([`crate::attribution::rollout_matrices`]). Where attention rollout (Abnar &
/// Zuidema 2020) assumes the residual keeps half, this uses the ratio the norms measure.
/// Returns `[N, S, S]`; row `i` says how much each input token reaches token `i`'s output.
pub fn mixing_rollout<B: Backend>(layers: &[LayerNorms<B>], attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let real = attention_mask.clone().float();
    let matrices: Vec<Tensor<B, 3>> = layers
        .iter()
        .map(|l| {
            let [n, s, _] = l.norm_afx.dims();
            let eye = Tensor::<B, 2>::eye(s, &l.norm_afx.device()).reshape([1, s, s]);
            // Only real tokens give context (norm_afx from analyse_layer is already 0 there).
            let pair = real.clone().reshape([n, s, 1]) * real.clone().reshape([n, 1, s]);
            let others = l.norm_afx.clone() * pair * eye.clone().neg().add_scalar(1.0);
            let total = others.clone().sum_dim(2).clamp_min(1e-30); // [N, S, 1]
            let r = l.attnresln_n.clone().reshape([n, s, 1]);
            others / total * r.clone() + eye * r.neg().add_scalar(1.0)
        })
        .collect();
    crate::attribution::rollout_matrices(&matrices, attention_mask, false)
}

/// `α^h_ii`, `[N, H, S]`.
fn diagonal<B: Backend>(alpha: Tensor<B, 4>) -> Tensor<B, 3> {
    let [n, h, s, _] = alpha.dims();
    let eye = Tensor::<B, 2>::eye(s, &alpha.device()).reshape([1, 1, s, s]);
    (alpha * eye).sum_dim(3).reshape([n, h, s])
}

/// Row L2 norms of `[N, S, d]` → `[N, S]`.
fn l2<B: Backend>(t: Tensor<B, 3>) -> Tensor<B, 2> {
    let [n, s, _] = t.dims();
    t.powi_scalar(2).sum_dim(2).sqrt().reshape([n, s])
}

/// The captures [`analyse_layer`] needs.
pub fn capture() -> kiln_model::Capture {
    kiln_model::Capture {
        block_input: true,
        attention_probs: true,
        values: true,
        pre_ln_sum: true,
        ..kiln_model::Capture::none()
    }
}

/// Mean of `ratio` over real positions.
pub fn mean_over_real<B: Backend>(ratio: Tensor<B, 2>, attention_mask: Tensor<B, 2, Int>) -> f64 {
    let real = attention_mask.float();
    let count = real.clone().sum().into_scalar().elem::<f64>().max(1.0);
    (ratio * real).sum().into_scalar().elem::<f64>() / count
}
