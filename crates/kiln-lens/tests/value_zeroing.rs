//! Value zeroing against a float64 re-implementation of the layer from captured attention
//! weights and the raw weights (ReLU FFN so the reference needs no erf): for every `j`, the
//! layer output with `Σ_{k≠j} α_ik v_k` in place of the attention context, then
//! `1 − cos(x̃_i, x̃_i^{¬j})`.

mod common;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_lens::value_zeroing::{row_normalize, value_zeroing};
use kiln_model::{BertConfig, BertModel, Capture};

type B = Flex;

fn layer_norm(v: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let d = v.len() as f64;
    let mean = v.iter().sum::<f64>() / d;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d;
    v.iter()
        .enumerate()
        .map(|(k, x)| (x - mean) / (var + eps).sqrt() * gamma[k] + beta[k])
        .collect()
}

/// `x [d_in] · W [d_in, d_out] + b`.
fn affine(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let d_out = b.len();
    (0..d_out)
        .map(|o| b[o] + x.iter().enumerate().map(|(r, xr)| xr * w[r * d_out + o]).sum::<f64>())
        .collect()
}

#[test]
fn value_zeroing_matches_a_float64_layer_recomputation() {
    let _rng = kiln_testkit::rng_lock();
    let device = Default::default();
    B::seed(&device, 11);
    let config: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 24, "max_position_embeddings": 16, "hidden_act": "relu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}"#,
    )
    .unwrap();
    let model = BertModel::<B>::new(&config, false, &device);
    let (n, s, d, heads) = (2, 6, 16, 4);
    let dh = d / heads;
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![2i64, 5, 9, 13, 3, 0, 2, 7, 8, 21, 30, 3], [n, s]),
        &device,
    );
    let mask_v = vec![1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1];
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask_v.clone(), [n, s]), &device);
    // chunk 4 does not divide 6: the last chunk is short.
    let got = value_zeroing(&model, ids.clone(), None, mask.clone(), 4);
    let capture = Capture {
        hidden_states: true,
        attention_probs: true,
        values: true,
        ..Capture::none()
    };
    let out = model.forward(ids, None, Some(mask.clone()), capture);
    let mut worst = 0f64;
    for (l, layer) in model.encoder.layer.iter().enumerate() {
        let x = common::vec64(out.hidden_states[l].clone());
        let alpha = common::vec64(out.layers[l].attention_probs.clone().unwrap());
        let v = common::vec64(out.layers[l].values.clone().unwrap()); // [n, h, s, dh]
        let p = |lin: &burn::nn::Linear<B>| {
            (
                common::vec64(lin.weight.val()),
                common::vec64(lin.bias.as_ref().unwrap().val()),
            )
        };
        let (wo, bo) = p(&layer.attention.output.dense);
        let (w1, b1) = p(&layer.intermediate.dense);
        let (w2, b2) = p(&layer.output.dense);
        let ln1 = &layer.attention.output.layer_norm;
        let ln2 = &layer.output.layer_norm;
        let (g1, be1, g2, be2) = (
            common::vec64(ln1.gamma.val()),
            common::vec64(ln1.beta.clone().unwrap().val()),
            common::vec64(ln2.gamma.val()),
            common::vec64(ln2.beta.clone().unwrap().val()),
        );
        let eps = config.layer_norm_eps;
        let got_l = common::vec64(got[l].clone());
        for b in 0..n {
            let real = |t: usize| mask_v[b * s + t] == 1;
            // Output of token i with the values of `skip` removed (None: the plain layer).
            let output = |i: usize, skip: Option<usize>| {
                let mut context = vec![0f64; d];
                for h in 0..heads {
                    for k in 0..s {
                        if Some(k) == skip || !real(k) {
                            continue;
                        }
                        let a = alpha[((b * heads + h) * s + i) * s + k];
                        for c in 0..dh {
                            context[h * dh + c] += a * v[((b * heads + h) * s + k) * dh + c];
                        }
                    }
                }
                let attn = affine(&context, &wo, &bo);
                let sum: Vec<f64> = attn
                    .iter()
                    .zip(&x[(b * s + i) * d..][..d])
                    .map(|(a, r)| a + r)
                    .collect();
                let a = layer_norm(&sum, &g1, &be1, eps);
                let inner: Vec<f64> = affine(&a, &w1, &b1).into_iter().map(|z| z.max(0.0)).collect();
                let ffn = affine(&inner, &w2, &b2);
                let sum2: Vec<f64> = ffn.iter().zip(&a).map(|(f, r)| f + r).collect();
                layer_norm(&sum2, &g2, &be2, eps)
            };
            for i in 0..s {
                let base = output(i, None);
                for j in 0..s {
                    let want = if real(i) && real(j) {
                        let z = output(i, Some(j));
                        let dot: f64 = base.iter().zip(&z).map(|(p, q)| p * q).sum();
                        let nn = base.iter().map(|p| p * p).sum::<f64>().sqrt()
                            * z.iter().map(|q| q * q).sum::<f64>().sqrt();
                        1.0 - dot / nn
                    } else {
                        0.0
                    };
                    let g = got_l[(b * s + i) * s + j];
                    worst = worst.max((g - want).abs());
                    assert!((g - want).abs() < 1e-5, "layer {l} [{b},{i},{j}] {g} vs {want}");
                }
            }
        }
    }
    println!("value zeroing: max |kiln − float64| {worst:.2e}");
    // Rows of the normalised matrix are shares: each real row sums to 1.
    let shares = common::vec64(row_normalize(got[1].clone()).sum_dim(2));
    for (r, sum) in shares.iter().enumerate() {
        let want = if mask_v[r] == 1 { 1.0 } else { 0.0 };
        assert!((sum - want).abs() < 1e-5, "row {r} sums to {sum}");
    }
}
