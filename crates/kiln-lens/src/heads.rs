//! Head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").
//!
//! Each head's context is multiplied by a gate `ξ_h = 1` (`LayerInserts::head_gate`); the
//! importance of head `h` is `I_h = E_x |∂L(x)/∂ξ_h|`, the expectation over the batches given.
//! With `normalize`, each layer's scores are divided by their L2 norm, as the paper does
//! before pruning. Setting a gate to zero ([`set_head_gates`]) removes the head.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_model::BertModel;

/// Installs gates (all ones when `values` is `None`) on every layer.
pub fn set_head_gates<B: Backend>(model: &mut BertModel<B>, values: Option<&[Vec<f32>]>) {
    for (l, layer) in model.encoder.layer.iter_mut().enumerate() {
        let heads = layer.attention.self_attention.num_heads;
        let device = layer.attention.self_attention.query.weight.device();
        let gate = match values {
            Some(v) => Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(v[l].clone(), [heads]), &device),
            None => Tensor::ones([heads], &device),
        };
        layer.inserts.head_gate = Some(Param::from_tensor(gate));
    }
}

/// `[layers][heads]` importance: the mean over `n_batches` of `|∂loss/∂ξ|`, where
/// `loss(model, i)` is the loss of batch `i`. The model gets all-one gates for the duration.
pub fn head_importance<B: AutodiffBackend>(
    model: &BertModel<B>,
    n_batches: usize,
    normalize: bool,
    mut loss: impl FnMut(&BertModel<B>, usize) -> Tensor<B, 1>,
) -> Vec<Vec<f64>> {
    let mut gated = model.clone();
    set_head_gates(&mut gated, None);
    let layers = gated.encoder.layer.len();
    let mut total: Vec<Vec<f64>> = gated
        .encoder
        .layer
        .iter()
        .map(|l| vec![0.0; l.attention.self_attention.num_heads])
        .collect();
    for i in 0..n_batches {
        let grads = loss(&gated, i).backward();
        for (l, layer) in gated.encoder.layer.iter().enumerate() {
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
        for row in total.iter_mut().take(layers) {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-20);
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    total
}
