//! Value zeroing (Mohebbi, Zuidema, Chrupała & Alishahi 2023, "Quantifying Context Mixing in
//! Transformers").
//!
//! For layer `l` and context token `j`, the value vectors of `j` are set to zero in every head
//! (`j` still takes part in computing the attention weights) and the layer is run again. The
//! score of token `i` on `j` is the cosine distance between `i`'s original layer output and
//! the output with `j` zeroed: `VZ_ij = 1 − cos(x̃_i, x̃_i^{¬j})`. The whole layer (attention,
//! residuals, LayerNorms, FFN) is included, which is what distinguishes the measure from the
//! attention-block analyses of [`crate::norm`]. [`row_normalize`] turns the matrix into
//! per-row shares as the paper does before rollout.
//!
//! Batched over context tokens: `chunk` values of `j` at a time become a batch of
//! `N·chunk` copies of the layer input with a per-token value multiplier
//! ([`kiln_model::Intervention::value_scale`]), so the cost is `S` layer forwards per layer
//! and the memory `chunk` times one layer's activations.

use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_attention::AttentionMask;
use kiln_model::{BertModel, Capture, Intervention};

/// `[N, S, S]` cosine distances of layer `layer`'s outputs when token `j` (column) is value-
/// zeroed, for the layer input `x` `[N, S, d]` (e.g. `hidden_states[layer]`). Padded rows and
/// columns are 0.
pub fn value_zeroing_layer<B: Backend>(
    model: &BertModel<B>,
    layer: usize,
    x: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
    chunk: usize,
) -> Tensor<B, 3> {
    let [n, s, d] = x.dims();
    let device = x.device();
    let block = &model.encoder.layer[layer];
    let rules = model.encoder.shared.phm_rules.as_ref().map(|p| p.val());
    let mask = AttentionMask::from_attention_mask(attention_mask.clone());
    let (original, _) = block.forward_shared(x.clone(), &mask, Capture::none(), rules.clone());
    let chunk = chunk.clamp(1, s);
    let mut columns = Vec::new();
    let mut start = 0;
    while start < s {
        let c = chunk.min(s - start);
        let xs = x
            .clone()
            .unsqueeze_dim::<4>(1)
            .expand([n, c, s, d])
            .reshape([n * c, s, d]);
        let ms = attention_mask
            .clone()
            .unsqueeze_dim::<3>(1)
            .expand([n, c, s])
            .reshape([n * c, s]);
        // scale[b·c + k, t] = 0 where t = start + k, else 1.
        let mut scale = vec![1f32; n * c * s];
        for b in 0..n {
            for k in 0..c {
                scale[(b * c + k) * s + start + k] = 0.0;
            }
        }
        let scale = Tensor::<B, 3>::from_data(TensorData::new(scale, [n * c, s, 1]), &device);
        let intervention = Intervention {
            value_scale: Some(scale),
            ffn_scale: None,
        };
        let (zeroed, _) = block.forward_intervened(
            xs,
            &AttentionMask::from_attention_mask(ms),
            Capture::none(),
            rules.clone(),
            &intervention,
        );
        let zeroed = zeroed.reshape([n, c, s, d]);
        let base = original.clone().unsqueeze_dim::<4>(1);
        let dot = (zeroed.clone() * base.clone()).sum_dim(3);
        let norms = (zeroed.powf_scalar(2.0).sum_dim(3) * base.powf_scalar(2.0).sum_dim(3))
            .sqrt()
            .clamp_min(1e-12);
        // [n, c, s, 1] → [n, s, c]: rows are i, columns j.
        let distance = (dot / norms).neg().add_scalar(1.0).reshape([n, c, s]).swap_dims(1, 2);
        columns.push(distance);
        start += c;
    }
    let real = attention_mask.float();
    let pair = real.clone().reshape([n, s, 1]) * real.reshape([n, 1, s]);
    Tensor::cat(columns, 2) * pair
}

/// Value-zeroing matrices of every layer (bottom first) for a batch of ids.
pub fn value_zeroing<B: Backend>(
    model: &BertModel<B>,
    input_ids: Tensor<B, 2, Int>,
    token_type_ids: Option<Tensor<B, 2, Int>>,
    attention_mask: Tensor<B, 2, Int>,
    chunk: usize,
) -> Vec<Tensor<B, 3>> {
    let capture = Capture {
        hidden_states: true,
        ..Capture::none()
    };
    let out = model.forward(input_ids, token_type_ids, Some(attention_mask.clone()), capture);
    (0..model.num_layers())
        .map(|l| value_zeroing_layer(model, l, out.hidden_states[l].clone(), attention_mask.clone(), chunk))
        .collect()
}

/// Divides each row by its sum (rows summing to 0 stay 0).
pub fn row_normalize<B: Backend>(m: Tensor<B, 3>) -> Tensor<B, 3> {
    let sums = m.clone().sum_dim(2);
    let safe = sums.clone().clamp_min(1e-30);
    m / safe
}
