//! Head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").
//!
//! Each head's context is multiplied by a gate `ξ_h = 1` (`LayerInserts::head_gate`); the
//! importance of head `h` is `I_h = E_x |∂L(x)/∂ξ_h|`, the expectation over the batches given.
//! With `normalize`, each layer's scores are divided by their L2 norm, as the paper does
//! before pruning. Setting a gate to zero ([`set_head_gates`]) removes the head.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_model::AttentionHeads;

/// Installs gates (all ones when `values` is `None`) on every layer of any model with
/// [`AttentionHeads`] (BERT, GPT-2).
pub fn set_head_gates<B: Backend, M: AttentionHeads<B>>(model: &mut M, values: Option<&[Vec<f32>]>) {
    let devices: Vec<B::Device> = model
        .head_layers()
        .iter()
        .map(|l| l.head_rows.weight.device())
        .collect();
    for (l, ((heads, inserts), device)) in model.head_inserts_mut().into_iter().zip(devices).enumerate() {
        let gate = match values {
            Some(v) => Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(v[l].clone(), [heads]), &device),
            None => Tensor::ones([heads], &device),
        };
        inserts.head_gate = Some(Param::from_tensor(gate));
    }
}

/// A `[layers][heads]` table of zeros.
fn zeros_per_head<B: Backend, M: AttentionHeads<B>>(model: &M) -> Vec<Vec<f64>> {
    model.head_layers().iter().map(|l| vec![0.0; l.heads]).collect()
}

/// `[layers][heads]` importance: the mean over `n_batches` of `|∂loss/∂ξ|`, where
/// `loss(model, i)` is the loss of batch `i`. The model gets all-one gates for the duration.
pub fn head_importance<B: AutodiffBackend, M: AttentionHeads<B> + Clone>(
    model: &M,
    n_batches: usize,
    normalize: bool,
    mut loss: impl FnMut(&M, usize) -> Tensor<B, 1>,
) -> Vec<Vec<f64>> {
    let mut gated = model.clone();
    set_head_gates(&mut gated, None);
    let mut total = zeros_per_head(&gated);
    for i in 0..n_batches {
        let grads = loss(&gated, i).backward();
        for (l, layer) in gated.head_layers().iter().enumerate() {
            let gate = layer.inserts.head_gate.as_ref().expect("installed").val();
            if let Some(g) = gate.grad(&grads) {
                let g: Vec<f32> = g.into_data().convert::<f32>().to_vec().expect("f32");
                for (t, v) in total[l].iter_mut().zip(g) {
                    *t += (v as f64).abs() / n_batches as f64;
                }
            }
        }
    }
    if normalize {
        for row in &mut total {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-20);
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    total
}

/// First-order Taylor importance of each head (as in T3-Vis, after Molchanov et al. 2017):
/// `Σ_θ (∂L/∂θ · θ)²` over the head's parameters — its columns of the query, key and value
/// projections and their biases (BERT's three linears, GPT-2's fused `c_attn`), and its rows
/// of the output projection — averaged over `n_batches`. `[layers][heads]`.
pub fn taylor_importance<B: AutodiffBackend, M: AttentionHeads<B>>(
    model: &M,
    n_batches: usize,
    mut loss: impl FnMut(&M, usize) -> Tensor<B, 1>,
) -> Vec<Vec<f64>> {
    let mut total = zeros_per_head(model);
    for i in 0..n_batches {
        let grads = loss(model, i).backward();
        for (l, layer) in model.head_layers().iter().enumerate() {
            let heads = layer.heads;
            // (g·θ)² summed into one value per output column ([blocks·heads·d_head]).
            let per_column = |lin: &Linear<B>| -> Option<Tensor<B::InnerBackend, 1>> {
                let w = lin.weight.val();
                let g = w.grad(&grads)?;
                let mut out = (g * w.inner()).powf_scalar(2.0).sum_dim(0).squeeze_dim::<1>(0);
                if let Some(b) = &lin.bias {
                    if let Some(gb) = b.val().grad(&grads) {
                        out = out + (gb * b.val().inner()).powf_scalar(2.0);
                    }
                }
                Some(out)
            };
            let mut score: Option<Tensor<B::InnerBackend, 1>> = None;
            let mut add = |per_head: Tensor<B::InnerBackend, 1>| {
                score = Some(match score.take() {
                    Some(s) => s + per_head,
                    None => per_head,
                });
            };
            // The heads' width: the output projection reads `[heads][d_head]` rows.
            let width = layer.head_rows.weight.dims()[0];
            for lin in &layer.head_columns {
                if let Some(t) = per_column(lin) {
                    // Columns `[blocks][heads][d_head]` (GPT-2's c_attn: q, k, v blocks).
                    let blocks = t.dims()[0] / width;
                    add(t
                        .reshape([blocks, heads, width / heads])
                        .sum_dim(2)
                        .sum_dim(0)
                        .reshape([heads]));
                }
            }
            let wo = layer.head_rows.weight.val();
            if let Some(g) = wo.grad(&grads) {
                // Rows of the output projection ([in, out]) belong to heads.
                let rows = (g * wo.inner()).powf_scalar(2.0).sum_dim(1).squeeze_dim::<1>(1);
                let d = rows.dims()[0];
                add(rows.reshape([heads, d / heads]).sum_dim(1).reshape([heads]));
            }
            if let Some(s) = score {
                let per_head: Vec<f32> = s.into_data().convert::<f32>().to_vec().expect("f32");
                for (t, v) in total[l].iter_mut().zip(per_head) {
                    *t += v as f64 / n_batches as f64;
                }
            }
        }
    }
    total
}

/// Gates `[layers][heads]` that switch off the `count` heads with the lowest `importance`
/// (global ranking, ties broken by position), for [`set_head_gates`] — the pruning curve of
/// Michel et al. is this for increasing `count`, re-evaluating each time.
pub fn prune_least_important(importance: &[Vec<f64>], count: usize) -> Vec<Vec<f32>> {
    let mut order: Vec<(usize, usize)> = importance
        .iter()
        .enumerate()
        .flat_map(|(l, row)| (0..row.len()).map(move |h| (l, h)))
        .collect();
    order.sort_by(|a, b| importance[a.0][a.1].total_cmp(&importance[b.0][b.1]).then(a.cmp(b)));
    let mut gates: Vec<Vec<f32>> = importance.iter().map(|row| vec![1.0; row.len()]).collect();
    for &(l, h) in order.iter().take(count) {
        gates[l][h] = 0.0;
    }
    gates
}
